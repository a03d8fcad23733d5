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


def random_block(rng, c_in, c_out, width, scale, *, groups=1, shortcut="identity", dtype):
    """Random BN-folded r2n.Bottle2neckParams (weights scaled by 1/sqrt(fan_in),
    so activations stay O(1)); ``shortcut``: "identity", "conv" or "pool"
    (the "d" block's average pool + conv)."""
    from r2n import Bottle2neckParams, FoldedConv

    def folded(co, ci, k=1, g=1):
        weight = randn(rng, co, ci // g, k, k, dtype=dtype) / float(np.sqrt(ci * k * k / g))
        return FoldedConv(weight, randn(rng, co, dtype=dtype))

    chain = [folded(width, width, 3, groups) for _ in range(max(scale - 1, 1))]
    return Bottle2neckParams(
        conv1=folded(width * scale, c_in),
        chain_weights=[c.weight for c in chain],
        chain_biases=[c.bias for c in chain],
        conv3=folded(c_out, width * scale),
        shortcut=None if shortcut == "identity" else folded(c_out, c_in),
        shortcut_avg_pool=shortcut == "pool",
    )


def as_float64(params):
    """Bottle2neckParams (or FoldedConv arrays) cast to float64, for the reference."""
    return params.map(lambda a: None if a is None else np.asarray(a, np.float64))
