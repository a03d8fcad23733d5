"""Reference activations (elementwise, any shape). NaN propagates, as in PyTorch."""

from __future__ import annotations

import numpy as np


def relu(x):
    """max(x, 0); NaN stays NaN. Returns a new array shaped like x."""
    # out= keeps a 0-d input's result an array (NumPy's ufuncs return scalars)
    return np.maximum(x, x.dtype.type(0), out=np.empty(x.shape, x.dtype))


def leaky_relu(x, *, negative_slope):
    """x where x > 0, else x * negative_slope. Returns a new array."""
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def sigmoid(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|.

    exp is only ever taken of -|x| <= 0, so it lies in (0, 1]:
    x >= 0: 1 / (1 + e),  x < 0: e / (1 + e),  with e = exp(-|x|).
    """
    with np.errstate(under="ignore"):  # exp(-1000) -> 0 is the right answer
        e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
