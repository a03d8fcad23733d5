"""r2n: the kernels behind Res2Net, three times over.

Every op exists as a readable NumPy reference (``r2n.reference``), Numba CPU
kernels (``r2n.cpu``) and CuPy CUDA kernels (``r2n.gpu``), computing the same
function. Call them here; the backend follows the arrays' type (NumPy or CuPy)
unless ``backend=`` forces one. See the README for the table of ops.
"""

from __future__ import annotations

from . import _api
from ._backends import BACKENDS, available_backends, implements
from ._interop import accepts_dlpack as _accepts_dlpack
from .cpu import clear_scratch, get_num_threads, set_num_threads
from .models._weights import load_state_dict
from .params import Bottle2neckParams, FoldedConv

# The public ops: r2n._api's functions (NumPy / CuPy arrays), taking any other
# DLPack array too (torch, JAX, ...) and returning the caller's kind (r2n/_interop.py).
conv2d = _accepts_dlpack(_api.conv2d)
linear = _accepts_dlpack(_api.linear)
batch_norm = _accepts_dlpack(_api.batch_norm)
fold_batch_norm = _accepts_dlpack(_api.fold_batch_norm)
relu = _accepts_dlpack(_api.relu)
leaky_relu = _accepts_dlpack(_api.leaky_relu)
sigmoid = _accepts_dlpack(_api.sigmoid)
max_pool2d = _accepts_dlpack(_api.max_pool2d)
avg_pool2d = _accepts_dlpack(_api.avg_pool2d)
global_avg_pool2d = _accepts_dlpack(_api.global_avg_pool2d)
space_to_depth = _accepts_dlpack(_api.space_to_depth)
blur_pool2d = _accepts_dlpack(_api.blur_pool2d)
squeeze_excite = _accepts_dlpack(_api.squeeze_excite)
res2net_chain = _accepts_dlpack(_api.res2net_chain)
bottle2neck = _accepts_dlpack(_api.bottle2neck)

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
