"""CUDA launchers for max_pool2d, avg_pool2d and global_avg_pool2d
(kernels in kernels/pool.cu).

Same signatures as ``r2n.reference.pool`` plus ``executor`` and, for the
global pool, ``variant`` (see :data:`GLOBAL_AVG_POOL_VARIANTS`). The
normalised arguments are checked again here against x (a direct call with an
inconsistent ``out_shape`` is a ValueError before any launch), because the
kernels index x with them.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._ladder import Step
from . import _runtime
from ._runtime import contiguous, dtype_name, grid_1d, int32_or_error

FILE = "pool.cu"

#: global_avg_pool2d variant -> (kernel, threads per block); see pool.cu's header.
GLOBAL_AVG_POOL_VARIANTS = {
    "1_naive": ("global_avg_pool_1_kernel", 256),
    "2_warp_reduce": ("global_avg_pool_2_kernel", 256),
}
#: The fastest global_avg_pool2d variant (the default).
GLOBAL_AVG_POOL_DEFAULT = "2_warp_reduce"

_runtime.register(
    FILE,
    [
        f"{k}<{t}>"
        for k in (
            "max_pool2d_kernel",
            "avg_pool2d_kernel",
            *(kernel for kernel, _ in GLOBAL_AVG_POOL_VARIANTS.values()),
        )
        for t in ("float", "double")
    ],
)


def _pool(op, kernel, x, kernel_size, stride, padding, ceil_mode, out_shape, executor, *extra):
    _checks.check_arrays(op, {"x": x})
    expected = _checks.pool2d_args(op, x, kernel_size, stride, padding, ceil_mode)
    given = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    given["out_shape"] = tuple(out_shape)
    if given != expected:
        raise ValueError(
            f"r2n.{op}: arguments {given} are not the normalised arguments of x with shape "
            f"{tuple(x.shape)} ({expected})"
        )
    ex = executor or _runtime.executor()
    x = contiguous(ex, x)
    out = ex.empty(out_shape, x.dtype)
    total = out.size
    if total == 0:
        return out
    n, c, h, w = x.shape
    ints = [h, w, *out_shape[2:], *kernel_size, *stride, *padding]
    # A window's end o * stride - padding + kernel (and H + padding) is an int in
    # the kernel; it stays below H + kernel (W + kernel), which must fit too.
    int32_or_error(op, "H + kernel_size", h + kernel_size[0])
    int32_or_error(op, "W + kernel_size", w + kernel_size[1])
    args = (
        x,
        out,
        np.int64(total),
        *(int32_or_error(op, "a size", v) for v in ints),
        *extra,
    )
    name = f"{kernel}<{dtype_name(x.dtype)}>"
    ex.launch(FILE, name, grid_1d(total), (_runtime.THREADS_1D,), args)
    return out


def max_pool2d(x, *, kernel_size, stride, padding, ceil_mode, out_shape, executor=None):
    """Max over each window; padding never wins; NaN propagates.

    x : (N, C, H, W) -> (N, C, H_out, W_out) = out_shape
    """
    return _pool(
        "max_pool2d",
        "max_pool2d_kernel",
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        out_shape,
        executor,
    )


def avg_pool2d(
    x, *, kernel_size, stride, padding, ceil_mode, count_include_pad, out_shape, executor=None
):
    """Mean over each window with PyTorch's divisors.

    x : (N, C, H, W) -> (N, C, H_out, W_out) = out_shape
    """
    return _pool(
        "avg_pool2d",
        "avg_pool2d_kernel",
        x,
        kernel_size,
        stride,
        padding,
        ceil_mode,
        out_shape,
        executor,
        np.int32(bool(count_include_pad)),
    )


def global_avg_pool_planes(ex, x, variant=None):
    """Mean of each (n, c) plane of a C-contiguous (N, C, H, W) x: a new (N, C) array.

    Shared with squeeze_excite (r2n/gpu/layers.py).
    """
    kernel, threads = GLOBAL_AVG_POOL_VARIANTS[variant or GLOBAL_AVG_POOL_DEFAULT]
    n, c, h, w = x.shape
    out = ex.empty((n, c), x.dtype)
    planes = n * c
    if planes == 0:
        return out
    if h * w == 0:
        raise ValueError(f"r2n.global_avg_pool2d: x must have H, W >= 1, got {tuple(x.shape)}")
    # variant 1: a thread per plane; variant 2: a warp per plane
    workers = planes if kernel.endswith("1_kernel") else planes * _runtime.WARP_SIZE
    args = (x, out, np.int64(planes), np.int64(h * w))
    ex.launch(
        FILE, f"{kernel}<{dtype_name(x.dtype)}>", grid_1d(workers, threads), (threads,), args
    )
    return out


def global_avg_pool2d(x, *, variant=None, executor=None):
    """Mean over H and W: (N, C, H, W) -> (N, C).

    variant : a key of GLOBAL_AVG_POOL_VARIANTS, None for the default.
    """
    op = "global_avg_pool2d"
    _checks.check_arrays(op, {"x": x})
    _checks.image_args(op, x)
    if variant is not None and variant not in GLOBAL_AVG_POOL_VARIANTS:
        raise ValueError(
            f"r2n.{op}: variant must be one of {sorted(GLOBAL_AVG_POOL_VARIANTS)}, got {variant!r}"
        )
    ex = executor or _runtime.executor()
    return global_avg_pool_planes(ex, contiguous(ex, x), variant)


def _forced(name: str):
    def run(x, **kwargs):
        return global_avg_pool2d(x, variant=name, **kwargs)

    run.__name__ = f"global_avg_pool2d_{name}"
    run.__doc__ = f"global_avg_pool2d through variant {name} (arguments as global_avg_pool2d)."
    return run


#: This area's numbered variants (global_avg_pool2d's): name -> the op with it forced.
VARIANTS = {name: _forced(name) for name in GLOBAL_AVG_POOL_VARIANTS}

#: global_avg_pool2d's ladder (r2n._ladder.Step), in order; kernels/pool.cu's header.
LADDER = (
    Step(
        "1_naive",
        "one thread sums one (n, c) plane: the definition, loads H*W apart (uncoalesced)",
        VARIANTS["1_naive"],
        source="r2n/gpu/kernels/pool.cu",
    ),
    Step(
        "2_warp_reduce",
        "one warp per plane: coalesced loads, then a butterfly shuffle sum",
        VARIANTS["2_warp_reduce"],
        source="r2n/gpu/kernels/pool.cu",
    ),
)
