"""CuPy RawKernel CUDA kernels (``backend="gpu"``, the default for CuPy arrays).

CUDA C++ sources live in ``r2n/gpu/kernels/*.cu`` (one template per kernel,
instantiated for float and double); ``_runtime`` compiles them with
``cupy.RawModule`` once per device and launches them on CuPy's current
stream. Each area module launches its kernels through an *executor*, so the
same launchers run on the CPU under the test emulator (tests/cuda_emu):

=================  ==========================================================
module             ops
=================  ==========================================================
``elementwise``    relu, leaky_relu, sigmoid, batch_norm, fold_batch_norm
``pool``           max_pool2d, avg_pool2d, global_avg_pool2d (2 variants)
``layers``         linear (3 variants), space_to_depth, blur_pool2d,
                   squeeze_excite
``conv``           conv2d (numbered variants; ``conv_tensor_core``: variant 4,
                   tf32 / bf16 on tensor cores)
``res2net``        res2net_chain, bottle2neck, fused
``graph``          :func:`capture`: a whole forward recorded as one CUDA graph
=================  ==========================================================

Importing r2n (or this package) never imports CuPy: ``_runtime.executor()``
does, at the first launch, and raises a RuntimeError naming the problem when
CuPy is missing or sees no GPU. Outputs are allocated on the input's device
and kernels run on CuPy's current stream of that device.
"""

from __future__ import annotations

import functools
import importlib.util

from .._checks import array_kind
from . import conv, elementwise, layers, pool, res2net
from .graph import CapturedCall as CapturedCall
from .graph import capture as capture


def _on_input_device(impl):
    """Run ``impl`` with the device of its first argument (a CuPy array) current,
    so that outputs and launches land on the input's device."""

    @functools.wraps(impl)
    def run(x, *args, **kwargs):
        if array_kind(x) == "cupy":
            with x.device:
                return impl(x, *args, **kwargs)
        return impl(x, *args, **kwargs)

    return run


#: op name -> implementation taking checked, normalised arguments (see r2n._backends).
OPS: dict = {
    name: _on_input_device(impl)
    for name, impl in {
        "relu": elementwise.relu,
        "leaky_relu": elementwise.leaky_relu,
        "sigmoid": elementwise.sigmoid,
        "batch_norm": elementwise.batch_norm,
        "fold_batch_norm": elementwise.fold_batch_norm,
        "max_pool2d": pool.max_pool2d,
        "avg_pool2d": pool.avg_pool2d,
        "global_avg_pool2d": pool.global_avg_pool2d,
        "linear": layers.linear,
        "space_to_depth": layers.space_to_depth,
        "blur_pool2d": layers.blur_pool2d,
        "squeeze_excite": layers.squeeze_excite,
        "conv2d": conv.conv2d,
        "res2net_chain": res2net.res2net_chain,
        "bottle2neck": res2net.bottle2neck,
    }.items()
}

#: op name -> factory of a prepared layer with its weights on the current
#: device (see r2n._backends.prepare).
PREPARE: dict = {
    "conv2d": conv.PreparedConv2d,
    "bottle2neck": res2net.prepare_bottle2neck,
}


def available() -> bool:
    """True when CuPy is installed (whether it sees a GPU is checked at launch)."""
    return importlib.util.find_spec("cupy") is not None


def unavailable_reason() -> str:
    return "cupy is not installed (pip install 'r2n[gpu]', see the README for the wheel)"
