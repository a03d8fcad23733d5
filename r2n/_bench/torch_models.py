"""PyTorch versions of the Res2Net chain and bottleneck, for the PyTorch rows.

Two forms, both built from r2n's folded arguments (so the float64 reference
on the same arguments is the truth for them too):

* **eager**: ``nn.Conv2d`` (no bias) + ``nn.BatchNorm2d`` + ReLU, split, add,
  cat as separate modules and ops, as the official Res2Net / timm
  ``Bottle2neck`` runs. The BatchNorm is given mean 0, variance ``1 - eps``,
  weight 1 and bias = the folded bias, so it computes exactly the folded conv
  while doing all of BN's work;
* **folded**: ``F.conv2d`` with the folded weight and bias, the rest as eager.

``import_torch`` sets ``OMP_WAIT_POLICY=PASSIVE`` before the first import: idle
OpenMP workers would otherwise spin and steal the cores of the next row's
timing (see ``benchmarks/conftest.py``). Used by ``r2n bench`` and ``r2n check``.
"""

from __future__ import annotations

import os

_TORCH: list = []


def import_torch():
    """torch if installed (imported once, idle OpenMP workers passive), else None."""
    if not _TORCH:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import torch

            # Float32 rows are checked at 1e-5: TF32 convs/matmuls would not pass.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            _TORCH.append(torch)
        except ImportError:
            _TORCH.append(None)
    return _TORCH[0]


def folded_chain(x, weights, biases, *, scale, stype, stride):
    """The Res2Net chain as PyTorch ops on folded weights.

    Parameters
    ----------
    x : (N, scale * width, H, W) tensor
    weights : max(scale - 1, 1) tensors (width, width, 3, 3); biases: (width,)

    Returns
    -------
    (N, scale * width, H_out, W_out) tensor
    """
    import torch
    import torch.nn.functional as F

    width = x.shape[1] // scale
    nums = max(scale - 1, 1)
    chunks = torch.split(x, width, 1)
    outs, sp = [], None
    for i in range(nums):
        sp = chunks[i] if i == 0 or stype == "stage" else sp + chunks[i]
        sp = F.relu(F.conv2d(sp, weights[i], biases[i], stride=stride, padding=1))
        outs.append(sp)
    if scale > 1:
        last = chunks[nums]
        outs.append(F.avg_pool2d(last, 3, stride, 1) if stype == "stage" else last)
    return torch.cat(outs, 1)


def folded_bottle2neck(x, params, *, scale, stype, stride):
    """The bottleneck as PyTorch ops on folded weights; params: Bottle2neckParams
    of tensors. x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
    import torch.nn.functional as F

    out = F.relu(F.conv2d(x, params.conv1.weight, params.conv1.bias))
    out = folded_chain(
        out, params.chain_weights, params.chain_biases, scale=scale, stype=stype, stride=stride
    )
    out = F.conv2d(out, params.conv3.weight, params.conv3.bias)
    identity = x
    if params.shortcut is not None:
        if params.shortcut_avg_pool:
            if stride > 1:
                x = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
            identity = F.conv2d(x, params.shortcut.weight, params.shortcut.bias)
        else:
            identity = F.conv2d(x, params.shortcut.weight, params.shortcut.bias, stride=stride)
    return F.relu(out + identity)


def _conv_bn(weight, bias, stride=1, padding=0):
    """nn.Sequential(Conv2d without bias, BatchNorm2d) equal to the folded conv."""
    import torch
    from torch import nn

    c_out, c_in = weight.shape[:2]
    conv = nn.Conv2d(c_in, c_out, weight.shape[2], stride, padding, bias=False)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.as_tensor(bias))
    return nn.Sequential(conv, bn)


def eager_chain(weights, biases, *, scale, stype, stride):
    """The chain as modules (conv + BN + ReLU per chunk, split/add/cat), eval mode,
    from folded NumPy arrays (width, width, 3, 3) and (width,)."""
    import torch
    from torch import nn

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.width = weights[0].shape[0]
            self.nums = max(scale - 1, 1)
            self.convs = nn.ModuleList(
                _conv_bn(w, b, stride, 1) for w, b in zip(weights, biases, strict=True)
            )
            self.pool = nn.AvgPool2d(3, stride, padding=1) if stype == "stage" else None

        def forward(self, x):
            spx = torch.split(x, self.width, 1)
            out, sp = [], None
            for i in range(self.nums):
                sp = spx[i] if i == 0 or stype == "stage" else sp + spx[i]
                sp = torch.relu(self.convs[i](sp))
                out.append(sp)
            if scale > 1:
                last = spx[self.nums]
                out.append(self.pool(last) if stype == "stage" else last)
            return torch.cat(out, 1)

    return Chain().eval()


def eager_bottle2neck(params, *, scale, stype, stride):
    """The bottleneck as modules (timm ``Bottle2neck`` structure), eval mode,
    from a Bottle2neckParams of NumPy arrays."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = _conv_bn(params.conv1.weight, params.conv1.bias)
            self.chain = eager_chain(
                params.chain_weights, params.chain_biases, scale=scale, stype=stype, stride=stride
            )
            self.conv3 = _conv_bn(params.conv3.weight, params.conv3.bias)
            self.downsample = None
            if params.shortcut is not None:
                conv = _conv_bn(
                    params.shortcut.weight,
                    params.shortcut.bias,
                    1 if params.shortcut_avg_pool else stride,
                )
                if params.shortcut_avg_pool and stride > 1:
                    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                    conv = nn.Sequential(pool, conv)
                self.downsample = conv

        def forward(self, x):
            out = torch.relu(self.conv1(x))
            out = self.conv3(self.chain(out))
            identity = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + identity)

    return Block().eval()
