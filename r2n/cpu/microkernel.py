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

The intrinsic does no bounds checks: its caller (r2n.cpu.conv.conv_simd) is
correct by construction, padding the input so that every tap of every tile
is inside it (``min_input_width``) and sizing each tile's buffer. Nothing
checks this per tile; the tests, and a bounds-checked model of this kernel
fuzzed in review, do.

Numba's disk cache is keyed on the source of the file holding each jitted
function: editing this file does not invalidate the compiled conv kernels of
r2n/cpu/conv.py. After changing it, delete ``r2n/cpu/__pycache__``.
"""

from __future__ import annotations

import functools

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

VECTOR_BYTES = 64


def lanes(dtype) -> int:
    """Lanes of one 64-byte vector for a NumPy dtype: 16 float32, 8 float64."""
    return VECTOR_BYTES // dtype.itemsize


@functools.cache  # code, not data: a function of (t, nv) alone
def tile_kernel(t: int, nv: int):
    """The micro-kernel for tiles of ``t`` pixels x ``nv`` channel vectors.

    Returns a Numba intrinsic callable from jitted code as
    ``kernel(w, w_base, x, x_base, offs, k_len, x_step, tile)`` with
    ``w``, ``x``, ``tile`` 1-D C-contiguous arrays of one float dtype,
    ``offs`` a 1-D int64 array of at least ``k_len`` entries, and the rest
    int64. Writes ``tile[i * nv*L + c]`` for pixel ``i`` and channel ``c``.
    """

    @intrinsic
    def kernel(typingctx, w, w_base, x, x_base, offs, k_len, x_step, tile):
        if not (w.dtype == x.dtype == tile.dtype and w.dtype in (types.float32, types.float64)):
            return None
        n_lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth  # lanes(): 16 float32, 8 float64
        sig = types.void(w, w_base, x, x_base, offs, k_len, x_step, tile)

        def codegen(context, builder, signature, args):
            w_arr, w_base_v, x_arr, x_base_v, offs_arr, k_len_v, x_step_v, tile_arr = args
            w_ty, _, x_ty, _, offs_ty, _, _, tile_ty = signature.args
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
                x_k = builder.gep(x_ptr, [builder.load(builder.gep(offs_ptr, [k]))])
                for i in range(t):
                    pixel = builder.load(
                        builder.gep(x_k, [builder.mul(x_step_v, ir.Constant(i64, i))])
                    )
                    spread = builder.insert_element(undef, pixel, ir.Constant(ir.IntType(32), 0))
                    spread = builder.shuffle_vector(spread, undef, lane_ids)
                    for j in range(nv):
                        total = builder.call(fma, [spread, weights[j], builder.load(acc[i][j])])
                        builder.store(total, acc[i][j])

            for i in range(t):
                for j in range(nv):
                    dst = builder.gep(tile_ptr, [ir.Constant(i64, (i * nv + j) * n_lanes)])
                    builder.store(builder.load(acc[i][j]), builder.bitcast(dst, vec_ptr), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return kernel
