"""Memory bounds: what a call allocates and what r2n keeps between calls.

* A conv's input copy grows with the input and the output, never with the
  stride, the padding or the dilation (r2n.cpu.conv.v4_simd.input_layout).
* Padding past what the README allows is a ValueError on every backend.
* A warm model forward allocates only its logits; a warm prepared step
  (pool, SE, blur, space-to-depth) nothing.
* The buffers the cpu backend keeps between calls (r2n.cpu._scratch) are a
  bounded LRU per thread, and ``r2n.clear_scratch()`` frees all of them, the
  outputs that prepared layers reuse included, in every thread.

Allocations are measured with tracemalloc (NumPy reports its buffers to it),
on a second call so that Numba's compilation is not counted.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc

import numpy as np
import pytest
from helpers import assert_close, randn

import r2n
import r2n.models
from r2n import _backends
from r2n.cpu import _scratch

pytestmark = pytest.mark.skipif(not r2n.implements("cpu", "conv2d"), reason="needs numba")


def _peak_bytes(fn):
    """Peak bytes traced while fn() runs (after one untraced warm-up call)."""
    fn()
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _f64(*arrays):
    return [None if a is None else a.astype(np.float64) for a in arrays]


#: Python objects (views, shape tuples, argument dicts) alive at once over a
#: whole warm forward: about 15-20 KiB measured (CPython 3.11, NumPy 2), far
#: below every activation of the shapes below (64 KiB and up) but the pooled
#: features (8 KiB per image), which test_the_prepared_steps_allocate_nothing_warm checks.
PYTHON_OBJECTS = 32 * 2**10


@pytest.fixture(scope="module")
def warm_models():
    """name -> a cpu model, created once for this module's tests."""
    return {}


def _warm_model(models, name):
    if name not in models:
        models[name] = r2n.models.create(name, backend="cpu")
    return models[name]


def test_a_huge_stride_allocates_nothing_like_the_stride(rng):
    # Rows narrower than a register tile read slack columns (stride x 6 of
    # them): a padded copy of this 4x4 input took 1 GB.
    x = randn(rng, 1, 2, 4, 4, dtype=np.float32)
    w = randn(rng, 3, 2, 3, 3, dtype=np.float32)
    peak = _peak_bytes(lambda: r2n.conv2d(x, w, stride=10**7, backend="cpu"))
    assert peak < 2**20, f"{peak} bytes for a (1, 3, 1, 1) output"
    expected = r2n.conv2d(*_f64(x, w), stride=10**7, backend="reference")
    assert_close(r2n.conv2d(x, w, stride=10**7, backend="cpu"), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_padding_and_dilation_allocate_nothing_like_the_padding(rng, dtype):
    # Padding = dilation = 10**5 around a 4x4 input: a padded copy is
    # (2 * 10**5 + 4)**2 values per channel (149 GiB); only the centre tap of
    # the 3x3 kernel ever lands on the input, so the result is a 1x1 conv.
    x = randn(rng, 2, 3, 4, 5, dtype=dtype)
    w = randn(rng, 4, 3, 3, 3, dtype=dtype)
    b = randn(rng, 4, dtype=dtype)
    kw = dict(padding=10**5, dilation=10**5)
    peak = _peak_bytes(lambda: r2n.conv2d(x, w, b, backend="cpu", **kw))
    assert peak < 2**20, f"{peak} bytes for a (2, 4, 4, 5) output"
    expected = r2n.conv2d(*_f64(x, w[:, :, 1:2, 1:2], b), backend="reference")
    assert_close(r2n.conv2d(x, w, b, backend="cpu", **kw), expected)


def test_the_prepared_conv_is_bounded_too(rng):
    x = randn(rng, 1, 3, 5, 4, dtype=np.float32)
    w = randn(rng, 6, 3, 3, 3, dtype=np.float32)
    b = randn(rng, 6, dtype=np.float32)
    options = dict(stride=(10**6, 1), padding=(10**5, 10**5), dilation=(10**5, 10**5), groups=1)
    conv = _backends.prepare("conv2d", "cpu", "numpy", w, b, reuse_output=True, **options)
    peak = _peak_bytes(lambda: conv(x))
    assert peak < 2**20
    # Output rows 0 and 1 (stride 10**6 over 2 * 10**5 + 5 padded rows)
    # read input rows -10**5, 0, 10**5 and 10**6 - 10**5, ...: only the
    # centre tap of row 0 sees the input.
    expected = r2n.conv2d(*_f64(x, w[:, :, 1:2, 1:2], b), backend="reference")[:, :, :1]
    out = conv(x)
    assert out.shape == (1, 6, 1, 4)
    assert_close(out, expected)


def test_a_stage_chain_with_a_huge_stride_is_bounded(rng):
    x = randn(rng, 2, 16, 4, 5, dtype=np.float32)
    weights = [randn(rng, 4, 4, 3, 3, dtype=np.float32) for _ in range(3)]
    kw = dict(scale=4, stype="stage", stride=10**7)
    peak = _peak_bytes(lambda: r2n.res2net_chain(x, weights, backend="cpu", **kw))
    assert peak < 2**20
    expected = r2n.res2net_chain(*_f64(x), _f64(*weights), backend="reference", **kw)
    assert_close(r2n.res2net_chain(x, weights, backend="cpu", **kw), expected)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_padding_past_the_limit_is_a_value_error(backend):
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    limit = (2**31 - 5) // 2  # the largest padding of a 4-row input: 4 + 2p < 2**31
    with pytest.raises(ValueError, match=r"padding along H is too large.*below 2\*\*31"):
        r2n.conv2d(x, w, padding=(limit + 1, 0), backend=backend)
    with pytest.raises(ValueError, match=r"padding along W is too large"):
        r2n.conv2d(x, w, padding=(0, 10**12), backend=backend)
    if backend == "cpu":  # (the reference pads the input in full: 2**62 values)
        out = r2n.conv2d(x, w, padding=limit, dilation=limit, stride=10**9, backend=backend)
        assert out.shape == (1, 1, 1, 1) and out[0, 0, 0, 0] == 1.0  # the centre tap


# --------------------------------------------------------------------------- #
# What stays allocated between calls
# --------------------------------------------------------------------------- #


def _small_model():
    return r2n.models.create("res2net50_26w_4s", _params={"layers": (1, 1, 1, 1)}, backend="cpu")


def test_kept_buffers_are_a_bounded_lru_and_clear_scratch_frees_them(rng, monkeypatch):
    """A model called on 40 image heights kept every layer's output for each
    of them (132 MB at 224x224 for good, untouched by clear_scratch)."""
    model = _small_model()
    images = [randn(rng, 1, 3, 32 + h, 32, dtype=np.float32) for h in range(40)]
    # Compile first every kernel the 40 heights reach (some kernels are chosen
    # by the plane's size): Numba's compiled code would count as kept memory.
    for x in images:
        model(x)
    r2n.clear_scratch()
    gc.collect()
    tracemalloc.start()
    try:
        model(images[-1])
        gc.collect()
        one = tracemalloc.get_traced_memory()[0]  # what the largest shape keeps
        entries = len(_scratch._this_thread().buffers)
        assert one > 0 and entries > 0
        # Room for two shapes' buffers: after 40 heights at most two shapes'
        # worth stays allocated.
        monkeypatch.setattr(_scratch, "SCRATCH_ENTRIES", 2 * entries)
        for x in images:
            model(x)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]
        assert len(_scratch._this_thread().buffers) <= 2 * entries
        assert kept < 2.5 * one, f"{kept} bytes kept after 40 shapes; one shape keeps {one}"
        r2n.clear_scratch()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after < 0.05 * kept, f"{after} of {kept} bytes still allocated after clear_scratch"
    assert not _scratch._this_thread().buffers


@pytest.mark.parametrize("name", ["res2net50_26w_4s", "tresnet_m"])
def test_scratch_entries_hold_two_shapes_of_a_model(rng, warm_models, name):
    """Alternating between two input shapes must not miss in the LRU."""
    model = _warm_model(warm_models, name)
    r2n.clear_scratch()
    model(randn(rng, 1, 3, 64, 64, dtype=np.float32))
    per_shape = len(_scratch._this_thread().buffers)
    assert 40 <= per_shape and 2 * per_shape <= _scratch.SCRATCH_ENTRIES


def test_clear_scratch_frees_other_threads_buffers(rng):
    x = randn(rng, 1, 8, 9, 7, dtype=np.float32)
    weights = [randn(rng, 2, 2, 3, 3, dtype=np.float32) for _ in range(3)]
    ready, done = threading.Event(), threading.Event()
    caches = []

    def worker():
        r2n.res2net_chain(x, weights, scale=4, backend="cpu")
        caches.append(_scratch._this_thread())
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert ready.wait(60)
        assert caches[0].buffers, "the chain kept no buffer in its thread"
        r2n.clear_scratch()
        assert not caches[0].buffers
    finally:
        done.set()
        thread.join()


def test_clear_scratch_imports_neither_numba_nor_cupy():
    import subprocess
    import sys

    code = (
        "import sys, r2n; r2n.clear_scratch(); "
        "print('numba' in sys.modules, 'cupy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr


@pytest.mark.parametrize(
    "name, shape",
    [
        ("res2net50_26w_4s", (1, 3, 65, 71)),
        ("res2net50_26w_4s", (2, 3, 64, 64)),
        ("res2net50d", (1, 3, 65, 71)),
        ("res2net50d", (2, 3, 64, 64)),
        ("tresnet_m", (1, 3, 64, 64)),
        ("tresnet_m", (2, 3, 64, 72)),
    ],
)
def test_a_warm_forward_allocates_only_its_logits(rng, warm_models, name, shape):
    """Every intermediate of a warm forward (same shape, dtype and threads as
    the call before) comes from the thread's scratch: the convs' and blocks'
    outputs, the stem's max pool, TResNet's space-to-depth, blur, SE (with
    the BasicBlock's add + ReLU fused in) and shortcut pools, and the global
    pool (issue 13). Before, the peak over a warm call was 160 KB (res2net50,
    batch 2, 64x64: max pool, global pool, logits) and more for tresnet_m
    (SE / blur / space-to-depth / pool / add outputs). The logits are a new
    array: the caller keeps them, and the next call does not change them. The
    warm result equals the cold one bit for bit, and so does a call after
    every cached buffer is filled with NaN (nothing is read before it is
    written)."""
    model = _warm_model(warm_models, name)
    x = randn(rng, *shape, dtype=np.float32)
    r2n.clear_scratch()
    cold = model(x)  # every buffer allocated afresh
    logits = cold.nbytes
    peak = _peak_bytes(lambda: model(x))
    assert peak <= logits + PYTHON_OBJECTS, f"{peak} bytes over a warm call; logits {logits}"
    warm = model(x)
    np.testing.assert_array_equal(warm, cold)
    assert not np.shares_memory(warm, cold) and warm.flags.writeable
    kept = warm.copy()
    for buf in _scratch._this_thread().buffers.values():
        buf.fill(np.nan)
    np.testing.assert_array_equal(model(x), cold)
    np.testing.assert_array_equal(warm, kept)  # the caller's logits are untouched


@pytest.mark.parametrize(
    "op, weights, options",
    [
        ("max_pool2d", 0, dict(kernel_size=3, stride=2, padding=1)),
        ("avg_pool2d", 0, dict(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False)),
        ("global_avg_pool2d", 0, {}),
        ("space_to_depth", 0, dict(block_size=4)),
        ("blur_pool2d", 0, {}),
        ("squeeze_excite", 4, {}),
    ],
)
def test_the_prepared_steps_allocate_nothing_warm(rng, op, weights, options):
    # 2 MiB in; the smallest output, global_avg_pool2d's, is 8 KiB.
    x = randn(rng, 4, 512, 16, 16, dtype=np.float32)
    w1, w2 = (
        randn(rng, 64, 512, 1, 1, dtype=np.float32),
        randn(rng, 512, 64, 1, 1, dtype=np.float32),
    )
    arrays = (w1, None, w2, None)[:weights]
    step = _backends.prepare(op, "cpu", "numpy", *arrays, reuse_output=True, **options)
    peak = _peak_bytes(lambda: step(x))
    assert peak <= 4096, f"{peak} bytes over a warm {op}"  # Python objects only


# --------------------------------------------------------------------------- #
# What the kernels allocate inside (Numba's runtime, which tracemalloc misses)
# --------------------------------------------------------------------------- #

_NRT_SCRIPT = r"""
import json, sys
import numpy as np
import r2n
from numba.core.runtime import rtsys
from r2n.cpu.prepared import PreparedConv2d
r2n.set_num_threads(2)
rng = np.random.default_rng(0)

def allocations(fn):
    fn(); fn()
    before = rtsys.get_allocation_stats().alloc
    fn()
    return rtsys.get_allocation_stats().alloc - before

def conv(c_in, c_out, k, stride, hw):
    w = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    layer = PreparedConv2d(w, np.zeros(c_out, np.float32), stride=(stride, stride),
                           padding=(k // 2, k // 2), dilation=(1, 1), groups=1,
                           activation="relu")
    layer.algorithm = lambda *a: "direct"
    x = rng.standard_normal((1, c_in, hw, hw)).astype(np.float32)
    return lambda: layer(x)

def pool(c, hw):
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    return lambda: r2n.max_pool2d(x, kernel_size=3, stride=2, padding=1)

cases = {
    # 7-pixel 1x1 tiles on 14x14 planes: 8 vs 64 jobs
    "1x1 rows": (conv(64, 256, 1, 1, 14), conv(64, 2048, 1, 1, 14)),
    # step 4's direct conv, a job per (channel block, output row): 28 vs 224
    "3x3 direct": (conv(16, 64, 3, 2, 28), conv(16, 256, 3, 2, 56)),
    # the windowed pool, a job per 8 output rows of a plane: 32 vs 512
    "max pool": (pool(16, 56), pool(128, 112)),
}
print(json.dumps({k: [allocations(f) for f in fns] for k, fns in cases.items()}))
"""


def test_kernels_allocate_per_launch_not_per_job(tmp_path):
    """A warm call's allocations in Numba's runtime (NRT statistics, counted
    in a subprocess started with NUMBA_NRT_STATS=1) do not grow with the
    kernel's jobs: the 1x1 rows kernel, step 4's direct conv and the windowed
    pools take one buffer per worker from their launcher, not one per job
    from inside the kernel (a few allocations per parallel region remain,
    Numba's own)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_NRT_STATS="1")
    script = tmp_path / "nrt.py"
    script.write_text(_NRT_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (small, large) in counts.items():
        assert large == small and large <= 16, f"{name}: {small} vs {large} NRT allocations"
