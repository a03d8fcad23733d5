"""Parameter containers for the composite blocks.

Inference never runs BatchNorm on its own: a conv and the BN after it are one
conv with folded weights (see :func:`r2n.fold_batch_norm`). These containers
hold such folded convs, so every backend receives weights that are ready to
use. Build them from a checkpoint's conv + BN tensors with
:meth:`FoldedConv.from_conv_bn`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FoldedConv:
    """A convolution with BatchNorm folded in.

    Attributes
    ----------
    weight : (C_out, C_in // groups, kH, kW)
    bias : (C_out,)
    """

    weight: Any
    bias: Any

    @classmethod
    def from_conv_bn(
        cls,
        conv_weight,
        mean,
        var,
        bn_weight=None,
        bn_bias=None,
        *,
        conv_bias=None,
        eps=1e-5,
        backend=None,
    ) -> FoldedConv:
        """Fold ``BN(conv(x))`` into one conv; arguments as :func:`r2n.fold_batch_norm`
        (DLPack arrays such as torch tensors too)."""
        # r2n.fold_batch_norm, built here from the modules below r2n/__init__.py
        # (which imports this module): no import cycle.
        from ._api import fold_batch_norm as numpy_or_cupy_fold
        from ._interop import accepts_dlpack

        w, b = accepts_dlpack(numpy_or_cupy_fold)(
            conv_weight, conv_bias, mean, var, bn_weight, bn_bias, eps=eps, backend=backend
        )
        return cls(w, b)


@dataclass(frozen=True)
class Bottle2neckParams:
    """Folded parameters of one Res2Net bottleneck (``r2n.bottle2neck``).

    With C_in input channels, chunk width ``width``, ``scale`` chunks,
    n = max(scale - 1, 1) chain convs and C_out output channels:

    Attributes
    ----------
    conv1 : FoldedConv, weight (width * scale, C_in, 1, 1): conv1 + bn1.
    chain_weights : n arrays (width, width // groups, 3, 3): convs[i] + bns[i].
    chain_biases : n arrays (width,).
    conv3 : FoldedConv, weight (C_out, width * scale, 1, 1): conv3 + bn3.
    shortcut : FoldedConv with weight (C_out, C_in, 1, 1), or None for the
        identity (then C_out must equal C_in and stride must be 1). The
        downsample conv + BN of the checkpoint.
    shortcut_avg_pool : the "d" / v1b shortcut: avg_pool2d(stride, stride,
        ceil_mode=True, count_include_pad=False) then the 1x1 conv at stride 1.
        When False the 1x1 conv itself has the block's stride.
    """

    conv1: FoldedConv
    chain_weights: Sequence[Any]
    chain_biases: Sequence[Any]
    conv3: FoldedConv
    shortcut: FoldedConv | None = None
    shortcut_avg_pool: bool = False

    def map(self, fn: Callable[[Any], Any]) -> Bottle2neckParams:
        """The same parameters with ``fn`` applied to every array (weights and
        biases; absent ones stay None), e.g. to move them to another device
        or dtype: ``params.map(cupy.asarray)``."""

        def opt(a):
            return None if a is None else fn(a)

        def conv(c):
            return None if c is None else FoldedConv(fn(c.weight), opt(c.bias))

        return dataclasses.replace(
            self,
            conv1=conv(self.conv1),
            conv3=conv(self.conv3),
            shortcut=conv(self.shortcut),
            chain_weights=[fn(w) for w in self.chain_weights],
            chain_biases=(
                None if self.chain_biases is None else [opt(b) for b in self.chain_biases]
            ),
        )
