"""Adapters: the concrete implementations of the service layer's ports."""
