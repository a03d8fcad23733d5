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
``pool``           max_pool2d, avg_pool2d, global_avg_pool2d (a 2-step ladder)
``layers``         linear (a 3-step ladder), space_to_depth, blur_pool2d,
                   squeeze_excite
``conv``           conv2d: a ladder of 5 steps, one kernel file each
                   (kernels/conv_<step>.cu; ``conv_tensor_core``: step 5,
                   tf32 / bf16 on tensor cores), and the GEMMs of the
                   fused launchers (kernels/gemm_1x1.cu; conv_gemm*.cu:
                   split-K, 1x1 on tensor cores, conv3 + shortcut)
``res2net``        res2net_chain (a 3-step ladder: unfused to fused),
                   bottle2neck, fused
``prepared``       the PREPARE factories: prepared conv2d and bottle2neck
``graph``          :func:`capture`: a whole forward recorded as one CUDA graph;
                   :class:`GraphCache`: one per input shape, on first call
                   (``r2n.models.create(..., graph=True)``)
=================  ==========================================================

:data:`LADDERS` lists every numbered step of conv2d, res2net_chain,
global_avg_pool2d and linear, in order (r2n._ladder; ``r2n ladder``).

Importing r2n (or this package) never imports CuPy: ``_runtime.executor()``
does, at the first launch, and raises a RuntimeError naming the problem when
CuPy is missing or sees no GPU. Outputs are allocated on the input's device
and kernels run on CuPy's current stream of that device.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

from .._checks import array_kind
from . import conv, elementwise, layers, pool, prepared, res2net
from .graph import CapturedCall as CapturedCall
from .graph import GraphCache as GraphCache
from .graph import capture as capture

#: The factory r2n._backends.graphed uses: a prepared forward -> its graph cache.
GRAPHS = GraphCache


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
    "conv2d": prepared.prepare_conv2d,
    "bottle2neck": prepared.prepare_bottle2neck,
}

#: op name -> its ladder (r2n._ladder): every numbered step of the op, in order,
#: each run on its input's device (as OPS); ``r2n ladder`` times them side by side.
LADDERS: dict = {
    op: tuple(dataclasses.replace(step, run=_on_input_device(step.run)) for step in ladder)
    for op, ladder in {
        "conv2d": conv.LADDER,
        "res2net_chain": res2net.LADDER,
        "global_avg_pool2d": pool.LADDER,
        "linear": layers.LADDER,
    }.items()
}


def available() -> bool:
    """True when CuPy is installed (whether it sees a GPU is checked at launch)."""
    return importlib.util.find_spec("cupy") is not None


def unavailable_reason() -> str:
    return "cupy is not installed (pip install 'r2n[gpu]', see the README for the wheel)"
