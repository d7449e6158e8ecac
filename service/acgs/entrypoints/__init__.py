"""Entrypoints: the gRPC server and its servicers, and the ``acgs`` command line.

regopy is imported here, before anything imports grpc, on purpose: measured
on regopy 1.5.2 with grpcio 1.85, a process that loads grpc first leaks about
28 KB of native memory per evaluation (RSS 117 → 202 MB over 3,000 decisions),
one that loads regopy first stays flat. tests/e2e/test_memory.py guards it.
"""

import regopy  # noqa: F401  (import order matters, see above)
