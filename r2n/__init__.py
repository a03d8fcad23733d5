"""r2n: the kernels behind Res2Net, three times over.

Every op exists as a readable NumPy reference (``r2n.reference``), Numba CPU
kernels (``r2n.cpu``) and CuPy CUDA kernels (``r2n.gpu``), computing the same
function. Call them here; the backend follows the arrays' type (NumPy or CuPy)
unless ``backend=`` forces one. See the README for the table of ops.
"""

from __future__ import annotations

from ._api import (
    avg_pool2d,
    batch_norm,
    blur_pool2d,
    bottle2neck,
    conv2d,
    fold_batch_norm,
    global_avg_pool2d,
    leaky_relu,
    linear,
    max_pool2d,
    relu,
    res2net_chain,
    sigmoid,
    space_to_depth,
    squeeze_excite,
)
from ._backends import BACKENDS, available_backends, implements
from .cpu import clear_scratch, get_num_threads, set_num_threads
from .models._weights import load_state_dict
from .params import Bottle2neckParams, FoldedConv

__version__ = "0.1.0"

#: Names of the public ops, in the order of the README's table.
OPS = (
    "conv2d",
    "linear",
    "batch_norm",
    "fold_batch_norm",
    "relu",
    "leaky_relu",
    "sigmoid",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "space_to_depth",
    "blur_pool2d",
    "squeeze_excite",
    "res2net_chain",
    "bottle2neck",
)

__all__ = [
    "conv2d",
    "linear",
    "batch_norm",
    "fold_batch_norm",
    "relu",
    "leaky_relu",
    "sigmoid",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "space_to_depth",
    "blur_pool2d",
    "squeeze_excite",
    "res2net_chain",
    "bottle2neck",
    "BACKENDS",
    "OPS",
    "Bottle2neckParams",
    "FoldedConv",
    "load_state_dict",
    "available_backends",
    "implements",
    "set_num_threads",
    "get_num_threads",
    "clear_scratch",
    "__version__",
]
