"""``r2n profile MODEL``: a whole network's forward pass, layer by layer.

Per layer of ``r2n.models`` (stem convs, each Res2Net block's conv1 / chain
/ shortcut / conv3, TResNet's convs, blur, SE and add, the pools, the fc):
ms, share of the forward, GFLOP, GFLOP/s, % of this machine's float32 FMA
peak at the thread count, the floor (FLOPs / peak) and GB/s, then the same
summed by role; the layers' sum against a plain forward's time (the
profile's overhead). ``--onnxruntime`` adds ONNX Runtime's own per-node
profile of timm's model with the same weights, summed per r2n layer. See
:mod:`r2n._bench.profile` for how it is measured.

Weights: random (``r2n.models.random_state_dict``, ``--seed``) or a
checkpoint (``--weights``); the images are random. Exit code 0, 1 when the
profiled forward disagrees with the model, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import numpy as np

from .. import __version__
from .tables import text_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``r2n profile``."""
    parser.add_argument("model", help="a name from r2n.models.list_models()")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument(
        "--threads", type=int, default=None, help="r2n.set_num_threads (default: all)"
    )
    parser.add_argument("--backend", choices=("cpu", "reference"), default=None)
    parser.add_argument(
        "--fused-blocks",
        action="store_true",
        help="time each Res2Net block as one fused call instead of its four parts",
    )
    parser.add_argument("--weights", help="a checkpoint (.safetensors, .npz, .pth)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and images")
    parser.add_argument(
        "--min-time", type=float, default=2.0, help="seconds of alternating forwards"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the calling thread's CPU time (1 thread only; robust to other processes)",
    )
    parser.add_argument(
        "--onnxruntime",
        action="store_true",
        help="beside ONNX Runtime's per-node profile of the same model (needs r2n[bench]); "
        "with --clock cpu its nodes' wall times are scaled to sum to its run's CPU time",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")


def main(argv: list[str] | None = None) -> int:
    """``r2n profile`` with its own argument parser (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="r2n profile", description=__doc__.splitlines()[0])
    add_arguments(parser)
    opts = parser.parse_args(argv)
    return run(opts, parser)


def run(opts: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run ``r2n profile`` with parsed options; print; write JSON; exit code."""
    from .. import models
    from .._bench import engines, fma, profile

    def usage(message):
        if parser is not None:
            parser.error(message)  # exits with 2
        raise ValueError(message)

    if opts.model not in models.list_models():
        usage(f"unknown model {opts.model!r}; known: {', '.join(models.list_models())}")
    if opts.batch < 1 or opts.size < 8:
        usage("--batch must be >= 1 and --size >= 8")
    backend = opts.backend
    if backend is None:
        from .. import _backends

        backend = _backends.pick("bottle2neck", None, "numpy")
    threads = _set_threads(backend, opts.threads, usage)
    if opts.clock == "cpu" and threads != 1:
        usage("--clock cpu needs --threads 1 (it reads the calling thread's CPU time)")
    state = None
    if opts.weights:
        from ..models import load_state_dict

        state = load_state_dict(opts.weights)
    else:
        state = engines.random_weights(opts.model, seed=opts.seed)
    model = models.create(opts.model, state, backend=backend)
    rng = np.random.default_rng(opts.seed + 1)
    x = rng.standard_normal((opts.batch, 3, opts.size, opts.size)).astype(np.float32)
    peak = fma.peak_gflops()
    print(
        f"r2n profile {opts.model}: batch {opts.batch}, {opts.size}x{opts.size}, "
        f"{backend} backend, {threads} thread(s)",
        file=sys.stderr,
    )
    try:
        result = profile.profile(
            model,
            x,
            threads=threads,
            peak_gflops=peak,
            fused_blocks=opts.fused_blocks,
            min_time=opts.min_time,
            clock=opts.clock,
        )
    except RuntimeError as exc:
        print(f"r2n profile: error: {exc}", file=sys.stderr)
        return 1
    report = {
        "tool": "r2n profile",
        "r2n": __version__,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "model": opts.model,
        "batch": opts.batch,
        "size": opts.size,
        "backend": backend,
        "threads": threads,
        "fused_blocks": opts.fused_blocks,
        "weights": opts.weights or f"random (seed {opts.seed})",
        "fma_peak_gflops": peak,
        "machine": _machine(),
        **result,
        "onnxruntime": None,
    }
    if opts.onnxruntime:
        report["onnxruntime"] = _onnxruntime(opts, state, x, threads, result["layers"])
    print(format_report(report))
    if opts.json:
        directory = os.path.dirname(os.path.abspath(opts.json))
        os.makedirs(directory, exist_ok=True)
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=1, default=_json_default)
        print(f"wrote {opts.json}")
    return 0


def _set_threads(backend, threads, usage) -> int:
    if backend != "cpu":
        return 1
    from .. import cpu

    n = cpu.get_num_threads() if threads is None else threads
    try:
        cpu.set_num_threads(n)
    except (TypeError, ValueError) as exc:
        usage(str(exc))
    return n


def _machine() -> dict:
    from .._bench import machine

    return machine.machine_info()


def _onnxruntime(opts, state, x, threads, layers) -> dict:
    """ONNX Runtime's per-node profile summed per r2n layer, or why not."""
    from .._bench import engines, profile

    why = engines.missing("onnxruntime")
    if why is None:
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            why = "onnx is not installed (pip install 'r2n[bench]')"
    if why is not None:
        return {"status": why}
    path, info = engines.cached_onnx(opts.model, state, opts.batch, opts.size)
    out = profile.onnxruntime_profile(path, x, threads, layers)
    out.update(status="ok", onnx=info, version=engines.versions()["onnxruntime"], scale=1.0)
    if opts.clock == "cpu" and out["total_ms"] > 0:
        # ONNX Runtime's profiler reads wall time, which on a busy machine
        # holds the time other processes took the core. On r2n's clock: each
        # layer's share of the per-node sum x the run's CPU time (1 thread).
        out["scale"] = out["run_cpu_ms"] / out["total_ms"]
        out["layers_wall"] = dict(out["layers"])
        out["layers"] = {k: v * out["scale"] for k, v in out["layers"].items()}
        out["other_ms"] *= out["scale"]
        out["total_ms"] *= out["scale"]
    return out


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- #
# Text
# --------------------------------------------------------------------------- #


def _fmt(value, spec, suffix=""):
    return "" if value is None else f"{value:{spec}}{suffix}"


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape[1:])


def format_report(report: dict) -> str:
    """The text of ``r2n profile``: header, per-layer table, summary by role."""
    peak = report["fma_peak_gflops"]
    ort = report.get("onnxruntime") or {}
    ort_layers = ort.get("layers") if ort.get("status") == "ok" else None
    lines = [
        f"{report['model']}: batch {report['batch']}, {report['size']}x{report['size']}, "
        f"{report['backend']} backend, {report['threads']} thread(s); "
        f"{report['flops'] / 1e9:.2f} GFLOP per forward{_algorithm_gflop(report)}; "
        f"clock: {report.get('clock', 'wall')}",
        f"FMA peak {_fmt(peak, '.1f') or 'n/a'} GFLOP/s per core (x {report['threads']} "
        f"threads for % peak and the floors)",
        f"plain forward {report['forward_ms']:.2f} ms; the layers below sum to "
        f"{report['total_ms']:.2f} ms ({100 * report['overhead']:+.1f}%: the profile's "
        f"overhead); profiled forward {report['profiled_forward_ms']:.2f} ms; "
        f"{report['reps']} forwards each",
    ]
    if ort.get("status") == "ok":
        lines.append(
            f"onnxruntime {ort['version']}: run {_fmt(ort['run_ms'], '.2f')} ms (CPU time "
            f"{_fmt(ort.get('run_cpu_ms'), '.2f')} ms), per-node sum {ort['total_ms']:.2f} ms "
            f"({ort['other_ms']:.2f} ms in nodes of no r2n layer)"
            + (
                f"; its nodes' wall times x {ort['scale']:.2f} (the run's CPU time / their sum)"
                if ort.get("scale", 1.0) != 1.0
                else ""
            )
        )
    elif ort:
        lines.append(f"onnxruntime: not run ({ort['status']})")
    header = ["layer", "op", "alg.", "in -> out", "ms", "share", "GFLOP", "GFLOP/s", "% peak"]
    header += ["floor ms", "GB/s"] + (["ORT ms"] if ort_layers is not None else [])
    rows = []
    for r in report["layers"]:
        row = [
            r["name"],
            r["op"],
            _SHORT.get(r.get("algorithm"), ""),
            f"{_shape(r['in_shape'])} -> {_shape(r['out_shape'])}",
            f"{r['ms']:.3f}",
            f"{100 * r['share']:.1f}%",
            f"{r['flops'] / 1e9:.3f}",
            f"{r['gflops']:.1f}",
            _fmt(r["pct_peak"], ".0f", "%"),
            _fmt(r["floor_ms"], ".3f"),
            f"{r['gbs']:.1f}",
        ]
        if ort_layers is not None:
            row.append(_fmt(ort_layers.get(r["name"]), ".3f"))
        rows.append(row)
    lines += ["", text_table(header, rows, right=set(range(4, len(header))))]
    by_role_ort = {}
    if ort_layers is not None:
        role_of = {r["name"]: r["role"] for r in report["layers"]}
        for name, ms in ort_layers.items():
            role = role_of.get(name, "?")
            by_role_ort[role] = by_role_ort.get(role, 0.0) + ms
    header = ["role", "layers", "ms", "share", "GFLOP/s", "% peak", "floor ms", "above floor"]
    header += ["alg. floor ms"] + (["ORT ms"] if ort_layers is not None else [])
    rows = []
    for g in report["roles"]:
        row = [
            g["role"],
            str(g["layers"]),
            f"{g['ms']:.2f}",
            f"{100 * g['share']:.1f}%",
            f"{g['gflops']:.1f}",
            _fmt(g["pct_peak"], ".0f", "%"),
            _fmt(g["floor_ms"], ".2f"),
            _fmt(g["above_floor_ms"], ".2f"),
            _fmt(g.get("algorithm_floor_ms"), ".2f"),
        ]
        if ort_layers is not None:
            row.append(_fmt(by_role_ort.get(g["role"]), ".2f"))
        rows.append(row)
    by_role = text_table(header, rows, set(range(1, len(header))))
    lines += ["", "By role (sorted by time):", "", by_role]
    lines += [
        "",
        "alg.: how r2n ran the conv (F2 / F4: Winograd F(2x2,3x3) / F(4x4,3x3), else direct); "
        "GFLOP, % peak and the floor count the definition's FLOPs, the algorithm floor the "
        "multiply-adds r2n's algorithm computes (at the FMA peak).",
    ]
    return "\n".join(lines)


#: The algorithms' short names in the per-layer table.
_SHORT = {"winograd_2x2": "F2", "winograd_4x4": "F4"}


def _algorithm_gflop(report: dict) -> str:
    """ " (X GFLOP in r2n's algorithms)" where Winograd makes it fewer
    (profiles saved before the field existed have none)."""
    alg = report.get("algorithm_flops")
    if alg is None or alg == report["flops"]:
        return ""
    return f" ({alg / 1e9:.2f} GFLOP in r2n's algorithms)"


def markdown(report: dict, top: int = 10) -> str:
    """Markdown of a saved profile (``benchmarks/report.py`` prints it): the
    header, the roles table, and the ``top`` layers with the most time above
    their floor (with ONNX Runtime's time for the same layer when profiled)."""
    ort = report.get("onnxruntime") or {}
    ort_layers = ort.get("layers") if ort.get("status") == "ok" else None
    peak = report["fma_peak_gflops"]
    lines = [
        f"{report['model']}, batch {report['batch']}, {report['size']}x{report['size']}, "
        f"{report['threads']} thread(s), {report['backend']} backend, run "
        f"{report['datetime']}, clock {report.get('clock', 'wall')}: "
        f"{report['flops'] / 1e9:.2f} GFLOP{_algorithm_gflop(report)}; FMA peak "
        f"{_fmt(peak, '.1f') or 'n/a'} GFLOP/s per core. Plain forward "
        f"{report['forward_ms']:.1f} ms, layers' sum {report['total_ms']:.1f} ms "
        f"({100 * report['overhead']:+.1f}%)"
        + (
            f"; ONNX Runtime {ort['version']} run {ort['run_ms']:.1f} ms wall, "
            f"{_fmt(ort.get('run_cpu_ms'), '.1f')} ms CPU (per-node sum {ort['total_ms']:.1f} ms"
            + (
                f": its nodes' wall times x {ort['scale']:.2f}, the run's CPU time / their sum"
                if ort.get("scale", 1.0) != 1.0
                else ""
            )
            + ")."
            if ort_layers is not None
            else "."
        ),
        "",
    ]
    role_of = {r["name"]: r["role"] for r in report["layers"]}
    by_role_ort: dict[str, float] = {}
    for name, ms in (ort_layers or {}).items():
        by_role_ort[role_of.get(name, "?")] = by_role_ort.get(role_of.get(name, "?"), 0.0) + ms
    head = (
        "| role | layers | ms | share | GFLOP/s | % peak | floor ms | above floor "
        "| algorithm floor ms |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if ort_layers is not None:
        head, rule = head + " ONNX Runtime ms |", rule + "---:|"
    lines += [head, rule]
    for g in report["roles"]:
        line = (
            f"| {g['role']} | {g['layers']} | {g['ms']:.2f} | {100 * g['share']:.1f}% | "
            f"{g['gflops']:.1f} | {_fmt(g['pct_peak'], '.0f', '%')} | "
            f"{_fmt(g['floor_ms'], '.2f')} | {_fmt(g['above_floor_ms'], '.2f')} | "
            f"{_fmt(g.get('algorithm_floor_ms'), '.2f')} |"
        )
        if ort_layers is not None:
            line += f" {_fmt(by_role_ort.get(g['role']), '.2f')} |"
        lines.append(line)
    if top:
        rows = sorted(report["layers"], key=lambda r: -(r["ms"] - (r["floor_ms"] or 0.0)))[:top]
        head = "| layer | op | in -> out | ms | % peak | floor ms |"
        rule = "|---|---|---|---:|---:|---:|"
        if ort_layers is not None:
            head, rule = head + " ONNX Runtime ms |", rule + "---:|"
        lines += ["", f"The {len(rows)} layers with the most time above their floor:", ""]
        lines += [head, rule]
        for r in rows:
            line = (
                f"| {r['name']} | {r['op']} | {_shape(r['in_shape'])} -> "
                f"{_shape(r['out_shape'])} | {r['ms']:.2f} | {_fmt(r['pct_peak'], '.0f', '%')} | "
                f"{_fmt(r['floor_ms'], '.2f')} |"
            )
            if ort_layers is not None:
                line += f" {_fmt(ort_layers.get(r['name']), '.2f')} |"
            lines.append(line)
    return "\n".join(lines)
