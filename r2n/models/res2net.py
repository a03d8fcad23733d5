"""The Res2Net family (Gao et al., 2019), with timm's hyper-parameters and keys.

======================  ============  =========  =====  ===========  ======================
name                    layers        width      scale  cardinality  stem / downsample
======================  ============  =========  =====  ===========  ======================
res2net50_26w_4s        3, 4, 6, 3    26         4      1            7x7 / strided 1x1 conv
res2net50_26w_6s        3, 4, 6, 3    26         6      1            7x7 / strided 1x1 conv
res2net50_26w_8s        3, 4, 6, 3    26         8      1            7x7 / strided 1x1 conv
res2net50_48w_2s        3, 4, 6, 3    48         2      1            7x7 / strided 1x1 conv
res2net50_14w_8s        3, 4, 6, 3    14         8      1            7x7 / strided 1x1 conv
res2net101_26w_4s       3, 4, 23, 3   26         4      1            7x7 / strided 1x1 conv
res2next50              3, 4, 6, 3    4          4      8            7x7 / strided 1x1 conv
res2net50d              3, 4, 6, 3    26         4      1            deep / avg pool + 1x1
res2net101d             3, 4, 23, 3   26         4      1            deep / avg pool + 1x1
======================  ============  =========  =====  ===========  ======================

The network (timm's ``ResNet`` with ``Bottle2neck`` blocks)::

    stem     conv 7x7/2 (3 -> 64) + BN + ReLU                     keys conv1, bn1
             or "deep" (v1b): conv 3x3/2 3->32, BN, ReLU,          conv1.0, conv1.1,
             3x3 32->32, BN, ReLU, 3x3 32->64, BN, ReLU            conv1.3, conv1.4, conv1.6, bn1
    maxpool  3x3/2, padding 1
    layer1..4  blocks of r2n.bottle2neck; planes 64, 128, 256, 512; output 4 * planes;
             stride 1, 2, 2, 2 in each stage's first block, which is a "stage"
             block (timm's is_first) with a downsample shortcut:
             ``downsample.0`` conv + ``downsample.1`` BN, or (d models)
             AvgPool(2, ceil, count_include_pad=False) + ``downsample.1`` conv +
             ``downsample.2`` BN
    head     global average pool, fc

Block keys: ``conv1``/``bn1`` (1x1 to width * scale), ``convs.i``/``bns.i``
(3x3, groups = cardinality, i < max(scale - 1, 1)), ``conv3``/``bn3`` (1x1 to
4 * planes); ``width = floor(planes * base_width / 64) * cardinality``.
Every conv + BN is folded into one conv when the model is created; each block
runs as one prepared ``bottle2neck``.
"""

from __future__ import annotations

import math

from .. import _api
from ..params import Bottle2neckParams
from ._model import bn_keys

STEM_WIDTH = 32  # the deep stem's first two convs (timm's stem_width)
EXPANSION = 4
#: The classifier's key prefix: fc.weight (num_classes, features) and fc.bias.
CLASSIFIER = "fc"


def _stages(p):
    """Yield (prefix, inplanes, planes, width, stride, downsample) per block."""
    inplanes = 2 * STEM_WIDTH if p["deep_stem"] else 64
    for i, blocks in enumerate(p["layers"]):
        planes = 64 * 2**i
        width = int(math.floor(planes * (p["base_width"] / 64.0))) * p["cardinality"]
        for j in range(blocks):
            stride = (1 if i == 0 else 2) if j == 0 else 1
            downsample = j == 0 and (stride != 1 or inplanes != planes * EXPANSION)
            yield f"layer{i + 1}.{j}", inplanes, planes, width, stride, downsample
            inplanes = planes * EXPANSION


def _downsample_keys(p):
    """(conv index, BN index) inside ``downsample``: (1, 2) after timm's pool slot."""
    return (1, 2) if p["avg_down"] else (0, 1)


def expected_keys(arch, num_classes):
    """Every state_dict key and its shape, as timm's model of the same name."""
    p = arch.params
    keys = {}
    if p["deep_stem"]:
        s = STEM_WIDTH
        keys["conv1.0.weight"] = (s, 3, 3, 3)
        keys.update(bn_keys("conv1.1", s))
        keys["conv1.3.weight"] = (s, s, 3, 3)
        keys.update(bn_keys("conv1.4", s))
        keys["conv1.6.weight"] = (2 * s, s, 3, 3)
        keys.update(bn_keys("bn1", 2 * s))
    else:
        keys["conv1.weight"] = (64, 3, 7, 7)
        keys.update(bn_keys("bn1", 64))
    scale, card = p["scale"], p["cardinality"]
    for prefix, inplanes, planes, width, _, downsample in _stages(p):
        keys[f"{prefix}.conv1.weight"] = (width * scale, inplanes, 1, 1)
        keys.update(bn_keys(f"{prefix}.bn1", width * scale))
        for i in range(max(1, scale - 1)):
            keys[f"{prefix}.convs.{i}.weight"] = (width, width // card, 3, 3)
        for i in range(max(1, scale - 1)):
            keys.update(bn_keys(f"{prefix}.bns.{i}", width))
        keys[f"{prefix}.conv3.weight"] = (planes * EXPANSION, width * scale, 1, 1)
        keys.update(bn_keys(f"{prefix}.bn3", planes * EXPANSION))
        if downsample:
            ci, bi = _downsample_keys(p)
            keys[f"{prefix}.downsample.{ci}.weight"] = (planes * EXPANSION, inplanes, 1, 1)
            keys.update(bn_keys(f"{prefix}.downsample.{bi}", planes * EXPANSION))
    c_feat = 512 * EXPANSION
    keys[f"{CLASSIFIER}.weight"] = (num_classes, c_feat)
    keys[f"{CLASSIFIER}.bias"] = (num_classes,)
    return keys


def build(arch, weights, layers):
    """The forward pass x (N, 3, H, W) -> logits, on prepared layers."""
    p = arch.params
    backend = layers.backend
    if p["deep_stem"]:
        stem = [
            layers.conv(
                weights.conv_bn("conv1.0.weight", "conv1.1"),
                stride=2,
                padding=1,
                act="relu",
                name="conv1.0",
            ),
            layers.conv(
                weights.conv_bn("conv1.3.weight", "conv1.4"), padding=1, act="relu", name="conv1.3"
            ),
            layers.conv(
                weights.conv_bn("conv1.6.weight", "bn1"), padding=1, act="relu", name="conv1.6"
            ),
        ]
    else:
        stem = [
            layers.conv(
                weights.conv_bn("conv1.weight", "bn1"),
                stride=2,
                padding=3,
                act="relu",
                name="conv1",
            )
        ]
    scale, card = p["scale"], p["cardinality"]
    blocks = []
    for prefix, _, _, _, stride, downsample in _stages(p):
        shortcut = None
        if downsample:
            ci, bi = _downsample_keys(p)
            shortcut = weights.conv_bn(
                f"{prefix}.downsample.{ci}.weight", f"{prefix}.downsample.{bi}"
            )
        chain = [
            weights.conv_bn(f"{prefix}.convs.{i}.weight", f"{prefix}.bns.{i}")
            for i in range(max(1, scale - 1))
        ]
        params = Bottle2neckParams(
            conv1=weights.conv_bn(f"{prefix}.conv1.weight", f"{prefix}.bn1"),
            chain_weights=[c.weight for c in chain],
            chain_biases=[c.bias for c in chain],
            conv3=weights.conv_bn(f"{prefix}.conv3.weight", f"{prefix}.bn3"),
            shortcut=shortcut,
            # At stride 1 timm's pool is an Identity: the plain 1x1 conv is the same.
            shortcut_avg_pool=p["avg_down"] and stride != 1,
        )
        stype = "stage" if (stride > 1 or downsample) else "normal"
        blocks.append(
            layers.bottle2neck(
                params, scale=scale, stype=stype, stride=stride, groups=card, name=prefix
            )
        )
    fc_w = layers.arr(weights.array(f"{CLASSIFIER}.weight"))
    fc_b = layers.arr(weights.array(f"{CLASSIFIER}.bias"))
    max_pool = layers.step(
        "maxpool",
        "max_pool2d",
        layers.prepared("max_pool2d", kernel_size=3, stride=2, padding=1),
    )
    global_pool = layers.step(
        "global_pool", "global_avg_pool2d", layers.prepared("global_avg_pool2d")
    )
    fc = layers.step(
        "fc", "linear", lambda x: _api.linear(x, fc_w, fc_b, backend=backend), weights=(fc_w,)
    )

    def forward(x):
        for conv in stem:
            x = conv(x)
        x = max_pool(x)
        for block in blocks:
            x = block(x)
        x = global_pool(x)  # N, 2048 (a reused buffer, as every layer's output above)
        return fc(x)  # N, num_classes (a new array: the caller keeps it)

    return forward


def _arch(layers, base_width, scale, cardinality=1, deep_stem=False, avg_down=False):
    return dict(
        layers=tuple(layers),
        base_width=base_width,
        scale=scale,
        cardinality=cardinality,
        deep_stem=deep_stem,
        avg_down=avg_down,
    )


#: name -> hyper-parameters (timm's registrations in timm/models/res2net.py)
ARCHS = {
    "res2net50_26w_4s": _arch((3, 4, 6, 3), 26, 4),
    "res2net50_26w_6s": _arch((3, 4, 6, 3), 26, 6),
    "res2net50_26w_8s": _arch((3, 4, 6, 3), 26, 8),
    "res2net50_48w_2s": _arch((3, 4, 6, 3), 48, 2),
    "res2net50_14w_8s": _arch((3, 4, 6, 3), 14, 8),
    "res2net101_26w_4s": _arch((3, 4, 23, 3), 26, 4),
    "res2next50": _arch((3, 4, 6, 3), 4, 4, cardinality=8),
    "res2net50d": _arch((3, 4, 6, 3), 26, 4, deep_stem=True, avg_down=True),
    "res2net101d": _arch((3, 4, 23, 3), 26, 4, deep_stem=True, avg_down=True),
}

#: timm's default eval preprocessing for the family (ImageNet mean / std).
PREPROCESS = dict(
    input_size=(3, 224, 224),
    crop_pct=0.875,
    interpolation="bilinear",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)

#: timm's pretrained tags (``name.tag``, timm 1.0) and what each changes in
#: the default config above (``input_size``, ``num_classes``): one ImageNet-1k
#: checkpoint per architecture.
PRETRAINED_TAGS = {name: {"in1k": {}} for name in ARCHS}
