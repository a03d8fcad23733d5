"""``r2n profile``: where a whole network's forward pass spends its time, per layer.

:class:`ProfilingLayers` builds the same forward pass as the models'
:class:`~r2n.models._model.Layers` (same prepared layers, same kernels, same
weights), with every layer under a named timer (``time.perf_counter`` around
the call; the CPU kernels return when their result is ready):

* each prepared conv (its bias, residual add and activation are fused in it);
* each step between them: pools, space-to-depth, blur, SE (in a TResNet
  BasicBlock with the block's residual add + ReLU fused in), the fc;
* each Res2Net block as its four parts: ``conv1`` (1x1 + ReLU), ``chain``
  (the hierarchical 3x3 convs, r2n's fused chain: ``PreparedChain`` on the
  cpu backend), ``shortcut`` (the downsample conv, after its average pool
  ``shortcut.pool`` in the "d" models) and ``conv3`` (1x1 + residual +
  ReLU). These are the calls the fused ``PreparedBottle2neck`` makes, made
  one at a time; ``fused_blocks=True`` times each block as one prepared
  bottleneck instead.

The profiled forward's logits are checked against the model's own
(relative error <= 1e-5) before anything is timed. Then the profiled and
the plain forward alternate; each layer's figure is the median of its
times, and their sum is compared with the plain forward's median: the
difference is what the timers, the per-part calls and the Python between
layers cost (the profile's overhead).

Per layer: FLOPs (convs and matrix products, multiply-adds x 2: a 1x1 conv,
a chain's 3x3 convs, the fc, SE's two matrices), the minimal bytes (inputs,
weights and output once), ms, share of the layers' sum, GFLOP/s, % of the
FMA peak at the thread count (one core's measured float32 peak x threads,
:mod:`r2n._bench.fma`), the floor (FLOPs / peak) and GB/s. A summary sums
the layers by role (stem, 1x1 convs, chains, pools, SE, ...).

With ONNX Runtime installed, :func:`onnxruntime_profile` runs timm's model of
the same weights (exported as :mod:`r2n._bench.engines` does) under ONNX
Runtime's own profiler at the same thread count and sums its per-node times
per r2n layer (:func:`onnx_layer_map`).

Host backends only ("cpu", "reference").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import tempfile
import time

import numpy as np

from .. import _api, _backends
from ..models._model import Layers
from ..params import FoldedConv

#: Relative error allowed between the profiled and the plain forward (float32).
CHECK_TOL = 1e-5


@dataclasses.dataclass
class Record:
    """One timed layer.

    Attributes
    ----------
    name : timm's module path (``layer1.0.conv1``), or a block part's name
    op : the r2n op (``conv2d``, ``res2net_chain``, ``max_pool2d``, ...)
    role : the summary group (``stem``, ``conv 1x1``, ``chain``, ``pool``, ...)
    in_shape, out_shape : of the first input and of the output
    flops : multiply-adds x 2 (0 for pools and element-wise steps)
    min_bytes : inputs, weights and output, each once
    residual : the layer adds the block's residual (fused)
    aliases : other module paths of the ONNX export that are this layer's work
    algorithm : how a conv or chain ran (a key of ALGORITHMS; "" for other
        layers)
    algorithm_flops : the multiply-adds x 2 that algorithm computes
        (:func:`multiply_flops`; fewer than ``flops`` for Winograd); None:
        the same as ``flops``
    times : seconds of each timed call
    """

    name: str
    op: str
    role: str
    in_shape: tuple
    out_shape: tuple
    flops: int
    min_bytes: int
    residual: bool = False
    aliases: tuple = ()
    algorithm: str = ""
    algorithm_flops: int | None = None
    times: list = dataclasses.field(default_factory=list)


#: How the cpu backend's prepared convs and chains run a conv (their
#: ``algorithm`` methods) -> (output tile side m, multiply-adds per m x m tile
#: and (input, output channel) pair): the direct conv (step 4), Winograd
#: F(2x2, 3x3) (step 5, 16 instead of 36) and F(4x4, 3x3) (step 6, 36
#: instead of 144). None: the definition's count.
ALGORITHMS = {"direct": None, "winograd_2x2": (2, 16), "winograd_4x4": (4, 36)}


def multiply_flops(algorithm, n, c_in_g, c_out, kernel_hw, h_out, w_out) -> int:
    """FLOPs (multiply-adds x 2) of the products ``algorithm`` computes for one conv.

    ``c_out`` output channels, ``c_in_g`` input channels per group, a
    ``kernel_hw`` kernel, ``n`` images of ``h_out`` x ``w_out`` outputs. For
    Winograd the GEMMs' multiply-adds, partial edge tiles counted whole and
    the transforms (additions) not at all: the work whose time at the FMA
    peak is a floor for that algorithm.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}, got {algorithm!r}")
    if ALGORITHMS[algorithm] is None:
        return 2 * n * c_out * h_out * w_out * c_in_g * kernel_hw[0] * kernel_hw[1]
    m, per_tile = ALGORITHMS[algorithm]
    tiles = n * -(-h_out // m) * -(-w_out // m)
    return 2 * tiles * per_tile * c_in_g * c_out


#: The clocks a profile can read: wall time, or the calling thread's CPU time
#: (at 1 thread the layer's work without the time other processes held the core).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class Recorder:
    """Collects the timed calls of one profiled forward pass after another.

    ``clock``: "wall" (default) or "cpu" (see CLOCKS)."""

    def __init__(self, clock: str = "wall"):
        self.records: dict[str, Record] = {}
        self.recording = False
        self.clock = CLOCKS[clock]

    def timed(self, name: str, op: str, fn, describe):
        """``fn`` under a timer named ``name``; ``describe(args, kwargs, y)`` ->
        dict of Record fields, called on the first recorded call."""

        clock = self.clock

        def run(*args, **kwargs):
            start = clock()
            y = fn(*args, **kwargs)
            elapsed = clock() - start
            if self.recording:
                record = self.records.get(name)
                if record is None:
                    record = self.records[name] = Record(
                        name=name, op=op, **describe(args, kwargs, y)
                    )
                record.times.append(elapsed)
            return y

        return run

    def clear(self) -> None:
        self.records = {}


def _nbytes(*arrays) -> int:
    return int(sum(a.nbytes for a in arrays if a is not None))


def _conv_role(name: str, weight_shape, stride: int) -> str:
    if "layer" not in name:
        return "stem"
    if "downsample" in name or name.endswith(".shortcut"):
        return "shortcut"
    k = f"{weight_shape[2]}x{weight_shape[3]}"
    return f"conv {k}" + (" s2" if stride > 1 else "")


_STEP_ROLES = {
    "max_pool2d": "pool",
    "avg_pool2d": "pool",
    "global_avg_pool2d": "pool",
    "blur_pool2d": "blur",
    "squeeze_excite": "SE",
    "linear": "fc",
    "space_to_depth": "stem",
}


class ProfilingLayers(Layers):
    """:class:`~r2n.models._model.Layers` whose layers run under named timers.

    Parameters
    ----------
    backend, kind : as Layers ("numpy" only)
    recorder : the :class:`Recorder` the timers report to
    fused_blocks : time each Res2Net block as one prepared bottleneck
        (True) or as its four parts (False, the default)
    """

    def __init__(self, backend, kind, recorder: Recorder, fused_blocks: bool = False):
        if kind != "numpy":
            raise ValueError("r2n profile: host (NumPy) backends only")
        super().__init__(backend, kind)
        self.recorder = recorder
        self.fused_blocks = fused_blocks

    def conv(
        self, folded: FoldedConv, *, stride=1, padding=0, groups=1, act=None, slope=0.01, name=""
    ):
        layer = super().conv(
            folded, stride=stride, padding=padding, groups=groups, act=act, slope=slope
        )
        w, b = np.asarray(folded.weight), folded.bias
        role = _conv_role(name, w.shape, stride)
        return self._timed_conv(name, layer, w, b, role)

    def _timed_conv(self, name, layer, w, b, role, aliases=()):
        def describe(args, kwargs, y):
            x = args[0]
            residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
            block = re.match(r"(.*layer\d+\.\d+)\.", name)
            extra = ()
            if residual is not None and block:  # the block's final act (TResNet) is fused here
                extra = (f"{block.group(1)}.act",)
            # The cpu backend's prepared conv says which algorithm it ran;
            # the others run the definition.
            choose = getattr(layer, "algorithm", None)
            algorithm = "direct" if choose is None else choose(x.shape, y.shape)
            n, c_out, h_out, w_out = y.shape
            return dict(
                role=role,
                in_shape=tuple(x.shape),
                out_shape=tuple(y.shape),
                flops=2 * int(np.prod(y.shape)) * int(np.prod(w.shape[1:])),
                algorithm=algorithm,
                algorithm_flops=multiply_flops(
                    algorithm, n, w.shape[1], c_out, w.shape[2:], h_out, w_out
                ),
                min_bytes=_nbytes(x, w, None if b is None else np.asarray(b), residual, y),
                residual=residual is not None,
                aliases=tuple(aliases) + extra,
            )

        return self.recorder.timed(name, "conv2d", layer, describe)

    def step(self, name, op, fn, weights=()):
        weights = tuple(np.asarray(w) for w in weights)
        matrix = sum(int(np.prod(w.shape)) for w in weights)

        def describe(args, kwargs, y):
            x = args[0]
            residual = kwargs.get("residual", args[1] if len(args) > 1 else None)
            block = re.match(r"(.*layer\d+\.\d+)\.", name)
            # TResNet's BasicBlock: the residual add + ReLU fused into its SE
            extra = (f"{block.group(1)}.act",) if residual is not None and block else ()
            return dict(
                role=_STEP_ROLES.get(op, op),
                in_shape=tuple(x.shape),
                out_shape=tuple(y.shape),
                flops=2 * x.shape[0] * matrix,
                min_bytes=_nbytes(*args, *kwargs.values(), *weights, y),
                residual=residual is not None,
                aliases=extra,
            )

        return self.recorder.timed(name, op, fn, describe)

    def bottle2neck(self, params, *, scale, stype, stride, groups, name=""):
        if self.fused_blocks:
            layer = super().bottle2neck(
                params, scale=scale, stype=stype, stride=stride, groups=groups
            )
            return self._timed_block(name, layer, params)
        nums = max(scale - 1, 1)
        conv1 = self._timed_conv(
            f"{name}.conv1",
            super().conv(params.conv1, act="relu"),
            params.conv1.weight,
            params.conv1.bias,
            "conv1 1x1",
            aliases=(f"{name}.bn1",),
        )
        chain = self._chain(f"{name}.chain", params, scale, stype, stride, groups)
        conv3 = self._timed_conv(
            f"{name}.conv3",
            super().conv(params.conv3, act="relu"),
            params.conv3.weight,
            params.conv3.bias,
            "conv3 1x1",
            aliases=(f"{name}.bn3", f"{name}.relu_{nums + 1}"),
        )
        shortcut = pool = None
        if params.shortcut is not None:
            pooled = params.shortcut_avg_pool and stride > 1
            shortcut = self._timed_conv(
                f"{name}.shortcut",
                super().conv(params.shortcut, stride=1 if pooled else stride),
                params.shortcut.weight,
                params.shortcut.bias,
                "shortcut",
                aliases=(f"{name}.downsample",),
            )
            if pooled:
                pool = self.recorder.timed(
                    f"{name}.shortcut.pool",
                    "avg_pool2d",
                    lambda x: _api.avg_pool2d(
                        x,
                        stride,
                        stride,
                        0,
                        ceil_mode=True,
                        count_include_pad=False,
                        backend=self.backend,
                    ),
                    lambda args, kwargs, y: dict(
                        role="shortcut",
                        in_shape=tuple(args[0].shape),
                        out_shape=tuple(y.shape),
                        flops=0,
                        min_bytes=_nbytes(args[0], y),
                        aliases=(f"{name}.downsample.0",),
                    ),
                )

        def forward(x):
            out = chain(conv1(x))
            identity = x
            if shortcut is not None:
                identity = shortcut(x if pool is None else pool(x))
            return conv3(out, residual=identity)

        return forward

    def _chain(self, name, params, scale, stype, stride, groups):
        """The block's chain, prepared as the fused block prepares it, timed."""
        weights = [np.asarray(w) for w in params.chain_weights]
        biases = params.chain_biases
        width = weights[0].shape[0]
        backend = _backends.pick("bottle2neck", self.backend, "numpy")
        if backend == "cpu":
            from ..cpu.res2net import PreparedChain

            prepared = PreparedChain(
                weights,
                biases,
                scale=scale,
                stype=stype,
                stride=stride,
                groups=groups,
                width=width,
                dtype=weights[0].dtype,
            )
            outputs = {}

            def run(x):
                out = outputs.get(x.shape)
                if out is None:
                    h, w = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
                    out = outputs[x.shape] = np.empty((*x.shape[:2], h, w), x.dtype)
                return prepared(x, out)

        else:

            def run(x):
                return _api.res2net_chain(
                    x,
                    weights,
                    biases,
                    scale=scale,
                    stype=stype,
                    stride=stride,
                    groups=groups,
                    backend=backend,
                )

        block = name.rsplit(".", 1)[0]
        macs = sum(int(np.prod(w.shape)) for w in weights)

        def describe(args, kwargs, y):
            x = args[0]
            n, _, h, w = y.shape
            algorithm = "direct"
            if backend == "cpu":
                algorithm = prepared.algorithm(n, x.shape[2], x.shape[3])
            return dict(
                role="chain",
                in_shape=tuple(x.shape),
                out_shape=tuple(y.shape),
                flops=2 * n * h * w * macs,
                algorithm=algorithm,
                algorithm_flops=sum(
                    multiply_flops(algorithm, n, k.shape[1], k.shape[0], k.shape[2:], h, w)
                    for k in weights
                ),
                min_bytes=_nbytes(x, *weights, y) + sum(np.asarray(b).nbytes for b in biases),
                aliases=(f"{block}.convs", f"{block}.bns", f"{block}.Split", f"{block}.pool"),
            )

        return self.recorder.timed(name, "res2net_chain", run, describe)

    def _timed_block(self, name, layer, params):
        def describe(args, kwargs, y):
            x = args[0]
            n, _, ho, wo = y.shape
            h, w = x.shape[2:]
            macs_out = sum(int(np.prod(a.shape)) for a in params.chain_weights)
            macs_out += int(np.prod(params.conv3.weight.shape))
            if params.shortcut is not None:
                macs_out += int(np.prod(params.shortcut.weight.shape))
            flops = 2 * n * (h * w * int(np.prod(params.conv1.weight.shape)) + ho * wo * macs_out)
            # The cpu backend's block says how its chain ran (on conv1's output,
            # x's size); its 1x1 convs run the definition.
            choose = getattr(layer, "algorithm", None)
            algorithm = "direct" if choose is None else choose(x.shape)
            chain_flops = {
                alg: sum(
                    multiply_flops(alg, n, k.shape[1], k.shape[0], k.shape[2:], ho, wo)
                    for k in params.chain_weights
                )
                for alg in {"direct", algorithm}
            }
            weights = params.map(np.asarray)
            arrays = [weights.conv1.weight, weights.conv3.weight, *weights.chain_weights]
            if weights.shortcut is not None:
                arrays.append(weights.shortcut.weight)
            return dict(
                role="block",
                in_shape=tuple(x.shape),
                out_shape=tuple(y.shape),
                flops=flops,
                algorithm=algorithm,
                algorithm_flops=flops - chain_flops["direct"] + chain_flops[algorithm],
                min_bytes=_nbytes(x, y, *arrays),
                residual=True,
            )

        return self.recorder.timed(name, "bottle2neck", layer, describe)


# --------------------------------------------------------------------------- #
# The profile
# --------------------------------------------------------------------------- #


def profile(
    model,
    x,
    *,
    threads: int,
    peak_gflops: float | None,
    fused_blocks: bool = False,
    min_time: float = 2.0,
    min_reps: int = 5,
    max_reps: int = 200,
    clock: str = "wall",
) -> dict:
    """Profile ``model`` (an r2n.models.Model on a host backend) on images ``x``.

    Parameters
    ----------
    model : r2n.models.Model
    x : (N, 3, H, W) NumPy array of the model's dtype
    threads : the thread count the caller set (for % of peak)
    peak_gflops : one core's FMA peak (None: no % of peak)
    fused_blocks : each Res2Net block as one row (see :class:`ProfilingLayers`)
    min_time, min_reps, max_reps : how long to alternate the two forwards
    clock : "wall", or "cpu": the calling thread's CPU time (meaningful at 1
        thread, where that thread does all the work; on a busy machine it
        leaves out the time other processes held the core)

    Returns
    -------
    dict: layers (list of dicts, forward order: name, op, role, in_shape,
    out_shape, flops, min_bytes, residual, algorithm, algorithm_flops, ms,
    share, gflops, pct_peak, floor_ms, algorithm_floor_ms, gbs, times_ms),
    roles (the summary), total_ms (the layers' sum), forward_ms (the plain
    forward's median), profiled_forward_ms, overhead (total_ms / forward_ms
    - 1), check_rel_err, reps, flops and algorithm_flops (the layers' sums).
    """
    recorder = Recorder(clock)
    tick = CLOCKS[clock]
    layers = ProfilingLayers(model.backend, "numpy", recorder, fused_blocks=fused_blocks)
    forward = model.forward_with(layers)
    plain = np.asarray(model(x))  # also checks x as a model call does
    profiled = np.asarray(forward(x))
    err = float(np.linalg.norm(profiled - plain) / max(np.linalg.norm(plain), 1e-300))
    if not err <= CHECK_TOL:
        raise RuntimeError(
            f"r2n profile: the profiled forward's logits differ from the model's "
            f"(relative error {err:.2e} > {CHECK_TOL:g})"
        )
    recorder.recording = True
    plain_times, profiled_times = [], []
    start = time.perf_counter()
    while len(plain_times) < min_reps or (
        time.perf_counter() - start < min_time and len(plain_times) < max_reps
    ):
        t0 = tick()
        model(x)
        t1 = tick()
        forward(x)
        t2 = tick()
        plain_times.append(t1 - t0)
        profiled_times.append(t2 - t1)
    rows = [_row(r, peak_gflops, threads) for r in recorder.records.values()]
    total = sum(r["ms"] for r in rows)
    for r in rows:
        r["share"] = r["ms"] / total
    forward_ms = 1e3 * statistics.median(plain_times)
    return {
        "layers": rows,
        "roles": summarise(rows, peak_gflops, threads),
        "total_ms": total,
        "forward_ms": forward_ms,
        "profiled_forward_ms": 1e3 * statistics.median(profiled_times),
        "overhead": total / forward_ms - 1,
        "check_rel_err": err,
        "reps": len(plain_times),
        "flops": sum(r["flops"] for r in rows),
        "algorithm_flops": sum(r["algorithm_flops"] for r in rows),
        "clock": clock,
    }


def count_flops(model, x) -> dict:
    """FLOPs of one forward of ``model`` on ``x``, untimed: ``flops`` (the
    definition's multiply-adds x 2, as :func:`profile` counts them) and
    ``algorithm_flops`` (those of the algorithms r2n runs on x's shape:
    Winograd where its rules pick it, :func:`multiply_flops`)."""
    recorder = Recorder()
    recorder.recording = True
    model.forward_with(ProfilingLayers(model.backend, "numpy", recorder))(x)
    records = list(recorder.records.values())
    return {
        "flops": sum(r.flops for r in records),
        "algorithm_flops": sum(
            r.flops if r.algorithm_flops is None else r.algorithm_flops for r in records
        ),
    }


def _row(record: Record, peak, threads) -> dict:
    ms = 1e3 * statistics.median(record.times)
    row = dataclasses.asdict(record)
    row.pop("times")
    row["in_shape"], row["out_shape"] = list(record.in_shape), list(record.out_shape)
    row["aliases"] = list(record.aliases)
    row["times_ms"] = [1e3 * t for t in record.times]
    row["ms"] = ms
    row["gflops"] = record.flops / ms / 1e6
    row["gbs"] = record.min_bytes / ms / 1e6
    ceiling = None if not peak else peak * threads
    row["floor_ms"] = None if not ceiling else record.flops / ceiling / 1e6
    if row["algorithm_flops"] is None:
        row["algorithm_flops"] = record.flops
    row["algorithm_floor_ms"] = None if not ceiling else row["algorithm_flops"] / ceiling / 1e6
    row["pct_peak"] = None if not ceiling else 100 * row["gflops"] / ceiling
    return row


def summarise(rows: list[dict], peak, threads) -> list[dict]:
    """The layers summed by role, in order of time: ms, share, GFLOP/s, % of
    peak, floor ms and the time above the floor (FLOPs of the definition),
    and the floor of r2n's algorithms (``algorithm_flops`` / peak)."""
    groups: dict[str, dict] = {}
    total = sum(r["ms"] for r in rows)
    for r in rows:
        empty = {"role": r["role"], "layers": 0, "ms": 0.0, "flops": 0, "algorithm_flops": 0}
        g = groups.setdefault(r["role"], empty)
        g["layers"] += 1
        g["ms"] += r["ms"]
        g["flops"] += r["flops"]
        g["algorithm_flops"] += r["algorithm_flops"]
    out = []
    ceiling = None if not peak else peak * threads
    for g in sorted(groups.values(), key=lambda g: -g["ms"]):
        g["share"] = g["ms"] / total
        g["gflops"] = g["flops"] / g["ms"] / 1e6
        g["pct_peak"] = None if not ceiling else 100 * g["gflops"] / ceiling
        g["floor_ms"] = None if not ceiling else g["flops"] / ceiling / 1e6
        g["above_floor_ms"] = None if g["floor_ms"] is None else g["ms"] - g["floor_ms"]
        g["algorithm_floor_ms"] = None if not ceiling else g["algorithm_flops"] / ceiling / 1e6
        out.append(g)
    return out


# --------------------------------------------------------------------------- #
# ONNX Runtime's per-node profile, per r2n layer
# --------------------------------------------------------------------------- #


def module_key(node_name: str) -> str:
    """An ONNX node name of torch's TorchScript export -> module path + node.

    ``/layer1/layer1.0/convs.0/Conv`` -> ``layer1.0.convs.0.Conv``;
    ``/body/layer1/layer1.0/conv1/conv/Conv`` -> ``body.layer1.0.conv1.conv.Conv``.
    A scope holds a child's name qualified by its parent's (``layer1.0`` in
    ``layer1``), which replaces the parent."""
    parts = [p for p in node_name.split("/") if p]
    mods: list[str] = []
    for comp in parts[:-1]:
        if mods and comp.startswith(mods[-1] + "."):
            mods[-1] = comp
        else:
            mods.append(comp)
    return ".".join(mods + parts[-1:])


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def onnx_layer_map(node_names: list[str], layers: list[dict]) -> dict[str, str | None]:
    """Each node of the exported graph (in graph order) -> the r2n layer doing its work.

    Rules, in order: the longest layer name or alias that is a dotted prefix
    of the node's module path (:func:`module_key`); a block's last
    block-level ``Add`` (the residual add) -> the layer of that block that
    fuses the residual; anything else (activations, BN folded away, Split
    outputs...) -> the layer of the node before it in graph order, which is
    what a fused activation follows. None before the first match."""
    names = [(r["name"], r["name"]) for r in layers]
    names += [(alias, r["name"]) for r in layers for alias in r.get("aliases", ())]
    names.sort(key=lambda pair: -len(pair[0]))
    residual_of = {}
    for r in layers:
        m = re.match(r"(.*layer\d+\.\d+)\.", r["name"])
        if r.get("residual") and m:
            residual_of[m.group(1)] = r["name"]
    keys = [module_key(n) for n in node_names]
    last_add = {}
    for key in keys:
        block, _, node = key.rpartition(".")
        if re.fullmatch(r"Add(_\d+)?", node) and block in residual_of:
            last_add[block] = key
    out, previous = {}, None
    for name, key in zip(node_names, keys, strict=True):
        layer = next((owner for prefix, owner in names if _matches(key, prefix)), None)
        block = key.rpartition(".")[0]
        if layer is None and last_add.get(block) == key:
            layer = residual_of[block]
        if layer is None:
            layer = previous
        out[name] = previous = layer
    return out


def _ort_node(event_name: str, known: set) -> str | None:
    """An ONNX Runtime profile event's name -> the exported node it ran, or None
    (a node ONNX Runtime made: layout reorders)."""
    name = re.sub(r"_kernel_time$", "", event_name)
    name = re.sub(r"_nchwc$", "", name)
    if name in known:
        return name
    m = re.match(r"(.*)_output_\d+$", name)  # fused nodes are named after an output
    if m and m.group(1) in known:
        return m.group(1)
    return None


def onnxruntime_profile(path: str, x, threads: int, layers: list[dict], runs: int = 10) -> dict:
    """ONNX Runtime's own per-node profile of the ONNX file ``path`` on ``x``,
    summed per r2n layer.

    Returns {"layers": {r2n layer: ms}, "other_ms": ms of nodes mapped to no
    layer, "total_ms": the sum, "run_ms": median of ONNX Runtime's whole-run
    events, "run_cpu_ms": median process CPU time of a run, "nodes": [(node,
    op, ms, layer)] }. Each node's ms is its median over ``runs`` runs (after
    a first run, which is dropped: it allocates). ONNX Runtime's profiler
    reads wall time; a median per node leaves out the runs in which another
    process took the core during that node, so on a busy machine the sum
    stays near the run's CPU time while the whole run's wall time does not."""
    import onnx

    from . import engines

    graph = onnx.load(path, load_external_data=False).graph
    node_names = [n.name for n in graph.node if n.op_type not in ("Constant", "Identity")]
    mapping = onnx_layer_map(node_names, layers)
    with tempfile.TemporaryDirectory(prefix="r2n-ort-profile-") as tmp:
        session = engines.onnxruntime_session(path, threads, os.path.join(tmp, "ort"))
        input_name = session.get_inputs()[0].name
        cpu_ms = []
        for _ in range(runs + 1):
            c0 = time.process_time()
            session.run(None, {input_name: x})
            cpu_ms.append(1e3 * (time.process_time() - c0))
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs_ms = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # Every run lists the same nodes in the same order: the first run is the
    # session's first call (allocations, prepacking); drop it.
    per_run = len(nodes) // (runs + 1)
    order, durations, ops = [], {}, {}
    for i, e in enumerate(nodes[per_run:]):
        name = e["name"]
        if i < per_run:
            order.append(name)
        durations.setdefault(name, []).append(e["dur"] / 1e3)
        ops[name] = e.get("args", {}).get("op_name", "")
    known = set(node_names)
    resolved = [_ort_node(name, known) for name in order]
    owners: list[str | None] = []
    for i, node in enumerate(resolved):
        if node is not None:
            owners.append(mapping.get(node))
        elif "ReorderInput" in order[i]:  # converts the next node's input
            nxt = next((n for n in resolved[i + 1 :] if n is not None), None)
            owners.append(mapping.get(nxt) if nxt else None)
        else:  # converts the previous node's output
            owners.append(owners[-1] if owners else None)
    per_layer: dict[str, float] = {}
    other = 0.0
    rows = []
    for name, owner in zip(order, owners, strict=True):
        ms = statistics.median(durations[name])
        rows.append((name, ops[name], ms, owner))
        if owner is None:
            other += ms
        else:
            per_layer[owner] = per_layer.get(owner, 0.0) + ms
    return {
        "layers": per_layer,
        "other_ms": other,
        "total_ms": sum(per_layer.values()) + other,
        "run_ms": statistics.median(runs_ms[1:]) if len(runs_ms) > 1 else None,
        "run_cpu_ms": statistics.median(cpu_ms[1:]),
        "nodes": rows,
    }
