"""conv2d step ``3_register_tiles``: 8 output channels unrolled, their weights in registers.

What changes (from ``2_loop_order``)
    The same jobs (image, 8 output channels of a group, output row) and the
    same padded input, but the loop over the 8 channels moves inside the
    loop along the row and is unrolled: per tap (c, i, j) the 8 weights are
    loaded once into registers (hoisted out of the row loop), and each input
    pixel, loaded once, feeds 8 multiply-adds, one per channel's accumulator
    row. The input row is read through a row slice (contiguous at stride 1,
    a strided view otherwise), so the row loop's index is a plain ``range``:
    no wraparound check, and LLVM vectorises it.
Why it is faster
    Per multiply-add, step 2 loaded the input, the accumulator and stored
    the accumulator, and paid a wraparound check on a computed index; here
    the input load is shared by 8 multiply-adds and the weights are
    registers, so what is left per multiply-add is the accumulator's load and
    store (the 8 rows of ``W_out`` accumulators stay in L1).
What still costs
    Those accumulator loads and stores: 2 memory operations per FMA, where
    the FMA units could do 2 FMAs per cycle. Numba keeps an accumulator
    array in memory whatever the loop shape (NOTES.md "Prototypes": tiles in
    stack arrays and named scalar accumulators both did worse), hence step
    4's micro-kernel written in LLVM IR.
Measured
    27.9 GFLOP/s (one thread, float32, 32 -> 32 channels, 3x3, 56x56, on
    the 2-core AMD EPYC of 2026-12-04; step 2: 4.5 and step 4: 84 in the
    same run). Its prototype in NOTES.md "Prototypes" reached 46 on the
    2-core Zen 5 development machine (2026-11-22).
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, prange
from ..elementwise import vector_or
from .padding import pad

ROW_BLOCK = 8  # output channels sharing each input load: unrolled below


@kernel
def _conv2d_3_register_tiles_kernel(xp, w, bias, sh, sw, dh, dw, groups, out):
    n_img = xp.shape[0]
    c_out, c_in_g, kh, kw = w.shape
    h_out, w_out = out.shape[2], out.shape[3]
    c_out_g = c_out // groups
    blocks_g = (c_out_g + ROW_BLOCK - 1) // ROW_BLOCK
    zero = out.dtype.type(0)
    for job in prange(n_img * groups * blocks_g * h_out):
        y = job % h_out
        rest = job // h_out
        ob = rest % blocks_g
        rest //= blocks_g
        g = rest % groups
        n = rest // groups
        o0 = g * c_out_g + ob * ROW_BLOCK
        nb = min(ROW_BLOCK, c_out_g - ob * ROW_BLOCK)
        acc = np.zeros((ROW_BLOCK, w_out), out.dtype)
        # The 8 accumulator rows, named once per job: slicing them per tap
        # (or passing them to an inlined helper as a tuple) pays reference
        # counting on every tap: 3.1 instead of 2.1 ms (32 -> 32 channels,
        # 56x56, one thread, the 2-core EPYC).
        a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
        a4, a5, a6, a7 = acc[4], acc[5], acc[6], acc[7]
        for c in range(c_in_g):
            ci = g * c_in_g + c
            for i in range(kh):
                iy = y * sh + i * dh
                for j in range(kw):
                    # The tap's 8 weights, in registers for the whole row
                    # (0 for channels past the group's end).
                    w0 = w[o0, c, i, j] if 0 < nb else zero
                    w1 = w[o0 + 1, c, i, j] if 1 < nb else zero
                    w2 = w[o0 + 2, c, i, j] if 2 < nb else zero
                    w3 = w[o0 + 3, c, i, j] if 3 < nb else zero
                    w4 = w[o0 + 4, c, i, j] if 4 < nb else zero
                    w5 = w[o0 + 5, c, i, j] if 5 < nb else zero
                    w6 = w[o0 + 6, c, i, j] if 6 < nb else zero
                    w7 = w[o0 + 7, c, i, j] if 7 < nb else zero
                    x0 = j * dw
                    # The row's inputs of this tap as a slice, so that the
                    # loop index is a plain range. The loop is written twice:
                    # a contiguous slice (stride 1) compiles to vector loads,
                    # a strided view to gathers (its stride is a run-time
                    # value): 3.1 instead of 2.1-2.3 ms at stride 1 (same conv).
                    if sw == 1:
                        src = xp[n, ci, iy, x0 : x0 + w_out]
                        for x in range(w_out):  # the vectorised loop
                            v = src[x]
                            a0[x] += w0 * v
                            a1[x] += w1 * v
                            a2[x] += w2 * v
                            a3[x] += w3 * v
                            a4[x] += w4 * v
                            a5[x] += w5 * v
                            a6[x] += w6 * v
                            a7[x] += w7 * v
                    else:
                        src_s = xp[n, ci, iy, x0::sw]
                        for x in range(w_out):
                            v = src_s[x]
                            a0[x] += w0 * v
                            a1[x] += w1 * v
                            a2[x] += w2 * v
                            a3[x] += w3 * v
                            a4[x] += w4 * v
                            a5[x] += w5 * v
                            a6[x] += w6 * v
                            a7[x] += w7 * v
        for o in range(nb):
            dst = out[n, o0 + o, y]
            row = acc[o]
            b = bias[o0 + o]
            for x in range(w_out):
                dst[x] = row[x] + b


def conv2d_3_register_tiles(x, weight, bias, *, stride, padding, dilation, groups, out_shape):
    """Step 3: padded input, 8 output channels unrolled along each output row.

    Arguments and shapes as :func:`r2n.cpu.conv.v1_naive.conv2d_1_naive`.
    """
    out = np.empty(out_shape, x.dtype)
    w = np.ascontiguousarray(weight)
    xp = pad(np.ascontiguousarray(x), padding)
    _conv2d_3_register_tiles_kernel(
        xp,
        w,
        vector_or(bias, 0, w.shape[0], x.dtype),
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        groups,
        out,
    )
    return out
