"""CuPy RawKernel CUDA kernels (``backend="gpu"``).

Not implemented yet: the GPU backend issue fills ``OPS`` with CUDA kernels for
every public op. Until then every op called on CuPy arrays (or forced to
``backend="gpu"``) raises NotImplementedError. Importing r2n never imports CuPy.
"""

from __future__ import annotations

import importlib.util

#: op name -> implementation taking checked, normalised arguments (see r2n._backends).
OPS: dict = {}


def available() -> bool:
    """True when CuPy is installed (whether it sees a GPU is checked at launch)."""
    return importlib.util.find_spec("cupy") is not None


def unavailable_reason() -> str:
    return "cupy is not installed (pip install 'r2n[gpu]', see the README for the wheel)"
