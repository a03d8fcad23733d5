"""Hypothesis-drawn conv2d, max_pool2d and avg_pool2d cases against torch in float64.

torch runs each drawn case first. Where torch rejects the arguments (RuntimeError)
r2n must reject them too (ValueError), so r2n's argument rules are checked against
torch's; where torch accepts them, r2n must give torch's output shape and, for a
non-empty batch, torch's values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from helpers import assert_close, t64
from hypothesis import event, example, given
from hypothesis import strategies as st

import r2n

REF = "reference"

batch = st.integers(0, 3)
size = st.integers(1, 12)
kernel = st.integers(1, 5)
strides = st.integers(1, 3)
paddings = st.integers(0, 3)
dilations = st.integers(1, 3)
seeds = st.integers(0, 2**32 - 1)


def _randn(seed, *shape):
    """Standard-normal float64 data from a hypothesis-drawn seed (never zeros)."""
    return np.random.default_rng(seed).standard_normal(shape)


def _check_against_torch(run_torch, run_r2n):
    """torch's verdict decides: both reject, or both accept and agree."""
    try:
        ref = run_torch()
    except RuntimeError:
        event("torch rejects the arguments")
        with pytest.raises(ValueError):
            run_r2n()
        return
    event("torch accepts the arguments")
    out = run_r2n()
    assert type(out) is np.ndarray
    assert out.dtype == np.float64
    assert out.shape == tuple(ref.shape)
    if out.size:
        assert_close(out, ref.numpy())


# The dilated kernel (extent 2 * (3 - 1) + 1 = 5) against a padded height of
# 3 + 2 * 1 = 5 (fits: one output row) and of 2 + 2 * 1 = 4 (torch rejects).
conv_edge = dict(
    n=2,
    groups=2,
    c_in_g=2,
    c_out_g=3,
    w=6,
    kh=3,
    kw=2,
    stride=(2, 1),
    padding=(1, 0),
    dilation=(2, 3),
    with_bias=True,
    seed=11,
)


@given(
    n=batch,
    groups=st.integers(1, 4),
    c_in_g=st.integers(1, 4),
    c_out_g=st.integers(1, 4),
    h=size,
    w=size,
    kh=kernel,
    kw=kernel,
    stride=st.tuples(strides, strides),
    padding=st.tuples(paddings, paddings),
    dilation=st.tuples(dilations, dilations),
    with_bias=st.booleans(),
    seed=seeds,
)
@example(h=3, **conv_edge)
@example(h=2, **conv_edge)
def test_conv2d_matches_torch_or_both_reject(
    n, groups, c_in_g, c_out_g, h, w, kh, kw, stride, padding, dilation, with_bias, seed
):
    c_in, c_out = groups * c_in_g, groups * c_out_g
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w))
    weight = rng.standard_normal((c_out, c_in_g, kh, kw))
    bias = rng.standard_normal(c_out) if with_bias else None
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _check_against_torch(
        lambda: F.conv2d(t64(x), t64(weight), t64(bias), **args),
        lambda: r2n.conv2d(x, weight, bias, backend=REF, **args),
    )


def _kernel_and_padding():
    """(kernel, padding) along one axis, padding 0..3; every other draw keeps
    padding <= kernel // 2, as torch's pools require, so that enough cases get
    past torch's checks to compare values."""
    return kernel.flatmap(lambda k: st.tuples(st.just(k), st.integers(0, k // 2) | paddings))


pool_given = dict(
    n=batch,
    c=st.integers(1, 4),
    h=size,
    w=size,
    kernel_pad_h=_kernel_and_padding(),
    kernel_pad_w=_kernel_and_padding(),
    stride=st.none() | st.tuples(strides, strides),
    ceil_mode=st.booleans(),
    seed=seeds,
)


def _pool_args(kernel_pad_h, kernel_pad_w, stride, ceil_mode):
    (kh, ph), (kw, pw) = kernel_pad_h, kernel_pad_w
    return dict(kernel_size=(kh, kw), stride=stride, padding=(ph, pw), ceil_mode=ceil_mode)


# In ceil mode torch accepts a kernel longer than the padded input as long as
# the one output window starts inside the input (here: H = 1, kernel 2, stride 2).
ceil_kernel_past_input = dict(
    n=1,
    c=2,
    h=1,
    w=4,
    kernel_pad_h=(2, 0),
    kernel_pad_w=(2, 0),
    stride=(2, 2),
    ceil_mode=True,
    seed=7,
)


@given(**pool_given)
@example(**ceil_kernel_past_input)
def test_max_pool2d_matches_torch_or_both_reject(
    n, c, h, w, kernel_pad_h, kernel_pad_w, stride, ceil_mode, seed
):
    x = _randn(seed, n, c, h, w)
    args = _pool_args(kernel_pad_h, kernel_pad_w, stride, ceil_mode)
    _check_against_torch(
        lambda: F.max_pool2d(t64(x), **args),
        lambda: r2n.max_pool2d(x, backend=REF, **args),
    )


@given(**pool_given, count_include_pad=st.booleans())
@example(**ceil_kernel_past_input, count_include_pad=True)
@example(**ceil_kernel_past_input, count_include_pad=False)
def test_avg_pool2d_matches_torch_or_both_reject(
    n, c, h, w, kernel_pad_h, kernel_pad_w, stride, ceil_mode, count_include_pad, seed
):
    x = _randn(seed, n, c, h, w)
    args = _pool_args(kernel_pad_h, kernel_pad_w, stride, ceil_mode)
    _check_against_torch(
        lambda: F.avg_pool2d(t64(x), count_include_pad=count_include_pad, **args),
        lambda: r2n.avg_pool2d(x, count_include_pad=count_include_pad, backend=REF, **args),
    )
