"""The NumPy reference backend (``backend="reference"``).

Readable, vectorised NumPy (no per-pixel Python loops), written to be learned
from: each module states the math it implements, and every line carries the
shapes it works on. The fast backends are tested against these functions.

=====================  ==========================================
module                 ops
=====================  ==========================================
``conv``               conv2d (im2col + GEMM)
``elementwise``        relu, leaky_relu, sigmoid, batch_norm, fold_batch_norm
``pool``               max_pool2d, avg_pool2d, global_avg_pool2d
``layers``             linear, space_to_depth, blur_pool2d, squeeze_excite
``res2net``            res2net_chain, bottle2neck
=====================  ==========================================

The same module names as r2n.cpu and r2n.gpu. ``activations``, ``norm`` and
``tresnet`` (and ``conv.linear``), the names before issue 15, stay importable
for one release as thin re-exports.

The functions here take arguments already checked and normalised by
``r2n._checks``; call them through ``r2n.<op>(..., backend="reference")``.
"""

from __future__ import annotations

from .conv import conv2d
from .elementwise import batch_norm, fold_batch_norm, leaky_relu, relu, sigmoid
from .layers import blur_pool2d, linear, space_to_depth, squeeze_excite
from .pool import avg_pool2d, global_avg_pool2d, max_pool2d
from .res2net import bottle2neck, res2net_chain

#: op name -> implementation (see r2n._backends)
OPS = {
    f.__name__: f
    for f in (
        conv2d,
        linear,
        batch_norm,
        fold_batch_norm,
        relu,
        leaky_relu,
        sigmoid,
        max_pool2d,
        avg_pool2d,
        global_avg_pool2d,
        space_to_depth,
        blur_pool2d,
        squeeze_excite,
        res2net_chain,
        bottle2neck,
    )
}


def available() -> bool:
    """The reference needs only NumPy."""
    return True


def unavailable_reason() -> str:
    return ""
