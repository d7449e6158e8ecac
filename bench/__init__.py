"""ACGS-2 benchmarks. ``make bench`` runs :mod:`bench.run`; see its ``--help``.

Running ``python3 -m bench.run`` from the repository root works without
``PYTHONPATH``: the service sources are put on the path here if ``acgs`` is
not importable (``make`` exports PYTHONPATH itself).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("acgs") is None:  # pragma: no cover - depends on the environment
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
