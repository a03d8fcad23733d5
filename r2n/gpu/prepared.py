"""Prepared layers for whole networks (``r2n._backends.prepare`` on ``"gpu"``).

The factories of ``r2n.gpu.PREPARE``, as ``r2n.cpu.prepared`` is for the CPU:

* ``conv2d``: :class:`PreparedConv2d`, one launch of the conv2d kernel the
  backend picks (r2n.gpu.conv) whose epilogue adds the bias, the optional
  residual and applies ReLU or leaky ReLU;
* ``bottle2neck``: ``res2net.PreparedBottle2neck`` (the fused block, beside
  its launcher in r2n.gpu.res2net, which the one-call op uses too).

Each copies its weights to the device once, C-contiguous, in their dtype, and
keeps nothing else between calls (every call allocates its outputs), so a
layer can run in several threads at once.
"""

from __future__ import annotations

from .. import _checks
from . import _runtime
from .conv import ACTIVATIONS, conv2d_fused
from .res2net import PreparedBottle2neck


class PreparedConv2d:
    """A conv with fixed weights on the device: ``f(x, residual=None) -> y``.

    ``y = act(conv2d(x, weight) + bias + residual)``, the factory of
    ``r2n.gpu.PREPARE["conv2d"]`` (see r2n._backends.prepare). Weights are
    copied to the device once, C-contiguous, in their dtype; inputs must
    have that dtype.

    Parameters
    ----------
    weight : (C_out, C_in // groups, kH, kW); bias : (C_out,) or None
    stride, padding, dilation : (h, w) pairs; groups : int
    activation : None, "relu" or "leaky_relu"; negative_slope : float
    reuse_output : accepted for the prepare protocol; every call returns a new array.
    executor : None (the current GPU's) or an executor
    precision : "fp32" (default), "tf32" or "bf16" (see :func:`conv2d_fused`)
    """

    def __init__(
        self,
        weight,
        bias,
        *,
        stride,
        padding,
        dilation,
        groups,
        activation=None,
        negative_slope=0.01,
        reuse_output=False,
        executor=None,
        precision="fp32",
    ):
        self.precision = _checks.precision_arg("conv2d", precision, "cupy", weight.dtype)
        self.ex = _runtime.executor() if executor is None else executor
        xp = self.ex.xp
        self.weight = xp.ascontiguousarray(xp.asarray(weight))
        self.bias = None if bias is None else xp.ascontiguousarray(xp.asarray(bias))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        if activation not in ACTIVATIONS:
            raise ValueError(f"r2n.conv2d: activation must be one of {list(ACTIVATIONS)}")
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def __call__(self, x, residual=None):
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out); residual shaped like the output."""
        arrays = {"x": x, "weight": self.weight, "bias": self.bias, "residual": residual}
        _checks.check_arrays("conv2d", arrays)
        args = _checks.conv2d_args(
            "conv2d",
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        if residual is not None and tuple(residual.shape) != args["out_shape"]:
            raise ValueError(
                f"r2n.conv2d (prepared): residual must have the output's shape "
                f"{args['out_shape']}, got {tuple(residual.shape)}"
            )
        return conv2d_fused(
            x,
            self.weight,
            self.bias,
            residual=residual,
            activation=self.activation,
            negative_slope=self.negative_slope,
            executor=self.ex,
            precision=self.precision,
            **args,
        )


def prepare_conv2d(weight, bias, **options):
    """The ``"conv2d"`` factory of r2n.gpu.PREPARE."""
    return PreparedConv2d(weight, bias, **options)


def prepare_bottle2neck(
    params, *, scale, stype, stride, groups, reuse_output=False, precision="fp32"
):
    """The ``PREPARE["bottle2neck"]`` factory (r2n._backends.prepare): the block's
    weights on the current GPU, float32 unless conv1's weight is float64."""
    return PreparedBottle2neck(
        params,
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
        reuse_output=reuse_output,
        precision=precision,
    )
