"""The zero-padded copy of a conv's input, shared by the steps that read one.

Steps 2-4 read a padded input, so that no tap tests whether it lies inside
the image: ``pad`` copies x into a new array with zeros around it (one
parallel launch, a row at a time); ``pad_kernel`` is that copy into a
buffer the caller provides (step 4's input copy, r2n.cpu.conv.v4_simd).
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, prange


@kernel
def pad_kernel(x, ph, pw, xp):
    """xp[n, c] = x[n, c] surrounded by ph rows / pw columns of zeros (and any
    extra right/bottom columns/rows xp has). One job per (n, c) plane, a row
    at a time over row slices (their loops vectorise)."""
    n_img, c, h, w = x.shape
    hp, wp = xp.shape[2], xp.shape[3]
    zero = xp.dtype.type(0)
    for job in prange(n_img * c):
        n = job // c
        ch = job % c
        for y in range(hp):
            dst = xp[n, ch, y]
            for i in range(wp):
                dst[i] = zero
            if ph <= y < ph + h:
                src = x[n, ch, y - ph]
                for i in range(w):
                    dst[pw + i] = src[i]


def pad(x, padding, extra=(0, 0)):
    """Zero-pad H and W of a contiguous NCHW array in parallel -> new array."""
    n, c, h, w = x.shape
    (ph, pw), (eh, ew) = padding, extra
    xp = np.empty((n, c, h + 2 * ph + eh, w + 2 * pw + ew), x.dtype)
    pad_kernel(x, ph, pw, xp)
    return xp
