"""Timing: warm-up, then the median of repeated calls.

CPU rows use ``time.perf_counter`` around each call (the call returns when the
result is ready). GPU rows record CUDA events on the current stream around
each call and synchronise on the end event, so the time is the device's, not
the launch's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..params import Bottle2neckParams, FoldedConv


@dataclass(frozen=True)
class Budget:
    """How long to time one row: at least ``min_reps`` calls, then more while
    the total is under ``min_time`` seconds, up to ``max_reps``; ``warmup``
    untimed calls first (Numba and NVRTC compile on the first call)."""

    min_time: float = 0.25
    min_reps: int = 5
    max_reps: int = 200
    warmup: int = 1


QUICK = Budget(min_time=0.03, min_reps=3, max_reps=15, warmup=1)
DEFAULT = Budget()


def _repeat(one_call: Callable[[], float], budget: Budget) -> list[float]:
    """Times (s) of repeated ``one_call()``s, each returning its own seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < budget.min_reps or (
        time.perf_counter() - start < budget.min_time and len(times) < budget.max_reps
    ):
        times.append(one_call())
    return times


def time_host(fn: Callable, budget: Budget) -> list[float]:
    """Seconds of each timed call of ``fn()`` (CPU work), after warm-up."""
    for _ in range(budget.warmup):
        fn()

    def one():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return _repeat(one, budget)


def time_cupy(fn: Callable, budget: Budget) -> list[float]:
    """Seconds of each call of ``fn()`` on the current CuPy stream (CUDA events)."""
    import cupy

    for _ in range(budget.warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def one():
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3

    return _repeat(one, budget)


def time_torch_cuda(fn: Callable, budget: Budget) -> list[float]:
    """Seconds of each call of ``fn()`` on torch's current CUDA stream (events)."""
    import torch

    for _ in range(budget.warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def one():
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return _repeat(one, budget)


TIMERS = {"host": time_host, "cupy": time_cupy, "torch-cuda": time_torch_cuda}


def median_ms(times: list[float]) -> float:
    """Median of times in seconds, in milliseconds."""
    return 1e3 * statistics.median(times)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf for a shape mismatch or NaN/Inf."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def convert(args, fn):
    """Apply ``fn`` to every NumPy array inside ``args`` (lists, tuples,
    FoldedConv and Bottle2neckParams too); other values are returned as is."""
    if isinstance(args, np.ndarray):
        return fn(args)
    if isinstance(args, (list, tuple)):
        return type(args)(convert(a, fn) for a in args)
    if isinstance(args, (FoldedConv, Bottle2neckParams)):
        return type(args)(**{k: convert(v, fn) for k, v in vars(args).items()})
    return args
