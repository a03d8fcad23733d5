"""r2n.gpu.GraphCache and ``r2n.models.create(..., graph=True)`` without a GPU.

The cache's keying, bounds, locking and refusals run here with a stand-in for
:func:`r2n.gpu.capture` (which needs CUDA); the model's wiring runs on the
CPU emulator with that stand-in, and the launches of a forward are counted
(the emulator records them). Replaying real graphs is
tests/test_gpu_graph.py's (GPU only) and benchmarks/gpu_bench.py's.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import r2n
from r2n import _backends
from r2n.gpu import conv as gconv
from r2n.gpu import graph


class FakeCapture:
    """Records each capture; the "graph" calls fn again (no CUDA)."""

    def __init__(self, delay=0.0):
        self.keys, self.delay = [], delay

    def __call__(self, fn, x):
        self.keys.append((tuple(x.shape), str(x.dtype)))
        time.sleep(self.delay)  # a capture takes a while: threads pile up here
        return lambda y: fn(y)


def _cache(**kwargs):
    fake = FakeCapture(kwargs.pop("delay", 0.0))
    cache = graph.GraphCache(
        lambda x: x * 2, capture_fn=fake, is_capturing=lambda: False, **kwargs
    )
    return cache, fake


def test_one_graph_per_shape_dtype_and_tunables(monkeypatch):
    cache, fake = _cache()
    a, b = np.ones((1, 3, 4, 4), np.float32), np.ones((2, 3, 4, 4), np.float32)
    for x in (a, a, b, a, a.astype(np.float64), b):
        np.testing.assert_array_equal(cache(x), x * 2)
    assert fake.keys == [((1, 3, 4, 4), "float32"), ((2, 3, 4, 4), "float32"),
                         ((1, 3, 4, 4), "float64")]  # fmt: skip
    assert cache.captures == 3 and len(cache) == 3
    # a launch tunable decides the recorded kernels' tiles: part of the key
    monkeypatch.setattr(gconv, "_LARGE_TILE_MIN_BLOCKS", 1)
    cache(a)
    assert cache.captures == 4


def test_least_recently_used_graph_is_dropped_first():
    cache, fake = _cache(max_graphs=2)
    xs = {n: np.full((n, 3, 2, 2), n, np.float32) for n in (1, 2, 3)}
    for n in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
        cache(xs[n])
    assert len(cache) == 2 and cache.captures == 3
    cache(xs[1])  # still held
    assert cache.captures == 3
    cache(xs[2])  # recorded again
    assert cache.captures == 4 and len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_threads_record_a_key_once_and_each_gets_its_own_result():
    cache, fake = _cache(delay=0.05)
    barrier = threading.Barrier(8)
    results, errors = {}, []

    def call(i):
        try:
            barrier.wait()
            x = np.full((1, 3, 4, 4), i, np.float32)
            results[i] = cache(x)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake.keys == [((1, 3, 4, 4), "float32")]  # one capture for one key
    for i, out in results.items():
        np.testing.assert_array_equal(out, np.full((1, 3, 4, 4), 2 * i, np.float32))


def test_a_call_inside_another_capture_is_a_clear_error():
    fake = FakeCapture()
    cache = graph.GraphCache(lambda x: x, capture_fn=fake, is_capturing=lambda: True)
    with pytest.raises(RuntimeError, match="capturing a graph"):
        cache(np.ones((1, 3, 2, 2), np.float32))
    assert fake.keys == []
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_graphs must be an int >= 1"):
            graph.GraphCache(lambda x: x, max_graphs=bad)


def test_models_create_checks_graph():
    with pytest.raises(ValueError, match="graph=True records CUDA graphs"):
        r2n.models.create("res2net50_26w_4s", backend="cpu", graph=True)
    with pytest.raises(TypeError, match="graph must be True or False"):
        r2n.models.create("res2net50_26w_4s", graph="yes")
    with pytest.raises(ValueError, match="does not record graphs"):
        _backends.graphed(lambda x: x, "reference", "numpy")
    assert isinstance(_backends.graphed(lambda x: x, None, "cupy"), graph.GraphCache)
    small = {"layers": (1, 1, 1, 1)}
    model = r2n.models.create("res2net50_26w_4s", _params=small)
    with pytest.raises(ValueError, match="created with graph=False"):
        model.graphs()
    assert "graph" not in repr(model)


def test_graph_model_replays_per_shape_on_the_emulator(monkeypatch, rng):
    """The wiring on CuPy-like arrays: the model's GPU forward goes through its
    GraphCache (one capture per input shape), NumPy inputs do not, and the
    results are the eager model's. Also counts a forward's launches: the stem,
    the max pool, per (one-block) stage conv1 + one chain launch + conv3 with
    the shortcut, the global pool and the fc."""
    from test_gpu_tensor_core_emulated import cupy_like

    ex, wrap = cupy_like.__wrapped__(monkeypatch)
    fake = FakeCapture()
    monkeypatch.setattr(graph, "capture", fake)
    monkeypatch.setattr(graph, "_stream_is_capturing", lambda: False)
    small = {"layers": (1, 1, 1, 1)}
    model = r2n.models.create("res2net50_26w_4s", graph=True, _params=small)
    eager = r2n.models.create("res2net50_26w_4s", _params=small)
    assert model.graph and "graph=True" in repr(model)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    ex.launches.clear()
    out = model(wrap(x))
    assert len(ex.launches) == 1 + 1 + 4 * 3 + 1 + 1
    np.testing.assert_array_equal(out.array, eager(wrap(x)).array)
    model(wrap(x))
    x2 = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    model(wrap(x2))
    assert fake.keys == [((1, 3, 16, 16), "float32"), ((1, 3, 8, 8), "float32")]
    assert model.graphs().captures == 2
    model(x2)  # NumPy: the host backend, no graph
    assert model.graphs().captures == 2
