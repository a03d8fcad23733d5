"""CUDA launchers for linear, space_to_depth, blur_pool2d and squeeze_excite
(kernels in kernels/layers.cu).

Same signatures as ``r2n.reference`` plus ``executor`` and, for linear,
``variant`` (see :data:`LINEAR_VARIANTS`). Shapes are checked here with the
shared checks before any launch, because the kernels index the arrays with them.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._ladder import Step
from . import _runtime
from ._runtime import THREADS_1D, contiguous, dtype_name, grid_1d, int32_or_error
from .pool import global_avg_pool_planes

FILE = "layers.cu"

#: linear variant -> kernel; see layers.cu's header for what each changes.
LINEAR_VARIANTS = {
    "1_naive": "linear_1_kernel",
    "2_smem_tiles": "linear_2_kernel",
    "3_warp_reduce": "linear_3_kernel",
}
#: With fewer rows than this, linear defaults to 3_warp_reduce, else to 2_smem_tiles:
#: a 16-row tile would leave most of its threads idle. (A tile-utilisation rule,
#: not timed on a GPU: none was available.)
LINEAR_FEW_ROWS = 16
LINEAR_TILE = 16  # R2N_LINEAR_TILE in layers.cu

_runtime.register(
    FILE,
    [
        f"{k}<{t}>"
        for k in (
            *LINEAR_VARIANTS.values(),
            "space_to_depth_kernel",
            "blur_pool2d_kernel",
            "se_fc_kernel",
            "se_scale_kernel",
        )
        for t in ("float", "double")
    ],
)


def _dense(ex, kernel, x2d, w2d, bias, out, tiled, *extra):
    """Launch a dense kernel: out (M, N) from x2d (M, K), w2d (N, K), bias (N,) or None.

    tiled : False (a thread per output), True (16 x 16 tiles) or "warp" (a warp per output).
    """
    rows, in_features = x2d.shape
    out_features = w2d.shape[0]
    # linear_2 / linear_3 step their int k by 16 / 32 lanes: one step past K must fit.
    int32_or_error("linear", "in_features + 32", in_features + _runtime.WARP_SIZE)
    args = (
        x2d,
        w2d,
        w2d if bias is None else bias,  # dummy pointer when absent, never read
        np.int32(bias is not None),
        out,
        np.int64(rows),
        int32_or_error("linear", "out_features", out_features),
        int32_or_error("linear", "in_features", in_features),
        *extra,
    )
    name = f"{kernel}<{dtype_name(x2d.dtype)}>"
    if tiled == "warp":
        ex.launch(
            FILE, name, grid_1d(rows * out_features * _runtime.WARP_SIZE), (THREADS_1D,), args
        )
    elif tiled:
        col_tiles = -(-out_features // LINEAR_TILE)
        if col_tiles > _runtime.MAX_GRID_DIM[1]:
            raise ValueError(
                f"r2n.linear: variant 2_smem_tiles handles at most "
                f"{_runtime.MAX_GRID_DIM[1] * LINEAR_TILE} out_features, got {out_features}; "
                "use variant='1_naive'"
            )
        row_tiles = -(-rows // LINEAR_TILE)
        if row_tiles > _runtime.MAX_GRID_DIM[0]:
            raise ValueError(f"r2n.linear: too many rows for one launch: {rows}")
        ex.launch(FILE, name, (row_tiles, col_tiles), (LINEAR_TILE, LINEAR_TILE), args)
    else:
        ex.launch(FILE, name, grid_1d(rows * out_features), (THREADS_1D,), args)


def linear(x, weight, bias, *, variant=None, executor=None):
    """Fully connected layer ``x @ weight.T + bias``.

    Parameters
    ----------
    x : (..., in_features) ; weight : (out_features, in_features) ;
    bias : (out_features,) or None
    variant : a key of LINEAR_VARIANTS; None: 3_warp_reduce for fewer than
        LINEAR_FEW_ROWS rows, else 2_smem_tiles

    Returns
    -------
    (..., out_features), a new array.
    """
    op = "linear"
    _checks.check_arrays(op, {"x": x, "weight": weight, "bias": bias})
    _checks.linear_args(op, x, weight, bias)
    if variant is not None and variant not in LINEAR_VARIANTS:
        raise ValueError(
            f"r2n.{op}: variant must be one of {sorted(LINEAR_VARIANTS)}, got {variant!r}"
        )
    ex = executor or _runtime.executor()
    x, weight = contiguous(ex, x), contiguous(ex, weight)
    bias = None if bias is None else contiguous(ex, bias)
    out_features, in_features = weight.shape
    out = ex.empty(x.shape[:-1] + (out_features,), x.dtype)
    rows = out.size // out_features if out_features else 0
    if out.size == 0:
        return out
    if variant is None:
        variant = "3_warp_reduce" if rows < LINEAR_FEW_ROWS else "2_smem_tiles"
    mode = {"1_naive": False, "2_smem_tiles": True, "3_warp_reduce": "warp"}[variant]
    _dense(
        ex,
        LINEAR_VARIANTS[variant],
        x.reshape(rows, in_features),
        weight,
        bias,
        out.reshape(rows, out_features),
        mode,
    )
    return out


def space_to_depth(x, *, block_size, executor=None):
    """Move each b x b pixel block into channels.

    x : (N, C, H, W) with H, W divisible by b -> (N, b*b*C, H/b, W/b)
    """
    op = "space_to_depth"
    _checks.check_arrays(op, {"x": x})
    b = _checks.space_to_depth_args(op, x, block_size)["block_size"]
    ex = executor or _runtime.executor()
    x = contiguous(ex, x)
    n, c, h, w = x.shape
    out = ex.empty((n, b * b * c, h // b, w // b), x.dtype)
    if out.size == 0:
        return out
    int32_or_error(op, "output channels", b * b * c)  # the kernel's channel index is an int
    sizes = (int32_or_error(op, "a size", v) for v in (c, h, w, b))
    args = (x, out, np.int64(out.size), *sizes)
    ex.launch(
        FILE,
        f"space_to_depth_kernel<{dtype_name(x.dtype)}>",
        grid_1d(out.size),
        (THREADS_1D,),
        args,
    )
    return out


def blur_pool2d(x, *, executor=None):
    """Anti-aliased downsampling: [1,2,1]x[1,2,1]/16 depthwise, reflect pad 1, stride 2.

    x : (N, C, H, W) with H, W >= 2 -> (N, C, (H - 1)//2 + 1, (W - 1)//2 + 1)
    """
    op = "blur_pool2d"
    _checks.check_arrays(op, {"x": x})
    _checks.blur_pool_args(op, x)
    ex = executor or _runtime.executor()
    x = contiguous(ex, x)
    n, c, h, w = x.shape
    h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = ex.empty((n, c, h_out, w_out), x.dtype)
    if out.size == 0:
        return out
    args = (
        x,
        out,
        np.int64(out.size),
        *(int32_or_error(op, "a size", v) for v in (h, w, h_out, w_out)),
    )
    ex.launch(
        FILE, f"blur_pool2d_kernel<{dtype_name(x.dtype)}>", grid_1d(out.size), (THREADS_1D,), args
    )
    return out


def squeeze_excite(x, w1, b1, w2, b2, *, executor=None):
    """Squeeze-and-excitation: ``x * sigmoid(relu(mean_HW(x) @ w1.T + b1) @ w2.T + b2)``.

    x : (N, C, H, W); w1 : (C_mid, C, 1, 1); b1 : (C_mid,) or None;
    w2 : (C, C_mid, 1, 1); b2 : (C,) or None. Returns (N, C, H, W), a new array.
    Four launches: the channel means (pool.cu), the two small dense layers, the scaling.
    """
    op = "squeeze_excite"
    _checks.check_arrays(op, {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    _checks.squeeze_excite_args(op, x, w1, b1, w2, b2)
    ex = executor or _runtime.executor()
    x, w1, w2 = (contiguous(ex, a) for a in (x, w1, w2))
    b1, b2 = (None if b is None else contiguous(ex, b) for b in (b1, b2))
    n, c, h, w = x.shape
    c_mid = w1.shape[0]
    out = ex.empty(x.shape, x.dtype)
    if out.size == 0:
        return out
    means = global_avg_pool_planes(ex, x)  # N, C
    hidden = ex.empty((n, c_mid), x.dtype)  # N, C_mid
    if c_mid:
        _dense(ex, "se_fc_kernel", means, w1.reshape(c_mid, c), b1, hidden, False, np.int32(0))
    gate = ex.empty((n, c), x.dtype)  # N, C
    _dense(ex, "se_fc_kernel", hidden, w2.reshape(c, c_mid), b2, gate, False, np.int32(1))
    args = (x, gate, out, np.int64(out.size), np.int64(h * w))
    ex.launch(
        FILE, f"se_scale_kernel<{dtype_name(x.dtype)}>", grid_1d(out.size), (THREADS_1D,), args
    )
    return out


def _forced(name: str):
    def run(x, weight, bias, **kwargs):
        return linear(x, weight, bias, variant=name, **kwargs)

    run.__name__ = f"linear_{name}"
    run.__doc__ = f"linear through variant {name} (arguments as linear)."
    return run


#: This area's numbered variants (linear's): name -> the op with it forced.
VARIANTS = {name: _forced(name) for name in LINEAR_VARIANTS}

#: linear's ladder (r2n._ladder.Step), in order; kernels/layers.cu's header.
LADDER = (
    Step(
        "1_naive",
        "one thread per output, a dot product from global memory (w's rows K apart)",
        VARIANTS["1_naive"],
        source="r2n/gpu/kernels/layers.cu",
    ),
    Step(
        "2_smem_tiles",
        "16 x 16 output tiles, x and w staged in shared memory: each load used 16 times",
        VARIANTS["2_smem_tiles"],
        source="r2n/gpu/kernels/layers.cu",
    ),
    Step(
        "3_warp_reduce",
        "one warp per output: coalesced loads, a shuffle sum; for few rows (a batch-1 head)",
        VARIANTS["3_warp_reduce"],
        source="r2n/gpu/kernels/layers.cu",
    ),
)
