"""The float32 FMA peak of one core, measured: the compute ceiling of the CPU rows.

    python benchmarks/fma_peak.py [--seconds 0.3] [--repeats 7]

Prints GFLOP/s per repeat from the thread's CPU time and from wall time, and
the best of each. The measurement (24 independent ``<16 x float>``
``llvm.fma`` chains in an LLVM-IR Numba intrinsic, as the conv micro-kernel)
lives in :mod:`r2n._bench.fma`, shared with ``r2n profile`` and
``benchmarks/bench_engines.py``.

The number is a ceiling for any float32 kernel on one core of this machine:
FLOPs / (peak x threads) is the least time a benchmark row can take.
"""

from __future__ import annotations

import argparse

from r2n._bench import fma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one repeat")
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()
    best_cpu, best_wall = fma.measure(opts.seconds, opts.repeats, echo=print)
    print(f"best: {best_cpu:.1f} GFLOP/s (cpu time), {best_wall:.1f} GFLOP/s (wall), one core")


if __name__ == "__main__":
    main()
