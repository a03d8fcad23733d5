"""The kernel ladders: every numbered variant of an op, in order, on one backend.

r2n's numbered variants are its teaching material: each step changes one
idea of the step before (siboehm/SGEMM_CUDA's kernels 1..10, llm.c's
dev/cuda versions). A backend package lists them in ``LADDERS``::

    r2n.cpu.LADDERS["conv2d"]   # (Step("1_naive", ...), Step("2_loop_order", ...), ...)
    r2n.gpu.LADDERS["conv2d"]

and ``r2n ladder`` (r2n/cli/ladder.py) checks every step against the float64
reference, then times them side by side.

Ops with ladders and the signature of their steps' ``run`` (the backend's
own op signature: arguments checked and normalised by ``r2n._checks``; GPU
steps also take ``executor=None``, the test emulator's or the current GPU's):

* ``"conv2d"``: ``run(x, weight, bias, *, stride, padding, dilation, groups, out_shape)``
* ``"res2net_chain"``: ``run(x, weights, biases, *, scale, stype, stride, groups, width,
  out_shape)``
* ``"global_avg_pool2d"``: ``run(x)``
* ``"linear"``: ``run(x, weight, bias)``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: The ops that have ladders, in the order ``r2n ladder`` shows them.
LADDER_OPS = ("conv2d", "res2net_chain", "global_avg_pool2d", "linear")


@dataclass(frozen=True)
class Step:
    """One rung of a ladder.

    Attributes
    ----------
    name : the variant's name, ``"<number>_<idea>"`` (``"3_register_tiles"``);
        the same idea has the same name on every backend
    summary : one line: what this step changes relative to the one before
    run : the implementation (signature in the module docstring)
    applies : None (every case), or ``applies(*arrays, **checked_args) -> bool``
        (the arguments ``run`` takes, without ``executor``) for a step that
        computes only some cases (Winograd: 3x3, stride 1, dilation 1);
        ``r2n ladder`` skips it elsewhere, giving the first line of
        ``applies.__doc__`` as the reason
    source : where the step lives (a module or a kernel file), for readers
    tolerance : None (float32's 1e-5: ``r2n ladder`` runs every step on
        float32 data), or the bound on ``||out - ref|| / ||ref||`` against the
        float64 reference of a step that rounds the data further (tensor
        cores: TF32, bf16; e.g. r2n.gpu.conv_tensor_core.tolerance("tf32"))
    """

    name: str
    summary: str
    run: Callable
    applies: Callable[..., bool] | None = None
    source: str = ""
    tolerance: float | None = None

    @property
    def number(self) -> int:
        """The step's number, from its name's prefix."""
        return int(self.name.split("_", 1)[0])
