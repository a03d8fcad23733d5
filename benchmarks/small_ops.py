"""TResNet-M's small memory-bound ops on the calling thread or split across threads.

Times each of tresnet_m's pools, blur pools, squeeze-excites and its
space_to_depth and global pool at their 224x224 shapes (one call per
distinct shape), through ``r2n.cpu``, at 2 threads with
every value of ``r2n.cpu._jit.SMALL_OP_BYTES`` set to 0 (every op splits
across the threads: one parallel region per pass, each waking the sleeping
worker) and to 2**62 (every op on the calling thread alone) and to its value (ops
under it run on the calling thread), and at 1 thread.
The rounds run the four settings in turn, forwards then backwards; medians
of wall time (CPU time at 1 thread would be the same). ``split / one`` > 1 says the op is faster on
one thread; ``split / rule`` is what the rule gains (> 1) or loses (< 1)
against splitting every op; MiB is the bytes the op passes to the rule.

Usage::

    python benchmarks/small_ops.py [--batch 1] [--rounds 15] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from r2n.cpu import _jit, layers, pool

# (label, op, x's (C, H, W)): tresnet_m's small ops at 224x224; "se_basic" is
# a BasicBlock's SE with the residual add and ReLU, "se_bottleneck" without.
TRESNET_M = (
    ("s2d", "space_to_depth", (3, 224, 224)),
    ("avg_pool layer2.0", "avg_pool2d", (64, 56, 56)),
    ("avg_pool layer3.0", "avg_pool2d", (128, 28, 28)),
    ("avg_pool layer4.0", "avg_pool2d", (1024, 14, 14)),
    ("blur layer2.0", "blur_pool2d", (128, 56, 56)),
    ("blur layer3.0", "blur_pool2d", (256, 28, 28)),
    ("blur layer4.0", "blur_pool2d", (512, 14, 14)),
    ("se layer1 (+res, relu)", "se_basic", (64, 56, 56)),
    ("se layer2 (+res, relu)", "se_basic", (128, 28, 28)),
    ("se layer3", "se_bottleneck", (256, 14, 14)),
    ("global_pool", "global_avg_pool2d", (2048, 7, 7)),
)


def make_call(op, x, rng):
    """A no-argument callable running op on x, and the bytes it moves."""
    dt = x.dtype
    if op == "space_to_depth":
        out = np.empty((x.shape[0], 48, x.shape[2] // 4, x.shape[3] // 4), dt)
        return lambda: layers.space_to_depth(x, block_size=4, out=out), x.nbytes + out.nbytes
    if op == "avg_pool2d":
        n, c, h, w = x.shape
        shape = (n, c, (h + 1) // 2, (w + 1) // 2)
        out = np.empty(shape, dt)
        args = dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True)
        return (
            lambda: pool.avg_pool2d(x, **args, count_include_pad=False, out_shape=shape, out=out),
            x.nbytes + out.nbytes,
        )
    if op == "blur_pool2d":
        n, c, h, w = x.shape
        out = np.empty((n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1), dt)
        return lambda: layers.blur_pool2d(x, out=out), x.nbytes + out.nbytes
    if op == "global_avg_pool2d":
        out = np.empty(x.shape[:2], dt)
        return lambda: pool.global_avg_pool2d(x, out=out), x.nbytes + out.nbytes
    c = x.shape[1]
    c_mid = max(c // 4, 64) if op == "se_basic" else max(c * 4 // 8, 64)
    w1 = rng.standard_normal((c_mid, c, 1, 1)).astype(dt) / np.sqrt(c)
    b1 = rng.standard_normal(c_mid).astype(dt)
    w2 = rng.standard_normal((c, c_mid, 1, 1)).astype(dt) / np.sqrt(c_mid)
    b2 = rng.standard_normal(c).astype(dt)
    out = np.empty_like(x)
    if op == "se_basic":
        residual = rng.standard_normal(x.shape).astype(dt)
        return (
            lambda: layers.squeeze_excite(
                x, w1, b1, w2, b2, residual=residual, relu=True, out=out
            ),
            3 * x.nbytes + out.nbytes,
        )
    return lambda: layers.squeeze_excite(x, w1, b1, w2, b2, out=out), 2 * x.nbytes + out.nbytes


def median_us(call, reps):
    """Median of ``reps`` timed calls, in microseconds."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=20, help="timed calls per round")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    thresholds = dict(_jit.SMALL_OP_BYTES)
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    print(
        f"batch {args.batch}, {args.dtype}, SMALL_OP_BYTES (MiB) "
        f"{ {k: v / 2**20 for k, v in thresholds.items()} }, medians of "
        f"{args.rounds} rounds x {args.reps} calls, us; split = every op parallel"
    )
    print(
        f"{'op':24s} {'MiB':>6s} {'1t':>8s} {'2t split':>9s} {'2t one':>8s} {'2t rule':>8s} "
        f"{'split/one':>10s} {'split/rule':>10s}"
    )
    for name, op, shape in TRESNET_M:
        x = rng.standard_normal((args.batch, *shape)).astype(args.dtype)
        call, nbytes = make_call(op, x, rng)
        results = {"1t": [], "split": [], "one": [], "rule": []}
        settings = [
            ("1t", 1, thresholds),
            ("split", threads, dict.fromkeys(thresholds, 0)),
            ("one", threads, dict.fromkeys(thresholds, 1 << 62)),
            ("rule", threads, thresholds),
        ]
        try:
            for r in range(args.rounds):
                for label, t, limit in settings if r % 2 == 0 else settings[::-1]:
                    numba.set_num_threads(t)
                    _jit.SMALL_OP_BYTES.update(limit)
                    call()  # warm: compile, caches, the thread count's first launch
                    results[label].append(median_us(call, args.reps))
        finally:
            _jit.SMALL_OP_BYTES.update(thresholds)
        m = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"{name:24s} {nbytes / 2**20:6.2f} {m['1t']:8.1f} {m['split']:9.1f} {m['one']:8.1f} "
            f"{m['rule']:8.1f} {m['split'] / m['one']:9.2f}x {m['split'] / m['rule']:9.2f}x"
        )


if __name__ == "__main__":
    main()
