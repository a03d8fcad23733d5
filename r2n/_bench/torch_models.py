"""PyTorch versions of the Res2Net chain and bottleneck, for the PyTorch rows.

Two forms, both built from r2n's folded arguments (so the float64 reference
on the same arguments is the truth for them too):

* **eager**: the official Res2Net / timm ``Bottle2neck`` modules of
  :mod:`r2n._bench.torch_blocks` (``nn.Conv2d`` without bias +
  ``nn.BatchNorm2d`` + ReLU, split, add, cat as separate modules and ops). The
  BatchNorm is given mean 0, variance ``1 - eps``,
  weight 1 and bias = the folded bias, so it computes exactly the folded conv
  while doing all of BN's work;
* **folded**: ``F.conv2d`` with the folded weight and bias, the rest as eager.

Used by ``r2n bench`` and ``r2n check``; torch itself comes from
:func:`r2n._bench.torch_import.import_torch`.
"""

from __future__ import annotations


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


def _load_folded(conv, bn, weight, bias):
    """Give ``conv`` (no bias) + ``bn`` the folded (weight, bias): BN with mean 0,
    variance ``1 - eps``, weight 1 and bias = the folded bias computes exactly
    the folded conv while doing all of BN's work."""
    import torch

    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.copy_(torch.as_tensor(bias))


def eager_chain(weights, biases, *, scale, stype, stride):
    """The chain as modules (:class:`~r2n._bench.torch_blocks.TorchChain`: conv + BN
    + ReLU per chunk, split/add/cat), eval mode, from folded NumPy arrays
    (width, width // groups, 3, 3) and (width,)."""
    from .torch_blocks import TorchChain

    width, width_per_group = weights[0].shape[:2]
    chain = TorchChain(width, scale, stype, stride, groups=width // width_per_group)
    for conv, bn, w, b in zip(chain.convs, chain.bns, weights, biases, strict=True):
        _load_folded(conv, bn, w, b)
    return chain.eval()


def eager_bottle2neck(params, *, scale, stype, stride):
    """The bottleneck as modules (:class:`~r2n._bench.torch_blocks.TorchBottle2neck`,
    timm ``Bottle2neck`` structure), eval mode, from a Bottle2neckParams of NumPy
    arrays whose conv3 has 4 x planes output channels."""
    from .torch_blocks import TorchBottle2neck

    width, width_per_group = params.chain_weights[0].shape[:2]
    c_in = params.conv1.weight.shape[1]
    c_out = params.conv3.weight.shape[0]
    if c_out % TorchBottle2neck.expansion:
        raise ValueError(f"conv3 with 4 x planes output channels expected, got {c_out}")
    shortcut = None
    if params.shortcut is not None:
        shortcut = "avg" if params.shortcut_avg_pool else "conv"
    groups = width // width_per_group
    planes = c_out // TorchBottle2neck.expansion
    block = TorchBottle2neck(c_in, planes, width, scale, stype, stride, groups, shortcut)
    _load_folded(block.conv1, block.bn1, params.conv1.weight, params.conv1.bias)
    chain = block.chain
    for conv, bn, w, b in zip(
        chain.convs, chain.bns, params.chain_weights, params.chain_biases, strict=True
    ):
        _load_folded(conv, bn, w, b)
    _load_folded(block.conv3, block.bn3, params.conv3.weight, params.conv3.bias)
    if shortcut is not None:
        conv, bn = block.downsample[-2], block.downsample[-1]
        _load_folded(conv, bn, params.shortcut.weight, params.shortcut.bias)
    return block.eval()
