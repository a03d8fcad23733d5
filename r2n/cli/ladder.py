"""``r2n ladder``: every numbered variant of an op, checked, then timed against the roofline.

r2n's numbered variants are its teaching material: each *step* of an op's
ladder changes one idea of the step before (``r2n._ladder``; the backends
list them in ``r2n.cpu.LADDERS`` / ``r2n.gpu.LADDERS``). For each op
(conv2d: 3x3, 1x1 and grouped; the Res2Net chain; global average pooling;
linear) at Res2Net-50 shapes (``r2n._bench.ladder_cases``, or ``--shape``):

1. **Check.** Every step runs once on the same float32 inputs and is compared
   with the float64 reference: relative error within 1e-5 (the step's own
   ``tolerance`` when it declares one, e.g. TF32 tensor cores). A step that
   disagrees is reported ``WRONG`` and not timed; one that raises, ``ERROR``;
   one whose ``applies`` says it does not compute this case, ``skipped`` with
   the reason.
2. **Time.** The steps that agree are timed as ``r2n bench`` times rows
   (:mod:`r2n._bench.timing`: a warm-up call, then the median of repeated
   calls; CUDA events on the GPU), all at one thread count (``--threads``,
   default all: r2n's and PyTorch's), then the library (PyTorch: oneDNN on
   the CPU, cuDNN on the GPU) as the last rung when torch is installed.
3. **Read.** Per step: ms, GFLOP/s (the op's FLOPs, the same for every step:
   Winograd's are the direct conv's), % of the roofline at the op's
   arithmetic intensity (``min(sgemm GFLOP/s, copy GB/s x FLOP/byte)``
   measured at start at the same thread count, :mod:`r2n._bench.machine`),
   and the speedup over the previous timed step and over step 1.

Exit code 0 when every step (and the library) agreed with the reference or
was skipped, 1 when one was WRONG or raised, 2 for bad arguments (a bad
``--shape``, ``--backend gpu`` without a GPU), 130 on Ctrl-C (after writing
what was measured). ``--json`` writes every figure (the machine, its peaks,
versions); ``benchmarks/report.py`` turns that file into the README's
tables. ``--plot`` draws each ladder as bars against its roofline.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import __version__, _backends
from .._bench import ladder_cases, machine, timing
from .._bench.torch_import import import_torch
from .._ladder import LADDER_OPS
from . import bench
from .tables import text_table

DESCRIPTION = "Every numbered variant of an op, checked, then timed against the roofline."
BACKENDS = ("cpu", "gpu")
#: float32's tolerance against the float64 reference (a step may declare its own).
TOLERANCE = 1e-5


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``r2n ladder``."""
    parser.add_argument(
        "op",
        nargs="?",
        choices=LADDER_OPS,
        metavar="OP",
        help=f"one of {', '.join(LADDER_OPS)} (default: every op)",
    )
    shapes = "; ".join(f"{op}: {s}" for op, s in ladder_cases.SHAPE_SYNTAX.items())
    parser.add_argument(
        "--shape",
        metavar="SHAPE",
        help=f"one case instead of the op's Res2Net-50 defaults (needs OP). {shapes}",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="cpu", help="default cpu")
    parser.add_argument("--batch", type=int, default=1, help="N of the default shapes (1)")
    parser.add_argument(
        "--threads", type=int, help="host threads of every step and of PyTorch (default: all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="28x28 maps and short timings (CI-sized)"
    )
    parser.add_argument("--no-library", action="store_true", help="leave out the PyTorch row")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument(
        "--plot", metavar="PATH", help="write a PNG: each ladder's bars against its roofline"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def main(argv: list[str] | None = None) -> int:
    """``r2n ladder`` with its own argument parser (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="r2n ladder", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv), parser)


# --------------------------------------------------------------------------- #
# Where the steps run
# --------------------------------------------------------------------------- #


@dataclass
class Device:
    """How one backend's steps get their inputs, are timed and are read back.

    ``step_kwargs`` go to every step's ``run`` (GPU steps: ``executor``, None
    meaning the current GPU); ``torch_device`` is PyTorch's device for the
    library row, None when torch cannot run there."""

    backend: str
    name: str
    to_device: Callable = np.asarray
    to_numpy: Callable = np.asarray
    timer: Callable = timing.time_host
    step_kwargs: dict = field(default_factory=dict)
    torch_device: str | None = "cpu"
    torch_timer: Callable = timing.time_host


def cpu_device() -> Device:
    """The host: NumPy arrays, wall-clock medians."""
    return Device("cpu", "cpu")


def gpu_device() -> Device | None:
    """The current GPU (CuPy arrays, CUDA-event medians), or None without one."""
    cupy = machine.cupy_with_gpu()
    if cupy is None:
        return None
    torch = import_torch()
    cuda = torch is not None and torch.cuda.is_available()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return Device(
        "gpu",
        name.decode() if isinstance(name, bytes) else str(name),
        to_device=cupy.asarray,
        to_numpy=cupy.asnumpy,
        timer=timing.time_cupy,
        torch_device="cuda" if cuda else None,
        torch_timer=timing.time_torch_cuda,
    )


def ladders_of(backend: str) -> tuple[dict, str]:
    """(op -> Steps, where they come from): ``r2n.<backend>.LADDERS``."""
    module = importlib.import_module(f"r2n.{backend}")
    ladders = getattr(module, "LADDERS", None)
    if ladders is not None:
        return dict(ladders), f"r2n.{backend}.LADDERS"
    return {}, f"r2n.{backend} has no LADDERS"


# --------------------------------------------------------------------------- #
# One ladder
# --------------------------------------------------------------------------- #


def _reason(applies: Callable) -> str:
    doc = (applies.__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else "this step does not compute this case"


def _row(step, kind: str) -> dict:
    return dict(
        step=step.name if kind == "step" else step,
        kind=kind,
        number=step.number if kind == "step" else None,
        summary=step.summary if kind == "step" else None,
        source=step.source if kind == "step" else None,
        status=None,
        tolerance=None,
        rel_err=None,
        ms=None,
        times_ms=None,
    )


def _check_and_time(row: dict, fn: Callable, to_numpy, ref, tol: float, timer, budget) -> None:
    """Run ``fn`` once, compare with ``ref``; time it when it agrees (fills ``row``)."""
    row["tolerance"] = tol
    try:
        err = timing.rel_err(to_numpy(fn()), ref)
        row["rel_err"] = err
        if not err <= tol:
            row["status"] = "WRONG"
            return
        times = timer(fn, budget)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a step that crashes has not agreed with the reference
        row["status"] = "ERROR"
        row["error"] = f"{type(exc).__name__}: {exc}"
        return
    row.update(status="ok", ms=timing.median_ms(times), times_ms=[1e3 * t for t in times])


def measure_ladder(
    case, steps, device: Device, budget, rng, torch=None, torch_label: str | None = None
) -> list[dict]:
    """Check and time every step of one ladder on one case, then the library.

    Returns
    -------
    list of dicts, in ladder order, the library last: step, kind ("step" or
    "library"), number, summary, source, status ("ok", "WRONG", "ERROR",
    "skipped"), reason (skipped) or error (ERROR), tolerance, rel_err, ms
    (median), times_ms (every timed call).
    """
    args64, kwargs = case.make(rng)
    ref = case.reference(args64, kwargs)
    args32 = timing.convert(args64, lambda a: a.astype(np.float32))
    dargs = timing.convert(args32, device.to_device)
    checked = ladder_cases.checked_args(case.op, dargs, kwargs)
    rows = []
    for step in steps:
        row = _row(step, "step")
        rows.append(row)
        try:
            applies = step.applies is None or step.applies(*dargs, **checked)
        except Exception as exc:  # noqa: BLE001 - reported like a crashing step
            row.update(status="ERROR", error=f"applies: {type(exc).__name__}: {exc}")
            continue
        if not applies:
            row.update(status="skipped", reason=_reason(step.applies))
            continue

        def run_step(step=step):
            return step.run(*dargs, **checked, **device.step_kwargs)

        tol = TOLERANCE if step.tolerance is None else step.tolerance
        _check_and_time(row, run_step, device.to_numpy, ref, tol, device.timer, budget)
    if torch is not None and device.torch_device is not None:
        row = _row(torch_label, "library")
        row["summary"] = _library_summary(case.op, device)
        rows.append(row)
        try:
            fn = case.torch_runner(args32, kwargs, _torch_form(case.op), device.torch_device)
        except Exception as exc:  # noqa: BLE001 - e.g. an op PyTorch cannot run there
            row.update(status="ERROR", error=f"{type(exc).__name__}: {exc}")
        else:
            to_numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
            _check_and_time(row, fn, to_numpy, ref, TOLERANCE, device.torch_timer, budget)
    return rows


def _torch_form(op: str) -> str:
    # The chain with BN folded: the same work as r2n's steps (conv + bias + ReLU,
    # split, add, cat), not eager BatchNorm on top.
    return "folded" if op == "res2net_chain" else "eager"


def _library_summary(op: str, device: Device) -> str:
    gpu = device.backend == "gpu"
    dnn, blas = ("cuDNN", "cuBLAS") if gpu else ("oneDNN", "BLAS")
    what = {
        "conv2d": f"F.conv2d ({dnn})",
        "res2net_chain": f"F.conv2d + bias, ReLU, split, add, cat ({dnn})",
        "global_avg_pool2d": "x.mean((2, 3))",
        "linear": f"F.linear ({blas})",
    }[op]
    return f"PyTorch, eager: {what}"


def derive(rows: list[dict], flops: int, roofline: float | None) -> None:
    """Add gflops, pct_roofline, x_previous and x_step1 to the timed rows.

    x_previous: the previous timed row's ms / this row's (the library's
    previous row is the last timed step); x_step1: step 1's ms / this row's
    (None when step 1 was not timed)."""
    timed = [r for r in rows if r.get("ms")]
    first = rows[0] if rows and rows[0]["kind"] == "step" and rows[0].get("ms") else None
    previous = None
    for r in timed:
        r["gflops"] = flops / (r["ms"] * 1e6)
        r["pct_roofline"] = None if not roofline else 100 * r["gflops"] / roofline
        r["x_previous"] = previous["ms"] / r["ms"] if previous else None
        r["x_step1"] = first["ms"] / r["ms"] if first else None
        previous = r


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def format_flops(value: float) -> str:
    """FLOPs with a unit: "38.2 MFLOP", "2.9 kFLOP"."""
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} FLOP"


def format_rate(value) -> str:
    """GFLOP/s: one decimal, more digits below 1 (tiny shapes, memory-bound ops)."""
    return "" if value is None else f"{value:.{1 if value >= 1 else 3}f}"


def format_percent(value) -> str:
    """A percentage: one decimal below 10% (memory-bound and GPU rows), else none."""
    return "" if value is None else f"{value:.{1 if value < 10 else 0}f}%"


def format_ladder(ladder: dict) -> str:
    """The plain-text table of one ladder (see :func:`run`'s JSON)."""
    header = ("step", "what it changes", "status", "rel.err", "ms", "GFLOP/s")
    header += ("% roof", "x prev", "x step 1")
    lines = [header]
    for r in ladder["rows"]:
        status = r["status"]
        if status == "skipped":
            status = f"skipped: {r.get('reason', '')}"
        elif status == "ERROR":
            status = f"ERROR: {r.get('error', '')}"[:80]
        lines.append(
            (
                r["step"],
                r.get("summary") or "",
                status,
                _fmt(r.get("rel_err"), ".1e"),
                _fmt(r.get("ms"), ".3f"),
                format_rate(r.get("gflops")),
                format_percent(r.get("pct_roofline")),
                _fmt(r.get("x_previous"), ".2f", "x"),
                _fmt(r.get("x_step1"), ".2f", "x"),
            )
        )
    title = (
        f"{ladder['op']} {ladder['case']} ({ladder['origin']}): {format_flops(ladder['flops'])}, "
        f"{ladder['intensity']:.2f} FLOP/byte, roofline "
        f"{format_rate(ladder['roofline_gflops']) or 'n/a'} GFLOP/s"
    )
    return title + "\n" + text_table(lines[0], lines[1:], right={3, 4, 5, 6, 7, 8})


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


def _cases(opts, parser, ops) -> list[tuple[str, str, str, object]]:
    """(op, name, origin, BenchCase) of every ladder to run, in order;
    parser.error on a bad --shape."""
    if opts.shape is not None:
        if opts.op is None:
            parser.error("--shape needs an OP (its syntax depends on the op)")
        try:
            case = ladder_cases.parse_shape(opts.op, opts.shape)
        except ValueError as e:
            parser.error(str(e))
        return [(opts.op, "shape", f"--shape {opts.shape}", case)]
    if opts.batch < 1:
        parser.error(f"--batch must be >= 1, got {opts.batch}")
    return [
        (op, name, origin, case)
        for op in ops
        for name, origin, case in ladder_cases.default_cases(op, opts.quick, opts.batch)
    ]


def _threads(opts, parser, device: Device) -> int | None:
    """The host thread count of the run (None on the GPU: its rows have none)."""
    if device.backend == "gpu":
        return None
    limit = machine.all_threads()
    threads = limit if opts.threads is None else opts.threads
    if not 1 <= threads <= limit:
        parser.error(f"--threads must be from 1 to {limit} (all threads), got {opts.threads}")
    return threads


def _set_threads(threads: int | None, torch) -> None:
    """r2n's cpu kernels and torch on ``threads`` host threads (None: all)."""
    n = machine.all_threads() if threads is None else threads
    if _backends.implements("cpu", "conv2d"):
        from .. import cpu

        cpu.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def run(opts: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run ``r2n ladder`` with parsed options; print; write JSON/PNG; exit code."""
    parser = parser or argparse.ArgumentParser(prog="r2n ladder")
    ops = [opts.op] if opts.op else list(LADDER_OPS)
    selected = _cases(opts, parser, ops)
    device = cpu_device() if opts.backend == "cpu" else gpu_device()
    if device is None:
        print(
            "r2n ladder --backend gpu: no GPU (CuPy is not installed or sees no device); "
            "nothing ran",
            file=sys.stderr,
        )
        return 2
    if opts.backend == "cpu" and not _backends.implements("cpu", "conv2d"):
        print(f"r2n ladder: {_module_reason('cpu')}; nothing ran", file=sys.stderr)
        return 2
    threads = _threads(opts, parser, device)
    ladders, ladders_from = ladders_of(opts.backend)
    budget = timing.QUICK if opts.quick else timing.DEFAULT
    torch = None if opts.no_library else import_torch()
    report = {
        "tool": "r2n ladder",
        "r2n": __version__,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": bool(opts.quick),
        "seed": opts.seed,
        "backend": opts.backend,
        "device": device.name,
        "threads": threads,
        "threads_all": machine.all_threads(),
        "ladders_from": ladders_from,
        "machine": machine.machine_info(),
        "budget": vars(budget),
        "notes": [],
        "peaks": None,
        "gpu_peaks": None,
        "ladders": [],
        "interrupted": False,
    }
    library = None
    if torch is not None:
        report["machine"]["torch"] = torch.__version__
        library = f"torch {torch.__version__}"
        if device.torch_device is None:
            report["notes"].append("library: no row (torch sees no GPU)")
    elif not opts.no_library:
        report["notes"].append("library: no row (PyTorch is not installed)")
    missing = [op for op in ops if not ladders.get(op)]
    for op in missing:
        report["notes"].append(f"{op}: no ladder ({ladders_from} lists none)")
    selected = [c for c in selected if c[0] not in missing]
    where = f"{threads} thread{'s' if threads != 1 else ''}" if threads else device.name
    print(
        f"r2n ladder{' --quick' if opts.quick else ''} on {opts.backend} ({where}): "
        f"{len(selected)} ladder(s) from {ladders_from}; float32 vs the float64 reference"
    )
    for note in report["notes"]:
        print(f"  {note}")
    load = machine.OtherLoad()
    load.start()
    progress = bench.Progress(1 + len(selected))
    try:
        progress.step("measuring this machine's peaks")
        if device.backend == "cpu":
            report["peaks"] = machine.measure_peaks(opts.quick, threads)
        else:
            report["gpu_peaks"] = machine.gpu_peaks(opts.quick)
        _set_threads(threads, torch)
        rng = np.random.default_rng(opts.seed)
        for op, name, origin, case in selected:
            progress.step(f"{op} {case.label}: {len(ladders[op])} steps")
            rows = measure_ladder(case, ladders[op], device, budget, rng, torch, library)
            report["ladders"].append(_ladder_entry(report, op, name, origin, case, rows))
    except KeyboardInterrupt:
        report["interrupted"] = True
    finally:
        progress.close()
        _set_threads(None, torch)
        report["other_load"] = load.stop()
        if device.backend == "cpu":
            import numba

            report["machine"]["numba_threading_layer"] = bench.threading_layer(numba)
    return _finish(report, opts)


def _module_reason(backend: str) -> str:
    return importlib.import_module(f"r2n.{backend}").unavailable_reason()


def _ladder_entry(report: dict, op: str, name: str, origin: str, case, rows) -> dict:
    """One ladder of the report: the case, its roofline and its rows (derived)."""
    if report["backend"] == "cpu":
        roof = machine.host_roofline_gflops(report["peaks"], report["threads"], case.intensity)
    else:
        gpu = report["gpu_peaks"] or {}
        roof = machine.roofline_gflops(
            gpu.get("sgemm_gflops"), gpu.get("copy_gbs"), case.intensity
        )
    derive(rows, case.flops, roof)
    return dict(
        op=op,
        name=name,
        case=case.label,
        origin=origin,
        flops=case.flops,
        min_bytes=case.min_bytes,
        intensity=case.intensity,
        roofline_gflops=roof,
        rows=rows,
    )


def _finish(report: dict, opts) -> int:
    """Print the tables, write JSON and PNG, and return the exit code."""
    if report["peaks"]:
        print(bench.format_peaks(report["peaks"], None))
    if report["gpu_peaks"]:
        g = report["gpu_peaks"]
        print(
            f"peaks: GPU {g['name']}: sgemm {g['sgemm_gflops']:.0f} GFLOP/s, "
            f"copy {g['copy_gbs']:.0f} GB/s"
        )
    other = report.get("other_load")
    if other is not None:
        print(f"other processes kept {100 * other:.0f}% of the CPUs busy during the run")
        if other > bench.BUSY:
            print("  WARNING: the machine was busy; timings are unreliable (re-run when quiet)")
    for ladder in report["ladders"]:
        print()
        print(format_ladder(ladder))
    failed = [
        f"{lad['op']} {lad['case']} [{r['step']}]"
        for lad in report["ladders"]
        for r in lad["rows"]
        if r["status"] in ("WRONG", "ERROR")
    ]
    code = 130 if report["interrupted"] else (1 if failed else 0)
    report["exit_code"], report["failed"] = code, failed
    print()
    if report["interrupted"]:
        print("interrupted: the figures above are what was measured so far")
    if failed:
        print(f"{len(failed)} step(s) disagree with the reference: " + "; ".join(failed))
    elif not report["interrupted"]:
        print("every step agrees with the reference (or does not apply)")
    plot_path = opts.plot if report["ladders"] else None
    bench.write_outputs(report, opts.json, plot_path, "plot_ladders")
    return code
