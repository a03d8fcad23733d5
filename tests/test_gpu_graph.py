"""r2n.gpu.capture: a forward pass recorded as a CUDA graph and replayed.

The replay tests need a GPU (skipped in CI); the argument checks that come
before any CuPy call run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import gpu_count, rel_err

import r2n
import r2n.gpu

needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="CuPy sees no GPU")


def _small_model(name="res2net50_26w_4s"):
    return r2n.models.create(name, _params={"layers": (1, 1, 1, 1)})


def test_capture_refuses_host_arrays_before_touching_cupy():
    with pytest.raises(TypeError, match="cupy.ndarray"):
        r2n.gpu.capture(lambda x: x, np.ones((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        r2n.gpu.capture(lambda: None)


@needs_gpu
@pytest.mark.parametrize("name", ["res2net50_26w_4s", "res2net50d", "tresnet_m"])
def test_replay_matches_the_eager_model_on_fresh_inputs(rng, name):
    import cupy

    model = _small_model(name)
    shape = (2, 3, 64, 64) if name == "tresnet_m" else (1, 3, 45, 37)  # odd sizes
    x0 = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
    forward = r2n.gpu.capture(model, x0)
    for _ in range(3):
        x = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
        x_copy = x.copy()
        eager = model(x)
        out = forward(x)
        assert out.shape == eager.shape == forward.output_shape
        # the same kernels on the same inputs: identical up to float summation order
        assert rel_err(cupy.asnumpy(out), cupy.asnumpy(eager)) <= 1e-6
        assert cupy.array_equal(x, x_copy), "the replay wrote its input"


@needs_gpu
def test_the_graphs_memory_is_its_own(rng):
    """Other allocations between replays (the default pool handing out blocks,
    filled with NaN) must not change what a replay computes."""
    import cupy

    model = _small_model()
    shape = (1, 3, 64, 64)
    x = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
    expected = cupy.asnumpy(model(x))
    forward = r2n.gpu.capture(model, x)
    first = forward(x)
    for _ in range(3):
        junk = [cupy.full((1 << 20,), cupy.nan, cupy.float32) for _ in range(64)]
        cupy.get_default_memory_pool().free_all_blocks()
        del junk
        out = forward(x)
        assert rel_err(cupy.asnumpy(out), expected) <= 1e-6
    # outputs are new arrays: an earlier one is not overwritten by later replays
    assert rel_err(cupy.asnumpy(first), expected) <= 1e-6
    assert not cupy.shares_memory(first, forward(x))


@needs_gpu
def test_replay_refuses_other_shapes_dtypes_and_kinds(rng):
    import cupy

    model = _small_model()
    x = cupy.asarray(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    forward = r2n.gpu.capture(model, x)
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\).*capture again"):
        forward(cupy.zeros((2, 3, 32, 32), cupy.float32))
    with pytest.raises(ValueError, match="float32"):
        forward(x.astype(cupy.float64))
    with pytest.raises(TypeError, match="cupy.ndarray"):
        forward(cupy.asnumpy(x))
    with pytest.raises(ValueError, match="1 argument"):
        forward(x, x)
    with pytest.raises(TypeError, match="one cupy.ndarray"):
        r2n.gpu.capture(lambda a: (a, a), x)
