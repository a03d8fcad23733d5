"""The register-tiled SIMD micro-kernel behind every fast CPU convolution.

What it computes
----------------
One output tile: ``T`` output pixels (along a row) x ``NV * L`` output
channels, where ``L`` is the number of lanes of a 64-byte vector (16 float32
or 8 float64)::

    tile[t, c] = sum over k < K of  w[w_base + k * NV*L + c] * x[x_base + offs[k] + t * x_step]

``k`` runs over the reduction (input channel, kernel row, kernel column) of a
convolution; ``offs[k]`` is where that tap sits in the flattened, padded input
relative to the tile's first pixel, and ``x_step`` is the distance between
consecutive output pixels (the stride). Packed weights hold, for each ``k``,
the ``NV * L`` output channels side by side, so one tap is ``NV`` vector loads.

Why an LLVM intrinsic
---------------------
A convolution is fast when its accumulators stay in registers: per tap, load
NV weight vectors and T input scalars, and do T * NV fused multiply-adds into
T * NV vector registers. Numba cannot express that: written as loops over
small arrays, LLVM's vectoriser picks the wrong loop (gathers and scatters
into memory), and an accumulator array lives in memory, so every
multiply-add pays a load and a store. Measured on the 2-core Zen 5 development
machine (a 32-channel 3x3 conv on 56x56, float32, one thread): loops over a
row, vectorised by LLVM, 46 GFLOP/s; this micro-kernel, 170 GFLOP/s; PyTorch's
oneDNN, 149 GFLOP/s.

So the loop body is written directly in LLVM IR (through ``numba.extending.
intrinsic``): ``T * NV`` accumulators of type ``<L x float>`` in allocas that
LLVM promotes to registers (every access has a constant index), ``llvm.fma``
on vectors, the weight vectors loaded with unaligned vector loads and the
inputs broadcast. On CPUs without AVX-512, LLVM splits each 64-byte vector
into two 32-byte ones; the code stays correct and vectorised.

The tile layout
---------------
What every conv built on the micro-kernel shares, so that it lives here and
the convs import it (nothing here imports them): the tile's shape
(``TILE_PIXELS`` x ``TILE_VECTORS`` vectors, ``tile`` and ``tile_half``),
how a group's output channels split into tiles (``block_channels``,
``block_layout``), the packed weights (``pack_weights``), the taps'
offsets (``tap_offsets``) and the input width a row of tiles reads
(``min_input_width``).

The intrinsic does no bounds checks: its callers (r2n.cpu.conv.v4_simd.conv_simd,
r2n.cpu.conv.v5_winograd's GEMMs) are correct by construction, padding the input so
that every tap of every tile is inside it (``min_input_width``) and sizing
each tile's buffer. Nothing checks this per tile; the tests, and a
bounds-checked model of this kernel fuzzed in review, do.

Numba's disk cache is keyed on the source of the file holding each jitted
function: the intrinsic, ``block_layout`` and the constants here are
compiled into the kernels of the files that call them, and editing this file
does not invalidate those kernels' cache. After changing it, delete every
``__pycache__`` under ``r2n/cpu``.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import serial

VECTOR_BYTES = 64


def lanes(dtype) -> int:
    """Lanes of one 64-byte vector for a NumPy dtype: 16 float32, 8 float64."""
    return VECTOR_BYTES // dtype.itemsize


@functools.cache  # code, not data: a function of (t, nv, prefetch) alone
def tile_kernel(t: int, nv: int, prefetch: bool = False):
    """The micro-kernel for tiles of ``t`` pixels x ``nv`` channel vectors.

    Returns a Numba intrinsic callable from jitted code as
    ``kernel(w, w_base, x, x_base, offs, k_len, x_step, tile)`` with
    ``w``, ``x``, ``tile`` 1-D C-contiguous arrays of one float dtype,
    ``offs`` a 1-D int64 array of at least ``k_len`` entries, and the rest
    int64. Writes ``tile[i * nv*L + c]`` for pixel ``i`` and channel ``c``.

    With ``prefetch``, the kernel takes one more int64 argument, ``w_ahead``:
    per ``k`` it also asks for the weight lines ``w_ahead`` values away
    (into L2; a hint, which never faults, even outside ``w``), so that a
    caller running its next block of weights from memory (the Winograd
    GEMMs at batch 1, whose transformed weights are 16/9 or 4 times the
    conv's) has them arrive while this block runs. ``w_ahead`` = 0: none.
    """

    def typed(w, w_base, x, x_base, offs, k_len, x_step, tile, *ahead):
        if not (w.dtype == x.dtype == tile.dtype and w.dtype in (types.float32, types.float64)):
            return None
        n_lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth  # lanes(): 16 float32, 8 float64
        sig = types.void(w, w_base, x, x_base, offs, k_len, x_step, tile, *ahead)

        def codegen(context, builder, signature, args):
            w_arr, w_base_v, x_arr, x_base_v, offs_arr, k_len_v, x_step_v, tile_arr = args[:8]
            w_ty, _, x_ty, _, offs_ty, _, _, tile_ty = signature.args[:8]
            i64 = ir.IntType(64)
            scalar = context.get_value_type(w_ty.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            w_ptr = context.make_array(w_ty)(context, builder, w_arr).data
            x_ptr = context.make_array(x_ty)(context, builder, x_arr).data
            offs_ptr = context.make_array(offs_ty)(context, builder, offs_arr).data
            tile_ptr = context.make_array(tile_ty)(context, builder, tile_arr).data
            w_ptr = builder.gep(w_ptr, [w_base_v])
            x_ptr = builder.gep(x_ptr, [x_base_v])
            x_step_v = context.cast(builder, x_step_v, signature.args[6], types.int64)

            suffix = f"v{n_lanes}f{32 if scalar == ir.FloatType() else 64}"
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{suffix}"
            )
            zero = ir.Constant(vec, [0.0] * n_lanes)
            # Accumulators: allocas with constant indices only -> registers after mem2reg.
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(t)]
            lane_ids = ir.Constant(ir.VectorType(ir.IntType(32), n_lanes), [0] * n_lanes)
            undef = ir.Constant(vec, ir.Undefined)
            block = ir.Constant(i64, nv * n_lanes)

            def reduction(w_ahead):
                with cgutils.for_range(builder, k_len_v) as loop:
                    k = loop.index
                    w_k = builder.gep(w_ptr, [builder.mul(k, block)])
                    weights = [
                        builder.load(
                            builder.bitcast(
                                builder.gep(w_k, [ir.Constant(i64, j * n_lanes)]), vec_ptr
                            ),
                            align=1,
                        )
                        for j in range(nv)
                    ]
                    if w_ahead is not None:  # one 64-byte line per weight vector
                        later = builder.gep(w_k, [w_ahead])
                        for j in range(nv):
                            line = builder.gep(later, [ir.Constant(i64, j * n_lanes)])
                            builder.call(prefetch_fn, [builder.bitcast(line, i8_ptr), *l2_read])
                    x_k = builder.gep(x_ptr, [builder.load(builder.gep(offs_ptr, [k]))])
                    for i in range(t):
                        pixel = builder.load(
                            builder.gep(x_k, [builder.mul(x_step_v, ir.Constant(i64, i))])
                        )
                        spread = builder.insert_element(
                            undef, pixel, ir.Constant(ir.IntType(32), 0)
                        )
                        spread = builder.shuffle_vector(spread, undef, lane_ids)
                        for j in range(nv):
                            total = builder.call(
                                fma, [spread, weights[j], builder.load(acc[i][j])]
                            )
                            builder.store(total, acc[i][j])

            if not prefetch:
                reduction(None)
            else:
                i8_ptr = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                prefetch_fn = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [i8_ptr, i32, i32, i32]),
                    "llvm.prefetch.p0i8",
                )
                # read, locality 2 (prefetcht1: into L2), data
                l2_read = [ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)]
                w_ahead = context.cast(builder, args[8], signature.args[8], types.int64)
                has_ahead = builder.icmp_signed("!=", w_ahead, ir.Constant(i64, 0))
                with builder.if_else(has_ahead) as (then, otherwise):
                    with then:
                        reduction(w_ahead)
                    with otherwise:
                        reduction(None)

            for i in range(t):
                for j in range(nv):
                    dst = builder.gep(tile_ptr, [ir.Constant(i64, (i * nv + j) * n_lanes)])
                    builder.store(builder.load(acc[i][j]), builder.bitcast(dst, vec_ptr), align=1)
            return context.get_dummy_value()

        return sig, codegen

    if prefetch:

        @intrinsic
        def kernel(typingctx, w, w_base, x, x_base, offs, k_len, x_step, tile, w_ahead):
            return typed(w, w_base, x, x_base, offs, k_len, x_step, tile, w_ahead)

    else:

        @intrinsic
        def kernel(typingctx, w, w_base, x, x_base, offs, k_len, x_step, tile):
            return typed(w, w_base, x, x_base, offs, k_len, x_step, tile)

    return kernel


# --------------------------------------------------------------------------- #
# The tile layout: how convs cut their outputs and pack their weights for it
# --------------------------------------------------------------------------- #

#: The register tile every conv runs: TILE_PIXELS output pixels x TILE_VECTORS
#: vectors of output channels (measured best of 8x1, 12x1, 6x2, 4x3, 8x2 on Zen 5;
#: 7 divides every ImageNet map width).
TILE_PIXELS = 7
TILE_VECTORS = 2
#: The micro-kernel of a full tile, and of a half-width one for a group's last,
#: narrower channel block (see block_layout).
tile = tile_kernel(TILE_PIXELS, TILE_VECTORS)
tile_half = tile_kernel(TILE_PIXELS, 1)
#: The same with the ``w_ahead`` weight prefetch (the Winograd GEMMs).
tile_prefetch = tile_kernel(TILE_PIXELS, TILE_VECTORS, True)
tile_half_prefetch = tile_kernel(TILE_PIXELS, 1, True)


def block_channels(dtype) -> int:
    """Output channels per register tile: 32 for float32, 16 for float64."""
    return TILE_VECTORS * lanes(np.dtype(dtype))


@serial
def block_layout(c_out_g, b):
    """How a group's C_out/g output channels split into register tiles.

    Returns (full, tail): ``full`` blocks of ``b`` channels, then ``tail`` (0
    or 1) block of ``b // 2`` channels holding the rest when it fits there
    (104 = 3 * 32 + 8 uses 112 lanes instead of 128). A larger rest gets a
    zero-padded full block.
    """
    full = c_out_g // b
    rest = c_out_g - full * b
    if rest > b // 2:
        return full + 1, 0
    return full, 1 if rest > 0 else 0


def pack_weights(weight, groups):
    """Pack conv weights for the micro-kernel, once per weight tensor.

    weight (C_out, C_in/g, kH, kW) -> 1-D array holding, for each group, its
    ``full`` blocks as (K, B) and its tail block as (K, B/2) (see
    block_layout), where B = block_channels and K = (C_in/g) * kH * kW in
    (c, i, j) order. Channels past C_out/g are zeros.
    """
    c_out, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // groups
    b = block_channels(weight.dtype)
    full, tail = block_layout(c_out_g, b)
    k = c_in_g * kh * kw
    width = full * b + tail * (b // 2)  # channels per group, padded
    padded = np.zeros((groups, width, k), weight.dtype)
    padded[:, :c_out_g] = weight.reshape(groups, c_out_g, k)
    parts = [padded[:, : full * b].reshape(groups, full, b, k).transpose(0, 1, 3, 2)]
    parts.append(padded[:, full * b :].reshape(groups, tail, b // 2, k).transpose(0, 1, 3, 2))
    return np.concatenate([p.reshape(groups, -1) for p in parts], axis=1).reshape(-1)


def tap_offsets(c_in_g, kernel_hw, dilation, plane, row):
    """offs[k] for k = (c, i, j): where tap k sits relative to a tile's first
    input pixel in a flattened (C, H_in, W_in) input with ``plane`` = H_in*W_in
    and ``row`` = W_in."""
    # int64 before multiplying: offsets can pass 2**31 (NumPy's default int is
    # 32-bit on some platforms), and the micro-kernel does not check them.
    c = np.arange(c_in_g, dtype=np.int64)[:, None, None] * plane
    i = np.arange(kernel_hw[0], dtype=np.int64)[None, :, None] * (dilation[0] * row)
    j = np.arange(kernel_hw[1], dtype=np.int64)[None, None, :] * dilation[1]
    return (c + i + j).reshape(-1)


def min_input_width(w_out, kw, sw, dw):
    """Padded input columns that a row of tiles reads for ``w_out`` outputs
    (kernel width ``kw``, stride ``sw``, dilation ``dw``): a row narrower than
    a tile still computes a whole tile."""
    return (max(w_out, TILE_PIXELS) - 1) * sw + (kw - 1) * dw + 1
