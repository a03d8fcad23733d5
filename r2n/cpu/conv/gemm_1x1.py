"""1x1 stride-1 convs as a GEMM with the pixels in the vector lanes.

A 1x1 conv on an NCHW plane is ``out[c, p] = sum_k w[c, k] * x[k, p]``: a
matrix product whose right operand, the input, already lies pixel-contiguous
in each channel's plane. So here the register tile is the other way round
from step 4's (:mod:`r2n.cpu.microkernel`): ``T`` = 8 output channels x
``NV`` = 3 vectors of consecutive pixels (48 float32), 24 accumulators. Per
reduction step ``k`` it loads 3 input vectors straight from channel ``k``'s
plane and broadcasts 8 weights (from step 4's packed layout, which already
holds a tap's channels side by side), 24 FMAs for 11 loads; the finished
tile goes, with the bias, the residual and the (leaky) ReLU applied in
registers, straight into the 8 output rows as whole vectors.

What this removes, measured on the 2-core Zen 4 (``benchmarks/results/
NOTES.md``, "1x1 convs with the pixels in the lanes"): step 4's flat 1x1
ran a plane as one long row per 32-channel block, so each block streamed the
whole input plane again from L3 (1.3-3.2 MB per image at 56x56, beyond the
1 MiB L2) through a per-job row buffer of (H W + 7) x 32 values (400 KB),
and its epilogue read that buffer back at a stride of 32 values to
transpose it into the output. Here a job takes a chunk of pixels whose
input (K x P values) fits in L2 and runs every 8-channel block of its
channel range over it, writes the output in place, and needs no buffer at
all. At batch 1 the jobs split the pixels (and, on small planes, the
output channels) so that every thread has work.

Planes whose last pixel vector would be mostly waste (7x7, 14x14: the
stages where the weights are largest) run :func:`conv_1x1_rows` instead:
step 4's orientation (7 pixels x 32 channels, each plane one long row,
which 7 divides on every ImageNet map), but with the reduction in blocks of
ROWS_K_BLOCK channels run over all of a job's tiles (so a block's weights
are read from L1, not L2, by every tile after the first) and the next
block's weights prefetched while they run: in a forward those weights come
from memory (6.8 MB per 7x7 layer of res2net50), which step 4 waited for.
"""

from __future__ import annotations

import functools
import math

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import FASTMATH, kernel, prange, worker_buffers
from ..elementwise import unused_array
from ..microkernel import TILE_PIXELS, TILE_VECTORS, VECTOR_BYTES, block_layout

#: Output channels of the register tile, and pixel vectors.
TILE_CHANNELS = 8
PIXEL_VECTORS = 3
#: Bytes of input one job's pixel chunk may hold (K x P values): a quarter
#: of the 1 MiB L2 per core of the development machine, so the chunk stays
#: in L2 while every channel block of the job runs over it, beside the
#: output and residual lines passing through (128, 256, 512 KiB and whole
#: planes measured within noise of each other once the epilogue's lines
#: are prefetched; 256 KiB was never the slowest).
CHUNK_BYTES = 256 * 1024
#: Pixels computed / pixels in the plane above which a plane stays on step
#: 4's 7-pixel tiles, which fit every ImageNet map exactly: a 7x7 plane (49)
#: runs 48 + 16 pixels here (1.31x) and measured 0.74-0.80x step 4, 14x14
#: (196 -> 208, 1.06x) 0.93-0.95x; 28x28 and 56x56 (whole vectors) run
#: 1.06-1.45x step 4 here.
MAX_WASTE = 1.05
#: Input channels per pass of the reduction over a chunk: a tile reads one
#: 64-byte line of the 8 channels' weights per input channel, so 256 of
#: them (16 KiB) stay in the 32 KiB L1 while the pass runs over the chunk
#: (unblocked, 1024 -> 416 and 1024 -> 832 at 14x14 measured 0.74-0.97x
#: step 4).
K_BLOCK = 256
#: Input channels per pass of :func:`conv_1x1_rows` over a job's tiles: 64 x
#: 32 weights (8 KiB float32) stay in L1 beside the input lines (128
#: measured 0.97-1.02x of 64 at batch 1, and slower at batch 8 on 14x14).
ROWS_K_BLOCK = 64
#: Whether every tile prefetches the next reduction block's weights into L2.
#: In a forward the weights of a 7x7 layer (6.8 MB for 832 -> 2048) come
#: from memory, and step 4 / this kernel without the prefetch ran there at
#: 68-71% of the peak against 86-88% with it (1 thread, batch 1, weights
#: cycled through 48 MB of copies; with the weights in L3, 81-91% either
#: way). Prefetching from the first tile of a block only, or into L1, gained
#: less (measured 1.04-1.15x instead of 1.23x).
ROWS_PREFETCH = True
#: Whether :func:`conv_1x1_rows` finishes its tiles with the in-register
#: transpose (:func:`transposed_epilogue_kernel`) instead of the scalar
#: strided loop alone; a switch for side-by-side timing (NOTES.md).
ROWS_TRANSPOSED = True


def _argument_readers(context, builder, signature, args):
    """``(at, i64, flag)`` for an intrinsic's codegen: ``at(i, j)`` points at
    element ``args[j]`` of the array ``args[i]``, ``i64(j)`` is ``args[j]``
    as int64 and ``flag(j)`` as a boolean (the kernels below take their
    arrays with a base index, their strides and switches as plain ints)."""
    types_ = signature.args

    def i64(j):
        return context.cast(builder, args[j], types_[j], types.int64)

    def at(i, j):
        data = context.make_array(types_[i])(context, builder, args[i]).data
        return builder.gep(data, [i64(j)])

    def flag(j):
        return context.cast(builder, args[j], types_[j], types.boolean)

    return at, i64, flag


@functools.cache  # code, not data: a function of (t, nv) alone
def pixel_tile_kernel(t: int, nv: int):
    """The micro-kernel for tiles of ``t`` output channels x ``nv`` pixel vectors.

    Returns a Numba intrinsic callable from jitted code as::

        kernel(w, w_base, w_kstride, x, x_base, x_kstride, k_len,
               out, out_base, out_cstride, bias, bias_base,
               res, res_base, res_cstride, has_res, relu, slope,
               accumulate, finish)

    computing, for channel ``i < t`` and pixel ``p < nv * L``::

        v = sum_k w[w_base + k * w_kstride + i] * x[x_base + k * x_kstride + p]
        v = v + bias[bias_base + i]  (+ res[res_base + i * res_cstride + p] if has_res)
        v = (v if not v < 0 else (slope * v if slope != 0 else 0)) if relu
        out[out_base + i * out_cstride + p] = v

    (the order of step 4's epilogue: NaN stays NaN, -inf times a leaky slope
    stays -inf). ``w``, ``x``, ``out``, ``bias``, ``res``: 1-D C-contiguous
    arrays of one float dtype; the rest int64, except ``slope`` (the dtype's
    scalar). No bounds checks: the caller keeps every index inside.
    """

    @intrinsic
    def kernel_(
        typingctx, w, w_base, w_kstride, x, x_base, x_kstride, k_len,
        out, out_base, out_cstride, bias, bias_base,
        res, res_base, res_cstride, has_res, relu, slope, accumulate, finish,
    ):  # fmt: skip
        arrays = (w, x, out, bias, res)
        if not all(a.dtype == w.dtype for a in arrays) or w.dtype not in (
            types.float32,
            types.float64,
        ):
            return None
        n_lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth
        sig = types.void(
            w, w_base, w_kstride, x, x_base, x_kstride, k_len,
            out, out_base, out_cstride, bias, bias_base,
            res, res_base, res_cstride, has_res, relu, slope, accumulate, finish,
        )  # fmt: skip

        def codegen(context, builder, signature, args):
            k_len_v, slope_v = args[6], args[17]
            i64 = ir.IntType(64)
            scalar = context.get_value_type(w.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            at, as_i64, flag = _argument_readers(context, builder, signature, args)
            w_ptr, x_ptr, out_ptr = at(0, 1), at(3, 4), at(7, 8)
            bias_ptr, res_ptr = at(10, 11), at(12, 13)
            w_kstride_v, x_kstride_v = as_i64(2), as_i64(5)
            out_cstride_v, res_cstride_v = as_i64(9), as_i64(14)
            has_res_b, relu_b, accumulate_b, finish_b = flag(15), flag(16), flag(18), flag(19)

            suffix = f"v{n_lanes}f{32 if scalar == ir.FloatType() else 64}"
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{suffix}"
            )
            zero = ir.Constant(vec, [0.0] * n_lanes)
            undef = ir.Constant(vec, ir.Undefined)
            lane_ids = ir.Constant(ir.VectorType(ir.IntType(32), n_lanes), [0] * n_lanes)

            def splat(value):
                spread = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
                return builder.shuffle_vector(spread, undef, lane_ids)

            def vload(ptr):
                return builder.load(builder.bitcast(ptr, vec_ptr), align=1)

            # Fetch the lines the epilogue reads (residual) and writes (output)
            # while the reduction runs: at 56x56 they are in L3 or memory, and
            # waiting for them at the end of every tile cost ~20% (measured).
            i8_ptr = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [i8_ptr, i32, i32, i32]),
                "llvm.prefetch.p0i8",
            )

            def fetch_rows(base, stride, write):
                for i in range(t):
                    row = builder.gep(base, [builder.mul(stride, ir.Constant(i64, i))])
                    for j in range(nv):
                        line = builder.bitcast(
                            builder.gep(row, [ir.Constant(i64, j * n_lanes)]), i8_ptr
                        )
                        flags = [ir.Constant(i32, write), ir.Constant(i32, 3), ir.Constant(i32, 1)]
                        builder.call(prefetch, [line, *flags])

            read_flags = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            fetch_rows(out_ptr, out_cstride_v, 1)
            with builder.if_then(has_res_b):
                fetch_rows(res_ptr, res_cstride_v, 0)

            # Accumulators: allocas with constant indices only -> registers after mem2reg.
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(t)]
            with builder.if_then(accumulate_b):  # a later block of the reduction
                for i in range(t):
                    o_i = builder.gep(out_ptr, [builder.mul(out_cstride_v, ir.Constant(i64, i))])
                    for j in range(nv):
                        partial = vload(builder.gep(o_i, [ir.Constant(i64, j * n_lanes)]))
                        builder.store(partial, acc[i][j])
            with cgutils.for_range(builder, k_len_v) as loop:
                k = loop.index
                x_k = builder.gep(x_ptr, [builder.mul(k, x_kstride_v)])
                pixels = [
                    vload(builder.gep(x_k, [ir.Constant(i64, j * n_lanes)])) for j in range(nv)
                ]
                for j in range(nv):  # the next tile's input lines
                    ahead = builder.gep(x_k, [ir.Constant(i64, (nv + j) * n_lanes)])
                    builder.call(prefetch, [builder.bitcast(ahead, i8_ptr), *read_flags])
                w_k = builder.gep(w_ptr, [builder.mul(k, w_kstride_v)])
                for i in range(t):
                    weight = splat(builder.load(builder.gep(w_k, [ir.Constant(i64, i)])))
                    for j in range(nv):
                        total = builder.call(fma, [weight, pixels[j], builder.load(acc[i][j])])
                        builder.store(total, acc[i][j])

            # Epilogue in registers after the reduction's last block: + bias,
            # (+ residual), (leaky) ReLU; earlier blocks store the partial sums.
            with builder.if_then(finish_b):
                for i in range(t):
                    bias_i = splat(builder.load(builder.gep(bias_ptr, [ir.Constant(i64, i)])))
                    for j in range(nv):
                        builder.store(builder.fadd(builder.load(acc[i][j]), bias_i), acc[i][j])
                with builder.if_then(has_res_b):
                    for i in range(t):
                        r_i = builder.gep(
                            res_ptr, [builder.mul(res_cstride_v, ir.Constant(i64, i))]
                        )
                        for j in range(nv):
                            r = vload(builder.gep(r_i, [ir.Constant(i64, j * n_lanes)]))
                            builder.store(builder.fadd(builder.load(acc[i][j]), r), acc[i][j])
                slope_vec = splat(slope_v)
                plain = builder.fcmp_ordered("==", slope_v, ir.Constant(scalar, 0.0))
                with builder.if_then(relu_b):
                    for i in range(t):
                        for j in range(nv):
                            v = builder.load(acc[i][j])
                            negative = builder.fcmp_ordered("<", v, zero)
                            replaced = builder.select(plain, zero, builder.fmul(v, slope_vec))
                            builder.store(builder.select(negative, replaced, v), acc[i][j])
            for i in range(t):
                o_i = builder.gep(out_ptr, [builder.mul(out_cstride_v, ir.Constant(i64, i))])
                for j in range(nv):
                    dst = builder.gep(o_i, [ir.Constant(i64, j * n_lanes)])
                    builder.store(builder.load(acc[i][j]), builder.bitcast(dst, vec_ptr), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return kernel_


@functools.cache  # code, not data: a function of (t, nv) alone
def channel_tile_kernel(t: int, nv: int):
    """Step 4's tile (``t`` pixels x ``nv`` channel vectors) for a 1x1 conv,
    accumulating into its buffer: a pass over one block of the reduction.

    Returns a Numba intrinsic callable from jitted code as::

        kernel(w, w_base, x, x_base, x_kstride, k_len, buf, buf_base, accumulate,
                w_ahead)

    computing, for pixel ``i < t`` and channel ``c < nv * L``::

        buf[buf_base + i * nv*L + c] = (buf[...] if accumulate else 0)
            + sum_k w[w_base + k * nv*L + c] * x[x_base + k * x_kstride + i]

    (the packed weights of :func:`r2n.cpu.microkernel.pack_weights`; pixel
    ``i`` of input channel ``k`` at ``x_base + k * x_kstride + i``). The sum
    runs in k order on float accumulators, so a reduction split into blocks
    (partial sums stored and reloaded) gives the bits of one pass. ``w``,
    ``x``, ``buf``: 1-D C-contiguous arrays of one float dtype; the rest
    int64 (``accumulate`` a boolean). ``w_ahead`` > 0: per ``k`` also
    prefetch into L2 the weight lines ``w_ahead`` values further on (the next block
    of the reduction, which the caller knows), so that weights coming from
    memory arrive while this block's tiles run; 0: no prefetch. No bounds
    checks (a prefetch past the array's end is harmless: it cannot fault).
    """

    @intrinsic
    def kernel_(
        typingctx, w, w_base, x, x_base, x_kstride, k_len, buf, buf_base, accumulate, w_ahead
    ):  # fmt: skip
        if not (w.dtype == x.dtype == buf.dtype and w.dtype in (types.float32, types.float64)):
            return None
        n_lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth
        sig = types.void(
            w, w_base, x, x_base, x_kstride, k_len, buf, buf_base, accumulate, w_ahead
        )

        def codegen(context, builder, signature, args):
            k_len_v = args[5]
            i64 = ir.IntType(64)
            scalar = context.get_value_type(w.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            at, as_i64, flag = _argument_readers(context, builder, signature, args)
            w_ptr, x_ptr, buf_ptr = at(0, 1), at(2, 3), at(6, 7)
            x_kstride_v, w_ahead_v = as_i64(4), as_i64(9)
            accumulate_b = flag(8)
            i8_ptr = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [i8_ptr, i32, i32, i32]),
                "llvm.prefetch.p0i8",
            )
            # Locality 2 (prefetcht1): into L2, not L1 (measured better; see ROWS_PREFETCH).
            read_flags = [ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)]

            suffix = f"v{n_lanes}f{32 if scalar == ir.FloatType() else 64}"
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{suffix}"
            )
            zero = ir.Constant(vec, [0.0] * n_lanes)
            undef = ir.Constant(vec, ir.Undefined)
            lane_ids = ir.Constant(ir.VectorType(ir.IntType(32), n_lanes), [0] * n_lanes)

            def slot(i, j):
                ptr = builder.gep(buf_ptr, [ir.Constant(i64, (i * nv + j) * n_lanes)])
                return builder.bitcast(ptr, vec_ptr)

            # Accumulators: allocas with constant indices only -> registers after mem2reg.
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(t)]
            with builder.if_then(accumulate_b):  # a later block of the reduction
                for i in range(t):
                    for j in range(nv):
                        builder.store(builder.load(slot(i, j), align=1), acc[i][j])
            block = ir.Constant(i64, nv * n_lanes)

            def reduction(prefetching):
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
                    if prefetching:  # one 64-byte line per weight vector
                        ahead = builder.gep(w_k, [w_ahead_v])
                        for j in range(nv):
                            line = builder.gep(ahead, [ir.Constant(i64, j * n_lanes)])
                            builder.call(prefetch, [builder.bitcast(line, i8_ptr), *read_flags])
                    x_k = builder.gep(x_ptr, [builder.mul(k, x_kstride_v)])
                    for i in range(t):
                        pixel = builder.load(builder.gep(x_k, [ir.Constant(i64, i)]))
                        spread = builder.insert_element(undef, pixel, ir.Constant(i32, 0))
                        spread = builder.shuffle_vector(spread, undef, lane_ids)
                        for j in range(nv):
                            partial = builder.load(acc[i][j])
                            total = builder.call(fma, [spread, weights[j], partial])
                            builder.store(total, acc[i][j])

            has_ahead = builder.icmp_signed("!=", w_ahead_v, ir.Constant(i64, 0))
            with builder.if_else(has_ahead) as (then, otherwise):
                with then:
                    reduction(True)
                with otherwise:
                    reduction(False)
            for i in range(t):
                for j in range(nv):
                    builder.store(builder.load(acc[i][j]), slot(i, j), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return kernel_


@functools.cache  # code, not data: one kernel per variant, typed per dtype by Numba
def transposed_epilogue_kernel(partial: bool = False):
    """The epilogue of :func:`_conv_1x1_rows_kernel` for ``L`` pixels x ``L``
    channels (``L`` = 16 float32, 8 float64), transposed in registers.

    Returns a Numba intrinsic callable from jitted code as::

        kernel(buf, buf_base, buf_stride, out, out_base, out_cstride,
               bias, bias_base, res, res_base, res_cstride, has_res, relu, slope)

    or, with ``partial``, with two more arguments ``px_count, ch_count``
    (1 .. L each), computing the same for ``p < px_count`` and ``c <
    ch_count`` only: no other output, residual or bias element is touched
    (masked stores and loads, channel rows skipped), and the buffer rows of
    pixels past ``px_count`` are not read (pixel 0's are read in their
    place). Buffer rows are still read as whole ``L``-channel vectors, so
    ``buf_base + p * buf_stride + L`` must stay inside ``buf`` for every p
    read (the Winograd steps, which finish their tiles with it, read blocks
    of ``bw`` channels, a multiple of ``L``).

    Computing, for channel ``c < L`` and pixel ``p < L``::

        v = buf[buf_base + p * buf_stride + c] + bias[bias_base + c]
        v = v + res[res_base + c * res_cstride + p]  (if has_res)
        v = (v if not v < 0 else (slope * v if slope != 0 else 0))  (if relu)
        out[out_base + c * out_cstride + p] = v

    the order of the scalar epilogue it replaces, so the bits are the same.
    The job's buffer holds the tiles' sums pixel-major (a pixel's channels
    side by side) and the output wants each channel's pixels side by side:
    read as ``L`` vectors (one per pixel), the block is transposed by
    ``log2(L)`` rounds of two-source shuffles, each swapping one bit of the
    pixel index with the same bit of the lane index, then finished and
    stored as ``L`` whole vectors, one per channel row. The scalar loop it
    replaces read the buffer at a stride of 32 values, one value at a time
    (~3.5 cycles per output: 12% of 256 -> 1024 at 14x14, measured). The
    residual must not overlap the output: the scalar loop that finishes a
    job's leftovers writes a row before it reads the residual's (prepared
    layers never pass an output that shares memory with an input).
    ``buf``, ``out``, ``bias``, ``res``: 1-D C-contiguous arrays of one float
    dtype; the rest int64 (``has_res``, ``relu`` booleans; ``slope`` the
    dtype's scalar). No bounds checks.
    """

    def typer(
        buf, buf_base, buf_stride, out, out_base, out_cstride,
        bias, bias_base, res, res_base, res_cstride, has_res, relu, slope, *counts,
    ):  # fmt: skip
        arrays = (buf, out, bias, res)
        if not all(a.dtype == buf.dtype for a in arrays) or buf.dtype not in (
            types.float32,
            types.float64,
        ):
            return None
        n_lanes = VECTOR_BYTES * 8 // buf.dtype.bitwidth
        sig = types.void(
            buf, buf_base, buf_stride, out, out_base, out_cstride,
            bias, bias_base, res, res_base, res_cstride, has_res, relu, slope, *counts,
        )  # fmt: skip

        def codegen(context, builder, signature, args):
            slope_v = args[13]
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)
            scalar = context.get_value_type(buf.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            at, as_i64, flag = _argument_readers(context, builder, signature, args)
            buf_ptr, out_ptr, bias_ptr, res_ptr = at(0, 1), at(3, 4), at(6, 7), at(8, 9)
            buf_stride_v, out_cstride_v, res_cstride_v = as_i64(2), as_i64(5), as_i64(10)
            has_res_b, relu_b = flag(11), flag(12)

            def row(base, stride, i):
                ptr = builder.gep(base, [builder.mul(stride, ir.Constant(i64, i))])
                return builder.bitcast(ptr, vec_ptr)

            mask_ty = ir.VectorType(i32, n_lanes)
            if partial:
                px_count, ch_count = as_i64(14), as_i64(15)
                lanes = ir.Constant(ir.VectorType(i64, n_lanes), list(range(n_lanes)))
                px_splat = builder.insert_element(
                    ir.Constant(lanes.type, ir.Undefined), px_count, ir.Constant(i32, 0)
                )
                px_splat = builder.shuffle_vector(
                    px_splat,
                    ir.Constant(lanes.type, ir.Undefined),
                    ir.Constant(mask_ty, [0] * n_lanes),
                )
                px_mask = builder.icmp_signed("<", lanes, px_splat)
                mask_ty_1 = px_mask.type
                masked_store = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [vec, vec_ptr, i32, mask_ty_1]),
                    f"llvm.masked.store.v{n_lanes}f{buf.dtype.bitwidth}.p0",
                )
                masked_load = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(vec, [vec_ptr, i32, mask_ty_1, vec]),
                    f"llvm.masked.load.v{n_lanes}f{buf.dtype.bitwidth}.p0",
                )

            def buf_row(p):
                if not partial or p == 0:
                    return row(buf_ptr, buf_stride_v, p)
                # Past px_count, pixel 0's row again (valid memory; its lanes
                # are masked off at the stores).
                inside = builder.icmp_signed("<", ir.Constant(i64, p), px_count)
                return builder.select(
                    inside, row(buf_ptr, buf_stride_v, p), row(buf_ptr, buf_stride_v, 0)
                )

            # rows[p] = pixel p's L channels; after the rounds, rows[c] = channel c's L pixels.
            rows = [builder.load(buf_row(p), align=1) for p in range(n_lanes)]
            bit = 1
            while bit < n_lanes:
                # Swap bit `bit` of the row index with the same bit of the lane
                # index: for rows a (bit clear) and b = a | bit, lane i of the
                # new a is a[i] if i has the bit clear, else b[i - bit]; lane i
                # of the new b is a[i + bit] if clear, else b[i] (indices >= L
                # pick from the second source).
                low = [i if not i & bit else n_lanes + i - bit for i in range(n_lanes)]
                high = [i + bit if not i & bit else n_lanes + i for i in range(n_lanes)]
                for a in range(n_lanes):
                    if a & bit:
                        continue
                    ra, rb = rows[a], rows[a | bit]
                    rows[a] = builder.shuffle_vector(ra, rb, ir.Constant(mask_ty, low))
                    rows[a | bit] = builder.shuffle_vector(ra, rb, ir.Constant(mask_ty, high))
                bit *= 2

            zero = ir.Constant(vec, [0.0] * n_lanes)
            undef = ir.Constant(vec, ir.Undefined)
            lane_ids = ir.Constant(mask_ty, [0] * n_lanes)

            def splat(value):
                spread = builder.insert_element(undef, value, ir.Constant(i32, 0))
                return builder.shuffle_vector(spread, undef, lane_ids)

            slope_vec = splat(slope_v)
            plain = builder.fcmp_ordered("==", slope_v, ir.Constant(scalar, 0.0))

            def finish(c):
                bias_c = splat(builder.load(builder.gep(bias_ptr, [ir.Constant(i64, c)])))
                v = builder.fadd(rows[c], bias_c)
                slot = cgutils.alloca_once_value(builder, v)
                with builder.if_then(has_res_b):
                    at_res = row(res_ptr, res_cstride_v, c)
                    if partial:
                        r = builder.call(masked_load, [at_res, ir.Constant(i32, 1), px_mask, zero])
                    else:
                        r = builder.load(at_res, align=1)
                    builder.store(builder.fadd(builder.load(slot), r), slot)
                with builder.if_then(relu_b):
                    w = builder.load(slot)
                    negative = builder.fcmp_ordered("<", w, zero)
                    replaced = builder.select(plain, zero, builder.fmul(w, slope_vec))
                    builder.store(builder.select(negative, replaced, w), slot)
                at_out = row(out_ptr, out_cstride_v, c)
                if partial:
                    mask = [builder.load(slot), at_out, ir.Constant(i32, 1), px_mask]
                    builder.call(masked_store, mask)
                else:
                    builder.store(builder.load(slot), at_out, align=1)

            for c in range(n_lanes):
                if partial and c:
                    # Channel rows past ch_count: not written, their bias not read.
                    inside = builder.icmp_signed("<", ir.Constant(i64, c), ch_count)
                    with builder.if_then(inside):
                        finish(c)
                else:
                    finish(c)
            return context.get_dummy_value()

        return sig, codegen

    if partial:

        @intrinsic
        def kernel_(
            typingctx, buf, buf_base, buf_stride, out, out_base, out_cstride,
            bias, bias_base, res, res_base, res_cstride, has_res, relu, slope,
            px_count, ch_count,
        ):  # fmt: skip
            return typer(
                buf, buf_base, buf_stride, out, out_base, out_cstride,
                bias, bias_base, res, res_base, res_cstride, has_res, relu, slope,
                px_count, ch_count,
            )  # fmt: skip

    else:

        @intrinsic
        def kernel_(
            typingctx, buf, buf_base, buf_stride, out, out_base, out_cstride,
            bias, bias_base, res, res_base, res_cstride, has_res, relu, slope,
        ):  # fmt: skip
            return typer(
                buf, buf_base, buf_stride, out, out_base, out_cstride,
                bias, bias_base, res, res_base, res_cstride, has_res, relu, slope,
            )  # fmt: skip

    return kernel_


# Helpers inlined into the kernel (a call per tile would cost more than its tail).
_inline = numba.njit(inline="always", fastmath=FASTMATH)

_main = pixel_tile_kernel(TILE_CHANNELS, PIXEL_VECTORS)  # 8 channels x 48 pixels (f32)
_main_narrow = pixel_tile_kernel(TILE_CHANNELS, 1)  # 8 channels x 16 pixels: a chunk's tail
_one = pixel_tile_kernel(1, PIXEL_VECTORS)  # 1 channel: channels past the last full 8
_one_narrow = pixel_tile_kernel(1, 1)


@kernel
def _conv_1x1_kernel(
    x, x_img, x_c0, plane, k_len,
    packed, bias, n_img, c_out,
    out, out_img, out_c0, activation, negative_slope,
    residual, residual_img, residual_c0, has_residual,
    chunk, n_chunks, n_splits,
):  # fmt: skip
    """One parallel launch of a 1x1 stride-1 conv (``groups`` = 1).

    x : flattened (N, C_x, plane) input, reduction over channels x_c0 ..
    x_c0 + k_len; out / residual: flattened (N, C, plane), channels out_c0 +
    c / residual_c0 + c for output channel c < c_out. Job = (image, a range
    of 8-channel blocks, a chunk of ``chunk`` pixels; the last chunk runs to
    the plane's end and holds at least one vector): the chunk's input stays
    in L2 while the job's channel blocks run over it.
    """
    lanes = VECTOR_BYTES // x.itemsize
    b = TILE_VECTORS * lanes  # step 4's block of packed channels
    full, tail = block_layout(c_out, b)
    units = (c_out + TILE_CHANNELS - 1) // TILE_CHANNELS
    wide = PIXEL_VECTORS * lanes
    for job in prange(n_img * n_splits * n_chunks):
        part = job % n_chunks
        rest = job // n_chunks
        split = rest % n_splits
        n = rest // n_splits
        p0 = part * chunk
        p1 = plane if part == n_chunks - 1 else p0 + chunk
        x_base = n * x_img + x_c0 * plane
        for u in range(split * units // n_splits, (split + 1) * units // n_splits):
            c0 = u * TILE_CHANNELS
            ob = c0 // b
            if ob < full:
                w_base, w_kstride = ob * k_len * b + c0 % b, b
            else:
                w_base, w_kstride = full * k_len * b + (c0 - full * b), b // 2
            n_ch = min(TILE_CHANNELS, c_out - c0)
            for c in range(0, n_ch, TILE_CHANNELS if n_ch == TILE_CHANNELS else 1):
                o_base = n * out_img + (out_c0 + c0 + c) * plane
                r_base = n * residual_img + (residual_c0 + c0 + c) * plane
                w_c = w_base + (0 if n_ch == TILE_CHANNELS else c)
                # The reduction in blocks of K_BLOCK channels (partial sums kept
                # in the output rows), each over all the chunk's whole tiles.
                for kb in range(0, k_len, K_BLOCK):
                    args = (
                        min(K_BLOCK, k_len - kb), out, 0, plane, bias, c0 + c,
                        residual, 0, plane, has_residual, activation, negative_slope,
                        kb > 0, kb + K_BLOCK >= k_len,
                    )  # fmt: skip
                    w_k, x_k = w_c + kb * w_kstride, x_base + kb * plane
                    p = p0
                    while p + wide <= p1:
                        _tile(n_ch, True, packed, w_k, w_kstride, x, x_k + p, o_base + p,
                              r_base + p, args)  # fmt: skip
                        p += wide
                    while p + lanes <= p1:
                        _tile(n_ch, False, packed, w_k, w_kstride, x, x_k + p, o_base + p,
                              r_base + p, args)  # fmt: skip
                        p += lanes
                if (p1 - p0) % lanes:
                    # The chunk's last vector, shifted back to end at its end,
                    # over the whole reduction at once: its pixels shared with
                    # the tile before get the same values again (a blocked
                    # pass would add its partial sums to finished outputs).
                    p = p1 - lanes
                    args = (
                        k_len, out, 0, plane, bias, c0 + c, residual, 0, plane,
                        has_residual, activation, negative_slope, False, True,
                    )  # fmt: skip
                    _tile(n_ch, False, packed, w_c, w_kstride, x, x_base + p, o_base + p,
                          r_base + p, args)  # fmt: skip


@_inline
def _tile(n_ch, wide, w, w_base, w_kstride, x, x_base, o_base, r_base, args):
    """One micro-kernel call: 8 channels (or 1 when ``n_ch`` < 8) x 3 pixel
    vectors (``wide``) or 1; ``args`` = (k_len, out, -, out_cstride, bias,
    bias_base, res, -, res_cstride, has_res, relu, slope, accumulate, finish)."""
    # x's channel stride is the plane, as out's and res's (out_cstride).
    (k_len, out, _, out_cstride, bias, bias_base, res, _, res_cstride, has_res, relu, slope,
     accumulate, finish) = args  # fmt: skip
    if n_ch == TILE_CHANNELS:
        if wide:
            _main(w, w_base, w_kstride, x, x_base, out_cstride, k_len,
                  out, o_base, out_cstride, bias, bias_base, res, r_base, res_cstride,
                  has_res, relu, slope, accumulate, finish)  # fmt: skip
        else:
            _main_narrow(w, w_base, w_kstride, x, x_base, out_cstride, k_len,
                         out, o_base, out_cstride, bias, bias_base, res, r_base, res_cstride,
                         has_res, relu, slope, accumulate, finish)  # fmt: skip
    elif wide:
        _one(w, w_base, w_kstride, x, x_base, out_cstride, k_len,
             out, o_base, out_cstride, bias, bias_base, res, r_base, res_cstride,
             has_res, relu, slope, accumulate, finish)  # fmt: skip
    else:
        _one_narrow(w, w_base, w_kstride, x, x_base, out_cstride, k_len,
                    out, o_base, out_cstride, bias, bias_base, res, r_base, res_cstride,
                    has_res, relu, slope, accumulate, finish)  # fmt: skip


_rows = channel_tile_kernel(TILE_PIXELS, TILE_VECTORS)  # 7 pixels x 32 channels (f32)
_rows_half = channel_tile_kernel(TILE_PIXELS, 1)  # a narrower last block (block_layout)
_transposed = transposed_epilogue_kernel()  # 16 pixels x 16 channels (f32)


@kernel
def _conv_1x1_rows_kernel(
    x, x_img, x_c0, plane, k_len,
    packed, bias, n_img, c_out,
    out, out_img, out_c0, activation, negative_slope,
    residual, residual_img, residual_c0, has_residual,
    k_block, n_parts, w_prefetch, transposed, bufs,
):  # fmt: skip
    """One parallel launch of a 1x1 stride-1 conv on small planes (``groups``
    = 1, plane >= TILE_PIXELS): step 4's tiles (7 pixels x 32 channels),
    each plane one long row, the reduction in blocks of ``k_block`` channels.

    Arguments as :func:`_conv_1x1_kernel`'s. Job = (image, block of 32 output
    channels, part of the plane's whole tiles). Per block of the reduction
    every tile of the job runs over the same ``k_block`` x 32 weights (in L1
    after the first tile; step 4 streams all K x 32 of them from L2 again
    for every tile), adding into the job's pixel-major buffer. A plane that
    is not whole tiles ends with one tile shifted back to end at its end,
    run over the whole reduction at once (its pixels shared with the tile
    before get the same sum in the same order again). Then bias, residual
    and (leaky) ReLU, transposed into the output rows as step 4's epilogue.
    ``bufs`` : (workers, >= plane * 32) tile buffers, one per worker (any
    contents: every value the epilogue reads is written by a tile first).
    """
    lanes = VECTOR_BYTES // x.itemsize
    b = TILE_VECTORS * lanes
    full, tail = block_layout(c_out, b)
    blocks = full + tail
    tiles = plane // TILE_PIXELS
    zero = out.dtype.type(0)
    jobs = n_img * blocks * n_parts
    n_workers = bufs.shape[0]
    for wk in prange(n_workers):
        # A worker's contiguous share of the jobs (the split a prange over the
        # jobs would make), with its buffer from _jit.worker_buffers.
        mine = bufs[wk]
        for job in range(wk * jobs // n_workers, (wk + 1) * jobs // n_workers):
            part = job % n_parts
            rest = job // n_parts
            # Images outermost (the other order, a block's weights kept in L2
            # across the images, measured 0.95-1.01x this one at batch 8).
            ob = rest % blocks
            n = rest // blocks
            t0 = part * tiles // n_parts
            t1 = (part + 1) * tiles // n_parts
            p0 = t0 * TILE_PIXELS
            p1 = plane if part == n_parts - 1 else t1 * TILE_PIXELS
            bw = b if ob < full else b // 2
            buf = mine[: (p1 - p0) * bw]
            w_base = ob * k_len * b
            x_base = n * x_img + x_c0 * plane
            for kb in range(0, k_len, k_block):
                kl = min(k_block, k_len - kb)
                w_k = w_base + kb * bw
                x_k = x_base + kb * plane
                for t in range(t0, t1):
                    p = t * TILE_PIXELS
                    # Every tile prefetches the next block's weights into L2 (past
                    # the last block: the next channel block's, usually this
                    # thread's next job's), see ROWS_PREFETCH.
                    ahead = k_block * bw if w_prefetch else 0
                    at = (p - p0) * bw
                    if bw == b:
                        _rows(packed, w_k, x, x_k + p, plane, kl, buf, at, kb > 0, ahead)
                    else:
                        _rows_half(packed, w_k, x, x_k + p, plane, kl, buf, at, kb > 0, ahead)
            if p1 - p0 > (t1 - t0) * TILE_PIXELS:
                p = p1 - TILE_PIXELS
                at = (p - p0) * bw
                if bw == b:
                    _rows(packed, w_base, x, x_base + p, plane, k_len, buf, at, False, 0)
                else:
                    _rows_half(packed, w_base, x, x_base + p, plane, k_len, buf, at, False, 0)
            # Epilogue: blocks of `lanes` pixels x `lanes` channels transposed in
            # registers (buf is pixel-major, the output channel-major), then what
            # is left (the last pixels of the part, channels past the last whole
            # vector) a channel's pixels at a time over slices (plain range
            # indices vectorise; computed ones pay Numba's wraparound checks).
            n_ch = min(bw, c_out - ob * b)
            span = p1 - p0
            whole_ch = n_ch // lanes * lanes if transposed else 0
            whole_px = span // lanes * lanes
            for c in range(0, whole_ch, lanes):
                ch = ob * b + c
                o_idx = n * out_img + (out_c0 + ch) * plane + p0
                r_idx = n * residual_img + (residual_c0 + ch) * plane + p0
                for q in range(0, whole_px, lanes):
                    _transposed(buf, q * bw + c, bw, out, o_idx + q, plane, bias, ch,
                                residual, r_idx + q, plane, has_residual, activation,
                                negative_slope)  # fmt: skip
            for c in range(n_ch):
                ch = ob * b + c
                i0 = whole_px if c < whole_ch else 0  # the pixels left to finish
                rest = span - i0
                o_idx = n * out_img + (out_c0 + ch) * plane + p0 + i0
                o_row = out[o_idx : o_idx + rest]
                col = buf[i0 * bw + c :]
                bc = bias[ch]
                for i in range(rest):
                    o_row[i] = col[i * bw] + bc
                if has_residual:
                    r_idx = n * residual_img + (residual_c0 + ch) * plane + p0 + i0
                    r_row = residual[r_idx : r_idx + rest]
                    for i in range(rest):
                        o_row[i] += r_row[i]
                if activation and negative_slope == zero:
                    for i in range(rest):
                        if o_row[i] < zero:  # NaN stays NaN, as in PyTorch
                            o_row[i] = zero
                elif activation:  # leaky ReLU; a product, so -inf stays -inf
                    for i in range(rest):
                        if o_row[i] < zero:
                            o_row[i] *= negative_slope


def usable(x, groups, plane):
    """Whether :func:`conv_1x1` runs a flat 1x1 conv of this input: one
    group, and a plane of at least one vector whose tiles compute at most
    MAX_WASTE times its pixels (a function of the shape and dtype alone)."""
    lanes = VECTOR_BYTES // x.itemsize
    if groups != 1 or plane < lanes:
        return False
    wide = PIXEL_VECTORS * lanes
    computed = plane // wide * wide + math.ceil(plane % wide / lanes) * lanes
    return computed <= MAX_WASTE * plane


def job_split(n_img, c_out, plane, k_len, itemsize, threads):
    """(chunk, n_chunks, n_splits) for :func:`_conv_1x1_kernel`.

    Chunks of whole vectors whose input (k_len x chunk values) fits
    CHUNK_BYTES; at least 2 jobs per thread where the plane allows, by
    cutting the pixels finer, then the output channels. A function of the
    shape and the thread count only; the result does not depend on it (each
    output is the same sum in the same order whichever job computes it).
    """
    lanes = VECTOR_BYTES // itemsize
    vectors = plane // lanes  # whole vectors; the rest joins the last chunk
    n_chunks = max(1, math.ceil(k_len * plane * itemsize / CHUNK_BYTES))
    want = 2 * threads
    if n_img * n_chunks < want:
        n_chunks = math.ceil(want / n_img)
    n_chunks = min(n_chunks, vectors)
    chunk = math.ceil(vectors / n_chunks) * lanes
    n_chunks = max(1, min(n_chunks, (plane - lanes) // chunk + 1))
    units = (c_out + TILE_CHANNELS - 1) // TILE_CHANNELS
    n_splits = 1
    if n_img * n_chunks < want:
        n_splits = min(units, math.ceil(want / (n_img * n_chunks)))
    return chunk, n_chunks, n_splits


def conv_1x1(
    x, packed, c_out, bias, out, *,
    out_c0, activation, negative_slope, residual, residual_c0, x_c0, c_in,
):  # fmt: skip
    """Launch the 1x1 GEMM (arguments as r2n.cpu.conv.v4_simd.conv_simd's,
    for a 1x1 conv of stride 1, no padding, one group: ``x`` holds exactly
    the pixels it reads; ``activation`` None, "relu" or "leaky_relu")."""
    n, c_x, h, w = x.shape
    plane = h * w
    chunk, n_chunks, n_splits = job_split(
        n, c_out, plane, c_in, x.itemsize, numba.get_num_threads()
    )
    slope = negative_slope if activation == "leaky_relu" else 0.0
    _conv_1x1_kernel(
        x.reshape(-1), c_x * plane, x_c0, plane, c_in,
        packed, bias, n, c_out,
        out.reshape(-1), out[0].size, out_c0, activation is not None, x.dtype.type(slope),
        unused_array(x.dtype) if residual is None else residual.reshape(-1),
        0 if residual is None else residual[0].size, residual_c0, residual is not None,
        chunk, n_chunks, n_splits,
    )  # fmt: skip
    return out


def rows_usable(x, groups, plane):
    """Whether :func:`conv_1x1_rows` runs a flat 1x1 conv of this input: one
    group and at least one tile of pixels (a function of the shape alone).
    Asked where :func:`usable` says no (7x7, 14x14): with the weights coming
    from memory, as in a forward, it ran 832 -> 2048 and 2048 -> 832 at 7x7
    1.2x step 4's long rows, 14x14 convs 0.98-1.03x (NOTES.md, "1x1 convs on
    7x7 and 14x14 planes")."""
    return groups == 1 and plane >= TILE_PIXELS


def rows_job_split(n_img, c_out, plane, itemsize, threads):
    """n_parts for :func:`_conv_1x1_rows_kernel`: the fewest parts of the
    plane's whole tiles per (image, channel block) giving every thread the
    same number of jobs, or at least 8 jobs per thread. A function of the
    shape and the thread count; the result does not depend on it."""
    b = TILE_VECTORS * VECTOR_BYTES // itemsize
    full, tail = divmod(c_out, b)
    blocks = full + (1 if tail else 0)  # block_layout's count, either way
    tiles = plane // TILE_PIXELS
    jobs = n_img * blocks
    # More parts than needed were slower: parts of at most 7 / 4 tiles
    # measured 0.85-0.98x / 0.71-0.95x whole planes at 14x14.
    for n_parts in range(1, tiles + 1):
        if (jobs * n_parts) % threads == 0 or jobs * n_parts >= 8 * threads:
            return n_parts
    return tiles


def conv_1x1_rows(
    x, packed, c_out, bias, out, *,
    out_c0, activation, negative_slope, residual, residual_c0, x_c0, c_in, scratch=None,
):  # fmt: skip
    """Launch :func:`_conv_1x1_rows_kernel` (arguments as :func:`conv_1x1`;
    ``scratch``: optional ``scratch(role, shape, dtype)`` (r2n.cpu._scratch)
    supplying the workers' tile buffers, reused across calls; default new)."""
    n, c_x, h, w = x.shape
    plane = h * w
    threads = numba.get_num_threads()
    n_parts = rows_job_split(n, c_out, plane, x.itemsize, threads)
    slope = negative_slope if activation == "leaky_relu" else 0.0
    b = TILE_VECTORS * VECTOR_BYTES // x.itemsize
    full, tail = divmod(c_out, b)
    jobs = n * (full + (1 if tail else 0)) * n_parts
    bufs = worker_buffers(jobs, plane * b, x.dtype, "gemm_1x1.rows", scratch)
    _conv_1x1_rows_kernel(
        x.reshape(-1), c_x * plane, x_c0, plane, c_in,
        packed, bias, n, c_out,
        out.reshape(-1), out[0].size, out_c0, activation is not None, x.dtype.type(slope),
        unused_array(x.dtype) if residual is None else residual.reshape(-1),
        0 if residual is None else residual[0].size, residual_c0, residual is not None,
        ROWS_K_BLOCK, n_parts, ROWS_PREFETCH, ROWS_TRANSPOSED, bufs,
    )  # fmt: skip
    return out
