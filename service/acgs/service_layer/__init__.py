"""The service layer: use cases (decide, evaluate) over ports the adapters implement."""
