"""Reference layers: linear, and TResNet's GPU-friendly layers.

``linear`` is ``x @ weight.T + bias``.
TResNet (Ridnik et al., 2021) replaces the ResNet stem with a lossless
space-to-depth rearrangement, downsamples with an anti-aliasing blur instead of
strided convs, and adds cheap squeeze-and-excitation. Each is a few lines of
NumPy here.
"""

from __future__ import annotations

import numpy as np

from .elementwise import relu, sigmoid


def linear(x, weight, bias):
    """Fully connected layer, ``x @ weight.T + bias``.

    Parameters
    ----------
    x : (..., in_features)
    weight : (out_features, in_features)
    bias : (out_features,) or None

    Returns
    -------
    (..., out_features)
    """
    out = np.matmul(x, weight.T)  # ..., out_features (a new array)
    if bias is not None:
        out += bias
    return np.ascontiguousarray(out)


def space_to_depth(x, *, block_size):
    """Move each b x b pixel block into channels.

    ``out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j]``

    x : (N, C, H, W) with H, W divisible by b -> (N, b*b*C, H/b, W/b)
    """
    n, c, h, w = x.shape
    b = block_size
    blocks = x.reshape(n, c, h // b, b, w // b, b)  # n, c, h, i, w, j
    blocks = blocks.transpose(0, 3, 5, 1, 2, 4)  # n, i, j, c, h, w
    # The copy matters for b == 1, where the reshapes alone would return a view
    # of the caller's array.
    return blocks.reshape(n, b * b * c, h // b, w // b).copy()


# The anti-aliasing filter: outer([1, 2, 1], [1, 2, 1]) / 16, separable.
_BLUR_TAPS = (0.25, 0.5, 0.25)


def blur_pool2d(x):
    """Anti-aliased downsampling: depthwise 3x3 binomial blur, reflect pad 1, stride 2.

    Computed separably (rows, then columns), which equals the 3x3 filter
    ``[1,2,1]^T [1,2,1] / 16`` applied per channel.

    x : (N, C, H, W) with H, W >= 2 -> (N, C, (H - 1)//2 + 1, (W - 1)//2 + 1)
    """
    t0, t1, t2 = (x.dtype.type(t) for t in _BLUR_TAPS)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")  # N, C, H+2, W+2
    h_out = (x.shape[2] - 1) // 2 + 1
    w_out = (x.shape[3] - 1) // 2 + 1
    # Output row y reads padded rows 2y, 2y+1, 2y+2.
    rows = (
        t0 * xp[:, :, 0 : 2 * h_out : 2]
        + t1 * xp[:, :, 1 : 2 * h_out + 1 : 2]
        + t2 * xp[:, :, 2 : 2 * h_out + 2 : 2]
    )  # N, C, Ho, W+2
    out = (
        t0 * rows[:, :, :, 0 : 2 * w_out : 2]
        + t1 * rows[:, :, :, 1 : 2 * w_out + 1 : 2]
        + t2 * rows[:, :, :, 2 : 2 * w_out + 2 : 2]
    )  # N, C, Ho, Wo
    return np.ascontiguousarray(out)


def squeeze_excite(x, w1, b1, w2, b2):
    """Squeeze-and-excitation: rescale each channel by a gate computed from the
    channel means.

    x : (N, C, H, W); w1 : (C_mid, C, 1, 1); b1 : (C_mid,) or None;
    w2 : (C, C_mid, 1, 1); b2 : (C,) or None.  Returns (N, C, H, W):

        s = mean_{H,W}(x)                      # N, C
        z = relu(s @ w1.T + b1)                # N, C_mid
        g = sigmoid(z @ w2.T + b2)             # N, C
        out = x * g[:, :, None, None]
    """
    s = x.mean(axis=(2, 3))  # N, C
    z = s @ w1[:, :, 0, 0].T  # N, C_mid
    if b1 is not None:
        z += b1
    z = relu(z)
    g = z @ w2[:, :, 0, 0].T  # N, C
    if b2 is not None:
        g += b2
    g = sigmoid(g)
    return np.ascontiguousarray(x * g[:, :, None, None])
