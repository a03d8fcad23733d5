"""Numba kernels for the elementwise ops: activations and inference batch norm.

Same functions and signatures as ``r2n.reference.elementwise``. Each public
function is a small Python wrapper that makes the inputs C-contiguous,
allocates the output and calls one ``@kernel``.

The activations flatten their input and run one flat ``prange`` over it:
Numba hands each thread one contiguous range, which LLVM vectorises. (A
prange over blocks with an inner ``range(start, stop)`` does not vectorise:
Numba cannot prove ``start >= 0`` and keeps its negative-index wraparound in
the loop; measured 10x slower, and as fast again with an unsigned index.)
Batch norm views x as (N, C, L) and runs one iteration per (n, c) plane, so
the channel's scale is computed once per plane, not per element.

NaN and Inf propagate as in the reference (and PyTorch). ``fastmath`` has no
``nnan`` flag (``r2n.cpu._jit``), so comparisons with NaN are IEEE: false.
Constants are made with ``x.dtype.type(...)`` so float32 stays float32 (a bare
``1.0`` would promote the arithmetic to float64).
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel, prange


def kernel_input(a):
    """A C-contiguous, read-only view of an input array (copied only if not contiguous).

    Every kernel takes its inputs read-only: Numba then refuses to compile a
    write to them, and writeable and read-only callers share one compiled
    signature per dtype instead of two.
    """
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


# dtype -> the empty array unused_array returns. Shared by every call and
# thread: it has no element, so it can hold no state.
_UNUSED = {}


def unused_array(dtype):
    """An empty 1-D array of ``dtype`` standing in for a kernel's unused
    optional buffer (a residual that is not there), one per dtype. Shared
    by every CPU module."""
    dtype = np.dtype(dtype)
    if dtype not in _UNUSED:
        _UNUSED[dtype] = np.empty(0, dtype)
    return _UNUSED[dtype]


# --------------------------------------------------------------------------- #
# Activations
# --------------------------------------------------------------------------- #


@kernel
def _relu_kernel(x, out):
    """out = max(x, 0), NaN kept. x, out : (size,) C-contiguous."""
    n = x.size
    zero = x.dtype.type(0)
    for i in prange(n):
        v = x[i]
        out[i] = zero if v <= zero else v  # NaN <= 0 is false: NaN stays; -0 gives +0


@kernel
def _leaky_relu_kernel(x, negative_slope, out):
    """out = x if x > 0 else x * negative_slope. x, out : (size,); slope of x's dtype."""
    n = x.size
    zero = x.dtype.type(0)
    for i in prange(n):
        v = x[i]
        out[i] = v if v > zero else v * negative_slope


@kernel
def _sigmoid_kernel(x, out):
    """out = 1 / (1 + exp(-x)) with exp only of -|x| (no overflow). x, out : (size,)."""
    n = x.size
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for i in prange(n):
        v = x[i]
        e = np.exp(-abs(v))  # in (0, 1]; NaN for NaN
        out[i] = one / (one + e) if v >= zero else e / (one + e)


def _flat_map(kernel_fn, x, *scalars):
    """Run an elementwise kernel on a contiguous flat copy of x; return x's shape."""
    xc = kernel_input(x).reshape(-1)  # size (ndim >= 1 even for a 0-d x)
    out = np.empty(x.shape, dtype=x.dtype)
    kernel_fn(xc, *scalars, out.reshape(-1))
    return out


def relu(x):
    """``max(x, 0)`` elementwise; NaN stays NaN.

    Parameters
    ----------
    x : array of any shape, float32 or float64

    Returns
    -------
    New C-contiguous array shaped like x.
    """
    return _flat_map(_relu_kernel, x)


def leaky_relu(x, *, negative_slope):
    """``x if x > 0 else negative_slope * x`` elementwise.

    Parameters
    ----------
    x : array of any shape
    negative_slope : float

    Returns
    -------
    New C-contiguous array shaped like x.
    """
    return _flat_map(_leaky_relu_kernel, x, x.dtype.type(negative_slope))


def sigmoid(x):
    """``1 / (1 + exp(-x))`` elementwise, without overflow for large ``|x|``.

    Parameters
    ----------
    x : array of any shape

    Returns
    -------
    New C-contiguous array shaped like x.
    """
    return _flat_map(_sigmoid_kernel, x)


# --------------------------------------------------------------------------- #
# Batch norm
# --------------------------------------------------------------------------- #

# Both kernels take weight and bias as arrays: the wrappers pass ones and zeros
# for None, which give the reference's results (1 * s and y + 0 are exact), so
# one compiled kernel serves all four combinations.


@kernel
def _batch_norm_kernel(x, mean, var, weight, bias, eps, out):
    """out[n, c, :] = (x[n, c, :] - mean[c]) * weight[c] / sqrt(var[c] + eps) + bias[c].

    x, out : (N, C, L); mean, var, weight, bias : (C,); eps of x's dtype.
    """
    n, c, length = x.shape
    one = x.dtype.type(1)
    for p in prange(n * c):
        i, ch = p // c, p % c
        scale = weight[ch] * (one / np.sqrt(var[ch] + eps))
        m, b = mean[ch], bias[ch]
        for k in range(length):
            out[i, ch, k] = (x[i, ch, k] - m) * scale + b


@kernel
def _fold_batch_norm_kernel(conv_weight, conv_bias, mean, var, weight, bias, eps, w_out, b_out):
    """Scale each output channel's weights by s = weight / sqrt(var + eps).

    conv_weight, w_out : (C_out, K); conv_bias, mean, var, weight, bias, b_out : (C_out,).
    b_out = (conv_bias - mean) * s + bias.
    """
    c_out, k = conv_weight.shape
    one = conv_weight.dtype.type(1)
    for o in prange(c_out):
        scale = weight[o] * (one / np.sqrt(var[o] + eps))
        for j in range(k):
            w_out[o, j] = conv_weight[o, j] * scale
        b_out[o] = (conv_bias[o] - mean[o]) * scale + bias[o]


def vector_or(v, fill, size, dtype):
    """A contiguous, read-only (size,) vector of ``dtype``: v, or ``fill``
    everywhere when v is None (an absent bias is zeros, an absent BN weight
    ones). Shared by every CPU module."""
    if v is None:
        return kernel_input(np.full(size, fill, dtype=dtype))
    return kernel_input(np.asarray(v, dtype=dtype))


def batch_norm(x, mean, var, weight, bias, *, eps):
    """Inference batch norm over axis 1.

    Parameters
    ----------
    x : (N, C, ...) at least 2-D
    mean, var : (C,) running statistics
    weight, bias : (C,) or None (None means 1 and 0)
    eps : float added to var

    Returns
    -------
    New C-contiguous array shaped like x.
    """
    n, c = x.shape[:2]
    length = int(np.prod(x.shape[2:], dtype=np.int64))  # 1 for a 2-D x
    dt = x.dtype
    out = np.empty(x.shape, dtype=dt)
    _batch_norm_kernel(
        kernel_input(x).reshape(n, c, length),
        kernel_input(mean),
        kernel_input(var),
        vector_or(weight, 1, c, dt),
        vector_or(bias, 0, c, dt),
        dt.type(eps),
        out.reshape(n, c, length),
    )
    return out


def fold_batch_norm(conv_weight, conv_bias, mean, var, weight, bias, *, eps):
    """Fold an inference BN into the conv (or linear) layer before it.

    Parameters
    ----------
    conv_weight : (C_out, ...) e.g. (C_out, C_in // groups, kH, kW)
    conv_bias : (C_out,) or None
    mean, var : (C_out,) ; weight, bias : (C_out,) or None ; eps : float

    Returns
    -------
    (weight', bias') : new arrays shaped (C_out, ...) and (C_out,), with
    ``conv(x, weight') + bias' == bn(conv(x, conv_weight) + conv_bias)``.
    """
    c_out = conv_weight.shape[0]
    k = int(np.prod(conv_weight.shape[1:], dtype=np.int64))
    dt = conv_weight.dtype
    w_out = np.empty(conv_weight.shape, dtype=dt)
    b_out = np.empty(c_out, dtype=dt)
    _fold_batch_norm_kernel(
        kernel_input(conv_weight).reshape(c_out, k),
        vector_or(conv_bias, 0, c_out, dt),
        kernel_input(mean),
        kernel_input(var),
        vector_or(weight, 1, c_out, dt),
        vector_or(bias, 0, c_out, dt),
        dt.type(eps),
        w_out.reshape(c_out, k),
        b_out,
    )
    return w_out, b_out
