"""Choosing the backend that runs an op.

Three backends compute the same functions:

* ``"reference"``: NumPy, readable (``r2n/reference``), NumPy arrays only;
* ``"cpu"``: Numba-parallel kernels (``r2n/cpu``), NumPy arrays only;
* ``"gpu"``: CuPy RawKernel CUDA kernels (``r2n/gpu``), CuPy arrays only.

Each backend package exposes ``available() -> bool`` (its dependencies import)
and ``OPS``, a dict from op name to implementation. An implementation receives
arrays and arguments already validated and normalised by ``r2n._checks``.

``backend=None`` picks by the arrays' kind: NumPy arrays go to ``"cpu"`` when
that backend is available and implements the op, else to ``"reference"``;
CuPy arrays go to ``"gpu"``. A forced backend that cannot take the arrays'
kind is a TypeError: r2n never copies between host and device behind the
caller's back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

BACKENDS = ("reference", "cpu", "gpu")

# The array kind each backend computes on.
_KIND_OF_BACKEND = {"reference": "numpy", "cpu": "numpy", "gpu": "cupy"}

# The issue that brings each backend, named in NotImplementedError messages.
_WHERE = {"cpu": "the Numba backend, r2n/cpu", "gpu": "the CUDA backend, r2n/gpu"}


def _module(backend: str):
    return importlib.import_module(f"r2n.{backend}")


def available_backends() -> list[str]:
    """Names of the backends whose dependencies are installed, in BACKENDS order."""
    return [b for b in BACKENDS if _module(b).available()]


def kind_of(backend: str) -> str:
    """The array kind a backend computes on: ``"numpy"`` or ``"cupy"``."""
    return _KIND_OF_BACKEND[backend]


def status(backend: str, op: str) -> str:
    """``"ready"``, ``"not implemented"`` or ``"unavailable"`` (dependency missing)."""
    mod = _module(backend)
    if op not in mod.OPS:
        return "not implemented"
    return "ready" if mod.available() else "unavailable"


def implements(backend: str, op: str) -> bool:
    """True when ``backend`` is available and has an implementation of ``op``."""
    mod = _module(backend)
    return mod.available() and op in mod.OPS


def resolve(op: str, backend: str | None, kind: str) -> Callable:
    """Return the implementation of ``op`` for ``backend`` and array ``kind``.

    Parameters
    ----------
    op : public op name, e.g. ``"conv2d"``.
    backend : None, ``"reference"``, ``"cpu"`` or ``"gpu"``.
    kind : ``"numpy"`` or ``"cupy"``, from :func:`r2n._checks.check_arrays`.
    """
    if backend is None:
        if kind == "cupy":
            backend = "gpu"
        else:
            backend = "cpu" if implements("cpu", op) else "reference"
    elif backend not in BACKENDS:
        raise ValueError(
            f"r2n.{op}: backend must be None or one of {', '.join(map(repr, BACKENDS))}, "
            f"got {backend!r}"
        )
    expected = _KIND_OF_BACKEND[backend]
    if kind != expected:
        have = "NumPy" if kind == "numpy" else "CuPy"
        want = "NumPy" if expected == "numpy" else "CuPy"
        move = "cupy.asarray" if expected == "cupy" else "cupy.asnumpy"
        raise TypeError(
            f"r2n.{op}: backend {backend!r} computes on {want} arrays, got {have} "
            f"arrays; convert them yourself (e.g. {move}) or pass backend=None"
        )
    mod = _module(backend)
    impl = mod.OPS.get(op)
    if impl is None:
        raise NotImplementedError(
            f"r2n.{op}: backend {backend!r} has no implementation of {op} yet "
            f"({_WHERE.get(backend, backend)})"
        )
    if not mod.available():
        raise RuntimeError(
            f"r2n.{op}: backend {backend!r} is not available: {mod.unavailable_reason()}"
        )
    return impl
