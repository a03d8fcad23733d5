"""Winograd F(4x4, 3x3) against F(2x2, 3x3) and the direct conv, per conv shape.

Usage: python benchmarks/bench_winograd_4x4.py --threads 1 [--batch 1 8]
[--shapes chain tresnet] [--reps 7] [--out results.json]

Per shape, batch and thread count, the three kernels run on weights
prepared once (packed / transformed outside the timing), alternating
direct, F(2x2), F(4x4) in one process, ``--reps`` rounds; each kernel's
median wall time and median process CPU time (what the call cost the
machine, without the time other processes held its cores) are reported
with the same-run ratios. Inputs are ReLU'd random
values, weights of a BN-folded scale; the float32 error of each against the
float64 reference is recorded too (on the first image).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

import r2n
from r2n.cpu._scratch import scratch
from r2n.cpu.conv import v5_winograd, v6_winograd_4x4
from r2n.cpu.conv.v4_simd import conv_simd
from r2n.cpu.microkernel import pack_weights

#: (name, c_in, c_out, h): Res2Net-50's chain convs (scale 4, 26w) and
#: tresnet_m's 3x3 stride-1 convs (r2n/models/tresnet.py, 224x224 input).
SHAPES = {
    "chain": [
        ("res2net layer1 26ch", 26, 26, 56),
        ("res2net layer2 52ch", 52, 52, 28),
        ("res2net layer3 104ch", 104, 104, 14),
        ("res2net layer4 208ch", 208, 208, 7),
    ],
    "tresnet": [
        ("tresnet conv1 48->64", 48, 64, 56),
        ("tresnet layer1 64ch", 64, 64, 56),
        ("tresnet layer2.0 64->128", 64, 128, 56),
        ("tresnet layer2 128ch", 128, 128, 28),
        ("tresnet layer3.0 256ch 28", 256, 256, 28),
        ("tresnet layer3 256ch 14", 256, 256, 14),
        ("tresnet layer4.0 512ch 14", 512, 512, 14),
        ("tresnet layer4 512ch 7", 512, 512, 7),
    ],
}


def _kernels(x, weight, bias):
    c_out = weight.shape[0]
    packed = pack_weights(weight, 1)
    u2 = v5_winograd.transform_weights(weight, 1)
    u4 = v6_winograd_4x4.transform_weights(weight, 1)
    out = np.empty((x.shape[0], c_out, x.shape[2], x.shape[3]), x.dtype)

    def direct():
        conv_simd(x, packed, c_out, 1, (3, 3), (1, 1), (1, 1), (1, 1), bias, out,
                  activation="relu", scratch=scratch)  # fmt: skip
        return out

    def f2():
        v5_winograd.conv_winograd(x, u2, c_out, 1, (1, 1), bias, out, activation="relu",
                                  scratch=scratch)  # fmt: skip
        return out

    def f4():
        v6_winograd_4x4.conv_winograd_4x4(x, u4, c_out, 1, (1, 1), bias, out,
                                          activation="relu", scratch=scratch)  # fmt: skip
        return out

    return {"direct": direct, "F2x2": f2, "F4x4": f4}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--shapes", nargs="+", default=["chain", "tresnet"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args()
    r2n.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for group in args.shapes:
        for name, c_in, c_out, hw in SHAPES[group]:
            for n in args.batch:
                x = np.maximum(rng.standard_normal((n, c_in, hw, hw)), 0).astype(np.float32)
                scale = np.sqrt(2 / (9 * c_in)) * rng.uniform(0.3, 2.0, (c_out, 1, 1, 1))
                weight = (rng.standard_normal((c_out, c_in, 3, 3)) * scale).astype(np.float32)
                bias = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
                x64, w64, b64 = (a.astype(np.float64) for a in (x[:1], weight, bias))
                ref = r2n.conv2d(x64, w64, b64, padding=1, backend="reference")
                ref = np.maximum(ref, 0)
                kernels = _kernels(x, weight, bias)
                errors = {}
                for k, fn in kernels.items():
                    o = fn()[:1]
                    errors[k] = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
                    fn()
                times = {k: [] for k in kernels}
                cpu = {k: [] for k in kernels}
                for _ in range(args.reps):
                    for k, fn in kernels.items():
                        c = time.process_time()
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
                        cpu[k].append(time.process_time() - c)
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
                row = dict(
                    shape=name, c_in=c_in, c_out=c_out, hw=hw, batch=n, threads=args.threads,
                    ms=med, cpu_ms=med_cpu, error=errors,
                    f4_vs_f2_cpu=med_cpu["F2x2"] / med_cpu["F4x4"],
                    f4_vs_f2=med["F2x2"] / med["F4x4"], f4_vs_direct=med["direct"] / med["F4x4"],
                    f2_vs_direct=med["direct"] / med["F2x2"],
                )  # fmt: skip
                rows.append(row)
                print(
                    f"{name:26s} N={n} t={args.threads} cpu ms: direct {med_cpu['direct']:7.3f} "
                    f"F2 {med_cpu['F2x2']:7.3f} F4 {med_cpu['F4x4']:7.3f}; wall F4/F2 "
                    f"{row['f4_vs_f2']:.2f}x (cpu {row['f4_vs_f2_cpu']:.2f}x)  F4/direct "
                    f"{row['f4_vs_direct']:.2f}x  "
                    f"err F4 {errors['F4x4']:.1e} F2 {errors['F2x2']:.1e}",
                    flush=True,
                )
    if args.out:
        meta = dict(
            when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), machine=platform.node(),
            method="one process, direct / F2x2 / F4x4 alternating, medians of --reps",
            reps=args.reps,
        )  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
