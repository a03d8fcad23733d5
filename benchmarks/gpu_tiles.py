"""Every float32 tile / split choice of res2net50_26w_4s's convs, timed side by side.

Issue 14 item 3 (tiles chosen per shape by a deterministic rule from measurements).

Run on a machine with a CUDA GPU, CuPy and PyTorch, from the repo root::

    python benchmarks/gpu_tiles.py [--out DIR] [--budget-s 45] [--batch 1 32 256]
    python benchmarks/gpu_tiles.py --dry-run       # no GPU: list the plan, exit 0

Shapes: every distinct conv launch of res2net50_26w_4s's forward on 224 x 224
images as r2n runs it (:func:`network_convs`, from r2n._bench.cases's stage
table): the stem (7x7, step 4), each block's conv1 (1x1, gemm_1x1), its chain
3x3 convs ("normal" blocks: one launch per conv; "stage" blocks: one grouped
launch of the 3 convs), its conv3 (1x1 + bias; "stage" blocks: conv3 and the
strided 1x1 shortcut as ONE GEMM over K = C_mid + C_in, as r2n runs them, so
the shortcut never runs alone; "normal" blocks: + the block's input as a
residual), every launch with bias and ReLU fused as r2n runs it, at every
``--batch`` (default 1, 32, 256).
Shapes run in order of their share of the network's FLOPs (count x FLOPs per
launch: a proxy for their share of its time at batch 32 / 256), each at every
batch, so that a run cut short by ``--budget-s`` has measured the shapes that
matter most.

Choices per shape (r2n.gpu.conv.launch_conv with ``tile=`` and ``k_splits=``
forced; labels ``<variant> <tile>[ k<splits>]``):

* im2col convs (3x3, the stem): ``4p narrow``, ``4p wide`` (step 4_pipelined);
* 1x1 convs: ``1x1 wide``, ``1x1 large`` (gemm_1x1: 64 x 64 / 4 x 4 and
  128 x 128 / 8 x 8 tiles), ``1x1 half`` (8 x 8 per thread in 64 x 128, 3
  blocks per SM: a candidate no rule picks yet) and ``4p wide`` (step 4
  through its im2col loads, for comparison); conv3 + shortcut: wide / large;
* split-K on the rule's tile: the rule's split r and 2 r when r > 1; when the
  rule does not split, the split the rule would pick without its
  ``SPLIT_K_MIN_K`` threshold, when that is > 1;
* ``cudnn``: torch.nn.functional.conv2d, TF32 off, then the residual add and
  ReLU as PyTorch runs them (conv3 + shortcut: its two convs and the add).

The rule's own choice (:func:`r2n.gpu.conv.fp32_tile_rule`, on this GPU's SM
count) is always one of them. Check, then time: every choice first runs once
and is compared with the float64 result (PyTorch in float64 on the GPU) on the
same inputs, ||out - ref|| / ||ref|| <= 1e-5; a choice that fails is reported
and not timed (exit code 1). Timing: the choice's launches over rotated input
sets (at least twice the 60 MB L2, at most 128 sets) recorded in a CUDA graph
(cuDNN: a torch.cuda.CUDAGraph of the same calls), replayed ``--reps`` times
after one warm-up replay, CUDA events around each replay: per-launch kernel
time, without the host's launch cost (which ``r2n.models.create(...,
graph=True)`` also removes at batch 1); the median is reported.

Output: a table per batch (each choice's ms, the best r2n choice, the rule's
and its loss against the best, cuDNN), then the MeasuredTiles entries that
would make the rule pick the best choice where it loses more than
``--min-gain`` (5 %) (r2n.gpu.conv.FP32_MEASURED), and
``DIR/<date>-gpu-tiles-<tag>.json`` (every row, rewritten after every shape).
With the defaults the whole run takes under 60 s on an H200, NVRTC compiles
included (no shape starts after ``--budget-s``; the skipped ones are listed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

L2_BYTES = 60 * 2**20  # an H200's L2: inputs rotate over at least twice this
MAX_SETS = 128  # input sets (and launches per recorded graph) at most
TOL = 1e-5  # float32 per op (tests/helpers.py)
#: The SM count the dry run plans for (an H100's / H200's).
DEFAULT_SMS = 132


# --------------------------------------------------------------------------- #
# The plan (no GPU needed)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ConvShape:
    """One distinct conv launch of the network (batch-free)."""

    name: str  # where it first occurs, e.g. "layer1.1 conv1"
    kind: str  # r2n.gpu.conv.KIND_*: im2col (step 4), plane (gemm_1x1), plane+shortcut
    c_in: int  # the main conv's input channels (all groups)
    c_out: int
    k: int  # kernel size (square)
    stride: int
    h: int  # input size (square)
    groups: int = 1
    sc_c: int = 0  # the shortcut's input channels (plane+shortcut)
    sc_h: int = 0  # the shortcut's input size; its stride is h_sc // h_out
    residual: bool = False  # adds a residual (a "normal" block's conv3: its input)
    count: int = 1  # launches of this shape per forward

    @property
    def padding(self) -> int:
        return self.k // 2

    @property
    def h_out(self) -> int:
        return (self.h + 2 * self.padding - self.k) // self.stride + 1

    @property
    def sc_stride(self) -> int:
        return self.sc_h // self.h_out if self.sc_c else 1

    @property
    def k_rows(self) -> int:
        return self.c_in // self.groups * self.k * self.k + self.sc_c

    def flops(self, n: int) -> int:
        return 2 * n * self.c_out * self.k_rows * self.h_out**2

    def rule_key(self, n: int, sm_count) -> tuple:
        """The arguments of r2n.gpu.conv.fp32_tile_rule (and FP32_MEASURED's key)."""
        return (self.kind, self.c_out // self.groups, self.k_rows, self.h_out**2,
                n * self.groups, sm_count)  # fmt: skip

    def describe(self) -> str:
        what = f"{self.k}x{self.k} {self.c_in}->{self.c_out}"
        if self.groups > 1:
            what += f" g{self.groups}"
        if self.stride > 1:
            what += f" s{self.stride}"
        what += f" {self.h}->{self.h_out}"
        if self.sc_c:
            what += f" +sc {self.sc_c}@{self.sc_h}/s{self.sc_stride}"
        if self.residual:
            what += " +res"
        return what


def network_convs(hw: int = 224, base_width: int = 26, scale: int = 4) -> list[ConvShape]:
    """The distinct conv launches of res2net50_26w_4s's forward as r2n runs them
    (r2n.gpu.res2net: conv1 on gemm_1x1, a "normal" chain as scale - 1
    launches, a "stage" chain as one grouped launch, conv3 (+ the shortcut as
    more K rows) on gemm_1x1; the stem on step 4), with their counts."""
    from r2n._bench.cases import RES2NET50_STAGES
    from r2n.gpu import conv as gconv

    im2col, plane, shortcut = gconv.KIND_IM2COL, gconv.KIND_PLANE, gconv.KIND_PLANE_SHORTCUT
    found: dict[tuple, ConvShape] = {}

    def add(shape: ConvShape) -> None:
        key = asdict(shape)
        key.pop("name"), key.pop("count")
        key = tuple(key.values())
        old = found.get(key)
        if old is not None:
            shape = ConvShape(**{**asdict(old), "count": old.count + shape.count})
        found[key] = shape

    h = (hw + 2 * 3 - 7) // 2 + 1
    add(ConvShape("stem", im2col, 3, 64, 7, 2, hw))
    h = (h + 2 - 3) // 2 + 1  # max pool 3x3 s2
    c_in = 64
    for stage, (blocks, planes) in enumerate(RES2NET50_STAGES):
        width = planes * base_width // 64
        mid, c_out = width * scale, 4 * planes
        for b in range(blocks):
            where = f"layer{stage + 1}.{b}"
            stride = 2 if (b == 0 and stage > 0) else 1
            h_out = (h - 1) // stride + 1
            add(ConvShape(f"{where} conv1", plane, c_in, mid, 1, 1, h))
            if b == 0:  # "stage": the scale - 1 convs as one grouped launch
                g = scale - 1
                add(ConvShape(f"{where} chain", im2col, g * width, g * width, 3, stride, h, g))
                add(ConvShape(f"{where} conv3+sc", shortcut, mid, c_out, 1, 1, h_out,
                              sc_c=c_in, sc_h=h))  # fmt: skip
            else:
                add(ConvShape(f"{where} chain", im2col, width, width, 3, 1, h, count=scale - 1))
                add(ConvShape(f"{where} conv3", plane, mid, c_out, 1, 1, h, residual=True))
            h, c_in = h_out, c_out
    return sorted(found.values(), key=lambda s: -s.count * s.flops(1))


@dataclass
class Choice:
    label: str
    variant: str  # "4_pipelined", "gemm_1x1" or "cudnn"
    tile: str | None = None
    k_splits: int = 1
    ms: float | None = None
    ms_spread: list | None = None  # 10th and 90th percentile
    err: float | None = None
    status: str = "planned"


@dataclass
class Case:
    shape: ConvShape
    n: int
    sm_count: int | None
    rule: str = ""  # the label of the rule's choice
    choices: list = field(default_factory=list)
    status: str = "planned"


def _label(variant: str, tile: str, k_splits: int) -> str:
    short = "4p" if variant == "4_pipelined" else "1x1"
    return f"{short} {tile}" + (f" k{k_splits}" if k_splits > 1 else "")


def plan_case(shape: ConvShape, n: int, sm_count) -> Case:
    """The choices of one shape at batch ``n`` on a GPU of ``sm_count`` SMs
    (module docstring), the rule's among them."""
    from r2n.gpu import conv as gconv

    key = shape.rule_key(n, sm_count)
    kind = key[0]
    variant = "4_pipelined" if kind == gconv.KIND_IM2COL else gconv.GEMM_1X1
    tile, k_splits = gconv.fp32_tile_rule(*key)
    case = Case(shape, n, sm_count, rule=_label(variant, tile, k_splits))
    picks = [(variant, t, 1) for t in gconv._RULE_TILES[kind]]
    if kind == gconv.KIND_PLANE:
        picks.append(("4_pipelined", "wide", 1))
    if k_splits > 1:
        splits = [k_splits, 2 * k_splits]
    else:  # what the rule would split without its K threshold
        no_min_k = (*gconv._split_rule()[:3], 0)
        rule = (*gconv._fp32_rule()[:3], no_min_k)
        splits = [gconv.fp32_tile_rule(*key, rule=rule)[1]]
    n_slices = math.ceil(key[2] / gconv.TILES[tile]["float"][2])
    picks += [(variant, tile, min(s, n_slices)) for s in splits if s > 1]
    seen = set()
    for v, t, s in picks:
        label = _label(v, t, s)
        if label not in seen:
            seen.add(label)
            case.choices.append(Choice(label, v, t, s))
    assert case.rule in seen, (case.rule, seen)
    case.choices.append(Choice("cudnn", "cudnn"))
    return case


def build_plan(batches, sm_count=DEFAULT_SMS) -> list[Case]:
    """Every (shape, batch) case, shapes by their share of the network's FLOPs."""
    return [plan_case(shape, n, sm_count) for shape in network_convs() for n in batches]


# --------------------------------------------------------------------------- #
# Measuring (GPU)
# --------------------------------------------------------------------------- #


class _Inputs:
    """Random float32 inputs of one case: ``sets`` input sets (and shortcut
    inputs), the weights and bias as ``xp`` arrays (CuPy; NumPy for the
    emulator's test) and as torch tensors sharing their memory (DLPack), and
    the float64 result for set 0."""

    def __init__(self, case: Case, seed: int, xp):
        import torch

        s, n = case.shape, case.n
        self.shape_of = s
        rng = xp.random.default_rng(seed)
        x_shape = (n, s.c_in, s.h, s.h)
        sc_shape = (n, s.sc_c, s.sc_h, s.sc_h) if s.sc_c else None
        x_bytes = 4 * (math.prod(x_shape) + (math.prod(sc_shape) if sc_shape else 0))
        if s.residual:
            x_bytes += 4 * n * s.c_out * s.h_out**2
        self.sets = max(2, min(MAX_SETS, math.ceil(2 * L2_BYTES / x_bytes)))
        f32 = xp.float32
        self.xs = [rng.standard_normal(x_shape, dtype=f32) for _ in range(self.sets)]
        self.scs = None
        if sc_shape:
            self.scs = [rng.standard_normal(sc_shape, dtype=f32) for _ in range(self.sets)]
        w_shape = (s.c_out, s.k_rows // (s.k * s.k), s.k, s.k)
        self.w = (rng.standard_normal(w_shape, dtype=f32) / math.sqrt(s.k_rows)).astype(f32)
        self.b = rng.standard_normal(s.c_out, dtype=f32)
        self.out_shape = (n, s.c_out, s.h_out, s.h_out)
        self.res = None
        if s.residual:
            self.res = [rng.standard_normal(self.out_shape, dtype=f32) for _ in range(self.sets)]
        t = torch.from_dlpack
        self.t_xs = [t(x) for x in self.xs]
        self.t_scs = [t(x) for x in self.scs] if sc_shape else None
        self.t_res = [t(r) for r in self.res] if s.residual else None
        c_main = s.c_in // s.groups
        self.t_w, self.t_ws = t(self.w[:, :c_main]).contiguous(), None
        if s.sc_c:
            self.t_ws = t(self.w[:, c_main:]).contiguous()
        self.t_b = t(self.b)
        with torch.no_grad():
            self.ref = self.torch_conv(0, torch.float64)

    def torch_conv(self, i: int, dtype=None):
        import torch.nn.functional as F

        s = self.shape_of
        conv = lambda x, w, b, st, p, g: F.conv2d(  # noqa: E731
            x if dtype is None else x.to(dtype), w if dtype is None else w.to(dtype),
            None if b is None else (b if dtype is None else b.to(dtype)), stride=st, padding=p,
            groups=g)  # fmt: skip
        out = conv(self.t_xs[i], self.t_w, self.t_b, s.stride, s.padding, s.groups)
        if s.sc_c:
            out = out + conv(self.t_scs[i], self.t_ws, None, s.sc_stride, 0, 1)
        if s.residual:
            out = out + (self.t_res[i] if dtype is None else self.t_res[i].to(dtype))
        return out.relu_()


def _r2n_call(case: Case, choice: Choice, inputs: _Inputs, ex):
    """i -> one launch of the choice on input set i (into one output array)."""
    import numpy as np

    from r2n.gpu import conv as gconv

    s = case.shape
    out = ex.empty(inputs.out_shape, np.float32)

    def call(i):
        shortcut = None if not s.sc_c else (inputs.scs[i], (s.sc_stride,) * 2, False)
        residual = inputs.res[i] if s.residual else None
        gconv.launch_conv(ex, choice.variant, inputs.xs[i], inputs.w, inputs.b, out,
                          stride=(s.stride,) * 2, padding=(s.padding,) * 2, dilation=(1, 1),
                          groups=s.groups, tile=choice.tile, k_splits=choice.k_splits,
                          shortcut=shortcut, residual=residual, activation="relu")  # fmt: skip
        return out

    return call


def _rel_err(out, ref) -> float:
    import torch

    out = torch.from_dlpack(out) if not isinstance(out, torch.Tensor) else out
    out = out.double()
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))


def _time_r2n(call, sets: int, reps: int) -> list[float]:
    """ms per launch: ``sets`` launches (one per input set) recorded in a CUDA
    graph on a stream of its own, replayed ``reps`` times after one warm-up."""
    import cupy

    cupy.cuda.Device().synchronize()  # the inputs, made on the default stream
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        call(0)  # outside the capture: the split scratch of this stream is allocated
        stream.synchronize()
        stream.begin_capture()
        try:
            for i in range(sets):
                call(i)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(reps)]
        for start, end in events:
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
        stream.synchronize()
    return [cupy.cuda.get_elapsed_time(s_, e) / sets for s_, e in events]


def _time_r2n_eager(call, sets: int, reps: int) -> list[float]:
    """ms per launch, CUDA events around each launch (the fallback when a graph
    cannot be recorded: then the host's launch time counts too)."""
    import cupy

    for i in range(2):
        call(i % sets)
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(reps)]
    for i, (start, end) in enumerate(events):
        start.record()
        call(i % sets)
        end.record()
    events[-1][1].synchronize()
    return [cupy.cuda.get_elapsed_time(s_, e) for s_, e in events]


def _time_torch_eager(inputs: _Inputs, sets: int, reps: int) -> list[float]:
    import torch

    with torch.no_grad():
        for i in range(2):
            inputs.torch_conv(i % sets)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]  # fmt: skip
        for i, (start, end) in enumerate(events):
            start.record()
            inputs.torch_conv(i % sets)
            end.record()
    torch.cuda.synchronize()
    return [s_.elapsed_time(e) for s_, e in events]


def _time_torch(inputs: _Inputs, sets: int, reps: int) -> list[float]:
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        with torch.cuda.stream(side):
            for i in range(2):
                inputs.torch_conv(i % sets)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = [inputs.torch_conv(i) for i in range(sets)]
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]  # fmt: skip
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    del outs
    return [s_.elapsed_time(e) / sets for s_, e in events]


#: How choices are timed: (r2n, cuDNN) in CUDA graphs, and the eager fallback.
TIMERS = {"graph": (_time_r2n, _time_torch), "eager": (_time_r2n_eager, _time_torch_eager)}


def run_case(case: Case, ex, reps: int, seed: int, xp=None, timers=None) -> bool:
    """Check and time every choice of ``case`` (fills it); False if one failed.

    ``xp``: the array module (default CuPy); ``timers``: {"graph": (r2n, cuDNN),
    "eager": (r2n, cuDNN)} functions ``(call or inputs, sets, reps) -> ms per
    launch`` (default :data:`TIMERS`; the graph ones, then the eager ones if a
    graph fails: such a choice's status says so)."""
    import numpy as np
    import torch

    if xp is None:
        import cupy as xp
    timers = TIMERS if timers is None else timers
    inputs = _Inputs(case, seed, xp)
    ok = True
    for choice in case.choices:
        try:
            if choice.variant == "cudnn":
                with torch.no_grad():
                    out = inputs.torch_conv(0)
                choice.err = _rel_err(out, inputs.ref)
            else:
                call = _r2n_call(case, choice, inputs, ex)
                choice.err = _rel_err(call(0), inputs.ref)
            if not choice.err <= TOL:
                choice.status = f"FAILED check: rel err {choice.err:.2e} > {TOL:.0e}"
                ok = False
                continue
            cudnn = choice.variant == "cudnn"
            what = inputs if cudnn else call
            choice.status = "ok"
            try:
                times = timers["graph"][int(cudnn)](what, inputs.sets, reps)
            except Exception as exc:  # noqa: BLE001 (timed eagerly instead, and said so)
                choice.status = f"ok (eager: graph failed: {type(exc).__name__}: {str(exc)[:120]})"
                times = timers["eager"][int(cudnn)](what, inputs.sets, reps)
            choice.ms = float(np.median(times))
            choice.ms_spread = [float(np.percentile(times, 10)), float(np.percentile(times, 90))]
        except Exception as exc:  # report and go on: one choice never costs the others
            choice.status = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            ok = False
    case.status = "ok" if ok else "failed"
    del inputs
    if xp.__name__ == "cupy":
        xp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    return ok


# --------------------------------------------------------------------------- #
# Reading the results
# --------------------------------------------------------------------------- #


def summary(case: Case) -> dict:
    """Best r2n choice, the rule's, its loss (rule ms / best ms), cuDNN's ms."""
    timed = {c.label: c for c in case.choices if c.ms is not None}
    r2n = [c for c in timed.values() if c.variant != "cudnn"]
    best = min(r2n, key=lambda c: c.ms) if r2n else None
    rule = timed.get(case.rule)
    cudnn = timed.get("cudnn")
    return dict(
        best=best.label if best else None,
        best_ms=best.ms if best else None,
        rule=case.rule,
        rule_ms=rule.ms if rule else None,
        loss=rule.ms / best.ms if rule and best else None,
        cudnn_ms=cudnn.ms if cudnn else None,
        best_vs_cudnn=cudnn.ms / best.ms if cudnn and best else None,
    )


def table(cases: list[Case]) -> list[str]:
    lines = []
    for case in cases:
        s = case.shape
        head = f"{s.name:<18} {s.describe():<34} N={case.n:<4}"
        if case.status != "ok" and case.status != "failed":
            lines.append(f"{head} [{case.status}]")
            continue
        parts = []
        for c in case.choices:
            value = f"{c.ms:.4f}" if c.ms is not None else c.status.split(":")[0]
            if c.status.startswith("ok (eager"):
                value += "(eager)"
            parts.append(f"{c.label}={value}")
        sm = summary(case)
        best, loss = sm["best"], sm["loss"]
        tail = f"| best {best}  rule {sm['rule']}"
        tail += f" x{loss:.2f}" if loss is not None else ""
        if sm["best_vs_cudnn"] is not None:
            tail += f"  cudnn/best {sm['best_vs_cudnn']:.2f}"
        lines.append(f"{head} {'  '.join(parts)} {tail}")
    return lines


def suggested_entries(cases: list[Case], min_gain: float) -> list[str]:
    """FP32_MEASURED entries (r2n.gpu.conv.MeasuredTiles) that make the rule pick
    the best choice where the rule's loses more than ``min_gain``; the best
    must be the rule's variant (a table entry chooses tile and split only)."""
    lines = []
    for case in cases:
        sm = summary(case)
        if sm["loss"] is None or sm["loss"] < 1 + min_gain:
            continue
        best = next(c for c in case.choices if c.label == sm["best"])
        key = case.shape.rule_key(case.n, case.sm_count)
        rule_variant = next(c for c in case.choices if c.label == case.rule).variant
        note = (f"  # {case.shape.name} N={case.n}: {sm['rule']} {sm['rule_ms']:.4f} -> "
                f"{best.label} {best.ms:.4f} ms")  # fmt: skip
        if best.variant != rule_variant:
            lines.append(f"# {key!r}: best is {best.label}, another variant:{note[3:]}")
            continue
        lines.append(f"    {key!r}: ({best.tile!r}, {best.k_splits}),{note}")
    return lines


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the plan; no GPU needed")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--out", default="benchmarks/results", help="JSON folder")
    parser.add_argument("--tag", default=None, help="file name tag (default: the GPU's name)")
    parser.add_argument("--reps", type=int, default=7, help="timed graph replays per choice")
    parser.add_argument("--budget-s", type=float, default=45.0,
                        help="start no case after this many seconds (default 45)")  # fmt: skip
    parser.add_argument("--min-gain", type=float, default=0.05,
                        help="suggest table entries where the rule loses more")  # fmt: skip
    parser.add_argument("--sms", type=int, default=DEFAULT_SMS, help="SM count of the dry run")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    if opts.dry_run:
        plan = build_plan(opts.batch, opts.sms)
        shapes = network_convs()
        total = sum(s.count * s.flops(1) for s in shapes)
        print(f"{'shape':<18} {'conv':<34} {'count':>5} {'FLOPs':>6}")
        for s in shapes:
            print(
                f"{s.name:<18} {s.describe():<34} {s.count:>5} {s.count * s.flops(1) / total:6.1%}"
            )
        for case in plan:
            labels = ", ".join(c.label for c in case.choices)
            print(f"  {case.shape.name:<18} N={case.n:<4} rule {case.rule:<14} choices: {labels}")
        n_choices = sum(len(c.choices) for c in plan)
        print(f"{len(shapes)} shapes, {len(plan)} cases, {n_choices} choices; "
              f"{opts.sms} SMs; budget {opts.budget_s:.0f} s")  # fmt: skip
        return 0

    import cupy
    import torch

    from r2n.gpu import _runtime

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ex = _runtime.executor()
    plan = build_plan(opts.batch, ex.sm_count)
    device = torch.cuda.get_device_name()
    tag = opts.tag or device.replace("NVIDIA ", "").replace(" ", "-").lower()
    path = f"{opts.out}/{datetime.date.today().isoformat()}-gpu-tiles-{tag}.json"
    info = dict(device=device, sms=ex.sm_count, torch=torch.__version__, cupy=cupy.__version__,
                argv=sys.argv[1:] if argv is None else list(argv))  # fmt: skip
    print(f"gpu_tiles: {json.dumps(info)}", flush=True)
    failed = False

    def save(done: bool) -> None:
        rows = [dict(shape=asdict(c.shape), describe=c.shape.describe(), n=c.n,
                     key=list(c.shape.rule_key(c.n, c.sm_count)), rule=c.rule, status=c.status,
                     choices=[asdict(x) for x in c.choices],
                     **{k: v for k, v in summary(c).items() if k != "rule"})
                for c in plan]  # fmt: skip
        with open(path, "w") as f:
            json.dump(dict(info=info, done=done, seconds=time.monotonic() - started, rows=rows),
                      f, indent=1)  # fmt: skip

    for i, case in enumerate(plan):
        if time.monotonic() - started > opts.budget_s:
            case.status = "skipped: --budget-s spent"
            continue
        try:
            failed |= not run_case(case, ex, opts.reps, seed=i)
        except Exception as exc:  # report and go on: one case never costs the others
            case.status = f"error: {type(exc).__name__}: {str(exc)[:200]}"
            failed = True
        print(table([case])[0], flush=True)
        save(False)
    skipped = [c for c in plan if c.status.startswith("skipped")]
    print()
    for n in opts.batch:
        print(f"N={n}:")
        for line in table([c for c in plan if c.n == n]):
            print("  " + line)
    print(f"\nFP32_MEASURED entries (rule loses > {opts.min_gain:.0%}; r2n/gpu/conv.py):")
    print("FP32_MEASURED = MeasuredTiles({")
    for line in suggested_entries(plan, opts.min_gain):
        print(line)
    print("})")
    if skipped:
        print(f"skipped (budget): {len(skipped)} cases: "
              + ", ".join(f"{c.shape.name} N={c.n}" for c in skipped))  # fmt: skip
    save(True)
    verdict = "SOME CHOICES FAILED" if failed else "every choice checked"
    print(f"done in {time.monotonic() - started:.0f} s; {verdict}; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
