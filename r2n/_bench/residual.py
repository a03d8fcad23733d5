"""The residual-connection steps of the Res2Net chain as separate parallel kernels.

A framework runs the chain's glue as separate array ops: split the input into
chunks (a copy each, when the chunk must be contiguous), add the previous
output to the next chunk, and concatenate the outputs. The speedup model
(:mod:`r2n._bench.model`) times these steps (its T2) apart from the convs, so
they need parallel implementations whose speedup with threads can be measured:
NumPy's own copies and adds run on one thread. The kernels (the channel copy
and the add of r2n.cpu.res2net_ladder, step 1 of the chain's ladder, and a
flat copy) parallelise with ``prange`` and honour ``r2n.set_num_threads``.
Every plane is written by one thread only: no write races.

Importing this module imports Numba (the cpu backend's dependency).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..cpu._jit import jit
from ..cpu.res2net_ladder import add_kernel, copy_channels_kernel

# numba.njit(parallel=True) with the disk cache where one can be written (as
# the cpu backend's kernels; a read-only install runs without it).
_parallel = jit(parallel=True)


@_parallel
def _copy_flat_kernel(src, dst, block):
    n = src.size
    for k in prange((n + block - 1) // block):
        start = k * block
        stop = min(start + block, n)
        dst[start:stop] = src[start:stop]


def split(x, c0: int, width: int):
    """Channels ``c0 .. c0 + width`` of x as a new contiguous array.

    Parameters
    ----------
    x : (N, C, H, W), C-contiguous

    Returns
    -------
    (N, width, H, W)
    """
    out = np.empty((x.shape[0], width) + x.shape[2:], x.dtype)
    copy_channels_kernel(x, c0, out)
    return out


def add(a, b):
    """``a + b`` elementwise; a, b and the result (N, C, H, W), same dtype."""
    out = np.empty_like(a)
    add_kernel(a, b, out)
    return out


def concatenate(chunks):
    """Chunks (N, C_i, H, W) concatenated along channels: (N, sum C_i, H, W)."""
    n, _, h, w = chunks[0].shape
    out = np.empty((n, sum(c.shape[1] for c in chunks), h, w), chunks[0].dtype)
    c0 = 0
    for c in chunks:
        # The same plane-parallel copy, into a channel slice of out.
        copy_channels_kernel(c, 0, out[:, c0 : c0 + c.shape[1]])
        c0 += c.shape[1]
    return out


def copy_flat(src, dst, block: int = 1 << 16):
    """``dst[:] = src`` for 1-D arrays, in parallel blocks (bandwidth probe)."""
    _copy_flat_kernel(src, dst, block)
