"""Shared test helpers: tolerances, the error measure, random data, torch glue.

Every comparison uses the relative error ||out - ref|| / ||ref|| against a
float64 result (PyTorch's, or r2n's reference), with the tolerance of the
output's dtype (TOL). Inputs are fresh standard-normal draws, never zeros.
(A plain module, not conftest.py: benchmarks/ has a conftest of its own.)
"""

from __future__ import annotations

import numpy as np
from torch_res2net import t64  # noqa: F401  (re-exported for the op tests)

# Relative-error tolerance by dtype of the output under test.
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = (np.float64, np.float32)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere fails (returns inf)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    if not (np.isfinite(out).all() and np.isfinite(ref).all()):
        return float("inf")
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


def assert_close(out, ref, dtype=None) -> None:
    """Relative error within TOL of ``dtype`` (default: out's dtype)."""
    tol = TOL[np.dtype(dtype or out.dtype)]
    err = rel_err(out, ref)
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e}"


def randn(rng, *shape, dtype=np.float64):
    """Standard-normal array of ``shape`` and ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)


def gpu_count() -> int:
    """GPUs CuPy sees; 0 without CuPy, without a driver or without a device
    (the GPU-only tests skip themselves on 0)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or CUDARuntimeError without a driver
        return 0
