"""Winograd transforms in vector registers: ``Z = L X R^T`` for one vector of tiles.

Steps 5 and 6 (``v5_winograd``, ``v6_winograd_4x4``) hold their tiles in
vector lanes: one transform value of ``L`` consecutive tiles (16 float32, 8
float64) is one vector. Their transforms are separable, a matrix on each
side of the tile:

    input (F(4x4)):  V = B^T d B      (6x6 window d -> 6x6 V)
    output (F(4x4)): Y = A^T M A      (6x6 products M -> 4x4 outputs Y)

Written as flat loops, each side is one loop per output value, through a
buffer in between (24 + 36 loops for F(4x4)'s input, 24 + 16 for its
output, per channel or channel block); each loop is short (a block's 10-60
tiles), pays its start and its remainder, and the intermediate rows go
through L1 and back. :func:`separable_transform_kernel` builds, once per
pair of matrices, a Numba intrinsic that does one vector of tiles at a
time in registers: it loads the inputs as vectors, forms the intermediate
``T = L X`` row by row and ``Z = T R^T`` from it, and stores Z, with the
matrices' zeros skipped and their +-1 entries as additions (generated
LLVM IR: the loop vectoriser cannot do this itself, because the stores go
to 36 places it cannot prove apart from the loads).
:func:`phase_split_kernel` deals a row of the padded input out to the
phase planes those loads read, a vector at a time (masked loads for the
padding and the row's end, then one shuffle per phase).

What it took (NOTES.md "Winograd transforms in registers"): the first
version was no faster, and its output transform 0.77x the flat loops,
because the 16 / 36 vectors one call touches sat a multiple of 4 KiB apart
(V's and M's transform positions) and so in one or two of the L1's 64
sets; a cache line of padding between positions (``v5_winograd.LINE_PAD``)
made it 1.04-1.14x. With the split and the last transpose in registers
too, F(4x4) convs run 1.13-1.36x and F(2x2) 1.01-1.24x the flat loops.
"""

from __future__ import annotations

import functools

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..microkernel import VECTOR_BYTES
from .gemm_1x1 import _argument_readers

#: Fast-math flags of the generated arithmetic: "contract" lets LLVM fuse a
#: multiply and the add after it into one FMA (as the flat loops' FASTMATH).
_FLAGS = ("contract",)


@functools.cache  # code, not data: a function of the tables alone
def separable_transform_kernel(left, right, src_terms, dst_terms):
    """The intrinsic ``Z = L X R^T`` for one vector of tiles.

    Parameters (tuples, so that the factory is cached on them)
    ----------
    left : (a, m) nested tuple of floats, L (rows of X to rows of Z).
    right : (b, j) nested tuple of floats, R (columns of X to columns of Z).
    src_terms : (m, j) nested tuple of ``(k1, k2, k3)`` int triples: X[m][j]
        is the vector at ``src[src_base + k1 * s1 + k2 * s2 + k3]``.
    dst_terms : (a, b) nested tuple of ``(k1, k2)`` int pairs: Z[a][b] goes
        to the vector at ``dst[dst_base + k1 * d1 + k2 * d2]``.

    Returns a Numba intrinsic callable from jitted code as::

        kernel(src, src_base, s1, s2, dst, dst_base, d1, d2)

    computing, for every lane ``i < L`` (L = VECTOR_BYTES / itemsize)::

        T[a][j] = sum_m left[a][m] * X[m][j][i]          (m with left[a][m] != 0)
        dst[dst_base + k1 * d1 + k2 * d2 + i] = sum_j right[b][j] * T[a][j]
                                            ((k1, k2) = dst_terms[a][b])

    terms in increasing m and j, +-1 as additions and subtractions, other
    coefficients multiplied (FMA where LLVM contracts). ``src`` and ``dst``:
    1-D C-contiguous arrays of one float dtype (they may be the same array if
    no written vector overlaps a read one); the rest int64. No bounds
    checks: the caller keeps every vector inside.
    """

    @intrinsic
    def kernel_(typingctx, src, src_base, s1, s2, dst, dst_base, d1, d2):
        if src.dtype != dst.dtype or src.dtype not in (types.float32, types.float64):
            return None
        n_lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth
        sig = types.void(src, src_base, s1, s2, dst, dst_base, d1, d2)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            scalar = context.get_value_type(src.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            at, as_i64, _ = _argument_readers(context, builder, signature, args)
            src_ptr, dst_ptr = at(0, 1), at(4, 5)
            s1_v, s2_v, d1_v, d2_v = as_i64(2), as_i64(3), as_i64(6), as_i64(7)

            def vector_at(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec_ptr)

            def offset(k1, k2, k3, stride1, stride2):
                off = ir.Constant(i64, k3)
                if k1:
                    off = builder.add(off, builder.mul(stride1, ir.Constant(i64, k1)))
                if k2:
                    off = builder.add(off, builder.mul(stride2, ir.Constant(i64, k2)))
                return off

            def combine(coefs, values):
                """sum of coefs[t] * values(t) over the nonzero coefs, in order."""
                acc = None
                for t, c in enumerate(coefs):
                    if c == 0:
                        continue
                    x = values(t)
                    if acc is None:
                        if c == 1:
                            acc = x
                        elif c == -1:
                            acc = builder.fneg(x)
                        else:
                            acc = builder.fmul(x, ir.Constant(vec, [c] * n_lanes), flags=_FLAGS)
                    elif c == 1:
                        acc = builder.fadd(acc, x, flags=_FLAGS)
                    elif c == -1:
                        acc = builder.fsub(acc, x, flags=_FLAGS)
                    else:
                        term = builder.fmul(x, ir.Constant(vec, [c] * n_lanes), flags=_FLAGS)
                        acc = builder.fadd(acc, term, flags=_FLAGS)
                return acc if acc is not None else ir.Constant(vec, [0.0] * n_lanes)

            n_j = len(src_terms[0])
            for a, left_row in enumerate(left):
                # Row a of T from fresh loads (the stores of the rows before
                # do not overlap the source, the caller's promise): loading
                # again costs less than keeping 36 vectors live across rows.
                loaded = {}

                def x_at(m, j, loaded=loaded):
                    if (m, j) not in loaded:
                        ptr = vector_at(src_ptr, offset(*src_terms[m][j], s1_v, s2_v))
                        loaded[m, j] = builder.load(ptr, align=1)
                    return loaded[m, j]

                t_row = [combine(left_row, lambda m, j=j: x_at(m, j)) for j in range(n_j)]
                for b, right_row in enumerate(right):
                    z = combine(right_row, t_row.__getitem__)
                    off = offset(*dst_terms[a][b], 0, d1_v, d2_v)
                    builder.store(z, vector_at(dst_ptr, off), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return kernel_


def as_table(matrix):
    """A float matrix as the nested tuple :func:`separable_transform_kernel` takes."""
    return tuple(tuple(float(v) for v in row) for row in matrix)


@functools.cache  # code, not data: a function of the phase count alone
def phase_split_kernel(phases: int):
    """The intrinsic that splits a padded input row into ``phases`` phase rows.

    Returns a Numba intrinsic callable from jitted code as::

        kernel(src, src_base, lo, hi, add, add_base, has_add, dst, dst_base, dst_stride)

    computing, for lanes ``i < L`` (L = VECTOR_BYTES / itemsize) and
    ``cj < phases``, with ``t = phases * i + cj``::

        x = src[src_base + t] (+ add[add_base + t] if has_add)  if lo <= t < hi  else 0
        dst[dst_base + cj * dst_stride + i] = x

    i.e. ``phases * L`` consecutive values of a row (zero outside ``[lo,
    hi)``: the padding, and whatever lies past the row), dealt out to
    ``phases`` planes as Winograd's input transform reads them (plane cj
    holds columns ``phases * k + cj``). The loads are masked (AVX-512 masked
    loads touch no lane outside the mask), so ``src_base`` may point before
    the row, or before the array, where ``lo`` > 0 says so; the ``phases``
    vector stores are whole (the caller leaves room past each plane row).
    ``src``, ``add``, ``dst``: 1-D C-contiguous arrays of one float dtype;
    ``has_add`` a boolean; the rest int64. No bounds checks beyond the mask.
    """

    @intrinsic
    def kernel_(
        typingctx, src, src_base, lo, hi, add, add_base, has_add, dst, dst_base, dst_stride
    ):  # fmt: skip
        arrays = (src, add, dst)
        if not all(a.dtype == src.dtype for a in arrays) or src.dtype not in (
            types.float32,
            types.float64,
        ):
            return None
        n_lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth
        sig = types.void(src, src_base, lo, hi, add, add_base, has_add, dst, dst_base, dst_stride)

        def codegen(context, builder, signature, args):
            i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
            scalar = context.get_value_type(src.dtype)
            vec = ir.VectorType(scalar, n_lanes)
            vec_ptr = vec.as_pointer()
            mask_ty = ir.VectorType(i1, n_lanes)
            idx_ty = ir.VectorType(i64, n_lanes)
            at, as_i64, flag = _argument_readers(context, builder, signature, args)
            src_ptr, add_ptr, dst_ptr = at(0, 1), at(4, 5), at(7, 8)
            lo_v, hi_v, stride_v = as_i64(2), as_i64(3), as_i64(9)
            kind = f"v{n_lanes}f{src.dtype.bitwidth}"
            masked_load = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(vec, [vec_ptr, i32, mask_ty, vec]),
                f"llvm.masked.load.{kind}.p0",
            )
            zero = ir.Constant(vec, [0.0] * n_lanes)
            undef = ir.Constant(idx_ty, ir.Undefined)
            lane0 = ir.Constant(ir.VectorType(i32, n_lanes), [0] * n_lanes)

            def splat(value):
                one = builder.insert_element(undef, value, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, undef, lane0)

            lo_s, hi_s = splat(lo_v), splat(hi_v)
            add_b = flag(6)
            parts = []
            for p in range(phases):
                t = ir.Constant(idx_ty, [p * n_lanes + i for i in range(n_lanes)])
                inside = builder.and_(
                    builder.icmp_signed("<=", lo_s, t), builder.icmp_signed("<", t, hi_s)
                )
                offset = ir.Constant(i64, p * n_lanes)

                def load(base, offset=offset, inside=inside):
                    ptr = builder.bitcast(builder.gep(base, [offset]), vec_ptr)
                    return builder.call(masked_load, [ptr, ir.Constant(i32, 1), inside, zero])

                slot = cgutils.alloca_once_value(builder, load(src_ptr))
                with builder.if_then(add_b):
                    builder.store(builder.fadd(builder.load(slot), load(add_ptr)), slot)
                parts.append(builder.load(slot))
            # Deal the phases * L values out: concatenate, then one shuffle per phase.
            while len(parts) > 1:
                width = 2 * parts[0].type.count
                both = ir.Constant(ir.VectorType(i32, width), list(range(width)))
                parts = [
                    builder.shuffle_vector(parts[k], parts[k + 1], both)
                    for k in range(0, len(parts), 2)
                ]
            row = parts[0]
            for cj in range(phases):
                pick = ir.Constant(
                    ir.VectorType(i32, n_lanes), [phases * i + cj for i in range(n_lanes)]
                )
                value = builder.shuffle_vector(row, row, pick)
                ptr = builder.gep(dst_ptr, [builder.mul(stride_v, ir.Constant(i64, cj))])
                builder.store(value, builder.bitcast(ptr, vec_ptr), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return kernel_


@functools.cache  # code, not data: a function of the phase count alone
def split_row_kernel(phases: int):
    """A jitted function (inlined) that splits one input row into ``phases``
    phase rows of ``pitch`` tiles, through :func:`phase_split_kernel`::

        split_row(src, row, add, row_add, has_add, w, pw, dst, dst_at, plane_len,
                  pitch, lanes)

    writes, for tile k < pitch (and up to a vector past it) and cj <
    phases, ``dst[dst_at + cj * plane_len + k]`` = the padded row's column
    ``phases * k + cj`` (``src[row + phases * k + cj - pw]`` plus ``add``'s
    at ``row_add`` if ``has_add``; 0 outside the row's ``w`` columns).
    """
    split = phase_split_kernel(phases)

    @numba.njit(inline="always")
    def split_row(src, row, add, row_add, has_add, w, pw, dst, dst_at, plane_len, pitch, lanes):
        for k0 in range(0, pitch, lanes):
            x0 = phases * k0 - pw
            split(src, row + x0, -x0, w - x0, add, row_add + x0, has_add, dst, dst_at + k0,
                  plane_len)  # fmt: skip

    return split_row
