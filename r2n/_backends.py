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

Prepared ops (for whole networks)
---------------------------------
A model runs the same layers with the same weights many times. :func:`prepare`
turns one layer into a callable ``x -> y`` that holds its weights in the
backend's preferred layout and place (packed, on the device) and may keep
reusable buffers::

    layer = prepare("conv2d", backend, kind, weight, bias, stride=(2, 2), padding=(1, 1),
                    dilation=(1, 1), groups=1, activation="relu")
    y = layer(x)                 # y = relu(conv2d(x, weight) + bias)
    y = layer(x, residual=r)     # y = relu(conv2d(x, weight) + bias + r)

A backend package MAY expose ``PREPARE``, a dict from op name to a factory
with the signature given below; it receives host NumPy arrays and returns the
callable. For an op it does not list, :func:`prepare` builds a fallback: a
closure that converts the arrays to the backend's kind once and, on each
call, checks x as the public op would (``r2n._checks``) and runs the
backend's own ops from its ``OPS`` (conv2d, relu, leaky_relu, bottle2neck). A backend that lands
later plugs in by adding entries to its ``PREPARE``; models need no change.

The ops that can be prepared and their factory signatures (all keyword
arguments are already normalised: pairs are ``(h, w)`` tuples of ints):

``"conv2d"``: ``factory(weight, bias, *, stride, padding, dilation, groups,
activation, negative_slope, reuse_output)`` with weight (C_out, C_in // groups,
kH, kW) and bias (C_out,) or None (BN already folded in); ``activation`` is
None, ``"relu"`` or ``"leaky_relu"`` (with ``negative_slope``). Returns
``f(x, residual=None) -> y``, ``y = act(conv2d(x) + bias + residual)`` with
residual (N, C_out, H_out, W_out) or None.

``"bottle2neck"``: ``factory(params, *, scale, stype, stride, groups,
reuse_output)`` with params an ``r2n.Bottle2neckParams`` of NumPy arrays.
Returns ``f(x) -> y`` as :func:`r2n.bottle2neck`.

The steps between them (pools, TResNet's layers) are prepared too, so that a
warm forward pass can take every intermediate from reused buffers:
``"max_pool2d"``, ``"avg_pool2d"``, ``"global_avg_pool2d"``,
``"space_to_depth"``, ``"blur_pool2d"`` and ``"squeeze_excite"``, factory
``factory(*weights, reuse_output, **options)``: weights are the public op's
arrays after x (squeeze_excite's w1, b1, w2, b2; none for the others),
options its keyword arguments as the public op takes them (``kernel_size``,
``stride``, ``padding``, ``ceil_mode``, ``count_include_pad``,
``block_size``; checked on each call by ``r2n._checks.step_args``).
squeeze_excite also takes ``activation`` (None or ``"relu"``): its callable is
``f(x, residual=None) -> act(squeeze_excite(x) + residual)`` (TResNet's
BasicBlock end); the others' is ``f(x)``.

Both take ``precision`` too (``"fp32"`` when not given): :func:`prepare` checks
it (``r2n._checks.precision_arg``: ``"tf32"`` / ``"bf16"`` need the gpu backend
and float32 weights) and passes it to the factory only when it is not
``"fp32"``, so factories of backends without tensor cores never see it.

A backend MAY also expose ``GRAPHS``, a factory ``prepared forward -> callable``
that records the forward once per input shape and replays it
(:func:`graphed`; the gpu backend's is ``r2n.gpu.GraphCache``: CUDA graphs,
``r2n.models.create(..., graph=True)``).

``reuse_output=True`` allows (does not require) the callable to return a buffer
it owns and overwrites on its next call, in the same thread, with an input of
the same shape; the caller must be done with ``y`` by then (passing ``y``
back in as the input is fine: that call writes elsewhere). With False every
call returns a new array. Inputs are never modified. Prepared callables check
x (kind, dtype, shape) on each call and raise the public op's errors, and may
be called from several threads at once (nothing one thread's call writes is
read by another's).
"""

from __future__ import annotations

import functools
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


# --------------------------------------------------------------------------- #
# Prepared ops
# --------------------------------------------------------------------------- #

#: The prepared steps (module docstring): ops without fused weights layouts,
#: prepared so that their outputs can be reused buffers.
STEPS = (
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "space_to_depth",
    "blur_pool2d",
    "squeeze_excite",
)

#: Ops that :func:`prepare` accepts (see the module docstring for signatures).
PREPARABLE = ("conv2d", "bottle2neck") + STEPS

_ACTIVATIONS = (None, "relu", "leaky_relu")


def pick(op: str, backend: str | None, kind: str) -> str:
    """The backend name :func:`resolve` would use for ``op`` on arrays of ``kind``."""
    if backend is None:
        if kind == "cupy":
            return "gpu"
        return "cpu" if implements("cpu", op) else "reference"
    return backend


def as_kind(a, kind: str):
    """``a`` as an array of ``kind`` ("numpy" or "cupy"); None stays None.

    Used once, when weights are prepared; CuPy is imported only for "cupy".
    """
    if a is None:
        return None
    if kind == "cupy":
        import cupy

        return cupy.asarray(a)
    import numpy as np

    return np.asarray(a)


def graphed(fn: Callable, backend: str | None, kind: str) -> Callable:
    """``fn`` (a prepared forward ``x -> y``) replayed from graphs recorded
    per input shape, by the backend's ``GRAPHS`` factory (the gpu backend's is
    r2n.gpu.GraphCache: CUDA graphs); a ValueError for a backend without one."""
    name = pick("conv2d", backend, kind)
    factory = getattr(_module(name), "GRAPHS", None)
    if factory is None:
        raise ValueError(f"r2n: backend {name!r} does not record graphs (the gpu backend does)")
    return factory(fn)


def prepare(op: str, backend: str | None, kind: str, *arrays, **options) -> Callable:
    """A callable running ``op`` with fixed weights on one backend.

    Parameters
    ----------
    op : one of PREPARABLE.
    backend : None (pick by ``kind`` as :func:`resolve`), "reference", "cpu", "gpu".
    kind : "numpy" or "cupy": the kind of the inputs the callable will receive.
    *arrays, **options : the op's weights and normalised options (module docstring),
        ``precision`` among them (default "fp32").

    Returns
    -------
    The backend's ``PREPARE[op]`` factory's callable, or the fallback closure
    over the backend's ops when the backend has no factory for ``op``.
    """
    if op not in PREPARABLE:
        raise ValueError(f"r2n: cannot prepare {op!r}; preparable ops: {', '.join(PREPARABLE)}")
    name = pick(op, backend, kind)
    resolve(op, name, kind)  # the same errors as a direct call (unknown, wrong kind, missing)
    precision = options.pop("precision", "fp32")
    if precision != "fp32" and op in STEPS:
        raise ValueError(
            f"r2n: prepared {op} takes no precision (it has no matrix product); "
            f"got precision={precision!r}"
        )
    if precision != "fp32":
        from . import _checks

        weight = arrays[0] if op == "conv2d" else arrays[0].conv1.weight
        _checks.precision_arg(op, precision, kind_of(name), weight.dtype)
        options["precision"] = precision
    if op == "conv2d" and options.get("activation") not in _ACTIVATIONS:
        raise ValueError(
            f"r2n: activation must be one of {_ACTIVATIONS}, got {options.get('activation')!r}"
        )
    if op in STEPS:
        _check_step_options(op, arrays, options)
    factory = getattr(_module(name), "PREPARE", {}).get(op)
    if factory is not None:
        return factory(*arrays, **options)
    return _FALLBACKS[op](name, kind, *arrays, **options)


def _fallback_conv2d(
    backend,
    kind,
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
    precision="fp32",
):
    """conv2d + bias (+ residual) (+ activation) through the backend's ops.

    Each call checks x as the public op does (``r2n._checks``: the same
    errors), then runs ``backend``'s own conv2d, relu and leaky_relu from its
    ``OPS`` (this module sits below ``r2n._api`` and never calls up into it).
    """
    from . import _checks

    weight, bias = as_kind(weight, kind), as_kind(bias, kind)
    conv = resolve("conv2d", backend, kind)
    act = None if activation is None else resolve(activation, backend, kind)

    def conv2d_prepared(x, residual=None):
        _checks.check_arrays("conv2d", {"x": x, "weight": weight, "bias": bias}, ("bias",))
        args = _checks.conv2d_args("conv2d", x, weight, bias, stride, padding, dilation, groups)
        if precision != "fp32":
            args["precision"] = precision
        y = conv(x, weight, bias, **args)
        if residual is not None:  # of y's kind and dtype (never cast), y's shape
            _checks.check_arrays("conv2d", {"output": y, "residual": residual})
            _checks.check_shape("conv2d", "residual", residual, y.shape, "(N, C_out, Ho, Wo)")
            y += residual  # y is a new array: adding in place modifies no input
        if activation == "relu":
            y = act(y)
        elif activation == "leaky_relu":
            slope = _checks.as_float("leaky_relu", "negative_slope", negative_slope, dtype=y.dtype)
            y = act(y, negative_slope=slope)
        return y

    return conv2d_prepared


def _fallback_bottle2neck(
    backend, kind, params, *, scale, stype, stride, groups, reuse_output=False, precision="fp32"
):
    """The backend's bottle2neck on params moved to ``kind`` once; each call
    checks x as :func:`r2n.bottle2neck` does."""
    from . import _checks

    params = params.map(lambda a: as_kind(a, kind))
    block = resolve("bottle2neck", backend, kind)
    op = "bottle2neck"

    def bottle2neck_prepared(x):
        arrays = _checks.bottle2neck_arrays(op, x, params)
        _checks.check_arrays(op, arrays, _checks.BOTTLE2NECK_OPTIONAL)
        args = _checks.bottle2neck_args(op, x, params, scale, stype, stride, groups)
        if precision != "fp32":
            args["precision"] = precision
        return block(x, params, **args)

    return bottle2neck_prepared


#: Each prepared step's keyword arguments besides ``reuse_output``.
_STEP_OPTIONS = {
    "max_pool2d": {"kernel_size", "stride", "padding", "ceil_mode"},
    "avg_pool2d": {"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"},
    "global_avg_pool2d": set(),
    "space_to_depth": {"block_size"},
    "blur_pool2d": set(),
    "squeeze_excite": {"activation"},
}


def _check_step_options(op, arrays, options):
    """The step's weights count and option names, and squeeze_excite's activation."""
    from . import _checks

    names = _checks.STEP_WEIGHTS[op][0]
    if len(arrays) != len(names):
        raise TypeError(
            f"r2n: prepared {op} takes {len(names)} weight array(s) "
            f"({', '.join(names) or 'none'}), got {len(arrays)}"
        )
    unknown = set(options) - _STEP_OPTIONS[op] - {"reuse_output"}
    if unknown:
        raise TypeError(
            f"r2n: prepared {op} got unknown option(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(_STEP_OPTIONS[op])) or 'none'} and reuse_output"
        )
    if op in ("max_pool2d", "avg_pool2d") and "kernel_size" not in options:
        raise TypeError(f"r2n: prepared {op} needs kernel_size=, as {op} does")
    if op == "squeeze_excite" and options.get("activation") not in (None, "relu"):
        raise ValueError(
            f"r2n: squeeze_excite's activation must be None or 'relu', "
            f"got {options.get('activation')!r}"
        )


def _fallback_step(op, backend, kind, *weights, reuse_output=False, activation=None, **options):
    """A prepared step through the backend's own op (a new array per call):
    each call checks x as the public op does, then runs ``backend``'s ``op``
    (and for squeeze_excite the residual add and ReLU)."""
    from . import _checks

    weights = tuple(as_kind(w, kind) for w in weights)
    impl = resolve(op, backend, kind)
    relu = resolve("relu", backend, kind) if activation == "relu" else None

    def step_prepared(x, residual=None):
        _, args, _ = _checks.step_call_args(op, x, weights, residual, options)
        y = impl(x, *weights, **args)
        if residual is not None:
            y += residual  # y is a new array: adding in place modifies no input
        return y if relu is None else relu(y)

    step_prepared.__name__ = step_prepared.__qualname__ = f"{op}_prepared"
    return step_prepared


_FALLBACKS = {"conv2d": _fallback_conv2d, "bottle2neck": _fallback_bottle2neck}
_FALLBACKS.update({op: functools.partial(_fallback_step, op) for op in STEPS})
