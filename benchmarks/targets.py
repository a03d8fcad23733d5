"""The CPU backend's targets (issue 3) against a saved bench_res2net.py run, with ceilings.

    python benchmarks/targets.py benchmarks/results/FILE.json --peak 117.4

For every group and thread count: the cpu row's time, its speed vs
torch-eager (same threads), the target (1.0x for bottle2neck, 1.3x for the
chain), the time the target asks for (torch-eager's time / target), the
GFLOP/s that time needs, and the compute floor: FLOPs / (peak x threads),
``peak`` being one core's measured float32 FMA rate (benchmarks/fma_peak.py).
A target whose needed GFLOP/s passes peak x threads cannot be met on that
machine by any kernel ("impossible"). Printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json

TARGETS = {"bottle2neck": 1.0, "chain": 1.3}


def rows(data: dict, peak: float) -> list[tuple]:
    by_key: dict[tuple, dict] = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        by_key[(b["group"], info.get("backend"), info.get("threads"))] = b
    out = []
    for (group, backend, threads), b in sorted(by_key.items(), key=lambda kv: _order(kv[0])):
        if backend != "cpu":
            continue
        torch = by_key.get((group, "torch-eager", threads))
        if torch is None:
            continue
        target = TARGETS[group.split()[0]]
        flops = b["extra_info"]["flops"]
        ours, theirs = b["stats"]["median"], torch["stats"]["median"]
        needed_s = theirs / target
        needed_gflops = flops / needed_s / 1e9
        ceiling = peak * threads
        if ours <= needed_s:
            verdict = "met"
        elif needed_gflops > ceiling:
            verdict = "impossible"
        else:
            verdict = "not met"
        out.append(
            (
                group,
                threads,
                ours * 1e3,
                theirs / ours,
                target,
                needed_s * 1e3,
                needed_gflops,
                flops / ours / 1e9,
                flops / ceiling / 1e9 * 1e3,
                verdict,
            )
        )
    return out


def _order(key):
    group, _, threads = key
    kind, name, batch = group.split()
    return (kind, name, int(batch.split("=")[1]), threads or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a pytest-benchmark JSON of bench_res2net.py")
    parser.add_argument("--peak", type=float, required=True, help="one core's GFLOP/s")
    opts = parser.parse_args()
    with open(opts.json) as f:
        data = json.load(f)
    print(
        "| group | threads | cpu ms | vs torch-eager | target | target ms | needs GFLOP/s "
        "| cpu GFLOP/s | floor ms | |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows(data, opts.peak):
        group, threads, ms, speed, target, need_ms, need_gf, gf, floor_ms, verdict = r
        print(
            f"| {group} | {threads} | {ms:.3f} | {speed:.2f}x | {target:.1f}x | {need_ms:.3f} "
            f"| {need_gf:.1f} | {gf:.1f} | {floor_ms:.3f} | {verdict} |"
        )


if __name__ == "__main__":
    main()
