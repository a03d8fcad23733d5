"""r2n.gpu.capture: a forward pass recorded as a CUDA graph and replayed.

The replay tests need a GPU (skipped in CI); the argument checks that come
before any CuPy call run everywhere.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import types

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
def test_clear_scratch_keeps_what_a_captured_graph_uses(rng):
    """r2n.clear_scratch() drops split-K's per-stream arrays, but not those a
    captured graph replays into: NaN-filled allocations afterwards must not
    change a replay, and eager calls after it allocate their arrays again."""
    import cupy

    from r2n.gpu import conv as gconv

    model = _small_model()
    x = cupy.asarray(rng.standard_normal((1, 3, 45, 37)).astype(np.float32))
    expected = cupy.asnumpy(model(x))
    assert gconv._SCRATCH, "no split-K launch: the test would prove nothing"
    forward = r2n.gpu.capture(model, x)
    r2n.clear_scratch()
    for _ in range(2):
        junk = [cupy.full((1 << 20,), cupy.nan, cupy.float32) for _ in range(64)]
        del junk
        assert rel_err(cupy.asnumpy(forward(x)), expected) <= 1e-6
        assert rel_err(cupy.asnumpy(model(x)), expected) <= 1e-6
        r2n.clear_scratch()


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


# --------------------------------------------------------------------------- #
# Concurrent replays, with a stand-in for CuPy (no GPU here)
# --------------------------------------------------------------------------- #


class _StandInArray:
    """A "device" array: a NumPy array whose copies log to the stand-in.
    (Its module makes r2n take it for a cupy.ndarray.)"""

    def __init__(self, fake, data):
        self.fake, self.data = fake, data
        self.shape, self.dtype = data.shape, data.dtype
        self.device = types.SimpleNamespace(id=0)

    def __setitem__(self, index, src):
        self.fake.log("copy in")
        self.data[index] = src.data
        time.sleep(0)  # let another thread run between the copy and the replay

    def copy(self):
        self.fake.log("copy out")
        time.sleep(0)  # ... and between the replay and the copy
        return _StandInArray(self.fake, self.data.copy())


_StandInArray.__module__ = "cupy._core.core"


class _StandInCupy:
    """What CapturedCall uses of CuPy: devices, pools, streams (thread-local
    current stream, capture, events) and graphs. Work runs at once when it is
    enqueued; ``events`` logs (thread's stream, what) in order, so a test can
    check which stream waited for which event."""

    def __init__(self):
        fake = self
        self.events = []
        self._local = threading.local()
        self._ids = iter(range(10**6))

        class Stream:
            def __init__(self, non_blocking=False):
                self.id = next(fake._ids)
                self.recording = None

            def __enter__(self):
                fake._local.stream = self
                return self

            def __exit__(self, *exc):
                fake._local.stream = None

            def synchronize(self):
                pass

            def begin_capture(self):
                self.recording = []

            def end_capture(self):
                kernels, self.recording = self.recording, None
                return types.SimpleNamespace(launch=lambda stream: fake.replay(kernels, stream))

            def record(self):
                event = next(fake._ids)
                fake.log("record", event)
                return event

            def wait_event(self, event):
                fake.log("wait", event)

        self.Stream = Stream
        self.cuda = types.SimpleNamespace(
            Device=lambda device_id: contextlib.nullcontext(),
            MemoryPool=lambda: types.SimpleNamespace(malloc=None),
            Stream=Stream,
            using_allocator=lambda malloc: contextlib.nullcontext(),
            get_current_stream=self.current_stream,
        )

    def current_stream(self):
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self.Stream()
        return stream

    def log(self, what, event=None):
        self.events.append((self.current_stream().id, what, event))

    def empty_like(self, a):
        return _StandInArray(self, np.empty_like(a.data))

    def double(self, x):
        """The recorded function's one kernel: 2 * x into a new array."""
        out = _StandInArray(self, np.empty_like(x.data))
        kernel = (x, out)
        stream = self.current_stream()
        if stream.recording is not None:
            stream.recording.append(kernel)
        else:
            out.data[...] = 2 * x.data
        return out

    def replay(self, kernels, stream):
        self.log("replay")
        for x, out in kernels:
            out.data[...] = 2 * x.data


def test_concurrent_replays_are_ordered_and_correct(monkeypatch):
    """4 threads x 50 replays of one captured call, each on its own stream:
    every result is its own input's, and every call's stream waits for the
    event recorded after the previous call before it writes the inputs."""
    fake = _StandInCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    rng = np.random.default_rng(0)
    example = _StandInArray(fake, rng.standard_normal((2, 3)).astype(np.float32))
    forward = r2n.gpu.capture(fake.double, example)
    fake.events.clear()
    errors = []

    def work(i):
        with fake.Stream(non_blocking=True):
            for k in range(50):
                data = np.full((2, 3), 100 * i + k, np.float32)
                out = forward(_StandInArray(fake, data))
                if not np.array_equal(out.data, 2 * data):
                    errors.append(f"thread {i}, call {k}: another call's result")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    calls, call = [], []
    for event in fake.events:  # each call ends with its "record"
        call.append(event)
        if event[1] == "record":
            calls.append(call)
            call = []
    assert len(calls) == 200 and not call
    expected = ["copy in", "replay", "copy out", "record"]
    assert [what for _, what, _ in calls[0]] == expected
    for before, call in zip(calls, calls[1:], strict=False):
        assert [what for _, what, _ in call] == ["wait", *expected], "calls interleaved"
        assert len({stream for stream, _, _ in call}) == 1, "a call's work ran on two streams"
        assert call[0][2] == before[-1][2], "a call did not wait for the previous one"


@needs_gpu
def test_replays_from_four_threads_on_their_own_streams(rng):
    import cupy

    model = _small_model()
    shape = (1, 3, 45, 37)
    inputs = [cupy.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(8)]
    expected = [cupy.asnumpy(model(x)) for x in inputs]
    forward = r2n.gpu.capture(model, inputs[0])
    errors = []

    def work(i):
        with cupy.cuda.Stream(non_blocking=True) as stream:
            for k in range(50):
                j = (i + k) % len(inputs)
                out = forward(inputs[j])
                stream.synchronize()
                if rel_err(cupy.asnumpy(out), expected[j]) > 1e-6:
                    errors.append(f"thread {i}, call {k}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


@needs_gpu
def test_graph_true_model_replays_per_shape_and_matches_eager(rng):
    import cupy

    small = {"layers": (1, 1, 1, 1)}
    model = r2n.models.create("res2net50_26w_4s", _params=small, graph=True)
    eager = r2n.models.create("res2net50_26w_4s", _params=small)
    for shape in ((1, 3, 45, 37), (2, 3, 32, 32), (1, 3, 45, 37)):
        x = cupy.asarray(rng.standard_normal(shape).astype(np.float32))
        out = model(x)
        assert rel_err(cupy.asnumpy(out), cupy.asnumpy(eager(x))) <= 1e-6
    assert model.graphs().captures == 2 and len(model.graphs()) == 2
