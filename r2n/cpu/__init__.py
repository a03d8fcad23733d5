"""Numba-parallel CPU kernels (``backend="cpu"``).

Every public op has an ``@njit(parallel=True)`` implementation here, taking the
same checked, normalised arguments as the reference (see ``r2n._backends``):

=================  ==========================================================
module             ops
=================  ==========================================================
``microkernel``    the register-tiled SIMD micro-kernel (an LLVM intrinsic)
``conv``           conv2d: numbered variants, from naive loops to SIMD tiles
``res2net``        res2net_chain and bottle2neck, fused
``elementwise``    relu, leaky_relu, sigmoid, batch_norm, fold_batch_norm
``pool``           max_pool2d, avg_pool2d, global_avg_pool2d
``layers``         linear, space_to_depth, blur_pool2d, squeeze_excite
``prepared``       ``PREPARE``: packed conv2d (fused epilogue) and bottle2neck
                   layers for whole networks (``r2n._backends.prepare``), and
                   the pools / TResNet layers writing into reused outputs
``res2net_ladder`` the res2net_chain ladder's unfused steps
=================  ==========================================================

:data:`LADDERS` lists every numbered step of conv2d (``conv``: 5 steps, one
file each), res2net_chain (``res2net_ladder``: 3 steps, unfused to fused),
global_avg_pool2d (``pool``: 2) and linear (``layers``: 3), in order
(r2n._ladder; ``r2n ladder``). It is built on first access, which imports
Numba.

Numba is imported only when a CPU kernel first runs: ``import r2n`` works
without it. Kernels compile on first use per dtype, cached on disk where Numba
can write a cache (else compiled in memory in each process, with one
:class:`DiskCacheWarning`; see ``_jit``); ``r2n.set_num_threads`` sets the
thread count of every kernel. Numba's GNU OpenMP layer is loaded with
``OMP_WAIT_POLICY=PASSIVE`` unless the user set a wait policy (``_jit``: idle
threads that spin stall every launch when another process holds a core).
Buffers kept between calls live in ``_scratch`` (per thread, bounded, freed
by ``r2n.clear_scratch``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

from .. import _backends
from .._diskcache import DiskCacheWarning as DiskCacheWarning  # public: r2n.cpu.DiskCacheWarning

# op name -> (module in r2n.cpu, function name)
_WHERE = {
    "conv2d": ("conv", "conv2d"),
    "linear": ("layers", "linear"),
    "batch_norm": ("elementwise", "batch_norm"),
    "fold_batch_norm": ("elementwise", "fold_batch_norm"),
    "relu": ("elementwise", "relu"),
    "leaky_relu": ("elementwise", "leaky_relu"),
    "sigmoid": ("elementwise", "sigmoid"),
    "max_pool2d": ("pool", "max_pool2d"),
    "avg_pool2d": ("pool", "avg_pool2d"),
    "global_avg_pool2d": ("pool", "global_avg_pool2d"),
    "space_to_depth": ("layers", "space_to_depth"),
    "blur_pool2d": ("layers", "blur_pool2d"),
    "squeeze_excite": ("layers", "squeeze_excite"),
    "res2net_chain": ("res2net", "res2net_chain"),
    "bottle2neck": ("res2net", "bottle2neck"),
}


def _lazy(op: str):
    module, name = _WHERE[op]

    def run(*args, **kwargs):
        impl = getattr(importlib.import_module(f"r2n.cpu.{module}"), name)
        return impl(*args, **kwargs)

    run.__name__ = run.__qualname__ = op
    run.__doc__ = f"Runs r2n.cpu.{module}.{name} (imported on first call)."
    return run


#: op name -> implementation (see r2n._backends); modules load on first call.
OPS = {op: _lazy(op) for op in _WHERE}


def _lazy_factory(name: str):
    def factory(*args, **kwargs):
        return getattr(importlib.import_module("r2n.cpu.prepared"), name)(*args, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Runs r2n.cpu.prepared.{name} (imported on first call)."
    return factory


#: op name -> factory of a prepared layer (see r2n._backends.prepare).
PREPARE = {
    "conv2d": _lazy_factory("prepare_conv2d"),
    "bottle2neck": _lazy_factory("prepare_bottle2neck"),
}
# The pools and TResNet's layers, writing into reused outputs.
for _op in _backends.STEPS:
    PREPARE[_op] = functools.partial(_lazy_factory("prepare_step"), _op)
del _op


# op -> (module in r2n.cpu holding its ladder as LADDER), in r2n._ladder.LADDER_OPS order.
_LADDER_MODULES = {
    "conv2d": "conv",
    "res2net_chain": "res2net_ladder",
    "global_avg_pool2d": "pool",
    "linear": "layers",
}


def __getattr__(name: str):
    """``LADDERS`` (op -> its ladder's Steps), imported on first access so that
    ``import r2n`` does not import Numba."""
    if name == "LADDERS":
        ladders = {
            op: importlib.import_module(f"r2n.cpu.{module}").LADDER
            for op, module in _LADDER_MODULES.items()
        }
        globals()["LADDERS"] = ladders
        return ladders
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available() -> bool:
    """True when Numba is installed."""
    return importlib.util.find_spec("numba") is not None


def unavailable_reason() -> str:
    return "numba is not installed (pip install 'r2n[cpu]')"


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the CPU kernels this Python thread launches
    (1 <= n <= NUMBA_NUM_THREADS). Like Numba's own setting it is per calling
    thread: a new ``threading.Thread`` starts with the default."""
    import numbers

    import numba

    from . import _jit  # noqa: F401  (r2n's OpenMP settings, before Numba's pool starts)

    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"r2n.set_num_threads: n must be an int, got {n!r}")
    if not 1 <= int(n) <= limit:
        raise ValueError(
            f"r2n.set_num_threads: n must be an int from 1 to NUMBA_NUM_THREADS={limit}, got {n!r}"
        )
    numba.set_num_threads(int(n))


def clear_scratch() -> None:
    """Free every buffer the CPU backend keeps between calls, in every thread:
    intermediates of the fused blocks, padded inputs, and the outputs that
    prepared layers (and so models) reuse. Later calls allocate them again.
    Also the GPU backend's split-K arrays, once r2n.gpu.conv is imported
    (r2n.gpu.conv.clear_split_k_scratch: all but a captured graph's).
    Imports neither Numba nor CuPy."""
    from ._scratch import clear_scratch as clear

    clear()


def get_num_threads() -> int:
    """The number of threads of CPU kernels launched from this Python thread."""
    import numba

    from . import _jit  # noqa: F401  (r2n's OpenMP settings, before Numba's pool starts)

    return numba.get_num_threads()
