"""Markdown tables from a saved pytest-benchmark JSON file or ``r2n bench --json`` file.

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

``benchmarks/bench_engines.py --json`` files (``"tool": "bench_engines"``):
the machine, the measured FMA peak, each cell's time per engine with r2n vs
the faster of ONNX Runtime and OpenVINO, and each engine's GFLOP/s and % of
the FMA peak (``bench_engines.markdown``).

``r2n profile --json`` files (``"tool": "r2n profile"``): the time by role
against the floors, and the ``--top`` layers with the most time above their
floor, beside ONNX Runtime's when profiled (``r2n._profile_cli.markdown``).

The README's and NOTES.md's tables are produced by this script, not typed.
"""

from __future__ import annotations

import argparse
import json
import re


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
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
    with open(args.json_file) as f:
        data = json.load(f)
    if data.get("tool") == "r2n profile":
        from r2n import _profile_cli

        print(_profile_cli.markdown(data, top=args.top))
        return
    if data.get("tool") == "bench_engines":
        import bench_engines  # beside this script

        print(bench_engines.markdown(data))
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
