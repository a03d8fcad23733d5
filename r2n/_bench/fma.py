"""The float32 FMA peak of one core, measured: the compute ceiling of CPU rows.

One thread runs ``ACCUMULATORS`` independent chains of ``<16 x float>``
``llvm.fma`` (written in LLVM IR through a Numba intrinsic, as the conv
micro-kernel in r2n/cpu/microkernel.py is): enough independent chains to hide the
FMA latency on any x86 core, no memory access in the loop. On a CPU with
AVX-512 each FMA is one zmm instruction; Zen 4 runs it double-pumped (one
16-lane FMA per cycle), Zen 5 and Intel server cores with two FMA units two.
GFLOP/s count a fused multiply-add as 2, from the thread's CPU time
(``time.thread_time``, so another process on the same core does not lower
it) and from wall time; the best repeat of each is the peak.

The number is a ceiling for any float32 kernel on one core of this machine:
FLOPs / (peak x threads) is the least time a layer or a network can take.
``benchmarks/fma_peak.py`` prints it; ``r2n profile`` and
``benchmarks/bench_engines.py`` measure it at their start. Needs Numba
(llvmlite comes with it).
"""

from __future__ import annotations

import time

import numpy as np

ACCUMULATORS = 24  # independent FMA chains (latency 4 x 2 units x 3 for slack)
LANES = 16  # float32 lanes of a 64-byte vector

_KERNEL: list = []


def _kernel():
    """The compiled ``run(iterations, out)`` (built on first use: imports Numba)."""
    if _KERNEL:
        return _KERNEL[0]
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def fma_loop(typingctx, iterations, out):
        """``iterations`` rounds of ACCUMULATORS independent vector FMAs; the
        accumulators' sum goes to out[:16] (so the loop is not optimised away)."""
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
    def run(iterations, out):
        fma_loop(iterations, out)

    _KERNEL.append(run)
    return run


def measure(seconds: float = 0.3, repeats: int = 7, echo=None) -> tuple[float, float]:
    """(best GFLOP/s from CPU time, best from wall time) of one thread.

    Parameters
    ----------
    seconds : length of one repeat
    repeats : how many repeats (the best one is the peak)
    echo : None, or a function called with one line of text per repeat
    """
    run = _kernel()
    out = np.zeros(LANES, np.float32)
    run(1000, out)  # compile
    t0 = time.perf_counter()
    run(200_000, out)
    per_iter = (time.perf_counter() - t0) / 200_000
    iterations = max(1000, int(seconds / max(per_iter, 1e-12)))
    flops = 2 * LANES * ACCUMULATORS * iterations
    best_cpu = best_wall = 0.0
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        run(iterations, out)
        c1, w1 = time.thread_time(), time.perf_counter()
        cpu, wall = flops / max(c1 - c0, 1e-9) / 1e9, flops / (w1 - w0) / 1e9
        if echo is not None:
            echo(f"cpu time {cpu:7.1f} GFLOP/s   wall {wall:7.1f} GFLOP/s")
        best_cpu, best_wall = max(best_cpu, cpu), max(best_wall, wall)
    return best_cpu, best_wall


def peak_gflops(seconds: float = 0.1, repeats: int = 5) -> float | None:
    """One core's float32 FMA peak in GFLOP/s (the CPU-time figure), or None
    without Numba. A short measurement (~``seconds x repeats``) for tools
    that need the ceiling, not the full ``benchmarks/fma_peak.py`` run."""
    try:
        best_cpu, _ = measure(seconds, repeats)
    except ImportError:
        return None
    return best_cpu
