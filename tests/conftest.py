"""pytest setup for the tests: hypothesis profiles, torch threads, the rng fixture.

Shared helpers (tolerances, rel_err, assert_close) are in helpers.py.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)  # test sizes are tiny; threads only add noise on 2 cores

# CI: a fixed, derandomized set of examples; locally more, and random.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("R2N_HYPOTHESIS", "dev"))


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: fixed per test, different across tests."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
