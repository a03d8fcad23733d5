"""Shared setup of the benchmark suite.

The suite runs in every ``python -m pytest`` as a smoke test: pyproject's
addopts pass ``--benchmark-disable``, so each benchmark body runs once,
untimed. Time for real with ``--benchmark-enable`` (see README).
"""

from __future__ import annotations

import os
import sys

# PyTorch's OpenMP workers spin for a while after each call. On a small machine
# they then steal the cores from the next row (NumPy's BLAS, Numba's threads),
# and timings swing by 10x or more. Make idle workers sleep; this must be set
# before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The PyTorch models of the official block live with the tests; reuse them.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
