"""Entrypoints: the gRPC server and its servicers, and the ``acgs`` command line."""
