"""PyTorch modules of the official Res2Net / timm ``Bottle2neck``.

TorchChain and TorchBottle2neck follow the official Res2Net / timm
``Bottle2neck`` (split, hierarchical adds, conv + BN + ReLU, stage pooling,
the three shortcuts), written from that code and not from r2n's. They are
the PyTorch eager rows of ``r2n bench`` (loaded with folded weights by
:mod:`r2n._bench.torch_models`) and the oracles of the tests (random convs and
BN statistics, ``tests/torch_res2net.py``).

Importing this module imports torch (through
:func:`r2n._bench.torch_import.import_torch`, so idle OpenMP workers sleep).
"""

from __future__ import annotations

from .torch_import import import_torch

torch = import_torch()
if torch is None:
    raise ImportError("r2n._bench.torch_blocks needs PyTorch")
nn = torch.nn


class TorchChain(nn.Module):
    """The hierarchical 3x3 part of Bottle2neck (``convs``, ``bns``, ``pool``).

    forward: (N, scale * width, H, W) -> (N, scale * width, H_out, W_out)."""

    def __init__(self, width, scale, stype="normal", stride=1, groups=1, bn=True):
        super().__init__()
        self.width, self.scale, self.stype = width, scale, stype
        self.nums = max(scale - 1, 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
            for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(width) if bn else nn.Identity() for _ in range(self.nums)
        )
        self.pool = nn.AvgPool2d(3, stride, padding=1) if stype == "stage" else None

    def forward(self, x):
        spx = torch.split(x, self.width, 1)
        out = []
        sp = None
        for i in range(self.nums):
            sp = spx[i] if i == 0 or self.stype == "stage" else sp + spx[i]
            sp = torch.relu(self.bns[i](self.convs[i](sp)))
            out.append(sp)
        if self.scale > 1:
            last = spx[self.nums]
            out.append(self.pool(last) if self.stype == "stage" else last)
        return torch.cat(out, dim=1)


class TorchBottle2neck(nn.Module):
    """conv1 + bn1 + relu -> chain -> conv3 + bn3, + shortcut, relu.

    shortcut: None (identity), "conv" (strided 1x1 conv + BN) or "avg" (the "d" /
    v1b variant: ceil-mode avg pool without padding counts, then 1x1 conv + BN).
    forward: (N, inplanes, H, W) -> (N, 4 * planes, H_out, W_out).
    """

    expansion = 4

    def __init__(self, inplanes, planes, width, scale, stype, stride, groups, shortcut):
        super().__init__()
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.chain = TorchChain(width, scale, stype, stride, groups)
        self.conv3 = nn.Conv2d(width * scale, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        if shortcut is None:
            self.downsample = None
        elif shortcut == "conv":
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
            )
        else:
            pool = (
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            self.downsample = nn.Sequential(
                pool, nn.Conv2d(inplanes, outplanes, 1, 1, bias=False), nn.BatchNorm2d(outplanes)
            )
        self.avg_pool_shortcut = shortcut == "avg"

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.chain(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)
