"""The res2net_chain ladder on the CPU: from a framework's passes to the fused chain.

Each step is a separate implementation of r2n.res2net_chain (BN folded into
the convs' weights and biases), with the GPU ladder's names (r2n.gpu.res2net):

``1_unfused``         a parallel kernel per op, as a framework runs the chain:
                      per conv a split copy, the add ("normal"), conv2d + bias,
                      ReLU, a cat copy into the output; then the last chunk.
``2_fused_epilogue``  per conv one call of step 4's conv (r2n.cpu.conv.v4_simd):
                      it reads its chunk in place (a channel slice of x), and
                      its epilogue adds the bias, applies ReLU and writes the
                      output's channel slice: no split, ReLU or cat pass. The
                      add and the last chunk still take passes of their own.
``3_fused``           r2n.cpu.res2net.res2net_chain: one prologue pads every
                      chunk the convs read and writes the last chunk; each
                      conv's epilogue also writes ``y_i + x_{i+1}`` into the
                      next conv's padded input (no add pass); "stage" chains
                      run all their convs in one launch.

``copy_channels_kernel`` and ``add_kernel`` (parallel over (image, channel)
planes, honouring ``r2n.set_num_threads``) are step 1's passes; the speedup
model (r2n._bench.residual) times them too.
"""

from __future__ import annotations

import numpy as np

from .._ladder import Step
from ._jit import kernel, prange
from .conv import conv2d
from .conv.padding import pad_kernel
from .conv.v4_simd import conv_simd, input_layout
from .elementwise import relu, vector_or
from .microkernel import pack_weights
from .pool import avg_pool2d
from .res2net import res2net_chain


@kernel
def copy_channels_kernel(x, c0, out):
    """out[n, c] = x[n, c0 + c] for every (n, c) plane of out (N, C, H, W);
    out may be a channel slice of a larger array. One thread per plane."""
    n, c, h, w = out.shape
    for p in prange(n * c):
        i, j = p // c, p % c
        for y in range(h):
            out[i, j, y, :] = x[i, c0 + j, y, :]


@kernel
def add_kernel(a, b, out):
    """out = a + b, all (N, C, H, W) (channel slices allowed). One thread per plane."""
    n, c, h, w = out.shape
    for p in prange(n * c):
        i, j = p // c, p % c
        for y in range(h):
            for z in range(w):
                out[i, j, y, z] = a[i, j, y, z] + b[i, j, y, z]


def _last_chunk(x, out, *, stype, stride, width, nums, out_shape):
    """The chain's last chunk into out[:, nums * width:]: copied ("normal") or
    3x3-average-pooled with stride and padding 1 ("stage"), then copied."""
    last = out[:, nums * width :]
    if stype == "stage":
        pooled = avg_pool2d(
            copy_of_channels(x, nums * width, width),
            kernel_size=(3, 3),
            stride=(stride, stride),
            padding=(1, 1),
            ceil_mode=False,
            count_include_pad=True,
            out_shape=(out_shape[0], width, *out_shape[2:]),
        )
        copy_channels_kernel(pooled, 0, last)
    else:
        copy_channels_kernel(x, nums * width, last)


def copy_of_channels(x, c0, width):
    """Channels c0 .. c0 + width of x (N, C, H, W) as a new contiguous array."""
    out = np.empty((x.shape[0], width, *x.shape[2:]), x.dtype)
    copy_channels_kernel(x, c0, out)
    return out


def chain_1_unfused(x, weights, biases, *, scale, stype, stride, groups, width, out_shape):
    """Step ``1_unfused``: the chain as a framework runs it, one pass per op.

    Per conv i: split (copy x_i out of x), add (x_i + y_{i-1}, "normal"),
    conv2d + bias (r2n.cpu.conv.conv2d), ReLU (its own pass), cat (copy y_i
    into the output); then the last chunk. Arguments as r2n.res2net_chain's
    checked ones: x (N, scale*width, H, W) -> (N, scale*width, H_out, W_out).
    """
    x = np.ascontiguousarray(x)
    out = np.empty(out_shape, x.dtype)
    nums = max(scale - 1, 1)
    conv_shape = (out_shape[0], width, *out_shape[2:])
    y = None
    for i in range(nums):
        sp = copy_of_channels(x, i * width, width)  # split
        if stype == "normal" and i > 0:
            summed = np.empty_like(sp)
            add_kernel(sp, y, summed)  # add
            sp = summed
        bias = None if biases is None else biases[i]
        y = conv2d(
            sp, weights[i], bias, stride=(stride, stride), padding=(1, 1), dilation=(1, 1),
            groups=groups, out_shape=conv_shape,
        )  # fmt: skip
        y = relu(y)
        copy_channels_kernel(y, 0, out[:, i * width : (i + 1) * width])  # cat
    if scale > 1:
        _last_chunk(
            x, out, stype=stype, stride=stride, width=width, nums=nums, out_shape=out_shape
        )
    return out


def chain_2_fused_epilogue(x, weights, biases, *, scale, stype, stride, groups, width, out_shape):
    """Step ``2_fused_epilogue``: step 1 with the conv's epilogue fused.

    Each conv (r2n.cpu.conv.v4_simd.conv_simd) pads its input chunk straight
    from x's channel slice (its own input copy), adds the bias, applies ReLU
    and writes y_i
    straight into its channel slice of the output: the split, the ReLU pass
    and the cat are gone. Still passes of their own: the add (into one
    buffer, "normal") and the last chunk. Arguments as :func:`chain_1_unfused`.
    """
    x = np.ascontiguousarray(x)
    out = np.empty(out_shape, x.dtype)
    nums = max(scale - 1, 1)
    n, _, h, w = x.shape
    s = (stride, stride)
    layout = input_layout(h, w, *out_shape[2:], (3, 3), s, (1, 1), (1, 1))
    summed = None
    for i in range(nums):
        chunk = x[:, i * width : (i + 1) * width]
        if stype == "normal" and i > 0:
            if summed is None:
                summed = np.empty((n, width, h, w), x.dtype)
            add_kernel(chunk, out[:, (i - 1) * width : i * width], summed)  # add
            chunk = summed
        packed = pack_weights(np.asarray(weights[i], x.dtype), groups)
        bias = vector_or(None if biases is None else biases[i], 0, width, x.dtype)
        common = dict(out_c0=i * width, activation="relu", c_in_g=width // groups)
        if layout.rows is None and layout.cols is None:
            # The conv's padded input copy, of this chunk only (read in place
            # from x's channel slice, or from the sum).
            padded = np.empty((n, width, *layout.shape), x.dtype)
            pad_kernel(chunk, 1, 1, padded)
            conv_simd(
                padded, packed, width, groups, (3, 3), s, (0, 0), (1, 1), bias, out, **common
            )  # fmt: skip
        else:  # stride > 3 ("stage"): conv_simd gathers the rows it reads from x
            conv_simd(
                x, packed, width, groups, (3, 3), s, (1, 1), (1, 1), bias, out,
                x_c0=i * width, **common,
            )  # fmt: skip
    if scale > 1:
        _last_chunk(
            x, out, stype=stype, stride=stride, width=width, nums=nums, out_shape=out_shape
        )
    return out


#: The res2net_chain ladder (r2n._ladder), the GPU's step names.
LADDER = (
    Step(
        "1_unfused",
        "a framework's passes: per conv a split copy, the add, conv + bias, ReLU, a cat copy",
        chain_1_unfused,
        source="r2n/cpu/res2net_ladder.py",
    ),
    Step(
        "2_fused_epilogue",
        "bias + ReLU in the conv's epilogue, chunks read and written in place: no split, cat",
        chain_2_fused_epilogue,
        source="r2n/cpu/res2net_ladder.py",
    ),
    Step(
        "3_fused",
        "the add in the previous conv's epilogue, chunks padded by one prologue launch",
        res2net_chain,
        source="r2n/cpu/res2net.py",
    ),
)
