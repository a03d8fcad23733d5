"""Host time of r2n.gpu.conv.launch_conv per call, on a stand-in executor (no GPU).

At batch 1 a conv on the GPU is bound by host time (NOTES-gpu.md, v1 and v2):
this measures the launcher's own share, the Python between the call and the
kernel launch, with an executor whose ``launch`` does nothing. Arrays are
NumPy arrays (the plan cache is keyed on shapes, so the arrays' kind does not
change the launcher's path).

Usage (from the repository root; compare two trees by running each in turn,
alternating, and comparing medians of the same run)::

    PYTHONPATH=$PWD python benchmarks/gpu_launch_host_time.py [--repeat 15]

Cases: a 3x3 conv (the library's variant for it), a 1x1 conv (the 1x1 GEMM),
and the chain's second conv (input summed on load from the output, ReLU,
channel slices): each as ``launch_conv`` alone, and the 3x3 conv through
``conv2d_fused`` (the op's whole launcher path, output allocation included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit

import numpy as np

from r2n.gpu import conv as gconv


class StandIn:
    """An executor whose launches do nothing (the host-side cost only)."""

    xp = np

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        pass


def cases(ex):
    """name -> a zero-argument callable making one launcher call."""
    f32 = np.float32
    one, three = (1, 1), (3, 3)
    geometry = dict(padding=one, dilation=one, groups=1)
    x = np.zeros((1, 26, 56, 56), f32)
    w3 = np.zeros((26, 26, 3, 3), f32)
    b = np.zeros(26, f32)
    out = np.zeros((1, 26, 56, 56), f32)
    v3 = gconv.pick_variant(three, one, one, 26)
    x1 = np.zeros((1, 256, 56, 56), f32)
    w1 = np.zeros((104, 256, 1, 1), f32)
    b1 = np.zeros(104, f32)
    out1 = np.zeros((1, 104, 56, 56), f32)
    v1 = gconv.pick_variant(one, one, (0, 0), 104)
    chain_x = np.zeros((1, 104, 56, 56), f32)
    chain_out = np.zeros((1, 104, 56, 56), f32)
    conv_args = gconv._checks.conv2d_args("conv2d", x, w3, b, 1, 1, 1, 1)
    return {
        "launch_conv 3x3 26->26": lambda: gconv.launch_conv(
            ex, v3, x, w3, b, out, stride=one, **geometry
        ),
        "launch_conv 1x1 256->104": lambda: gconv.launch_conv(
            ex, v1, x1, w1, b1, out1, stride=one, padding=(0, 0), dilation=one, groups=1
        ),
        "launch_conv chain conv 2 (add, slices, relu)": lambda: gconv.launch_conv(
            ex,
            v3,
            chain_x,
            w3,
            b,
            chain_out,
            stride=one,
            x_c0=26,
            add=chain_out,
            add_c0=0,
            out_c0=26,
            activation="relu",
            **geometry,
        ),
        "conv2d_fused 3x3 26->26": lambda: gconv.conv2d_fused(
            x, w3, b, executor=ex, activation="relu", **conv_args
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timings per case (median)")
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--json", help="write the medians and minima (us per call) here")
    args = parser.parse_args(argv)
    ex = StandIn()
    results = {}
    for name, call in cases(ex).items():
        call()  # plan cached
        times = [
            t / args.number * 1e6
            for t in timeit.repeat(call, number=args.number, repeat=args.repeat)
        ]
        results[name] = {"median_us": statistics.median(times), "min_us": min(times)}
        print(
            f"{name:46s} median {results[name]['median_us']:6.2f} us, "
            f"min {results[name]['min_us']:6.2f} us per call ({args.repeat} timings)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
