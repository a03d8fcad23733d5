"""Issue 14's GPU benchmark: every row checked against float64, then timed, in one command.

Run on a machine with a CUDA GPU, CuPy, PyTorch and timm, from the repo root::

    python benchmarks/gpu_bench.py [--quick] [--out DIR] [--tag NAME]
    python benchmarks/gpu_bench.py --dry-run      # no GPU: build the plan, list rows, exit 0

Cases (Res2Net-50 26w x 4s shapes): the chain and the bottle2neck of layer1.1
(56x56, 26 wide, "normal"), layer2.0 (56x56 -> 28x28, 52 wide, "stage", the
conv shortcut) and layer3.1 (14x14, 104 wide, "normal"), and the whole
res2net50_26w_4s on 224 x 224 images, each at batch 1, 32 and 256
(``--quick``: layer3.1 and the network at batch 1 and 32).

Rows per case:

* ``r2n fp32`` / ``r2n tf32`` / ``r2n bf16``: r2n's gpu backend (prepared
  chain / block, ``r2n.models.create(..., precision=...)``);
* at batch 1, ``r2n fp32 graph`` / ``r2n tf32 graph``: the same replayed from a
  CUDA graph (``r2n.gpu.capture``; the network: ``create(..., graph=True)``),
  and ``r2n fp32 nosplit`` / ``r2n fp32 graph nosplit``: fp32 without split-K
  (``r2n.gpu.conv.SPLIT_K_MIN_K`` out of reach), to measure what it gains;
* ``torch eager tf32-off`` / ``torch eager tf32-on`` (PyTorch's default for
  convs): the Res2Net modules (r2n._bench.torch_models; timm's model for the
  network), cuDNN, no grad;
* at batch 1, ``torch graph tf32-off`` / ``tf32-on``: those captured in a CUDA
  graph (``torch.cuda.CUDAGraph``), the fair batch-1 anchor;
* ``torch compile``: ``torch.compile(mode="max-autotune-no-cudagraphs")``,
  TF32 on, after every other row, while the compile budget lasts
  (``--compile-budget-s``, default 150 s; the network first; a compile
  running past it is interrupted and reported).

Check, then time. Every row first runs once on a fresh random input and is
compared with the float64 truth (PyTorch in float64 on the GPU: the folded
chain / block as ops, timm's network; at batch 1 that truth is itself
compared with r2n's reference backend on the CPU, within 1e-10):
||out - ref|| / ||ref|| within 1e-5 per op and 1e-4 for the network in fp32,
r2n.gpu.conv_tensor_core.tolerance(precision, layers) for tf32 / bf16 rows
(and PyTorch's TF32 rows). A row that fails is reported and not timed;
the script then exits 1.

Timing: CUDA events around each call on the current stream (so host launch
gaps count: what a caller waits for), inputs rotated over enough sets to
exceed twice the L2 cache, a few warm-up calls, the median of the rest.
Graph rows copy each input into the graph's buffer (r2n's also copy the
output out). Peak device memory per forward: the bytes a call allocates and
holds at its peak (CuPy's pool through a memory hook; PyTorch's
max_memory_allocated), output included, weights excluded.

Ceilings of the same run: large matmuls (8192^3, PyTorch) in fp32 (TF32 off),
tf32 and bf16 on random data, and a 1 GiB device-to-device copy (bytes read +
written). Results: ``DIR/<date>-gpu-bench-<tag>.json`` and ``.log`` (DIR
defaults to benchmarks/results; rewritten after every case, so a run stopped
from outside keeps what it measured), and the issue's target ratios last.
With the defaults a full run stays under ~9 minutes: rows start until 360 s,
then at most 150 s of compiles.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

NETWORK = "res2net50_26w_4s"
L2_BYTES = 60 * 2**20  # an H100's / H200's L2 (50 / 60 MB): rotate past twice this


# --------------------------------------------------------------------------- #
# The plan (no GPU needed)
# --------------------------------------------------------------------------- #

#: Res2Net-50 layers of the chain / block rows: name, c_in, planes, width, hw, stype, stride.
LAYERS = (
    ("layer1.1", 256, 64, 26, 56, "normal", 1),
    ("layer2.0", 256, 128, 52, 56, "stage", 2),
    ("layer3.1", 1024, 256, 104, 14, "normal", 1),
)
SCALE = 4


@dataclass
class Case:
    """One op at one shape and batch, and the rows to run on it."""

    op: str  # "res2net_chain", "bottle2neck" or NETWORK
    layer: str  # the Res2Net-50 layer, or "" for the network
    batch: int
    rows: list = field(default_factory=list)

    @property
    def name(self) -> str:
        where = f" {self.layer}" if self.layer else ""
        return f"{self.op}{where} N={self.batch}"


def rows_for(op: str, batch: int) -> list[str]:
    """The rows of a case (module docstring)."""
    rows = ["r2n fp32", "r2n tf32", "r2n bf16"]
    if batch == 1:
        rows += ["r2n fp32 graph", "r2n tf32 graph", "r2n fp32 nosplit", "r2n fp32 graph nosplit"]
    rows += ["torch eager tf32-off", "torch eager tf32-on"]
    if batch == 1:
        rows += ["torch graph tf32-off", "torch graph tf32-on"]
    rows.append("torch compile")
    return rows


def build_plan(batches, quick: bool) -> list[Case]:
    """Every case and its rows, the network's first (its compile rows come
    first in the compile budget)."""
    layers = [LAYERS[2]] if quick else list(LAYERS)
    cases = [Case(NETWORK, "", n) for n in batches]
    for n in batches:
        for layer in layers:
            for op in ("res2net_chain", "bottle2neck"):
                cases.append(Case(op, layer[0], n))
    for case in cases:
        case.rows = rows_for(case.op, case.batch)
    return cases


def layers_on_longest_path(op: str, stype: str = "normal") -> int:
    """Convs whose rounding errors add up (r2n.gpu.conv_tensor_core.tolerance):
    the chain's dependent convs, a block's conv1 + chain + conv3, the network's
    stem + its 16 blocks (4 "stage", 12 "normal")."""
    chain = SCALE - 1 if stype == "normal" else 1
    if op == "res2net_chain":
        return chain
    if op == "bottle2neck":
        return 2 + chain
    return 1 + 4 * (2 + 1) + 12 * (2 + SCALE - 1)


def row_precision(row: str) -> str:
    """The arithmetic a row's convs run in (for its tolerance)."""
    if row.startswith("r2n"):
        return row.split()[1]
    return "tf32" if ("tf32-on" in row or row == "torch compile") else "fp32"


def tolerance(case: Case, row: str, stype: str) -> float:
    precision = row_precision(row)
    if precision == "fp32":
        return 1e-4 if case.op == NETWORK else 1e-5
    from r2n.gpu import conv_tensor_core as tc

    return tc.tolerance(precision, layers_on_longest_path(case.op, stype))


def _layer(name: str):
    return next(layer for layer in LAYERS if layer[0] == name)


def bench_case(case: Case):
    """The r2n._bench BenchCase of ``case`` (shapes, FLOPs, input maker)."""
    from r2n._bench import cases, network

    if case.op == NETWORK:
        return network.network_case(case.batch, 224)
    name, c_in, planes, width, hw, stype, stride = _layer(case.layer)
    if case.op == "res2net_chain":
        return cases.chain_case(case.batch, width, SCALE, hw, stype, stride, name)
    return cases.block_case(case.batch, c_in, planes, width, SCALE, hw, stype, stride, name)


# --------------------------------------------------------------------------- #
# Runners: x -> output, on the GPU
# --------------------------------------------------------------------------- #


class Runners:
    """The rows' callables of one case, and the float64 truth."""

    def __init__(self, case: Case, args, kwargs, bcase):
        self.case, self.args, self.kwargs, self.bcase = case, args, kwargs, bcase
        self.stype = kwargs.get("stype", "normal")

    # r2n ------------------------------------------------------------------ #
    def r2n(self, precision: str, graph: bool, split: bool = True):
        fn = self._r2n(precision, graph)
        return fn if split else _NoSplit(fn)

    def _r2n(self, precision: str, graph: bool):
        import r2n.gpu
        from r2n.gpu import res2net as gres

        case, args, kw = self.case, self.args, self.kwargs
        if case.op == NETWORK:
            state = self.bcase._state_dict()
            model = r2n.models.create(NETWORK, state, precision=precision, graph=graph)
            return model
        if case.op == "res2net_chain":
            _, weights, biases = args
            width = weights[0].shape[0]
            fn = gres.PreparedChain(
                [w.astype(np.float32) for w in weights],
                [b.astype(np.float32) for b in biases],
                scale=kw["scale"], stype=kw["stype"], stride=kw["stride"], groups=1,
                width=width, dtype=np.float32, precision=precision,
            )  # fmt: skip
        else:
            params = args[1].map(lambda a: np.asarray(a, np.float32))
            fn = gres.PreparedBottle2neck(params, scale=kw["scale"], stype=kw["stype"],
                                          stride=kw["stride"], precision=precision)  # fmt: skip
        if not graph:
            return fn
        return _LazyCapture(fn)

    # PyTorch -------------------------------------------------------------- #
    def truth(self, x64):
        """The float64 truth on the GPU: the folded chain / block as PyTorch ops
        on float64 tensors (exactly the function r2n computes; the modules' BN
        keeps float32 statistics), timm's network in float64 (its BN
        statistics are the float32 state_dict's, as r2n's)."""
        import torch

        from r2n._bench import timing, torch_models

        x = torch.from_numpy(x64).cuda()
        with torch.no_grad():
            if self.case.op == NETWORK:
                return self.torch_module("float64")(x).cpu().numpy()
            t = timing.convert(self.args[1:], lambda a: torch.from_numpy(a).cuda())
            if self.case.op == "res2net_chain":
                out = torch_models.folded_chain(x, *t, **self.kwargs)
            else:
                out = torch_models.folded_bottle2neck(x, *t, **self.kwargs)
            return out.cpu().numpy()

    def torch_module(self, dtype="float32"):
        import torch

        from r2n._bench import torch_models

        case, args, kw = self.case, self.args, self.kwargs
        if case.op == NETWORK:
            import timm

            net = timm.create_model(NETWORK, pretrained=False)
            state = {
                k: torch.from_numpy(np.asarray(v)) for k, v in self.bcase._state_dict().items()
            }
            net.load_state_dict(state, strict=False)
        elif case.op == "res2net_chain":
            net = torch_models.eager_chain(args[1], args[2], **kw)
        else:
            net = torch_models.eager_bottle2neck(args[1], **kw)
        net = net.eval().cuda()
        return net.double() if dtype == "float64" else net.float()

    def torch(self, row: str):
        import torch

        net = self.torch_module()
        tf32 = "tf32-on" in row or row == "torch compile"

        def eager(x):
            _set_tf32(tf32)
            with torch.no_grad():
                return net(x)

        if row.startswith("torch eager"):
            return eager
        if row == "torch compile":
            _set_tf32(True)
            compiled = torch.compile(net, mode="max-autotune-no-cudagraphs")

            def run(x):
                with torch.no_grad():
                    return compiled(x)

            return run
        return _TorchGraph(eager)


def _set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


class _NoSplit:
    """``fn`` with split-K off while it runs (its plans, and a graph recorded
    in the call, are keyed on the rule: r2n.gpu.conv._tunables)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        from r2n.gpu import conv

        saved, conv.SPLIT_K_MIN_K = conv.SPLIT_K_MIN_K, 2**62
        try:
            return self.fn(x)
        finally:
            conv.SPLIT_K_MIN_K = saved


class _LazyCapture:
    """r2n.gpu.capture of ``fn`` on the first input, replayed after."""

    def __init__(self, fn):
        self.fn, self.graph = fn, None

    def __call__(self, x):
        import r2n.gpu

        if self.graph is None:
            self.graph = r2n.gpu.capture(self.fn, x)
        return self.graph(x)


class _TorchGraph:
    """``fn`` captured in a torch.cuda.CUDAGraph on the first input; each call
    copies x into the static input and replays."""

    def __init__(self, fn):
        self.fn, self.graph = fn, None

    def __call__(self, x):
        import torch

        if self.graph is None:
            self.static_x = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.fn(self.static_x)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self.fn(self.static_x)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_out


# --------------------------------------------------------------------------- #
# Measuring
# --------------------------------------------------------------------------- #


def rel_err(out, ref) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.isfinite(out).all():
        return math.inf
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _host(a):
    """A CuPy array or torch tensor as a NumPy array."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    import cupy

    return cupy.asnumpy(a)


def time_row(fn, xs, warmup: int, reps: int) -> list[float]:
    """Milliseconds of ``fn(x)`` per call, CUDA events around each call on the
    current stream, inputs rotated over ``xs``."""
    import cupy

    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(reps)]
    for i in range(warmup):
        fn(xs[i % len(xs)])
    for i, (start, end) in enumerate(events):
        start.record()
        fn(xs[i % len(xs)])
        end.record()
    events[-1][1].synchronize()
    return [cupy.cuda.get_elapsed_time(s, e) for s, e in events]


class _PeakHook:
    """CuPy memory hook: bytes allocated from the pool and still held, and their peak."""

    def __new__(cls):
        import cupy

        class Hook(cupy.cuda.MemoryHook):
            name = "gpu_bench_peak"

            def __init__(self):
                self.used = self.peak = 0

            def malloc_postprocess(self, **kw):
                self.used += kw["mem_size"]
                self.peak = max(self.peak, self.used)

            def free_postprocess(self, **kw):
                self.used -= kw["mem_size"]

        return Hook()


def peak_bytes(fn, x, is_torch: bool) -> int:
    import cupy
    import torch

    cupy.cuda.Device().synchronize()
    torch.cuda.synchronize()
    if is_torch:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        hook = _PeakHook()
        with hook:
            out = fn(x)
            cupy.cuda.Device().synchronize()
        peak = hook.peak
    del out
    return int(peak)


def ceilings(quick: bool) -> dict:
    """Matmul rates (TFLOP/s) in fp32 / tf32 / bf16 and device copy GB/s."""
    import torch

    n = 4096 if quick else 8192
    out = {}
    for name, dtype, tf32 in (
        ("matmul fp32", torch.float32, False),
        ("matmul tf32", torch.float32, True),
        ("matmul bf16", torch.bfloat16, False),
    ):
        _set_tf32(tf32)
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        times = _torch_times(lambda a=a, b=b: a @ b, 3, 10)
        out[name + " TFLOP/s"] = 2 * n**3 / (float(np.median(times)) * 1e-3) / 1e12
    src = torch.randn(2**28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    times = _torch_times(lambda: dst.copy_(src), 3, 10)
    out["device copy GB/s"] = 2 * src.numel() * 4 / (float(np.median(times)) * 1e-3) / 1e9
    _set_tf32(False)
    return out


def _torch_times(fn, warmup, reps) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]  # fmt: skip
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


@dataclass
class Result:
    case: str
    op: str
    layer: str
    batch: int
    row: str
    gflop: float
    err: float | None = None
    tol: float | None = None
    ms: float | None = None
    ms_spread: list | None = None  # 10th and 90th percentile
    tflops: float | None = None
    peak_mb: float | None = None
    compile_s: float | None = None
    status: str = "ok"


def run_case(case: Case, rng, opts, log, state) -> list[Result]:
    """Check and time every row of ``case`` but ``torch compile``, which is
    queued in ``state["deferred"]`` for :func:`run_deferred` (its compiles may
    take minutes: they must not eat the other rows' time)."""
    import cupy
    import torch

    from r2n._bench import timing

    bcase = bench_case(case)
    args, kwargs = bcase.make(rng)
    # float32 weights for every row and for the truth alike (the truth's
    # float64 arithmetic on exactly those values)
    args = timing.convert(args, lambda a: np.asarray(a, np.float32).astype(np.float64))
    runners = Runners(case, args, kwargs, bcase)
    x_shape = args[0].shape
    x_bytes = int(np.prod(x_shape)) * 4
    n_sets = int(min(32, max(3, math.ceil(2 * L2_BYTES / x_bytes))))
    x_host = [rng.standard_normal(x_shape).astype(np.float32) for _ in range(n_sets)]
    truth = runners.truth(x_host[0].astype(np.float64))  # for the first input set
    if case.batch == 1:  # the truth against r2n's float64 reference backend
        if case.op == NETWORK:
            ref = bcase.reference((x_host[0].astype(np.float64),), kwargs)
        else:
            ref = bcase.reference((x_host[0].astype(np.float64), *args[1:]), kwargs)
        err = rel_err(truth, ref)
        log(f"  truth check: PyTorch float64 vs r2n reference: {err:.1e}")
        if not err <= 1e-10:
            raise RuntimeError(f"{case.name}: the float64 truths disagree ({err:.1e})")
    ctx = dict(case=case, bcase=bcase, runners=runners, truth=truth,
               stype=kwargs.get("stype", "normal"),
               xs_torch=[torch.from_numpy(x).cuda() for x in x_host])  # fmt: skip
    xs_cupy = [cupy.asarray(x) for x in x_host]
    results = []
    for row in case.rows:
        res = Result(case.name, case.op, case.layer, case.batch, row, bcase.flops / 1e9)
        results.append(res)
        if row == "torch compile":
            res.status = "deferred"
            state["deferred"].append((ctx, res))
            continue
        if time.monotonic() > state["deadline"]:
            res.status = "skipped: --budget-s spent"
            continue
        run_row(ctx, res, ctx["xs_torch"] if row.startswith("torch") else xs_cupy, opts, state)
        log(_format(res))
    del xs_cupy
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()
    return results


def run_deferred(opts, log, state) -> None:
    """The ``torch compile`` rows, in plan order (the network's first), while
    the compile budget lasts; a compile running past what is left of it is
    interrupted (SIGALRM) and reported."""
    for ctx, res in state.pop("deferred"):
        if state["compile_left"] <= 0:
            res.status = "skipped: --compile-budget-s spent"
        else:
            log(f"{res.case}:")
            res.status = "ok"
            run_row(ctx, res, ctx["xs_torch"], opts, state)
        log(_format(res))


class CompileTimeout(Exception):
    """torch.compile ran past the compile budget."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise CompileTimeout in this (the main) thread after ``seconds``."""

    def alarm(signum, frame):
        raise CompileTimeout(f"torch.compile ran past the compile budget ({seconds:.0f} s left)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_row(ctx, res: Result, xs, opts, state) -> None:
    """Check ``res.row`` against the float64 truth, then time it (fills ``res``)."""
    import torch

    case, row = ctx["case"], res.row
    is_torch = row.startswith("torch")
    try:
        if row == "torch compile":
            fn = ctx["runners"].torch(row)
            t0 = time.monotonic()
            try:
                with _time_limit(state["compile_left"]):
                    fn(xs[0])
                    torch.cuda.synchronize()
            finally:
                res.compile_s = time.monotonic() - t0
                state["compile_left"] -= res.compile_s
        elif is_torch:
            fn = ctx["runners"].torch(row)
        else:
            precision, graph = row.split()[1], "graph" in row
            fn = ctx["runners"].r2n(precision, graph, split="nosplit" not in row)
        out = _host(fn(xs[0]))
        res.err, res.tol = rel_err(out, ctx["truth"]), tolerance(case, row, ctx["stype"])
        if not res.err <= res.tol:
            res.status = f"FAILED check: rel err {res.err:.2e} > {res.tol:.1e}"
            state["failed"] = True
            return
        reps = opts.reps if case.batch < 256 else max(5, opts.reps // 2)
        times = time_row(fn, xs, opts.warmup, reps)
        res.ms = float(np.median(times))
        res.ms_spread = [float(np.percentile(times, 10)), float(np.percentile(times, 90))]
        res.tflops = ctx["bcase"].flops / (res.ms * 1e-3) / 1e12
        if "graph" not in row and row != "torch compile":
            res.peak_mb = peak_bytes(fn, xs[0], is_torch) / 2**20
    except Exception as exc:  # report and go on: one row never costs the others
        if row == "torch compile" and state["compile_left"] <= 0:  # (torch may wrap it)
            res.status = "skipped: compiled past --compile-budget-s, interrupted"
        else:
            res.status = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            state["failed"] = True
    finally:
        _set_tf32(False)


def _format(r: Result) -> str:
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    return (
        f"  {r.row:<22} {f(r.ms, '9.3f')} ms {f(r.tflops, '7.2f')} TFLOP/s "
        f"err {f(r.err, '.1e')} peak {f(r.peak_mb, '8.1f')} MB"
        + (f" compile {r.compile_s:.0f} s" if r.compile_s is not None else "")
        + ("" if r.status == "ok" else f"  [{r.status}]")
    )


def targets(results: list[Result]) -> list[str]:
    """Issue 14's target ratios (item 6) from the rows of this run: > 1 means
    r2n is faster (time of PyTorch's row / time of r2n's)."""
    by = {(r.case, r.row): r for r in results}
    cases = sorted({(r.op, r.layer, r.batch, r.case) for r in results})
    lines = []

    def ratio(case, ours, theirs):
        a, b = by.get((case, ours)), by.get((case, theirs))
        if a is None or b is None or a.ms is None or b.ms is None:
            return "-"
        return f"{b.ms / a.ms:.2f}x"

    for op, _, batch, case in cases:
        if batch == 1:
            pairs = [("r2n fp32 graph", "torch graph tf32-off", 1.5 if op == NETWORK else 1.2),
                     ("r2n fp32", "torch eager tf32-off", 3.0 if op == NETWORK else 1.2),
                     ("r2n tf32 graph", "torch graph tf32-on", 1.2),
                     ("r2n fp32 graph", "r2n fp32 graph nosplit", None),
                     ("r2n fp32", "r2n fp32 nosplit", None)]  # fmt: skip
        else:
            pairs = [("r2n fp32", "torch eager tf32-off", 1.0 if op == NETWORK else 1.2),
                     ("r2n tf32", "torch eager tf32-on", 1.0 if op == NETWORK else 1.2),
                     ("r2n tf32", "torch compile", None)]  # fmt: skip
        parts = [f"{ours} / {theirs}: {ratio(case, ours, theirs)}"
                 + (f" (target >= {t}x)" if t else "") for ours, theirs, t in pairs]  # fmt: skip
        ours, theirs = by.get((case, "r2n fp32")), by.get((case, "torch eager tf32-off"))
        if ours and theirs and ours.peak_mb and theirs.peak_mb:
            parts.append(f"peak memory r2n / torch: {ours.peak_mb / theirs.peak_mb:.2f}")
        lines.append(f"{case}: " + "; ".join(parts))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="layer3.1 and the network, N=1, 32")
    parser.add_argument("--dry-run", action="store_true", help="list the plan; no GPU needed")
    parser.add_argument("--batch", type=int, nargs="+", default=None)
    parser.add_argument("--out", default="benchmarks/results", help="JSON and log folder")
    parser.add_argument("--tag", default=None, help="file name tag (default: the GPU's name)")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting rows (but torch.compile's) after this many seconds "
        "(default 360, quick 200)",
    )
    parser.add_argument("--compile-budget-s", type=float, default=None,
                        help="torch.compile seconds in all (default 150, quick 60)")  # fmt: skip
    opts = parser.parse_args(argv)
    batches = opts.batch or ([1, 32] if opts.quick else [1, 32, 256])
    opts.reps = opts.reps or (10 if opts.quick else 20)
    budget = opts.budget_s or (200.0 if opts.quick else 360.0)
    compile_budget = opts.compile_budget_s or (60.0 if opts.quick else 150.0)
    plan = build_plan(batches, opts.quick)
    n_rows = sum(len(c.rows) for c in plan)
    if opts.dry_run:
        for case in plan:
            bcase = bench_case(case)
            print(f"{case.name:<34} {bcase.flops / 1e9:9.2f} GFLOP  rows: {', '.join(case.rows)}")
        print(f"{len(plan)} cases, {n_rows} rows; ceilings: matmul fp32 / tf32 / bf16, device "
              f"copy; budget {budget:.0f} s, torch.compile {compile_budget:.0f} s")  # fmt: skip
        return 0

    import cupy
    import torch

    started = time.monotonic()
    device = torch.cuda.get_device_name()
    tag = opts.tag or device.replace("NVIDIA ", "").replace(" ", "-").lower()
    stamp = datetime.date.today().isoformat()
    stem = f"{opts.out}/{stamp}-gpu-bench-{tag}" + ("-quick" if opts.quick else "")
    log_lines = []

    def log(line=""):
        print(line, flush=True)
        log_lines.append(line)

    info = dict(
        device=device,
        sms=cupy.cuda.Device().attributes["MultiProcessorCount"],
        torch=torch.__version__,
        cupy=cupy.__version__,
        cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(),
        driver=cupy.cuda.runtime.driverGetVersion(),
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    log(f"gpu_bench: {json.dumps(info)}")
    ceil = ceilings(opts.quick)
    log("ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ceil.items()))
    state = dict(deadline=started + budget, compile_left=compile_budget, failed=False, deferred=[])
    rng = np.random.default_rng(0)
    results: list[Result] = []

    def save(done: bool) -> None:
        """The JSON and log as they stand (rewritten after every case, so a run
        stopped from outside still leaves what it measured)."""
        rows = [asdict(r) for r in results]
        with open(stem + ".json", "w") as f:
            json.dump(dict(info=info, ceilings=ceil, done=done, rows=rows), f, indent=1)
        with open(stem + ".log", "w") as f:
            f.write("\n".join(log_lines) + "\n")

    for case in plan:
        log(f"{case.name}:")
        try:
            results += run_case(case, rng, opts, log, state)
        except Exception as exc:
            log(f"  case failed: {type(exc).__name__}: {exc}")
            state["failed"] = True
        save(False)
    log("torch.compile rows (deferred to here):")
    run_deferred(opts, log, state)
    log()
    log("targets (issue 14 item 6; time of PyTorch's row / r2n's):")
    for line in targets(results):
        log("  " + line)
    log(f"done in {time.monotonic() - started:.0f} s; "
        f"{'SOME ROWS FAILED' if state['failed'] else 'every row checked'}")  # fmt: skip
    save(True)
    print(f"wrote {stem}.json and .log")
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
