"""conv2d on the CPU: a ladder of numbered steps, one file each.

=====================  ===================================================  =========
step (file)            what it changes                                      GFLOP/s*
=====================  ===================================================  =========
``1_naive``            the definition as loops: a thread per (n, c_out)     ~1
(v1_naive.py)          plane, the padding tested on every tap.
``2_loop_order``       the input padded once; the innermost loop runs       ~5
(v2_loop_order.py)     along an output row, 8 output channels a job
                       (accumulators in memory).
``3_register_tiles``   the 8 channels unrolled inside the row loop, their   ~28***
(v3_register_tiles.py) weights hoisted into registers: each input loaded
                       once for 8 multiply-adds (accumulators still in L1).
``4_simd``             register tiles (7 pixels x 32 channels) in the       ~170
(v4_simd.py)           LLVM-IR micro-kernel (r2n.cpu.microkernel), packed
                       weights; the fused epilogue.
``5_winograd``         Winograd F(2x2, 3x3) for 3x3 stride-1 convs: 16      ~157**
(v5_winograd.py)       multiplies per 2x2 tile instead of 36, the GEMMs
                       through step 4's micro-kernel; the transforms in
                       registers, 16 tiles a vector (winograd_registers.py).
``6_winograd_4x4``     Winograd F(4x4, 3x3): 36 multiplies per 4x4 tile     ****
(v6_winograd_4x4.py)   (2.25 per output, not 4); 5-term transforms;
                       bias, residual and leaky ReLU in the output transform.
=====================  ===================================================  =========

\\* one thread, float32, 32 -> 32 channels, 3x3, 56x56, on the 2-core Zen 5
development machine (2026-11-22; PyTorch 2.13's oneDNN: 149). Each file's
header says more, and ``r2n ladder conv2d`` measures them side by side.
\\*\\* direct-conv FLOPs / time, one thread, float32, 104 -> 104 channels,
14x14, batch 8, on the 2-core Zen 4 machine (117.4 GFLOP/s FMA peak; step 4
runs this conv at ~90 there).
\\*\\*\\* measured on the 2-core EPYC of 2026-12-04 (one thread, 32 -> 32,
56x56; step 2: 4.5, step 4: 84 in the same run); the prototype of this step
in NOTES.md reached 46 on the Zen 5 machine.
\\*\\*\\*\\* measured against step 5 only, per shape (NOTES.md "Winograd
F(4x4,3x3)"): 1.1-1.5x its speed at 48-512 channels on 28x28 and 56x56,
0.6-0.9x on 14x14 and 7x7 below 512 channels.

``LADDER`` lists the steps in order (r2n._ladder.Step), ``VARIANTS`` maps
their names to their implementations, each taking the arguments of
r2n._checks.conv2d_args. :func:`conv2d`, the backend's op, is step 4 for
every conv; the fused Res2Net chain (r2n.cpu.res2net) and the prepared
convs run their 3x3 stride-1 convs as step 5 where ``v5_winograd.use_winograd``
says so, and as step 6 where ``v6_winograd_4x4.use_winograd_4x4`` also does.

Beside the ladder: ``padding`` (the zero-padded input copy of steps 2-4),
the micro-kernel with its tile layout (r2n.cpu.microkernel), which steps 4
and 5 import, ``winograd_registers`` (the transforms as generated vector
code, steps 5 and 6) and ``gemm_1x1`` (the 1x1 convs as GEMMs; its
in-register transpose also finishes the Winograd steps' rows). Step 6
builds on step 5's module; no step imports a later one.
"""

from __future__ import annotations

from ..._ladder import Step
from . import v1_naive, v2_loop_order, v3_register_tiles, v4_simd, v5_winograd, v6_winograd_4x4

#: The conv2d ladder, in order.
LADDER = (
    Step(
        "1_naive",
        "the definition as loops: a thread per (n, c_out) plane, padding tested per tap",
        v1_naive.conv2d_1_naive,
        source="r2n/cpu/conv/v1_naive.py",
    ),
    Step(
        "2_loop_order",
        "input padded once; the inner loop runs along an output row, 8 channels a job",
        v2_loop_order.conv2d_2_loop_order,
        source="r2n/cpu/conv/v2_loop_order.py",
    ),
    Step(
        "3_register_tiles",
        "8 channels unrolled in the row loop, their weights in registers: 1 input load per 8 FMAs",
        v3_register_tiles.conv2d_3_register_tiles,
        source="r2n/cpu/conv/v3_register_tiles.py",
    ),
    Step(
        "4_simd",
        "register tiles (7 pixels x 32 channels) in the LLVM-IR micro-kernel, packed weights",
        v4_simd.conv2d_4_simd,
        source="r2n/cpu/conv/v4_simd.py, r2n/cpu/microkernel.py",
    ),
    Step(
        "5_winograd",
        "Winograd F(2x2, 3x3): 16 multiplies per 2x2 tile, not 36; GEMMs in step 4's kernel",
        v5_winograd.conv2d_5_winograd,
        applies=v5_winograd.step_applies,
        source="r2n/cpu/conv/v5_winograd.py",
    ),
    Step(
        "6_winograd_4x4",
        "Winograd F(4x4, 3x3): 36 multiplies per 4x4 tile (2.25 per output, not 4)",
        v6_winograd_4x4.conv2d_6_winograd_4x4,
        applies=v6_winograd_4x4.step_applies,
        source="r2n/cpu/conv/v6_winograd_4x4.py",
    ),
)

#: step name -> implementation, for tests and benchmarks.
VARIANTS = {step.name: step.run for step in LADDER}


def conv2d(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """The CPU backend's conv2d: step ``4_simd``.

    x (N, C_in, H, W), weight (C_out, C_in/groups, kH, kW), bias (C_out,) or
    None -> (N, C_out, H_out, W_out); arguments from r2n._checks.conv2d_args.
    """
    return v4_simd.conv2d_4_simd(
        x,
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        out_shape=out_shape,
    )
