"""The speedup model of the Res2Net accelerator design, measured on this machine.

A Res2Net bottleneck's time splits into three parts:

* **T1**, the chain's grouped/3x3 convolutions (with their folded BN and ReLU);
* **T2**, the residual-connection part: splitting the 1x1 conv's output into
  ``scale`` chunks, the hierarchical adds ``y_{i-1} + x_i``, the concatenation
  of the outputs, and (stage blocks) the average pool of the last chunk;
* **S**, the rest: conv1 and conv3 (1x1, BN folded), conv1's ReLU, the
  shortcut conv, and the final add + ReLU.

An accelerator that runs the convolutions k1 times faster and the residual
part k2 times faster than a serial implementation, leaving S as it is, takes
``S + T1/k1 + T2/k2`` instead of ``S + T1 + T2``. Hence the predicted speedups::

    vs serial:                         (S + T1 + T2) / (S + T1/k1 + T2/k2)
    vs a PyTorch-style implementation  (S + T1/k1 + T2) / (S + T1/k1 + T2/k2)
      (one that parallelises only the convolutions, the residual glue serial)

Here each part runs as separate kernels, timed on its own with precomputed
inputs (so T1 and T2 do not share caches with each other):

* T1: ``r2n.conv2d`` + ``r2n.relu`` per chain conv;
* T2: the parallel split / add / concatenate kernels of
  :mod:`r2n._bench.residual` and ``r2n.avg_pool2d``;
* S: ``r2n.conv2d`` + ``r2n.relu``, the shortcut ``r2n.conv2d``, add + ReLU.

**Serial times are the cpu backend on 1 thread**, not the reference backend:
k1 and k2 must measure what parallel execution does to the *same* code. The
reference computes the convs with im2col + BLAS GEMM and the glue with NumPy,
different algorithms whose ratio to the cpu kernels would be folded into k as
if it were parallelism. **Parallel times** are the cpu backend on all threads
(and the gpu backend, with CuPy for the glue, when CuPy sees a GPU):
k1 = T1_serial / T1_parallel, k2 = T2_serial / T2_parallel.

Next to the predictions the model prints measured speedups over the same
serial S + T1 + T2: r2n's fused ``bottle2neck`` on the parallel engine, and
PyTorch eager on as many threads (or its GPU). The model leaves S serial,
while both measured runs parallelise S too, and r2n's fused kernels also skip
T2's passes altogether: measured speedups can therefore exceed the
prediction. On a machine with p cores k <= p (2 on a 2-core machine), so the
predicted speedups are small there; the formula is what carries over to
larger machines and GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import _api
from . import timing


def predicted_speedups(s: float, t1: float, t2: float, k1: float, k2: float) -> tuple:
    """(vs serial, vs PyTorch-style) predicted by the model (see module doc).

    Parameters
    ----------
    s, t1, t2 : serial times of the rest, the chain convs, the residual part
    k1, k2 : parallel speedups of the convs and of the residual part (> 0)

    Returns
    -------
    ((s + t1 + t2) / (s + t1/k1 + t2/k2), (s + t1/k1 + t2) / (s + t1/k1 + t2/k2))
    """
    accelerated = s + t1 / k1 + t2 / k2
    return (s + t1 + t2) / accelerated, (s + t1 / k1 + t2) / accelerated


@dataclass
class Engine:
    """The array ops one engine runs the decomposed bottleneck with.

    All take and return arrays of the engine's kind, NCHW."""

    name: str
    conv: Callable  # (x, w, b, stride, padding) -> y
    relu: Callable
    split: Callable  # (x, c0, width) -> contiguous chunk
    add: Callable
    concat: Callable  # list of (N, C_i, H, W) -> (N, sum C_i, H, W)
    pool: Callable  # (x, stride) -> avg_pool2d(x, 3, stride, 1)
    block: Callable  # (x, params, **kw) -> fused r2n.bottle2neck
    timer: str  # key of timing.TIMERS


def cpu_engine() -> Engine:
    """The cpu backend; glue from :mod:`r2n._bench.residual` (parallel Numba)."""
    from . import residual

    b = "cpu"
    return Engine(
        name="cpu",
        conv=lambda x, w, bias, s, p: _api.conv2d(x, w, bias, stride=s, padding=p, backend=b),
        relu=lambda x: _api.relu(x, backend=b),
        split=residual.split,
        add=residual.add,
        concat=residual.concatenate,
        pool=lambda x, s: _api.avg_pool2d(x, 3, s, 1, backend=b),
        block=lambda x, p, **kw: _api.bottle2neck(x, p, backend=b, **kw),
        timer="host",
    )


def gpu_engine(cupy) -> Engine:
    """The gpu backend; glue as CuPy array ops (each a parallel kernel)."""
    b = "gpu"
    return Engine(
        name="gpu",
        conv=lambda x, w, bias, s, p: _api.conv2d(x, w, bias, stride=s, padding=p, backend=b),
        relu=lambda x: _api.relu(x, backend=b),
        split=lambda x, c0, width: cupy.ascontiguousarray(x[:, c0 : c0 + width]),
        add=lambda a, c: a + c,
        concat=lambda chunks: cupy.concatenate(chunks, axis=1),
        pool=lambda x, s: _api.avg_pool2d(x, 3, s, 1, backend=b),
        block=lambda x, p, **kw: _api.bottle2neck(x, p, backend=b, **kw),
        timer="cupy",
    )


def decompose(engine: Engine, x, params, *, scale: int, stype: str, stride: int):
    """Run the bottleneck once as separate steps; return the three parts as
    callables over the stored intermediate arrays, and the block's output.

    Parameters
    ----------
    x : (N, C_in, H, W); params : Bottle2neckParams on the engine's device

    Returns
    -------
    (s_part, t1_part, t2_part, out) where out is (N, C_out, H_out, W_out)
    """
    e, p = engine, params
    if p.shortcut_avg_pool:
        raise ValueError("the speedup model covers conv and identity shortcuts only")
    width = p.chain_weights[0].shape[0]
    nums = max(scale - 1, 1)
    stage = stype == "stage"
    # S, first half: conv1 + ReLU.
    y1 = e.relu(e.conv(x, p.conv1.weight, p.conv1.bias, 1, 0))
    # T2: split; T1: the convs; T2: the adds.
    chunks = [e.split(y1, i * width, width) for i in range(scale)]
    conv_in, conv_out = [], []
    for i in range(nums):
        sp = chunks[i] if i == 0 or stage else e.add(conv_out[-1], chunks[i])
        conv_in.append(sp)
        conv_out.append(e.relu(e.conv(sp, p.chain_weights[i], p.chain_biases[i], stride, 1)))
    last = [] if scale == 1 else [e.pool(chunks[nums], stride) if stage else chunks[nums]]
    cat = e.concat(conv_out + last)
    # S, second half: conv3, shortcut, add + ReLU.
    y3 = e.conv(cat, p.conv3.weight, p.conv3.bias, 1, 0)
    sc = p.shortcut
    identity = x if sc is None else e.conv(x, sc.weight, sc.bias, stride, 0)
    out = e.relu(e.add(y3, identity))

    def s_part():
        e.relu(e.conv(x, p.conv1.weight, p.conv1.bias, 1, 0))
        y = e.conv(cat, p.conv3.weight, p.conv3.bias, 1, 0)
        idt = x if sc is None else e.conv(x, sc.weight, sc.bias, stride, 0)
        e.relu(e.add(y, idt))

    def t1_part():
        for i in range(nums):
            e.relu(e.conv(conv_in[i], p.chain_weights[i], p.chain_biases[i], stride, 1))

    def t2_part():
        parts = [e.split(y1, i * width, width) for i in range(scale)]
        if not stage:
            for i in range(1, nums):
                e.add(conv_out[i - 1], parts[i])
        tail = [] if scale == 1 else [e.pool(parts[nums], stride) if stage else parts[nums]]
        e.concat(conv_out + tail)

    return s_part, t1_part, t2_part, out


def measure(
    serial: Engine,
    parallel: Engine,
    parallel_label: str,
    host_args: tuple,
    device_args: tuple,
    kwargs: dict,
    ref: np.ndarray,
    budget: timing.Budget,
    set_threads: Callable[[int | None], None],
    threads: int,
    to_numpy: Callable = np.asarray,
    torch_ms: float | None = None,
    torch_label: str | None = None,
) -> dict:
    """Times S, T1, T2 serially (``serial`` on 1 thread) and on ``parallel``,
    the fused block on ``parallel``, and the model's predictions.

    Parameters
    ----------
    host_args, device_args : (x, params) float32, for the serial and the
        parallel engine (the same arrays when both run on the host)
    ref : the float64 reference output, to check both decompositions
    set_threads : sets the host thread count (None: all threads)
    threads : the parallel engine's host thread count (None for a GPU)
    torch_ms, torch_label : PyTorch's measured time of the same block, if any

    Returns
    -------
    dict with every time (ms), k1, k2, kS, the predictions and the measured
    speedups (see the module doc); ``status`` "ok" or "WRONG".
    """
    result: dict = {"parallel": parallel_label, "threads": threads}
    times = {}
    for role, engine, args, n_threads in (
        ("serial", serial, host_args, 1),
        ("parallel", parallel, device_args, threads),
    ):
        set_threads(n_threads)
        x, params = args
        s_part, t1_part, t2_part, out = decompose(engine, x, params, **kwargs)
        err = timing.rel_err(to_numpy(out) if role == "parallel" else out, ref)
        result[f"{role}_rel_err"] = err
        if not err <= 1e-5:
            result["status"] = "WRONG"
            return result
        timer = timing.TIMERS[engine.timer]
        for part, fn in (("S", s_part), ("T1", t1_part), ("T2", t2_part)):
            times[f"{part}_{role}"] = timing.median_ms(timer(fn, budget))
        if role == "parallel":

            def block(e=engine, x=x, params=params):
                return e.block(x, params, **kwargs)

            times["fused_parallel"] = timing.median_ms(timer(block, budget))
    set_threads(None)
    s, t1, t2 = times["S_serial"], times["T1_serial"], times["T2_serial"]
    k1 = t1 / times["T1_parallel"]
    k2 = t2 / times["T2_parallel"]
    vs_serial, vs_torch_style = predicted_speedups(s, t1, t2, k1, k2)
    serial_total = s + t1 + t2
    parts_parallel = times["S_parallel"] + times["T1_parallel"] + times["T2_parallel"]
    result.update(
        status="ok",
        ms=times,
        k1=k1,
        k2=k2,
        kS=s / times["S_parallel"],
        serial_ms=serial_total,
        predicted_vs_serial=vs_serial,
        predicted_vs_torch_style=vs_torch_style,
        measured_parts_parallel_vs_serial=serial_total / parts_parallel,
        measured_r2n_vs_serial=serial_total / times["fused_parallel"],
        torch_label=torch_label,
        torch_ms=torch_ms,
        measured_torch_vs_serial=None if torch_ms is None else serial_total / torch_ms,
        measured_r2n_vs_torch=None if torch_ms is None else torch_ms / times["fused_parallel"],
    )
    return result


def format_model(results: list[dict]) -> str:
    """The model's table: one line per (block, parallel engine)."""
    lines = []
    for r in results:
        head = f"{r['case']}, parallel = {r['parallel']}"
        if r.get("status") != "ok":
            lines.append(f"{head}: {r.get('status')} {r.get('reason', '')}".rstrip())
            continue
        m = r["ms"]
        lines.append(head)
        lines.append(
            f"  serial (cpu, 1 thread):  S {m['S_serial']:.3f} ms  T1 {m['T1_serial']:.3f} ms"
            f"  T2 {m['T2_serial']:.3f} ms  (T2 = {100 * m['T2_serial'] / r['serial_ms']:.0f}%"
            " of S+T1+T2)"
        )
        lines.append(
            f"  parallel ({r['parallel']}):  S {m['S_parallel']:.3f} ms  T1 {m['T1_parallel']:.3f}"
            f" ms  T2 {m['T2_parallel']:.3f} ms   k1 = {r['k1']:.2f}  k2 = {r['k2']:.2f}"
            f"  (kS = {r['kS']:.2f}, not used by the model)"
        )
        lines.append(
            f"  predicted speedup vs serial (S+T1+T2)/(S+T1/k1+T2/k2):         "
            f"{r['predicted_vs_serial']:.2f}x"
        )
        lines.append(
            f"  predicted speedup vs PyTorch-style (S+T1/k1+T2)/(S+T1/k1+T2/k2): "
            f"{r['predicted_vs_torch_style']:.2f}x"
        )
        lines.append(
            f"  measured vs serial: r2n fused {r['measured_r2n_vs_serial']:.2f}x "
            f"({m['fused_parallel']:.3f} ms), parts in parallel "
            f"{r['measured_parts_parallel_vs_serial']:.2f}x"
            + (
                ""
                if r.get("torch_ms") is None
                else f", {r['torch_label']} {r['measured_torch_vs_serial']:.2f}x"
                f" ({r['torch_ms']:.3f} ms)"
            )
        )
        if r.get("measured_r2n_vs_torch") is not None:
            lines.append(
                f"  measured r2n fused vs {r['torch_label']}: {r['measured_r2n_vs_torch']:.2f}x"
            )
    return "\n".join(lines)
