"""What every r2n model shares: weights in, BN folded, layers prepared, forward.

A model family (``res2net.py``, ``tresnet.py``) provides two functions of its
hyper-parameters:

* ``expected_keys(arch, num_classes) -> {key: shape}``: the complete
  state_dict, timm's key names, in timm's order;
* ``build(arch, weights, layers) -> forward(x)``: reads weights through a
  :class:`Weights` (which folds each BN into its conv) and builds the forward
  pass from a :class:`Layers`, which prepares convs, bottlenecks and the
  steps between them (pools, space-to-depth, blur, squeeze-excite:
  ``Layers.prepared``) through ``r2n._backends.prepare`` and runs the rest
  (the classifier) through the public ops.

Models never import a backend package: a backend plugs in through its
``PREPARE`` factories (or the fallback over its public ops).
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from collections.abc import Callable

import numpy as np

from .. import _api, _backends, _checks, _interop
from ..params import Bottle2neckParams, FoldedConv
from ._weights import check_state_dict

BN_EPS = 1e-5
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def bn_keys(prefix: str, channels: int) -> dict[str, tuple]:
    """The state_dict keys of the BatchNorm at ``prefix``: key -> (channels,)."""
    return {f"{prefix}.{s}": (channels,) for s in BN_SUFFIXES}


@dataclasses.dataclass(frozen=True)
class Arch:
    """A registered model: its family, hyper-parameters and preprocessing.

    Attributes
    ----------
    name : the model's name (timm's)
    family : "res2net" or "tresnet"
    params : the family's hyper-parameters (dict)
    preprocess : timm's default eval config: input_size (C, H, W), crop_pct,
        interpolation, mean, std
    """

    name: str
    family: str
    params: dict
    preprocess: dict


class Weights:
    """Host arrays of one checkpoint, folded and cast for one dtype.

    Parameters
    ----------
    arrays : key -> numpy array (checked by check_state_dict)
    dtype : the model's dtype; folding runs in float64, then casts.
    """

    def __init__(self, arrays, dtype):
        self.arrays = arrays
        self.dtype = np.dtype(dtype)

    def array(self, key):
        """arrays[key] as a contiguous array of the model's dtype."""
        return np.ascontiguousarray(self.arrays[key], dtype=self.dtype)

    def conv_bn(self, conv_key, bn_prefix, conv_bias_key=None) -> FoldedConv:
        """The conv ``conv_key`` with the BatchNorm at ``bn_prefix`` folded in."""
        f64 = {s: np.asarray(self.arrays[f"{bn_prefix}.{s}"], np.float64) for s in BN_SUFFIXES}
        conv_bias = None
        if conv_bias_key is not None:
            conv_bias = np.asarray(self.arrays[conv_bias_key], np.float64)
        w, b = _api.fold_batch_norm(
            np.asarray(self.arrays[conv_key], np.float64),
            conv_bias,
            f64["running_mean"],
            f64["running_var"],
            f64["weight"],
            f64["bias"],
            eps=BN_EPS,
            backend="reference",
        )
        return FoldedConv(
            np.ascontiguousarray(w, dtype=self.dtype), np.ascontiguousarray(b, dtype=self.dtype)
        )


class Layers:
    """Prepares layers for one backend and array kind (see r2n._backends.prepare).

    Intermediate layers may reuse their outputs (``reuse_output=True``): each
    prepared layer runs once per forward pass, and every value it returns is
    consumed before that layer runs again in the same thread (the cpu
    backend keeps a reused output per thread, so threads do not share them).
    The convs, blocks and the steps between them (:meth:`prepared`: pools,
    space-to-depth, blur, SE) all do, so a warm forward on the cpu backend
    allocates only its logits, which the fc (``r2n.linear``) returns as a new
    array: the caller's to keep.
    ``precision`` goes to every conv and bottleneck (r2n._backends.prepare
    checks it).

    Every layer has a ``name`` (timm's module path: ``layer1.0.conv1``), and
    the forward steps that are not prepared layers (pools, SE, the fc) go
    through :meth:`step`. Here names are ignored and steps returned as they
    are; ``r2n profile``'s subclass (r2n._bench.profile) wraps each with a
    named timer.
    """

    def __init__(self, backend, kind, precision="fp32"):
        self.backend = backend
        self.kind = kind
        self.precision = precision

    def conv(
        self, folded: FoldedConv, *, stride=1, padding=0, groups=1, act=None, slope=0.01, name=""
    ):
        """A prepared conv2d + bias (+ residual) (+ act): ``f(x, residual=None)``."""
        return _backends.prepare(
            "conv2d",
            self.backend,
            self.kind,
            folded.weight,
            folded.bias,
            stride=(stride, stride),
            padding=(padding, padding),
            dilation=(1, 1),
            groups=groups,
            activation=act,
            negative_slope=slope,
            reuse_output=True,
            precision=self.precision,
        )

    def bottle2neck(self, params: Bottle2neckParams, *, scale, stype, stride, groups, name=""):
        """A prepared r2n.bottle2neck: ``f(x)``."""
        return _backends.prepare(
            "bottle2neck",
            self.backend,
            self.kind,
            params,
            scale=scale,
            stype=stype,
            stride=stride,
            groups=groups,
            reuse_output=True,
            precision=self.precision,
        )

    def prepared(self, op: str, *weights, **options) -> Callable:
        """A prepared step (``r2n._backends.STEPS``: a pool, space_to_depth,
        blur_pool2d, squeeze_excite) that may reuse its output, as the convs:
        ``f(x)``, or for squeeze_excite ``f(x, residual=None)``. ``weights``
        are host arrays; options are the public op's keyword arguments."""
        return _backends.prepare(
            op, self.backend, self.kind, *weights, reuse_output=True, **options
        )

    def step(self, name: str, op: str, fn: Callable, weights=()) -> Callable:
        """A forward step that is not a prepared layer (``op``: the r2n op it
        runs; ``weights``: its matrices, for the profile's FLOPs): ``fn`` itself."""
        return fn

    def arr(self, a):
        """A host array moved to this kind (once, at preparation)."""
        return _backends.as_kind(a, self.kind)


def random_state_dict(expected, seed: int = 0) -> dict:
    """Deterministic random weights for every key of ``expected`` (key -> shape).

    Conv weights: He-normal (std sqrt(2 / fan_in)); linear weights: std
    sqrt(1 / fan_in); BN: weight U(0.5, 1.5), bias and running_mean N(0, 0.1),
    running_var U(0.5, 1.5); other biases N(0, 0.1). float32, like a checkpoint.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in expected.items():
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            gain = 2.0 if len(shape) == 4 else 1.0
            a = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
        else:  # biases, running means
            a = 0.1 * rng.standard_normal(shape)
        out[key] = a.astype(np.float32)
    return out


class Model:
    """A whole network, prepared for inference.

    Call it on images ``x`` (N, 3, H, W) of the model's dtype: a NumPy array
    runs on the host backend ("cpu", or "reference" without Numba), a CuPy
    array on "gpu" (unless ``backend`` forces one). Returns the logits
    (N, num_classes) as a new array of x's type.

    Attributes
    ----------
    name, num_classes, backend (None: by the input's kind), dtype
    precision : "fp32", or "tf32" / "bf16" (convs on tensor cores; CuPy inputs only)
    graph : True: CuPy inputs replay CUDA graphs (:meth:`graphs`), one recorded
        per input shape on its first call
    preprocess : timm's default eval config (see r2n.models.preprocess)

    Notes
    -----
    A model may be called from several threads at once, on any shapes: the
    weights are only read, and the buffers its layers reuse between calls
    (per input shape, a bounded LRU; ``r2n.clear_scratch()`` frees them) are
    the calling thread's own on the cpu backend; the gpu backend keeps none.
    """

    def __init__(
        self,
        arch: Arch,
        build: Callable,
        weights: Weights,
        num_classes,
        backend,
        precision="fp32",
        graph=False,
    ):
        self.name = arch.name
        self.arch = arch
        self.num_classes = num_classes
        self.backend = backend
        self.dtype = weights.dtype
        self.precision = precision
        self.graph = graph
        self.preprocess = dict(arch.preprocess)
        # graph=True: the CuPy forward replayed from CUDA graphs, one recorded
        # per input shape / dtype / device on its first call (a bounded LRU;
        # r2n.gpu.graph.GraphCache, thread-safe). Built on first use: importing
        # it needs no CuPy, recording does.
        self._graphs = None
        self._graphs_lock = threading.Lock()
        self._build = build
        self._weights = weights
        # kind -> forward(x): built once per array kind from the fixed weights;
        # two threads may build one twice (an equal value; dict set is atomic).
        self._forward = {}
        # Prepare now for the kind the backend computes on (host if not forced;
        # the device for tf32 / bf16, which only the gpu backend computes in).
        kind = "numpy" if backend is None else _backends.kind_of(backend)
        self._prepared("cupy" if precision != "fp32" else kind)

    def _prepared(self, kind):
        forward = self._forward.get(kind)
        if forward is None:
            layers = Layers(self.backend, kind, self.precision)
            forward = self._forward[kind] = self.forward_with(layers)
        return forward

    def forward_with(self, layers: Layers) -> Callable:
        """This model's forward ``x -> logits`` built on ``layers`` (a
        :class:`Layers`, or one that wraps its calls: ``r2n profile`` times each
        layer this way); uncached, unchecked (the caller checks x)."""
        return self._build(self.arch, self._weights, layers)

    @_interop.accepts_dlpack(where=lambda args: f"r2n model {args[0].name}")
    def __call__(self, x):
        """x (N, 3, H, W) -> logits (N, num_classes).

        x may also be any DLPack array (a torch tensor, a JAX array): the
        logits then come back as that kind, on its device (r2n/_interop.py).
        """
        kind = _checks.array_kind(x)
        if kind is None:
            raise TypeError(
                f"r2n model {self.name}: x must be a numpy.ndarray or cupy.ndarray, "
                f"got {type(x).__name__}"
            )
        if self.backend is not None and kind != _backends.kind_of(self.backend):
            _backends.resolve("conv2d", self.backend, kind)  # raises the TypeError
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(
                f"r2n model {self.name}: x has dtype {x.dtype}; the model was created "
                f"with dtype {self.dtype} (create(..., dtype=...))"
            )
        _checks.check_ndim(self.name, "x", x, 4, "(N, 3, H, W)")
        if x.shape[1] != 3:
            raise ValueError(
                f"r2n model {self.name}: x must have 3 channels (N, 3, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"r2n model {self.name}: x must hold at least one image")
        if self.graph and kind == "cupy":
            return self.graphs()(x)
        return self._prepared(kind)(x)

    def graphs(self):
        """The r2n.gpu.GraphCache of a ``graph=True`` model's GPU forward
        (its ``captures``, ``len()`` and ``clear()``)."""
        if not self.graph:
            raise ValueError(f"r2n model {self.name}: created with graph=False")
        with self._graphs_lock:
            if self._graphs is None:
                self._graphs = _backends.graphed(self._prepared("cupy"), self.backend, "cupy")
            return self._graphs

    def __repr__(self):
        backend = self.backend or "auto"
        precision = "" if self.precision == "fp32" else f", precision={self.precision!r}"
        graph = ", graph=True" if self.graph else ""
        return (
            f"r2n.models.Model({self.name!r}, num_classes={self.num_classes}, "
            f"backend={backend!r}, dtype={self.dtype}{precision}{graph})"
        )


def make_model(
    arch, family, state_dict, num_classes, backend, dtype, seed, precision="fp32", graph=False
):
    """Check or draw the weights, fold them, and prepare the model."""
    expected = family.expected_keys(arch, num_classes)
    if state_dict is None:
        seed = zlib.crc32(arch.name.encode()) if seed is None else seed
        state_dict = random_state_dict(expected, seed)
    arrays = check_state_dict(state_dict, expected, arch.name)
    weights = Weights(arrays, dtype)
    return Model(arch, family.build, weights, num_classes, backend, precision, graph)
