"""Markdown table from a saved pytest-benchmark JSON file.

    python benchmarks/report.py benchmarks/results/FILE.json [--baseline torch-eager]
        [--rows cpu,torch-eager] [--threads 2]

One row per benchmark, grouped as in the run: median ms, GFLOP/s (from
``extra_info["flops"]``) and the speed relative to the baseline row of the same
group and thread count (``> 1`` means faster than the baseline). The README's and NOTES.md's
tables are produced by this script, not typed.
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--baseline", default="torch-eager")
    parser.add_argument("--rows", help="comma-separated rows to show (default: all)")
    parser.add_argument("--threads", type=int, help="only rows with this thread count")
    args = parser.parse_args(argv)
    keep_rows = args.rows.split(",") if args.rows else None
    with open(args.json_file) as f:
        data = json.load(f)
    m = data.get("machine_info", {})
    print(
        f"Machine: {m.get('cpu', {}).get('brand_raw', '?')}, "
        f"{m.get('cpu', {}).get('count', '?')} cores; run {data.get('datetime', '?')}\n"
    )
    print(markdown(rows_of(data, args.baseline, keep_rows, args.threads), args.baseline))


if __name__ == "__main__":
    main()
