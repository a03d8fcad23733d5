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
from collections.abc import Callable

from .._checks import array_kind


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
