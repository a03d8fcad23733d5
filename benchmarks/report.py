"""Markdown tables from a saved pytest-benchmark JSON file or an ``r2n bench`` /
``r2n ladder`` / ``r2n profile`` / ``bench_engines.py`` ``--json`` file.

    python benchmarks/report.py benchmarks/results/FILE.json [--baseline torch-eager]
        [--rows cpu,torch-eager] [--threads 2]

pytest-benchmark files: one row per benchmark, grouped as in the run: median ms,
GFLOP/s (from ``extra_info["flops"]``) and the speed relative to the baseline
row of the same group and thread count (``> 1`` means faster than the baseline).

``r2n bench --json`` files (recognised by their ``"tool"`` key): the machine
and its measured peaks, the table of every checked and timed row (``--rows``
keeps rows whose label starts with one of the given names, ``--threads`` keeps
host rows of that thread count and GPU rows), and the speedup model;
``--plot PNG`` redraws the run's figure from the file.

Several machines in one table (``--merge``), normalised by each machine's
measured peak so that CPUs and GPUs of different speeds compare::

    python benchmarks/report.py --merge epyc=r2n-bench-epyc.json h100=r2n-bench-h100.json
    python benchmarks/report.py --merge zen4=pytest-bench.json zen4=r2n-bench-zen4.json \
        [--peak "zen4=1t:117.4"] [--rows cpu,torch] [--only res2net50]

Each input is ``[LABEL=]FILE`` (r2n bench or pytest-benchmark JSON; LABEL
defaults to the file's machine: CPU, core count, GPU). Files with the same
label are one machine, one column. Each cell is the row's percentage of that
machine's peak, with its median time. Peaks, per machine:

* r2n bench rows: the row's own "% peak" (its roofline at its thread count,
  the GPU's for GPU rows; see the README's ``r2n bench``);
* pytest-benchmark rows: GFLOP/s (``extra_info["flops"]`` / median) over the
  machine's sgemm GFLOP/s at the row's thread count (the GPU's for GPU rows),
  taken from an r2n bench file given under the same label, or from
  ``--peak LABEL=1t:G1,Nt:GN,gpu:GG``. A thread count measured neither way is
  estimated linearly from the nearest measured count below it (capped by the
  nearest above) and marked ``~``. Without a peak the cell shows the time alone.

Thread counts are made comparable: a row at the machine's all-thread count is
shown as "all threads" (the header gives each machine's count). pytest-benchmark
rows are marked "[pytest]": the suite times prepared forms, r2n bench the
one-call ops. Two files of one label with the same row are an error (give
repeated runs of one machine different labels: they become two columns).

``benchmarks/bench_engines.py --json`` files (``"tool": "bench_engines"``):
the machine, the measured FMA peak, each cell's time per engine with r2n vs
the faster of ONNX Runtime and OpenVINO, and each engine's GFLOP/s and % of
the FMA peak (``bench_engines.markdown``).

``r2n ladder --json`` files (``"tool": "r2n ladder"``): the machine, its peaks at
the run's thread count, and per ladder (op and shape) one row per step, the
library last: ms, GFLOP/s, % of the roofline at the op's arithmetic
intensity, the speedup over the previous step and over step 1 (the README's
"Kernel ladders" tables); ``--plot PNG`` redraws the bars.

``r2n profile --json`` files (``"tool": "r2n profile"``): the time by role
against the floors, and the ``--top`` layers with the most time above their
floor, beside ONNX Runtime's when profiled (``r2n.cli.profile.markdown``).

The README's and NOTES.md's tables are produced by this script, not typed.
"""

from __future__ import annotations

import argparse
import json
import re

# The ladder tables' number formats are r2n ladder's own, so both print the same.
from r2n.cli.ladder import format_flops, format_percent, format_rate


def rows_of(data: dict, baseline: str, keep_rows=None, keep_threads=None) -> list[tuple]:
    groups: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], []).append(b)
    out = []
    for group in sorted(groups, key=_natural):
        benches = groups[group]
        # The baseline of a row is the baseline backend at the same thread count.
        base = {
            b["extra_info"].get("threads"): b["stats"]["median"]
            for b in benches
            if b["extra_info"].get("backend") == baseline
        }
        for b in sorted(
            benches, key=lambda b: (b["extra_info"].get("threads"), b["stats"]["median"])
        ):
            median = b["stats"]["median"]
            info = b["extra_info"]
            gflops = info["flops"] / median / 1e9 if info.get("flops") else None
            base_median = base.get(info.get("threads"))
            ratio = base_median / median if base_median else None
            if keep_rows and info.get("backend") not in keep_rows:
                continue
            if keep_threads and info.get("threads") != keep_threads:
                continue
            out.append(
                (
                    group,
                    info.get("backend", b["name"]),
                    info.get("threads"),
                    median * 1e3,
                    gflops,
                    ratio,
                )
            )
    return out


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def markdown(rows: list[tuple], baseline: str) -> str:
    lines = [
        f"| group | row | threads | median ms | GFLOP/s | speed vs {baseline} (same threads) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, row, threads, ms, gflops, ratio in rows:
        g = "" if gflops is None else f"{gflops:.1f}"
        r = "" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"| {group} | {row} | {threads} | {ms:.3f} | {g} | {r} |")
    return "\n".join(lines)


def _f(value, spec, suffix=""):
    return "" if value is None else f"{value:{spec}}{suffix}"


def bench_markdown(data: dict, keep_rows=None, keep_threads=None) -> str:
    """Markdown of an ``r2n bench --json`` report: machine, rows, speedup model."""
    m = data.get("machine", {})
    peaks = data.get("peaks") or {}
    sg = ", ".join(
        f"{_f(v, '.0f') or 'n/a'} ({t}t)" for t, v in peaks.get("sgemm_gflops", {}).items()
    )
    cp = ", ".join(f"{_f(v, '.1f') or 'n/a'} ({t}t)" for t, v in peaks.get("copy_gbs", {}).items())
    versions = ", ".join(f"{k} {m[k]}" for k in ("numpy", "numba", "torch") if m.get(k))
    out = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, all threads = "
        f"{data.get('threads_all')}; {versions}; run {data.get('datetime')}"
        f"{' (--quick)' if data.get('quick') else ''}.",
        f"Measured peaks: sgemm {sg} GFLOP/s; copy {cp} GB/s.",
    ]
    if data.get("other_load") is not None:
        out.append(
            f"Other processes kept {100 * data['other_load']:.0f}% of the CPUs busy "
            "during the run."
        )
    gpu = data.get("gpu_peaks")
    if gpu:
        out.append(
            f"GPU {gpu['name']}: sgemm {gpu['sgemm_gflops']:.0f} GFLOP/s, copy "
            f"{gpu['copy_gbs']:.0f} GB/s."
        )
    # Runs before the other engines' rows (issue 13) have no "vs best engine".
    engines = any("vs_best_engine" in r for r in data["rows"])
    out += [
        "",
        "| op | shape | row | status | rel. err | ms | GFLOP/s | % peak | vs serial | vs torch |"
        + (" vs best engine |" if engines else ""),
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if engines else ""),
    ]
    for r in data["rows"]:
        if keep_rows and not any(r["row"].startswith(k) for k in keep_rows):
            continue
        # GPU rows (threads None) and the serial reference always stay.
        host_other = r.get("threads") not in (None, keep_threads)
        if keep_threads and host_other and not r["row"].startswith("reference"):
            continue
        out.append(
            f"| {r['op']} | {r['case']} | {r['row']} | {r['status']} | "
            f"{_f(r.get('rel_err'), '.1e')} | {_f(r.get('ms'), '.3f')} | "
            f"{_f(r.get('gflops'), '.1f')} | {_f(r.get('pct_peak'), '.0f', '%')} | "
            f"{_f(r.get('vs_serial'), '.2f', 'x')} | {_f(r.get('vs_torch'), '.2f', 'x')} |"
            + (f" {_f(r.get('vs_best_engine'), '.2f', 'x')} |" if engines else "")
        )
    models = [r for r in data.get("model", []) if r.get("status") == "ok"]
    if models:
        out += [
            "",
            "Speedup model (serial = cpu backend, 1 thread; times in ms):",
            "",
            "| block | parallel | S | T1 | T2 | k1 | k2 | predicted vs serial | "
            "predicted vs PyTorch-style | measured r2n vs serial | measured PyTorch vs serial | "
            "measured r2n vs PyTorch |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in models:
            ms = r["ms"]
            out.append(
                f"| {r['case']} | {r['parallel']} | {ms['S_serial']:.3f} | "
                f"{ms['T1_serial']:.3f} | {ms['T2_serial']:.3f} | {r['k1']:.2f} | "
                f"{r['k2']:.2f} | {r['predicted_vs_serial']:.2f}x | "
                f"{r['predicted_vs_torch_style']:.2f}x | {r['measured_r2n_vs_serial']:.2f}x | "
                f"{_f(r.get('measured_torch_vs_serial'), '.2f', 'x')} | "
                f"{_f(r.get('measured_r2n_vs_torch'), '.2f', 'x')} |"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# r2n ladder: one table per ladder
# --------------------------------------------------------------------------- #


def ladder_markdown(data: dict) -> str:
    """Markdown of an ``r2n ladder --json`` report: the machine and its peaks, then
    per ladder (op and shape) one row per step, the library last. A step that was
    not timed shows its status (WRONG, ERROR, skipped: why) in the ms column."""
    m = data.get("machine", {})
    versions = ", ".join(f"{k} {m[k]}" for k in ("numpy", "numba", "torch") if m.get(k))
    threads = data.get("threads")
    if data.get("backend") == "gpu":
        g = data.get("gpu_peaks") or {}
        where = f"GPU {data.get('device')}"
        peaks = f"sgemm {_f(g.get('sgemm_gflops'), '.0f')} GFLOP/s, "
        peaks += f"copy {_f(g.get('copy_gbs'), '.0f')} GB/s"
    else:
        p = data.get("peaks") or {}
        t = str(threads)
        where = f"{threads} thread{'s' if threads != 1 else ''} of {m.get('cpu_count', '?')}"
        peaks = (
            f"sgemm {_f(p.get('sgemm_gflops', {}).get(t), '.0f')} GFLOP/s, "
            f"copy {_f(p.get('copy_gbs', {}).get(t), '.1f')} GB/s"
        )
    out = [
        f"Machine: {m.get('cpu', '?')}, {where}; {versions}; run {data.get('datetime')}"
        f"{' (--quick)' if data.get('quick') else ''}; steps from {data.get('ladders_from')}.",
        f"Measured at that thread count: {peaks}.",
    ]
    if data.get("other_load") is not None:
        out.append(
            f"Other processes kept {100 * data['other_load']:.0f}% of the CPUs busy during "
            "the run."
        )
    out += [f"Note: {note}" for note in data.get("notes", [])]
    for lad in data["ladders"]:
        out += [
            "",
            f"**{lad['op']} {lad['case']}** ({lad['origin']}): {format_flops(lad['flops'])}, "
            f"{lad['intensity']:.2f} FLOP/byte, roofline {format_rate(lad['roofline_gflops'])} "
            "GFLOP/s",
            "",
            "| step | what it changes | ms | GFLOP/s | % of roofline | vs previous | vs step 1 |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in lad["rows"]:
            ms = _f(r.get("ms"), ".3f")
            if r["status"] == "skipped":
                ms = f"skipped: {r.get('reason', '')}"
            elif r["status"] != "ok":
                ms = r["status"]
            step = f"`{r['step']}`" if r["kind"] == "step" else r["step"]
            rate, pct = format_rate(r.get("gflops")), format_percent(r.get("pct_roofline"))
            out.append(
                f"| {step} | {r.get('summary') or ''} | {ms} | {rate} | {pct} | "
                f"{_f(r.get('x_previous'), '.2f', 'x')} | {_f(r.get('x_step1'), '.2f', 'x')} |"
            )
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# Several machines: one table, % of each machine's peak
# --------------------------------------------------------------------------- #


class Machine:
    """What the files of one label say: peaks, description, rows by key.

    ``rows`` maps (benchmark, row) -> (pct of peak or None, median ms, status,
    estimated) where benchmark is "op case" (r2n bench) or "group [pytest]"
    (pytest-benchmark, which times prepared forms: other rows than r2n bench's),
    and row has its all-thread count replaced by "all threads".
    """

    def __init__(self, label: str):
        self.label = label
        self.files: list[str] = []
        self.descriptions: list[str] = []
        self.peaks: dict[str, float] = {}  # "1", "2", ... threads, and "gpu": GFLOP/s
        self.all_threads: int | None = None
        self.rows: dict[tuple[str, str], tuple] = {}
        self._pytest: list[tuple[str, dict]] = []
        self._sources: dict[tuple[str, str], str] = {}  # row key -> the file it came from

    def add(self, path: str, data: dict) -> None:
        self.files.append(path)
        if data.get("tool") == "r2n bench":
            self._add_bench(data)
        elif "benchmarks" in data:
            self._pytest.append((path, data))
            cpu = data.get("machine_info", {}).get("cpu", {})
            self.descriptions.append(f"{cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores")
        else:
            raise SystemExit(f"{path}: neither an r2n bench nor a pytest-benchmark JSON file")

    def _add_bench(self, data: dict) -> None:
        m = data.get("machine", {})
        gpu = data.get("gpu_peaks") or {}
        self.descriptions.append(
            f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores"
            + (f", {gpu['name']}" if gpu.get("name") else "")
        )
        for threads, gflops in (data.get("peaks") or {}).get("sgemm_gflops", {}).items():
            if gflops:
                self.peaks.setdefault(str(threads), gflops)
        if gpu.get("sgemm_gflops"):
            self.peaks.setdefault("gpu", gpu["sgemm_gflops"])
        all_threads = data.get("threads_all")
        self.all_threads = self.all_threads or all_threads
        for r in data["rows"]:
            key = (f"{r['op']} {r['case']}", _all_threads_label(r["row"], all_threads))
            ok = r.get("status") == "ok"
            value = (
                r.get("pct_peak") if ok else None,
                r.get("ms") if ok else None,
                r.get("status", "?"),
                False,
            )
            self._set(key, value)

    def finish(self) -> None:
        """Add the pytest-benchmark rows, now that every peak of the label is known."""
        for path, data in self._pytest:
            threads_seen = [
                b["extra_info"].get("threads")
                for b in data["benchmarks"]
                if b["extra_info"].get("threads") is not None
            ]
            all_threads = max(threads_seen, default=None)
            self.all_threads = self.all_threads or all_threads
            for b in data["benchmarks"]:
                info = b["extra_info"]
                median = b["stats"]["median"]
                threads = info.get("threads")
                on_gpu = info.get("device") == "cuda" or info.get("backend") == "gpu"
                name = info.get("backend", b["name"])
                if on_gpu:
                    row = name if name == "gpu" else f"{name} (cuda)"
                else:
                    row = _all_threads_label(f"{name} {threads}t", all_threads)
                peak, estimated = self.peak("gpu" if on_gpu else threads)
                pct = None
                if peak and info.get("flops"):
                    pct = 100 * info["flops"] / median / 1e9 / peak
                # The suite times prepared forms, r2n bench one-call ops: never one row.
                key = (f"{b['group']} [pytest]", row)
                self._set(key, (pct, median * 1e3, "ok", bool(estimated and pct)), path)

    def _set(self, key, value, path=None) -> None:
        path = path or self.files[-1]
        if key in self._sources:
            raise SystemExit(
                f"{self._sources[key]} and {path} both have {key[1]!r} of {key[0]!r} under "
                f"the label {self.label!r}: give the runs different labels"
            )
        self._sources[key] = path
        self.rows[key] = value

    def peak(self, threads) -> tuple[float | None, bool]:
        """(sgemm GFLOP/s at ``threads`` or "gpu", whether it is an estimate)."""
        if threads is None:
            return None, False
        if str(threads) in self.peaks:
            return self.peaks[str(threads)], False
        host = {int(t): g for t, g in self.peaks.items() if t.isdigit()}
        below = [t for t in host if t < threads] if threads != "gpu" else []
        if not below:
            return None, False
        # Linear in threads from the nearest measured count below, capped by
        # the nearest measured count above (cores share clocks and memory).
        estimate = host[max(below)] * threads / max(below)
        above = [t for t in host if t > threads]
        if above:
            estimate = min(estimate, host[min(above)])
        return estimate, True

    def describe(self) -> str:
        peaks = ", ".join(
            f"{g:.0f} ({t if t == 'gpu' else t + 't'})"
            for t, g in sorted(self.peaks.items(), key=lambda kv: _natural(kv[0]))
        )
        return (
            f"**{self.label}**: {'; '.join(dict.fromkeys(self.descriptions))}; all threads = "
            f"{self.all_threads}; sgemm peaks {peaks or 'not given'} GFLOP/s "
            f"({', '.join(self.files)})"
        )


def _all_threads_label(row: str, all_threads) -> str:
    """ "cpu 16t" -> "cpu all threads" when 16 is the machine's all-thread count
    (a 1-thread row stays "1t")."""
    suffix = f" {all_threads}t"
    if all_threads and all_threads != 1 and row.endswith(suffix):
        return row[: -len(suffix)] + " all threads"
    return row


def _parse_peak(spec: str) -> tuple[str, dict[str, float]]:
    """ "zen5=1t:235,2t:470,gpu:51000" -> ("zen5", {"1": 235.0, "2": 470.0, "gpu": 51000.0})."""
    label, _, values = spec.partition("=")
    peaks = {}
    try:
        for part in values.split(","):
            key, _, gflops = part.partition(":")
            key = key.strip().removesuffix("t")
            if not (key == "gpu" or key.isdigit()):
                raise ValueError(part)
            peaks[key] = float(gflops)
    except ValueError as e:
        raise SystemExit(
            f"--peak {spec!r}: expected LABEL=1t:GFLOPS[,Nt:GFLOPS][,gpu:GFLOPS] ({e})"
        ) from e
    if not label or not peaks:
        raise SystemExit(f"--peak {spec!r}: expected LABEL=1t:GFLOPS[,Nt:GFLOPS][,gpu:GFLOPS]")
    return label, peaks


def default_label(data: dict) -> str:
    """A machine label from a file: CPU, cores, and the GPU when there is one."""
    if data.get("tool") == "r2n bench":
        m = data.get("machine", {})
        gpu = (data.get("gpu_peaks") or {}).get("name")
        label = f"{m.get('cpu', '?')} x{m.get('cpu_count', '?')}"
        return f"{label} + {gpu}" if gpu else label
    cpu = data.get("machine_info", {}).get("cpu", {})
    return f"{cpu.get('brand_raw', '?')} x{cpu.get('count', '?')}"


def merge(inputs: list[str], peaks: list[str] = ()) -> list[Machine]:
    """Machines (in first-seen label order) from ``[LABEL=]FILE`` inputs."""
    machines: dict[str, Machine] = {}
    for spec in inputs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = "", spec
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"report.py: cannot read {path}: {e}") from e
        label = label or default_label(data)
        machines.setdefault(label, Machine(label)).add(path, data)
    for spec in peaks:
        label, given = _parse_peak(spec)
        if label not in machines:
            raise SystemExit(f"--peak {spec!r}: no input has the label {label!r}")
        machines[label].peaks.update(given)
    for m in machines.values():
        m.finish()
    return list(machines.values())


def merged_markdown(machines: list[Machine], keep_rows=None, only=None) -> str:
    """One table: a row per (benchmark, row), a column per machine, "% of peak (ms)".

    ``keep_rows``: row-name prefixes to keep; ``only``: keep benchmarks whose
    name contains this text."""
    keys = list(dict.fromkeys(k for m in machines for k in m.rows))
    keys.sort(key=lambda k: (_natural(k[0]), _natural(k[1])))
    out = [m.describe() for m in machines]
    out += [
        "",
        "| benchmark | row | " + " | ".join(f"{m.label}: % peak (ms)" for m in machines) + " |",
        "|---|---|" + "---:|" * len(machines),
    ]
    for key in keys:
        if keep_rows and not any(key[1].startswith(k) for k in keep_rows):
            continue
        if only and only not in key[0]:
            continue
        cells = []
        for m in machines:
            value = m.rows.get(key)
            if value is None:
                cells.append("")
                continue
            pct, ms, status, estimated = value
            if ms is None:
                cells.append(status)
            elif pct is None:
                cells.append(f"({ms:.3f})")
            else:
                digits = 1 if pct < 10 else 0  # GPU rows of small shapes: fractions of 1%
                cells.append(f"{'~' if estimated else ''}{pct:.{digits}f}% ({ms:.3f})")
        out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file", nargs="?")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="[LABEL=]FILE",
        help="several files (machines) in one table, as %% of each machine's peak",
    )
    parser.add_argument(
        "--peak",
        action="append",
        default=[],
        metavar="LABEL=1t:G[,Nt:G][,gpu:G]",
        help="--merge: sgemm GFLOP/s of a machine with no r2n bench file",
    )
    parser.add_argument("--only", metavar="TEXT", help="--merge: benchmarks whose name has TEXT")
    parser.add_argument("--baseline", default="torch-eager")
    parser.add_argument("--rows", help="comma-separated rows to show (default: all)")
    parser.add_argument("--threads", type=int, help="only rows with this thread count")
    parser.add_argument(
        "--top", type=int, default=10, help="r2n profile files: layers listed (0: none)"
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="r2n bench files: also redraw the PNG of r2n bench --plot"
    )
    args = parser.parse_args(argv)
    keep_rows = args.rows.split(",") if args.rows else None
    if args.merge:
        inputs = ([args.json_file] if args.json_file else []) + args.merge
        print(merged_markdown(merge(inputs, args.peak), keep_rows, args.only))
        return
    if not args.json_file:
        parser.error("give a JSON file, or several with --merge")
    with open(args.json_file) as f:
        data = json.load(f)
    if data.get("tool") == "r2n profile":
        from r2n.cli import profile as profile_cli

        print(profile_cli.markdown(data, top=args.top))
        return
    if data.get("tool") == "bench_engines":
        import bench_engines  # beside this script

        print(bench_engines.markdown(data))
        return
    if data.get("tool") == "r2n ladder":
        print(ladder_markdown(data))
        if args.plot:
            from r2n._bench import plot

            plot.plot_ladders(data, args.plot)
        return
    if data.get("tool") == "r2n bench":
        print(bench_markdown(data, keep_rows, args.threads))
        if args.plot:
            from r2n._bench import plot

            plot.plot(data, args.plot)
        return
    m = data.get("machine_info", {})
    print(
        f"Machine: {m.get('cpu', {}).get('brand_raw', '?')}, "
        f"{m.get('cpu', {}).get('count', '?')} cores; run {data.get('datetime', '?')}\n"
    )
    print(markdown(rows_of(data, args.baseline, keep_rows, args.threads), args.baseline))


if __name__ == "__main__":
    main()
