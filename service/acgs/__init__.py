"""ACGS-2: constitutional governance decision service."""

CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"
"""The constitution in force. An identifier every component checks, not a secret."""

__version__ = "0.1.0"
