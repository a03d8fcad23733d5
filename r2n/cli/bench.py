"""``r2n bench``: check every backend, time it side by side, model the speedup.

Steps, in order:

1. **Peaks.** This machine's sgemm GFLOP/s and copy GB/s, measured at 1 and
   all threads (:mod:`r2n._bench.machine`): the "% of peak" column and the
   roofline chart are relative to them.
2. **Check, then time.** For every case (conv2d 3x3, 1x1 and grouped; the
   Res2Net chain; the bottleneck; the whole res2net50_26w_4s; see
   :mod:`r2n._bench.suite`) the float64 reference result is the truth. Every
   row runs the same float32 inputs once and is compared with it (relative
   error within 1e-5 per op, 1e-4 for the network); a row that disagrees is
   reported ``WRONG`` and not timed. Rows: ``reference`` (1 thread, its BLAS
   pinned to 1: the serial baseline), ``cpu`` at 1 and all threads, ``gpu``
   when CuPy sees a GPU, PyTorch on the CPU (eager and BN-folded, 1 and all
   threads) and on CUDA when available, and for the whole network ONNX
   Runtime and OpenVINO at 1 and all threads when they are installed
   (:mod:`r2n._bench.engines`). Times are medians of repeated calls after a
   warm-up call (:mod:`r2n._bench.timing`).
3. **Speedup model** (:mod:`r2n._bench.model`): S, T1, T2 of a bottleneck,
   their parallel speedups k1, k2, the predicted speedups next to the
   measured ones.
4. **Load.** The share of the CPUs other processes used during the run; above
   10% the multi-threaded rows are flagged unreliable.

Exit code 0 when every row agreed with the reference, 1 when one did not,
130 on Ctrl-C (after writing what was measured so far), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from .. import __version__, _backends
from .._bench import cases as bench_cases
from .._bench import engines, machine, suite, timing
from .._bench.cases import Skip
from .._bench.torch_import import import_torch
from .tables import text_table

BACKEND_CHOICES = ("reference", "cpu", "gpu", "torch") + engines.ENGINES
OP_CHOICES = bench_cases.OPS + ("model",)
#: Share of the CPUs used by other processes above which the run is flagged busy.
BUSY = 0.10


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: an r2n backend, a PyTorch form or another engine.

    engine: "r2n", "torch", "onnxruntime" or "openvino"; backend: the r2n
    backend, the torch form ("eager", "folded") or the engine's name again;
    device: "cpu" or "cuda"; threads: host threads (None for GPU rows)."""

    engine: str
    backend: str
    device: str
    threads: int | None

    @property
    def label(self) -> str:
        if self.engine == "r2n" or self.engine in engines.ENGINES:
            name = self.backend
        else:
            name = f"torch{'-cuda' if self.device == 'cuda' else ''} {self.backend}"
        return name if self.threads is None else f"{name} {self.threads}t"


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``r2n bench`` (shared by ``python -m r2n bench``)."""
    parser.add_argument(
        "--quick", action="store_true", help="small shapes and short timings (<1 min on 2 cores)"
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKEND_CHOICES,
        metavar="B",
        help=f"only these rows (any of {', '.join(BACKEND_CHOICES)}); default all",
    )
    parser.add_argument(
        "--op",
        nargs="+",
        choices=OP_CHOICES,
        metavar="OP",
        help=f"only these ops (any of {', '.join(OP_CHOICES)}); default all",
    )
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="write a PNG: speedup bars, a roofline and the speedup model (matplotlib)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs")


def main(argv: list[str] | None = None) -> int:
    """``r2n bench`` with its own argument parser (for tests and scripts)."""
    parser = argparse.ArgumentParser(prog="r2n bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# --------------------------------------------------------------------------- #
# Environment: threads, optional libraries
# --------------------------------------------------------------------------- #


class Env:
    """What this machine has (cpu backend, torch, GPUs) and the thread knobs."""

    def __init__(self, backends: set[str]):
        self.all_threads = machine.all_threads()
        self.has_cpu = _backends.implements("cpu", "conv2d")
        self.torch = import_torch() if "torch" in backends else None
        self.cupy = machine.cupy_with_gpu() if "gpu" in backends else None
        self.torch_cuda = bool(self.torch is not None and self.torch.cuda.is_available())
        # engine -> None (runs) or why it cannot, for the selected other engines
        self.engines = {e: engines.missing(e) for e in engines.ENGINES if e in backends}

    def set_threads(self, n: int | None) -> None:
        """Host threads of r2n's cpu kernels and of torch (None: all threads)."""
        n = self.all_threads if n is None else n
        if self.has_cpu:
            from .. import cpu

            cpu.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def notes(self) -> list[str]:
        """One line per optional row family that is missing, and why."""
        out = []
        if not self.has_cpu:
            out.append("cpu: Numba is not installed (pip install 'r2n[cpu]')")
        if self.cupy is None:
            out.append("gpu: no rows (CuPy not installed, or it sees no GPU)")
        if self.torch is None:
            out.append("torch: no rows (PyTorch not installed or not selected)")
        elif not self.torch_cuda:
            out.append("torch-cuda: no rows (torch sees no GPU)")
        for engine, why in self.engines.items():
            if why is not None:
                out.append(f"{engine}: no rows ({why})")
        return out


def row_specs(env: Env, backends: set[str]) -> list[RowSpec]:
    """The rows of every case, in table order."""
    n = env.all_threads
    threads = [1] if n == 1 else [1, n]
    rows = []
    if "reference" in backends:
        rows.append(RowSpec("r2n", "reference", "cpu", 1))
    if "cpu" in backends and env.has_cpu:
        rows += [RowSpec("r2n", "cpu", "cpu", t) for t in threads]
    if "gpu" in backends and env.cupy is not None:
        rows.append(RowSpec("r2n", "gpu", "cuda", None))
    if env.torch is not None:
        for form in ("eager", "folded"):
            rows += [RowSpec("torch", form, "cpu", t) for t in threads]
        if env.torch_cuda:
            rows += [RowSpec("torch", form, "cuda", None) for form in ("eager", "folded")]
    for engine, why in env.engines.items():
        if why is None:
            rows += [RowSpec(engine, engine, "cpu", t) for t in threads]
    return rows


# --------------------------------------------------------------------------- #
# One row
# --------------------------------------------------------------------------- #


def _runner(case, spec: RowSpec, args32, kwargs, env: Env):
    """(fn, to_numpy, timer key) of one row; Skip when it cannot run here."""
    if spec.engine == "r2n":
        if case.op in _backends_ops() and _backends.status(spec.backend, case.op) != "ready":
            raise Skip(_backends.status(spec.backend, case.op))
        if spec.backend == "gpu":
            cupy = env.cupy
            dargs = timing.convert(args32, cupy.asarray)
            return case.r2n_runner(dargs, kwargs, "gpu"), cupy.asnumpy, "cupy"
        return case.r2n_runner(args32, kwargs, spec.backend), np.asarray, "host"
    if spec.engine in engines.ENGINES:
        return case.engine_runner(args32, spec.engine, spec.threads), np.asarray, "host"
    if spec.device == "cuda":
        fn = case.torch_runner(args32, kwargs, spec.backend, "cuda")
        return fn, lambda t: t.cpu().numpy(), "torch-cuda"
    return case.torch_runner(args32, kwargs, spec.backend, "cpu"), lambda t: t.numpy(), "host"


def _backends_ops():
    from .. import OPS

    return OPS


def measure_row(case, spec: RowSpec, args32, kwargs, ref, budget, env: Env) -> dict:
    """Check one row against the reference; time it if it agrees.

    Returns
    -------
    dict: op, case, row, engine, backend, device, threads, flops, min_bytes,
    intensity, status ("ok", "WRONG", "ERROR", or why it did not run),
    rel_err, ms (median), times_ms (every timed call).
    """
    row = _row(case, spec)
    if _not_applicable(case, spec):
        row["status"] = "n/a"
        return row
    env.set_threads(spec.threads)
    # The serial reference row pins NumPy's BLAS to 1 thread too.
    blas = 1 if spec.backend == "reference" else None
    try:
        with machine.blas_threads_set(blas):
            fn, to_numpy, timer = _runner(case, spec, args32, kwargs, env)
            out = fn()
            err = timing.rel_err(to_numpy(out), ref)
            row["rel_err"] = err
            if not err <= case.tol:
                row["status"] = "WRONG"
                return row
            times = timing.TIMERS[timer](fn, budget)
    except Skip as why:
        row["status"] = str(why)
        return row
    except NotImplementedError:
        row["status"] = "not implemented"
        return row
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a backend that crashes has not agreed with the reference
        row["status"] = "ERROR"
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        env.set_threads(None)
    row.update(status="ok", ms=timing.median_ms(times), times_ms=[1e3 * t for t in times])
    return row


def _not_applicable(case, spec: RowSpec) -> bool:
    """A torch form or another engine that this case has no runner for."""
    if spec.engine == "torch":
        return spec.backend not in case.torch_forms
    return spec.engine in engines.ENGINES and spec.engine not in case.engines


def derive(rows: list[dict], peaks: dict, gpu_peaks: dict | None) -> None:
    """Add gflops, pct_peak, vs_serial, vs_torch and vs_best_engine to the timed
    rows of one case.

    vs_serial: the reference row's time / this row's; vs_torch: the time of
    PyTorch eager on the same device and thread count / this row's (> 1:
    faster); vs_best_engine: the fastest row of another engine (PyTorch eager
    or folded, ONNX Runtime, OpenVINO) on the same device and thread count /
    this row's. % of peak: GFLOP/s over the roofline of this machine at the
    row's arithmetic intensity, ``min(sgemm, copy GB/s x FLOP/byte)``, at the
    row's thread count (the GPU's figures for GPU rows); every benchmark
    shape here is compute-bound, so that is the sgemm peak."""
    by_label = {r["row"]: r for r in rows if r.get("ms")}
    serial = by_label.get("reference 1t")
    for r in rows:
        if not r.get("ms"):
            continue
        r["gflops"] = r["flops"] / (r["ms"] * 1e6)
        if r["device"] == "cuda":
            gpu = gpu_peaks or {}
            roof = machine.roofline_gflops(
                gpu.get("sgemm_gflops"), gpu.get("copy_gbs"), r["intensity"]
            )
            torch_label = "torch-cuda eager"
        else:
            roof = machine.host_roofline_gflops(peaks, r["threads"], r["intensity"])
            torch_label = f"torch eager {r['threads']}t"
        r["roofline_gflops"] = roof
        r["pct_peak"] = None if not roof else 100 * r["gflops"] / roof
        r["vs_serial"] = serial["ms"] / r["ms"] if serial else None
        base = by_label.get(torch_label)
        r["vs_torch"] = base["ms"] / r["ms"] if base else None
        best = [
            o["ms"]
            for o in by_label.values()
            if o["engine"] != "r2n" and o["device"] == r["device"] and o["threads"] == r["threads"]
        ]
        r["vs_best_engine"] = min(best) / r["ms"] if best else None


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the rows (see ``measure_row`` and ``derive``)."""
    header = (
        "op",
        "shape",
        "row",
        "status",
        "rel.err",
        "ms",
        "GFLOP/s",
        "% peak",
        "vs serial",
        "vs torch",
        "vs best engine",
    )
    lines = [header]
    for r in rows:
        if r["status"] == "n/a":
            continue
        lines.append(
            (
                r["op"],
                r["case"],
                r["row"],
                r["status"],
                _fmt(r.get("rel_err"), ".1e"),
                _fmt(r.get("ms"), ".3f"),
                _fmt(r.get("gflops"), ".1f"),
                _fmt(r.get("pct_peak"), ".0f", "%"),
                _fmt(r.get("vs_serial"), ".2f", "x"),
                _fmt(r.get("vs_torch"), ".2f", "x"),
                _fmt(r.get("vs_best_engine"), ".2f", "x"),
            )
        )
    return text_table(lines[0], lines[1:], right={4, 5, 6, 7, 8, 9, 10})


def format_peaks(peaks: dict, gpu_peaks: dict | None) -> str:
    sg = ", ".join(
        f"{t} thread{'s' if t != '1' else ''}: {_fmt(v, '.0f') or 'n/a'}"
        for t, v in peaks["sgemm_gflops"].items()
    )
    cp = ", ".join(
        f"{t} thread{'s' if t != '1' else ''}: {_fmt(v, '.1f') or 'n/a'}"
        for t, v in peaks["copy_gbs"].items()
    )
    text = f"peaks: sgemm GFLOP/s ({sg}); copy GB/s ({cp})"
    if gpu_peaks:
        text += (
            f"; GPU {gpu_peaks['name']}: sgemm {gpu_peaks['sgemm_gflops']:.0f} GFLOP/s,"
            f" copy {gpu_peaks['copy_gbs']:.0f} GB/s"
        )
    return text


class Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        line = f"[{self.done}/{self.total}] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:120])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #


def _run_model(report, env, case, budget, progress) -> None:
    """The speedup model on one bottleneck case (cpu all threads; gpu if present)."""
    from .._bench import model

    rng = np.random.default_rng(report["seed"])
    args64, kwargs = case.make(rng)
    ref = case.reference(args64, kwargs)
    args32 = timing.convert(args64, lambda a: a.astype(np.float32))
    engines = [("cpu", model.cpu_engine(), args32, env.all_threads, np.asarray)]
    if env.cupy is not None and _backends.status("gpu", "conv2d") == "ready":
        dargs = timing.convert(args32, env.cupy.asarray)
        engines.append(("gpu", model.gpu_engine(env.cupy), dargs, None, env.cupy.asnumpy))
    serial = model.cpu_engine()
    for name, engine, dargs, threads, to_numpy in engines:
        label = f"cpu {threads}t" if name == "cpu" else "gpu"
        progress.step(f"speedup model {case.label} {label}")
        torch_ms, torch_label = None, None
        if env.torch is not None and (name == "cpu" or env.torch_cuda):
            device = "cpu" if name == "cpu" else "cuda"
            spec = RowSpec("torch", "eager", device, threads)
            trow = measure_row(case, spec, args32, kwargs, ref, budget, env)
            torch_ms, torch_label = trow.get("ms"), spec.label
        try:
            result = model.measure(
                serial,
                engine,
                label,
                args32,
                dargs,
                kwargs,
                ref,
                budget,
                env.set_threads,
                threads,
                to_numpy=to_numpy,
                torch_ms=torch_ms,
                torch_label=torch_label,
            )
        except NotImplementedError as exc:
            result = {"parallel": label, "status": "not implemented", "reason": str(exc)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a crash in a part is a failure, like a crashing row
            result = {
                "parallel": label,
                "status": "ERROR",
                "reason": f"{type(exc).__name__}: {exc}",
            }
        finally:
            env.set_threads(None)
        result["case"] = case.label
        report["model"].append(result)


def run(opts: argparse.Namespace) -> int:
    """Run ``r2n bench`` with parsed options; print; write JSON/PNG; exit code."""
    backends = set(opts.backend or BACKEND_CHOICES)
    ops = set(opts.op or OP_CHOICES)
    budget = timing.QUICK if opts.quick else timing.DEFAULT
    env = Env(backends)
    report = {
        "tool": "r2n bench",
        "r2n": __version__,
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "quick": bool(opts.quick),
        "seed": opts.seed,
        "backends": sorted(backends),
        "ops": sorted(ops),
        "machine": machine.machine_info(),
        "threads_all": env.all_threads,
        "budget": vars(budget),
        "notes": env.notes(),
        "peaks": None,
        "gpu_peaks": None,
        "rows": [],
        "model": [],
        "interrupted": False,
    }
    if env.torch is not None:
        report["machine"]["torch"] = env.torch.__version__
    for engine, why in env.engines.items():
        if why is None:
            report["machine"][engine] = engines.versions()[engine]
    all_cases = suite.bench_cases(opts.quick)
    selected = [c for c in all_cases if c.op in ops]
    model_cases = []
    if "model" in ops and "cpu" in backends and env.has_cpu:
        model_cases = [c for c in all_cases if c.op == "bottle2neck"]
    specs = row_specs(env, backends)
    print(
        f"r2n bench{' --quick' if opts.quick else ''}: {len(selected)} cases x "
        f"{len(specs)} rows; all threads = {env.all_threads}; float32 vs the float64 reference"
    )
    for note in env.notes():
        print(f"  {note}")
    load = machine.OtherLoad()
    load.start()
    n_model = len(model_cases) * (2 if env.cupy is not None else 1)
    progress = Progress(1 + len(selected) * len(specs) + n_model)
    try:
        progress.step("measuring this machine's peaks")
        report["peaks"] = machine.measure_peaks(opts.quick, env.all_threads)
        report["gpu_peaks"] = machine.gpu_peaks(opts.quick) if env.cupy is not None else None
        env.set_threads(None)
        rng = np.random.default_rng(opts.seed)
        for case in selected:
            case_rows = []
            try:
                args64, kwargs = case.make(rng)
                ref = case.reference(args64, kwargs)
            except Skip as why:
                for spec in specs:
                    progress.step(f"{case.op} {case.label}: {why}")
                    if _not_applicable(case, spec):
                        continue
                    case_rows.append(_row(case, spec, status=str(why)))
                report["rows"].extend(case_rows)
                continue
            args32 = timing.convert(args64, lambda a: a.astype(np.float32))
            for spec in specs:
                progress.step(f"{case.op} {case.label} {spec.label}")
                row = measure_row(case, spec, args32, kwargs, ref, budget, env)
                if row["status"] == "n/a":  # e.g. no BN to fold in a lone conv
                    continue
                case_rows.append(row)
                report["rows"].append(row)
                derive(case_rows, report["peaks"], report["gpu_peaks"])
        for case in model_cases:
            _run_model(report, env, case, budget, progress)
    except KeyboardInterrupt:
        report["interrupted"] = True
    finally:
        progress.close()
        env.set_threads(None)
        report["other_load"] = load.stop()
        if env.has_cpu:
            import numba

            report["machine"]["numba_threading_layer"] = threading_layer(numba)
    return _finish(report, opts)


def _row(case, spec: RowSpec, status=None) -> dict:
    """A row of the report before it is measured (see :func:`measure_row`)."""
    return dict(
        op=case.op,
        case=case.label,
        row=spec.label,
        engine=spec.engine,
        backend=spec.backend,
        device=spec.device,
        threads=spec.threads,
        flops=case.flops,
        min_bytes=case.min_bytes,
        intensity=case.intensity,
        tolerance=case.tol,
        status=status,
        rel_err=None,
        ms=None,
        times_ms=None,
    )


def threading_layer(numba) -> str | None:
    """Numba's threading layer ("omp", "tbb", "workqueue"), None before any parallel run."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def _finish(report: dict, opts) -> int:
    """Print the tables, write JSON and PNG, and return the exit code."""
    if report["peaks"]:
        print(format_peaks(report["peaks"], report["gpu_peaks"]))
    other = report.get("other_load")
    if other is not None:
        print(f"other processes kept {100 * other:.0f}% of the CPUs busy during the run")
        if other > BUSY:
            print(
                "  WARNING: the machine was busy; multi-threaded rows lose their cores to other "
                "work and are unreliable (re-run on a quiet machine)"
            )
    print()
    if report["rows"]:
        print(format_table(report["rows"]))
    if report["model"]:
        from .._bench import model

        print()
        print(
            "Speedup model (r2n/_bench/model.py): T1 = the chain's 3x3 convs, T2 = split/add/"
            "cat/pool,\nS = the rest; serial = the cpu backend on 1 thread"
        )
        print(model.format_model(report["model"]))
    failed = [r for r in report["rows"] if r["status"] in ("WRONG", "ERROR")]
    failed += [m for m in report["model"] if m.get("status") in ("WRONG", "ERROR")]
    code = 130 if report["interrupted"] else (1 if failed else 0)
    report["exit_code"] = code
    report["failed"] = [
        f"{r.get('op', 'model')} {r['case']} [{r.get('row', r.get('parallel'))}]" for r in failed
    ]
    print()
    if report["interrupted"]:
        print("interrupted: the figures above are what was measured so far")
    if failed:
        print(f"{len(failed)} row(s) disagree with the reference: " + "; ".join(report["failed"]))
    elif not report["interrupted"]:
        print("every row agrees with the reference")
    write_outputs(report, opts.json, opts.plot if report["rows"] else None, "plot")
    return code


def write_outputs(report: dict, json_path, plot_path, draw: str) -> None:
    """Write ``report`` to ``json_path`` and draw it to ``plot_path`` with
    ``r2n._bench.plot.<draw>`` (each skipped when its path is None; the plot,
    with a message, when matplotlib is missing). Shared by bench and ladder."""
    if json_path:
        write_json(report, json_path)
        print(f"wrote {json_path}")
    if plot_path:
        from .._bench import plot

        try:
            getattr(plot, draw)(report, plot_path)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); no plot written")
            return
        print(f"wrote {plot_path}")


def write_json(report: dict, path: str) -> None:
    """``report`` as indented JSON at ``path`` (written whole, then renamed into place)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
