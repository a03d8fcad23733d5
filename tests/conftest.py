"""Shared test helpers: tolerances, the error measure, random data, torch glue.

Every comparison uses the relative error ||out - ref|| / ||ref|| against a
float64 result (PyTorch's, or r2n's reference), with the tolerance of the
output's dtype (TOL). Inputs are fresh standard-normal draws from a generator
seeded per test, never zeros.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from torch_res2net import t64  # noqa: F401  (re-exported for the op tests)

torch.set_num_threads(1)  # test sizes are tiny; threads only add noise on 2 cores

# Relative-error tolerance by dtype of the output under test.
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = (np.float64, np.float32)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("R2N_HYPOTHESIS", "dev"))


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


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: fixed per test, different across tests."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
