"""TResNet (Ridnik et al., 2021) with timm's hyper-parameters and key layout.

============  ==============  ============  ===========================
name          layers          width factor  planes (layer1 .. layer4)
============  ==============  ============  ===========================
tresnet_m     3, 4, 11, 3     1.0           64, 128, 256, 512
tresnet_l     4, 5, 18, 3     1.2           76, 152, 304, 608
tresnet_xl    4, 5, 24, 3     1.3           83, 166, 332, 664
============  ==============  ============  ===========================

The network (timm's ``TResNet``, all norms BatchNorm, eps 1e-5)::

    body.s2d      space_to_depth(4): (N, 3, H, W) -> (N, 48, H/4, W/4)
    body.conv1    conv 3x3 + BN + LeakyReLU(0.01)
    body.layer1   BasicBlocks, stride 1, SE            (planes p)
    body.layer2   BasicBlocks, stride 2, SE            (2p)
    body.layer3   Bottlenecks, stride 2, SE            (4p -> 16p out)
    body.layer4   Bottlenecks, stride 2, no SE         (8p -> 32p out)
    head.fc       global average pool, linear

BasicBlock: ``conv1`` 3x3 + BN + LeakyReLU(1e-3) (then ``blur_pool2d`` when the
block has stride 2), ``conv2`` 3x3 + BN, ``se`` (reduction to
max(planes / 4, 64) channels), + shortcut, ReLU.
Bottleneck: ``conv1`` 1x1 + BN + LeakyReLU(1e-3), ``conv2`` 3x3 + BN +
LeakyReLU(1e-3) (then blur when stride 2), ``se`` on planes channels (to
max(planes / 2, 64)), ``conv3`` 1x1 + BN to 4 * planes, + shortcut, ReLU.
A stage's first block has the shortcut ``downsample``: AvgPool(2, ceil,
count_include_pad=False) then a 1x1 conv + BN (key ``downsample.1``; without
the pool, at stride 1 and a channel change, ``downsample.0``). Each conv + BN
is folded into one conv; the activation runs in the conv's epilogue, and so do
the residual add and ReLU in every Bottleneck (its SE comes before conv3) and
in a BasicBlock without SE; a BasicBlock with SE adds its residual and applies
the ReLU in the SE's last pass. Every step is a prepared layer (the pools,
space-to-depth, blur and SE through ``Layers.prepared``), so a warm forward on
the cpu backend allocates only the logits.

Official (InplaceABN) checkpoints
---------------------------------
The official TResNet weights (github.com/mrT23/TResNet) were trained with
InplaceABN, a BatchNorm whose affine weight is used as ``|weight| + eps``
(eps = 1e-5), keys ``conv1.0.0`` / ``conv1.0.1`` ... instead of timm's
``conv1.conv`` / ``conv1.bn``. :func:`convert_inplace_abn` renames the keys as
timm's ``checkpoint_filter_fn`` does and replaces every BN weight by
``abs(weight) + 1e-5``, so the result loads into these models (and timm's).
"""

from __future__ import annotations

import re

import numpy as np

from .. import _api
from ._model import bn_keys

BLOCKS = ("basic", "basic", "bottleneck", "bottleneck")
USE_SE = (True, True, True, False)
EXPANSION = {"basic": 1, "bottleneck": 4}
STEM_SLOPE = 0.01  # nn.LeakyReLU's default, the stem's activation in timm
BLOCK_SLOPE = 1e-3  # the blocks' LeakyReLU
#: The classifier's key prefix: head.fc.weight (num_classes, features), head.fc.bias.
CLASSIFIER = "head.fc"


def _planes0(p):
    return int(64 * p["width_factor"])


def _blocks(p):
    """Yield (prefix, kind, inplanes, planes, stride, downsample, use_se) per block."""
    planes0 = _planes0(p)
    inplanes = planes0
    for i, n_blocks in enumerate(p["layers"]):
        kind, planes = BLOCKS[i], planes0 * 2**i
        stride = 1 if i == 0 else 2
        out_c = planes * EXPANSION[kind]
        downsample = stride != 1 or inplanes != out_c
        for j in range(n_blocks):
            yield (
                f"body.layer{i + 1}.{j}",
                kind,
                inplanes,
                planes,
                stride if j == 0 else 1,
                downsample and j == 0,
                USE_SE[i],
            )
            inplanes = out_c


def _se_channels(kind, planes):
    """(SE input channels, reduced channels) as timm's blocks."""
    if kind == "basic":
        return planes, max(planes // 4, 64)
    return planes, max(planes * 4 // 8, 64)


def expected_keys(arch, num_classes):
    """Every state_dict key and its shape, as timm's model of the same name."""
    p = arch.params
    planes0 = _planes0(p)
    keys = {"body.conv1.conv.weight": (planes0, 48, 3, 3)}
    keys.update(bn_keys("body.conv1.bn", planes0))
    for prefix, kind, inplanes, planes, stride, downsample, use_se in _blocks(p):
        out_c = planes * EXPANSION[kind]
        if downsample:
            d = f"{prefix}.downsample.{1 if stride == 2 else 0}"
            keys[f"{d}.conv.weight"] = (out_c, inplanes, 1, 1)
            keys.update(bn_keys(f"{d}.bn", out_c))
        if kind == "basic":
            convs = [("conv1", planes, inplanes, 3), ("conv2", planes, planes, 3)]
        else:
            convs = [("conv1", planes, inplanes, 1), ("conv2", planes, planes, 3)]
        for name, c_out, c_in, k in convs:
            keys[f"{prefix}.{name}.conv.weight"] = (c_out, c_in, k, k)
            keys.update(bn_keys(f"{prefix}.{name}.bn", c_out))
        if use_se:
            c, rd = _se_channels(kind, planes)
            keys[f"{prefix}.se.fc1.weight"] = (rd, c, 1, 1)
            keys[f"{prefix}.se.fc1.bias"] = (rd,)
            keys[f"{prefix}.se.fc2.weight"] = (c, rd, 1, 1)
            keys[f"{prefix}.se.fc2.bias"] = (c,)
        if kind == "bottleneck":
            keys[f"{prefix}.conv3.conv.weight"] = (out_c, planes, 1, 1)
            keys.update(bn_keys(f"{prefix}.conv3.bn", out_c))
    keys[f"{CLASSIFIER}.weight"] = (num_classes, planes0 * 8 * 4)
    keys[f"{CLASSIFIER}.bias"] = (num_classes,)
    return keys


def _block_forward(prefix, kind, stride, downsample, use_se, weights, layers):
    """One block's forward on prepared layers: x -> y."""

    def cb(name):
        return weights.conv_bn(f"{prefix}.{name}.conv.weight", f"{prefix}.{name}.bn")

    def conv(name, **options):
        return layers.conv(cb(name), name=f"{prefix}.{name}", **options)

    shortcut = pool = None
    if downsample:
        shortcut = conv(f"downsample.{1 if stride == 2 else 0}")
        if stride == 2:
            pool = layers.step(
                f"{prefix}.downsample.0",
                "avg_pool2d",
                layers.prepared(
                    "avg_pool2d",
                    kernel_size=2,
                    stride=2,
                    ceil_mode=True,
                    count_include_pad=False,
                ),
            )
    se = None
    if use_se:
        se_weights = tuple(
            weights.array(f"{prefix}.se.{k}")
            for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        )
        # A BasicBlock ends with SE + shortcut + ReLU: fused into the SE's last pass.
        se = layers.step(
            f"{prefix}.se",
            "squeeze_excite",
            layers.prepared(
                "squeeze_excite", *se_weights, activation="relu" if kind == "basic" else None
            ),
            weights=se_weights[::2],
        )
    if kind == "basic":
        first = conv("conv1", padding=1, act="leaky_relu", slope=BLOCK_SLOPE)
        mid = None
        # Without SE the residual add and the final ReLU fuse into the last conv.
        last = conv("conv2", padding=1, act=None if use_se else "relu")
    else:
        first = conv("conv1", act="leaky_relu", slope=BLOCK_SLOPE)
        mid = conv("conv2", padding=1, act="leaky_relu", slope=BLOCK_SLOPE)
        # SE runs before conv3: the residual add and final ReLU always fuse into it.
        last = conv("conv3", act="relu")
    # timm's blur pool ("aa") follows conv1 in a BasicBlock, conv2 in a Bottleneck.
    blur = layers.step(
        f"{prefix}.{'conv1' if mid is None else 'conv2'}.aa",
        "blur_pool2d",
        layers.prepared("blur_pool2d"),
    )

    def forward(x):
        identity = x
        if shortcut is not None:
            identity = shortcut(x if pool is None else pool(x))
        out = first(x)
        if mid is None:  # basic: blur after conv1
            if stride == 2:
                out = blur(out)
            if se is None:
                return last(out, residual=identity)
            return se(last(out), residual=identity)  # relu(se(out) + identity)
        else:  # bottleneck: blur after conv2, SE before conv3
            out = mid(out)
            if stride == 2:
                out = blur(out)
            if se is not None:
                out = se(out)
            return last(out, residual=identity)

    return forward


def build(arch, weights, layers):
    """The forward pass x (N, 3, H, W) -> logits, on prepared layers."""
    p = arch.params
    backend = layers.backend
    stem = layers.conv(
        weights.conv_bn("body.conv1.conv.weight", "body.conv1.bn"),
        padding=1,
        act="leaky_relu",
        slope=STEM_SLOPE,
        name="body.conv1",
    )
    blocks = [
        _block_forward(prefix, kind, stride, downsample, use_se, weights, layers)
        for prefix, kind, _, _, stride, downsample, use_se in _blocks(p)
    ]
    fc_w = layers.arr(weights.array(f"{CLASSIFIER}.weight"))
    fc_b = layers.arr(weights.array(f"{CLASSIFIER}.bias"))
    s2d = layers.step(
        "body.s2d", "space_to_depth", layers.prepared("space_to_depth", block_size=4)
    )
    global_pool = layers.step(
        "head.global_pool", "global_avg_pool2d", layers.prepared("global_avg_pool2d")
    )
    fc = layers.step(
        "head.fc", "linear", lambda x: _api.linear(x, fc_w, fc_b, backend=backend), weights=(fc_w,)
    )

    def forward(x):
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(
                f"r2n model {arch.name}: H and W must be multiples of 4 (space_to_depth), "
                f"got shape {tuple(x.shape)}"
            )
        x = stem(s2d(x))
        for block in blocks:
            x = block(x)
        return fc(global_pool(x))

    return forward


#: name -> hyper-parameters (timm's registrations in timm/models/tresnet.py)
ARCHS = {
    "tresnet_m": dict(layers=(3, 4, 11, 3), width_factor=1.0),
    "tresnet_l": dict(layers=(4, 5, 18, 3), width_factor=1.2),
    "tresnet_xl": dict(layers=(4, 5, 24, 3), width_factor=1.3),
}

#: timm's default eval preprocessing for TResNet: no mean / std normalisation.
PREPROCESS = dict(
    input_size=(3, 224, 224),
    crop_pct=0.875,
    interpolation="bilinear",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


#: timm's pretrained tags (``name.tag``, timm 1.0) and what each changes in
#: the default config above: the 448 px fine-tunes, and ImageNet-21k-P's
#: 11221 classes (the first tag is timm's default for the bare name).
PRETRAINED_TAGS = {
    "tresnet_m": {
        "miil_in21k_ft_in1k": {},
        "miil_in21k": {"num_classes": 11221},
        "miil_in1k": {},
        "miil_in1k_448": {"input_size": (3, 448, 448)},
    },
    "tresnet_l": {"miil_in1k": {}, "miil_in1k_448": {"input_size": (3, 448, 448)}},
    "tresnet_xl": {"miil_in1k": {}, "miil_in1k_448": {"input_size": (3, 448, 448)}},
}


def convert_inplace_abn(state_dict, eps: float = 1e-5) -> dict:
    """An official (InplaceABN) TResNet state_dict in timm's layout.

    Keys are renamed as timm's ``tresnet.checkpoint_filter_fn``:
    ``convN.0.0 -> convN.conv``, ``convN.0.1 -> convN.bn``, ``convN.0 ->
    convN.conv``, ``convN.1 -> convN.bn`` and ``downsample.K.0 / .1 ->
    downsample.K.conv / .bn``; every BN weight becomes ``abs(weight) + eps``,
    the scale InplaceABN actually applies. A ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper is unwrapped; a dict already in timm's
    layout (``body.conv1.conv.weight`` present) is returned unchanged.

    Parameters
    ----------
    state_dict : mapping key -> array (NumPy or anything np.asarray accepts)
    eps : InplaceABN's epsilon added to |weight| (1e-5 in the official models)

    Returns
    -------
    dict key -> numpy array (new arrays; the input is not modified)
    """
    for wrapper in ("model", "state_dict"):
        inner = state_dict.get(wrapper) if hasattr(state_dict, "get") else None
        if hasattr(inner, "items"):
            state_dict = inner
    if "body.conv1.conv.weight" in state_dict:  # after unwrapping: never convert twice
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        k = re.sub(r"conv(\d+)\.0.0", lambda m: f"conv{int(m.group(1))}.conv", key)
        k = re.sub(r"conv(\d+)\.0.1", lambda m: f"conv{int(m.group(1))}.bn", k)
        k = re.sub(r"conv(\d+)\.0", lambda m: f"conv{int(m.group(1))}.conv", k)
        k = re.sub(r"conv(\d+)\.1", lambda m: f"conv{int(m.group(1))}.bn", k)
        k = re.sub(r"downsample\.(\d+)\.0", lambda m: f"downsample.{int(m.group(1))}.conv", k)
        k = re.sub(r"downsample\.(\d+)\.1", lambda m: f"downsample.{int(m.group(1))}.bn", k)
        v = np.array(value)  # a copy: never modify the caller's arrays
        if k.endswith("bn.weight"):
            v = np.abs(v) + v.dtype.type(eps)
        out[k] = v
    return out
