"""The float32 FMA peak of one core, measured: the compute ceiling of the CPU rows.

    python benchmarks/fma_peak.py [--seconds 0.3] [--repeats 7]

One thread runs ``ACCUMULATORS`` independent chains of ``<16 x float>``
``llvm.fma`` (written in LLVM IR through a Numba intrinsic, as the conv
micro-kernel in r2n/cpu/_simd.py is): enough independent chains to hide the
FMA latency on any x86 core, no memory access in the loop. On a CPU with
AVX-512 each FMA is one zmm instruction; Zen 4 runs it double-pumped (one
16-lane FMA per cycle), Zen 5 and Intel server cores with two FMA units two.
Prints GFLOP/s (a fused multiply-add counts 2) per repeat from the thread's
CPU time (``time.thread_time``, so another process on the same core does not
lower it) and from wall time, and the best of each.

The number is a ceiling for any float32 kernel on one core of this machine:
FLOPs / (peak x threads) is the least time a benchmark row can take.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

ACCUMULATORS = 24  # independent FMA chains (latency 4 x 2 units x 3 for slack)
LANES = 16  # float32 lanes of a 64-byte vector


@intrinsic
def _fma_loop(typingctx, iterations, out):
    """``iterations`` rounds of ACCUMULATORS independent vector FMAs; the sum of
    the accumulators goes to out[:16] (so the loop is not optimised away)."""
    sig = types.void(iterations, out)

    def codegen(context, builder, signature, args):
        n_iter, out_arr = args
        vec = ir.VectorType(ir.FloatType(), LANES)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32"
        )
        out_ptr = context.make_array(signature.args[1])(context, builder, out_arr).data
        accs = [
            cgutils.alloca_once_value(builder, ir.Constant(vec, [i * 1e-3] * LANES))
            for i in range(ACCUMULATORS)
        ]
        a = ir.Constant(vec, [0.999999] * LANES)
        b = ir.Constant(vec, [1e-7] * LANES)
        with cgutils.for_range(builder, n_iter):
            for acc in accs:
                builder.store(builder.call(fma, [builder.load(acc), a, b]), acc)
        total = builder.load(accs[0])
        for acc in accs[1:]:
            total = builder.fadd(total, builder.load(acc))
        builder.store(total, builder.bitcast(out_ptr, vec.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit
def _run(iterations, out):
    _fma_loop(iterations, out)


def measure(seconds: float = 0.3, repeats: int = 7) -> tuple[float, float]:
    """(best GFLOP/s from CPU time, best from wall time) of one thread."""
    out = np.zeros(LANES, np.float32)
    _run(1000, out)  # compile
    t0 = time.perf_counter()
    _run(1_000_000, out)
    per_iter = (time.perf_counter() - t0) / 1_000_000
    iterations = max(1000, int(seconds / max(per_iter, 1e-12)))
    flops = 2 * LANES * ACCUMULATORS * iterations
    best_cpu = best_wall = 0.0
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        _run(iterations, out)
        c1, w1 = time.thread_time(), time.perf_counter()
        cpu, wall = flops / (c1 - c0) / 1e9, flops / (w1 - w0) / 1e9
        print(f"cpu time {cpu:7.1f} GFLOP/s   wall {wall:7.1f} GFLOP/s")
        best_cpu, best_wall = max(best_cpu, cpu), max(best_wall, wall)
    return best_cpu, best_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one repeat")
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args()
    best_cpu, best_wall = measure(opts.seconds, opts.repeats)
    print(f"best: {best_cpu:.1f} GFLOP/s (cpu time), {best_wall:.1f} GFLOP/s (wall), one core")


if __name__ == "__main__":
    main()
