"""Numba-parallel CPU kernels (``backend="cpu"``).

Not implemented yet: the CPU backend issue fills ``OPS`` with ``@njit(parallel=True)``
kernels for every public op. Until then every op forced to ``backend="cpu"``
raises NotImplementedError, and NumPy arrays run on the reference.
"""

from __future__ import annotations

import importlib.util

#: op name -> implementation taking checked, normalised arguments (see r2n._backends).
OPS: dict = {}


def available() -> bool:
    """True when Numba is installed."""
    return importlib.util.find_spec("numba") is not None


def unavailable_reason() -> str:
    return "numba is not installed (pip install 'r2n[cpu]')"
