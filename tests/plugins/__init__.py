"""pytest plugins: fixtures that find or start real services, and the server under test."""
