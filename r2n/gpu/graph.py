"""Replaying a whole forward pass as one CUDA graph (batch-1 inference).

At batch 1 a Res2Net forward is bound by the host: each of its ~100 kernels
costs tens of microseconds of Python and CuPy launch work, more than the
kernel itself runs (benchmarks/results/NOTES.md, "GPU"). A CUDA graph records
the launches once and replays them with one call, so the GPU runs them back
to back::

    model = r2n.models.create("res2net50_26w_4s", state_dict)
    x = cupy.asarray(images, dtype=cupy.float32)   # (1, 3, 224, 224)
    forward = r2n.gpu.capture(model, x)             # runs model(x) once, recorded
    logits = forward(x)                             # replays; any x of that shape

or, per input shape automatically, ``r2n.models.create(..., graph=True)``
(:class:`GraphCache`).

What :func:`capture` guarantees:

* Every array the recorded call allocates comes from a memory pool private to
  the returned :class:`CapturedCall` and lives as long as it does, so no
  later allocation elsewhere can take memory the graph writes to.
* Each call copies its inputs into the graph's own input buffers, replays on
  the current stream, and returns a new copy of the output: inputs are never
  written, and an output stays valid after the next call.
* Inputs must match the captured ones in type, shape and dtype (and device);
  anything else is a ValueError or TypeError.
* Calls from several threads (or on several streams) are safe: one graph
  has one set of input and output buffers, so replays run one after another.
  A lock orders the calls' host-side work, and each call's stream waits for
  an event recorded after the previous call's output copy, wherever it ran,
  before it writes the inputs. (A graph per thread runs them in parallel.)

The recorded function must be a pure function of its array arguments that
only launches device work (r2n's gpu ops and prepared models are): host
synchronisation, host-device copies or Python-side decisions that depend on
the data would be recorded once and not re-run. CUDA graphs need CuPy with
CUDA (not ROCm).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from .._checks import array_kind
from . import conv


class CapturedCall:
    """``fn(*args)`` recorded as a CUDA graph for arguments of fixed shapes.

    Parameters
    ----------
    fn : callable taking CuPy arrays and returning one CuPy array (e.g. an
        r2n model, or a closure over r2n gpu ops)
    *example_args : CuPy arrays of the shapes, dtypes and device of every
        later call; ``fn`` runs on them twice (once to compile and load every
        kernel, once recorded)

    Attributes
    ----------
    shapes, dtypes : of the captured arguments
    output_shape, output_dtype : of the result
    """

    def __init__(self, fn: Callable, *example_args):
        if not example_args:
            raise ValueError("r2n.gpu.capture: give at least one example argument")
        for i, a in enumerate(example_args):
            if array_kind(a) != "cupy":
                raise TypeError(
                    f"r2n.gpu.capture: argument {i} must be a cupy.ndarray, got {type(a).__name__}"
                )
        import cupy

        self._cupy = cupy
        self._fn = fn  # keeps the model (its weights are read by the graph) alive
        self.device_id = example_args[0].device.id
        if any(a.device.id != self.device_id for a in example_args):
            raise ValueError("r2n.gpu.capture: every argument must be on one device")
        self.shapes = tuple(tuple(a.shape) for a in example_args)
        self.dtypes = tuple(a.dtype for a in example_args)
        with cupy.cuda.Device(self.device_id):
            # Warm-up outside the capture: compiles and loads every module (not
            # allowed while capturing) with the example values.
            fn(*example_args)
            self._pool = cupy.cuda.MemoryPool()
            self._stream = cupy.cuda.Stream(non_blocking=True)
            with cupy.cuda.using_allocator(self._pool.malloc):
                self._inputs = tuple(cupy.empty_like(a) for a in example_args)
                for dst, src in zip(self._inputs, example_args, strict=True):
                    dst[...] = src
                cupy.cuda.get_current_stream().synchronize()
                # The graph records split-K's scratch addresses for this
                # stream: r2n.clear_scratch() must not free them.
                conv.pin_split_k_scratch(self._stream)
                with self._stream:
                    self._stream.begin_capture()
                    try:
                        out = fn(*self._inputs)
                    finally:
                        self._graph = self._stream.end_capture()
                    if array_kind(out) != "cupy":
                        raise TypeError(
                            "r2n.gpu.capture: fn must return one cupy.ndarray, "
                            f"got {type(out).__name__}"
                        )
            # Held, so the pool never hands its blocks out again while the graph
            # may write them.
            self._output = out
            self.output_shape = tuple(out.shape)
            self.output_dtype = out.dtype
        # What outlives a call, and why no call sees another's: the input
        # buffers, the graph's intermediates and its output are written by
        # every replay before it reads them (the recorded fn is pure), and
        # replays never overlap: _lock orders the calls, and _done (recorded
        # after the last call's output copy) is waited for by the next call's
        # stream before it writes the inputs.
        self._lock = threading.Lock()
        self._done = None

    def __call__(self, *args):
        """Copy ``args`` into the graph's inputs, replay it on the current
        stream, and return a new array holding the output. Safe to call from
        several threads: the replays run one after another."""
        cupy = self._cupy
        if len(args) != len(self.shapes):
            raise ValueError(
                f"r2n.gpu.capture: captured with {len(self.shapes)} argument(s), got {len(args)}"
            )
        for i, (a, shape, dtype) in enumerate(zip(args, self.shapes, self.dtypes, strict=True)):
            if array_kind(a) != "cupy":
                raise TypeError(
                    f"r2n.gpu.capture: argument {i} must be a cupy.ndarray, got {type(a).__name__}"
                )
            if tuple(a.shape) != shape or a.dtype != dtype or a.device.id != self.device_id:
                raise ValueError(
                    f"r2n.gpu.capture: argument {i} must be {dtype} {shape} on device "
                    f"{self.device_id} as captured, got {a.dtype} {tuple(a.shape)} on device "
                    f"{a.device.id}; capture again for another shape"
                )
        with cupy.cuda.Device(self.device_id), self._lock:
            stream = cupy.cuda.get_current_stream()
            if self._done is not None:
                stream.wait_event(self._done)  # the previous call, on any stream, is done
            for dst, src in zip(self._inputs, args, strict=True):
                dst[...] = src  # on the current stream, before the replay
            self._graph.launch(stream)
            out = self._output.copy()  # ordered after the replay on the same stream
            self._done = stream.record()
            return out


def capture(fn: Callable, *example_args) -> CapturedCall:
    """Record ``fn(*example_args)`` as a CUDA graph; see :class:`CapturedCall`."""
    return CapturedCall(fn, *example_args)


def _stream_is_capturing() -> bool:
    """Whether the calling thread's current CuPy stream is recording a graph."""
    import cupy

    return bool(cupy.cuda.get_current_stream().is_capturing())


#: Graphs a :class:`GraphCache` keeps by default (one per input shape / dtype /
#: device; each holds its intermediates' memory: a Res2Net-50 forward at batch
#: 1 about 60 MB in float32, at batch 32 about 2 GB).
MAX_GRAPHS = 8


class GraphCache:
    """``fn`` replayed from CUDA graphs, one captured on the first call per key.

    ``r2n.models.create(..., graph=True)`` wraps a model's GPU forward in one:
    the first call with an input of a new shape, dtype or device records the
    forward (:func:`capture`: a warm-up run, then the recorded one), later
    calls of that key replay it.

    Parameters
    ----------
    fn : callable, one CuPy array -> one CuPy array, a pure function of its
        input that only launches device work (see :func:`capture`)
    max_graphs : graphs kept, least recently used dropped first (>= 1)
    key_extra : callable returning what else decides the recorded launches
        (default: r2n.gpu.conv's launch tunables), part of every key
    capture_fn, is_capturing : None (:func:`capture`, and a check of the
        current CuPy stream), or stand-ins (tests without a GPU)

    Threads: lookups, captures and evictions happen under one lock, so two
    threads never record one key twice, and a capture sees no eviction. Replays
    of one graph run one after another (its :class:`CapturedCall` orders them:
    it has one set of buffers), replays of different keys concurrently. A call
    made while the calling thread's stream is itself capturing (inside another
    graph's capture) cannot record a graph of its own or replay one into that
    capture safely, and is a RuntimeError.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        max_graphs: int = MAX_GRAPHS,
        key_extra: Callable[[], tuple] | None = None,
        capture_fn: Callable | None = None,
        is_capturing: Callable[[], bool] | None = None,
    ):
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(
                f"r2n.gpu.GraphCache: max_graphs must be an int >= 1, got {max_graphs!r}"
            )
        self._fn = fn
        self.max_graphs = max_graphs
        self._key_extra = _launch_tunables if key_extra is None else key_extra
        self._capture = capture if capture_fn is None else capture_fn
        self._is_capturing = _stream_is_capturing if is_capturing is None else is_capturing
        self._graphs: OrderedDict[tuple, Callable] = OrderedDict()
        self._lock = threading.Lock()
        #: Graphs recorded so far (evicted ones included), for tests and tuning.
        self.captures = 0

    def key(self, x) -> tuple:
        """What decides the recorded launches for input ``x``: its type, shape,
        dtype and device, and ``key_extra()``."""
        device = getattr(getattr(x, "device", None), "id", None)
        return (type(x), tuple(x.shape), str(x.dtype), device, self._key_extra())

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, x):
        """``fn(x)``, from the graph of x's key (recorded now if there is none)."""
        if self._is_capturing():
            raise RuntimeError(
                "r2n: a graph=True model was called while the current CUDA stream is "
                "capturing a graph; it cannot record or replay its own graph inside another "
                "capture. Call a model created with graph=False there."
            )
        key = self.key(x)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._capture(self._fn, x)
                self.captures += 1
                self._graphs[key] = graph
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
        return graph(x)

    def clear(self) -> None:
        """Drop every graph (and, once no replay holds it, its memory)."""
        with self._lock:
            self._graphs.clear()


def _launch_tunables() -> tuple:
    from . import conv

    return conv._tunables()
