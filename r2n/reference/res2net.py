"""Reference Res2Net chain and bottleneck, composed from the reference ops.

The Res2Net bottleneck (Gao et al., "Res2Net: A New Multi-scale Backbone
Architecture") replaces ResNet's single 3x3 conv by a hierarchy over ``scale``
chunks of ``width`` channels::

    x_0 | x_1 | x_2 | x_3            (split along channels, scale = 4)
    y_0 = relu(conv_0(x_0))
    y_1 = relu(conv_1(y_0 + x_1))     ("normal": each chunk sees the previous
    y_2 = relu(conv_2(y_1 + x_2))      output, so the receptive field grows)
    y_3 = x_3                         (last chunk passes through)
    out = y_0 | y_1 | y_2 | y_3

In a "stage" block (the first block of a stage: stride or channel change) the
adds are skipped, every conv has the block's stride, and the last chunk is
downsampled by a 3x3 average pool instead of passed through.

This file does it step by step, exactly as a framework would: split, add, conv,
bias, ReLU, concatenate. Each step is a full pass over memory; the fast
backends fuse them.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .conv import conv2d
from .elementwise import relu
from .pool import avg_pool2d


def _conv3x3_args(x, weight, stride, groups):
    """The normalised conv2d arguments of a chain conv (3x3, padding 1)."""
    return _checks.conv2d_args("res2net_chain", x, weight, None, stride, 1, 1, groups)


def res2net_chain(x, weights, biases, *, scale, stype, stride, groups, width, out_shape):
    """The hierarchical residual part of a Res2Net bottleneck.

    Parameters
    ----------
    x : (N, scale * width, H, W)
    weights : n = max(scale - 1, 1) arrays (width, width // groups, 3, 3), BN folded
    biases : n arrays (width,) or None
    scale, stype, stride, groups, width : as checked by r2n._checks.chain_args
    out_shape : (N, scale * width, H_out, W_out)

    Returns
    -------
    (N, scale * width, H_out, W_out)
    """
    nums = max(scale - 1, 1)
    chunks = [x[:, i * width : (i + 1) * width] for i in range(scale)]  # scale x (N, width, H, W)
    outputs = []
    sp = None
    for i in range(nums):
        sp = chunks[i] if i == 0 or stype == "stage" else sp + chunks[i]  # N, width, H, W
        bias = None if biases is None else biases[i]
        args = _conv3x3_args(sp, weights[i], stride, groups)
        sp = relu(conv2d(sp, weights[i], bias, **args))  # N, width, H_out, W_out
        outputs.append(sp)
    if scale > 1:
        last = chunks[nums]  # N, width, H, W
        if stype == "stage":
            last = avg_pool2d(
                last,
                kernel_size=(3, 3),
                stride=(stride, stride),
                padding=(1, 1),
                ceil_mode=False,
                count_include_pad=True,
                out_shape=out_shape[:1] + (width,) + out_shape[2:],
            )
        outputs.append(last)
    return np.concatenate(outputs, axis=1)  # N, scale * width, H_out, W_out


def bottle2neck(x, params, *, conv1, chain, conv3, shortcut, out_shape):
    """One Res2Net bottleneck: 1x1 conv -> chain -> 1x1 conv, + shortcut, ReLU.

    Parameters
    ----------
    x : (N, C_in, H, W)
    params : r2n.params.Bottle2neckParams (BN folded)
    conv1, chain, conv3, shortcut : normalised arguments from the shared checks
        (r2n._checks.bottle2neck_args): conv1's, the chain's (scale, stype,
        stride, groups, ...), conv3's, and the shortcut's ({"conv": ...,
        "pool": ... or None}, or None for the identity).
    out_shape : (N, C_out, H_out, W_out)

    Returns
    -------
    (N, C_out, H_out, W_out)
    """
    out = relu(conv2d(x, params.conv1.weight, params.conv1.bias, **conv1))  # N, w*s, H, W
    out = res2net_chain(out, params.chain_weights, params.chain_biases, **chain)
    # out: N, w*s, Ho, Wo
    out = conv2d(out, params.conv3.weight, params.conv3.bias, **conv3)  # N, C_out, Ho, Wo
    if params.shortcut is None:
        identity = x  # N, C_in == C_out, H, W (stride 1)
    else:
        source = x
        if shortcut["pool"] is not None:
            source = avg_pool2d(x, **shortcut["pool"])  # N, C_in, Ho, Wo
        identity = conv2d(
            source, params.shortcut.weight, params.shortcut.bias, **shortcut["conv"]
        )  # N, C_out, Ho, Wo
    out += identity
    return relu(out)
