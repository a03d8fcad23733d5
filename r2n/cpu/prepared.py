"""Prepared layers for whole networks (``r2n._backends.prepare`` on ``"cpu"``).

Each factory packs its weights once (``microkernel.pack_weights``) and returns a
callable that checks its input and runs the fused kernels:

* ``conv2d``: one launch of ``conv.conv_simd`` (or, for 3x3 stride-1 convs
  the Winograd rules admit, of ``conv.v5_winograd`` / ``conv.v6_winograd_4x4``)
  whose epilogue adds the bias, the optional residual and applies ReLU or
  leaky ReLU (a conv + BN + act of TResNet, a stem conv, a BasicBlock's
  second conv with its shortcut);
* ``bottle2neck``: ``res2net.PreparedBottle2neck``;
* the steps between them (``r2n._backends.STEPS``: the pools,
  space_to_depth, blur_pool2d, squeeze_excite with an optional residual +
  ReLU): ``PreparedStep``, the public op's kernel with ``out=`` the layer's
  reused output.

See ``r2n._backends`` for the contract they implement. What they keep
between calls, and why no call can see another's state:

* the packed weights: written once, in ``__init__``, and only read after;
  except the F(4x4,3x3) weights, built on the first call that takes F(4x4)
  (a function of the weights alone; two threads may both build them) and
  assigned only when complete;
* per input shape, the output shape / checked arguments (``_shapes`` /
  ``_args``): a function of the shape and the layer's fixed options alone,
  so computing one twice gives the same value (two threads may); at most
  ``SHAPE_ENTRIES`` of them, then the dictionary starts again;
* with ``reuse_output=True``, the returned array, from the calling thread's
  scratch cache (``r2n.cpu._scratch``) under a role private to the layer:
  another thread gets its own, every call writes all of it, and a call
  whose input or residual is that array gets a new one instead;
* intermediate buffers (the conv's padded input, the block's t1 / t2 / ...):
  the same per-thread cache, each written in full before it is read.

So a layer can run in several threads at once, each with its own buffers.
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from ._scratch import owner_token, scratch
from .conv import v5_winograd, v6_winograd_4x4
from .conv.v4_simd import conv_simd
from .elementwise import kernel_input, vector_or
from .microkernel import pack_weights
from .res2net import PreparedBottle2neck

#: Input shapes whose output shape / checked arguments a layer remembers
#: (a few bytes each); past this many the dictionary is emptied and refilled.
SHAPE_ENTRIES = 64


def _check_input(op, x, dtype, want_channels):
    """x must be a NumPy (N, C, H, W) array of the prepared dtype."""
    kind = _checks.array_kind(x)
    if kind != "numpy":
        raise TypeError(
            f"r2n.{op} (prepared for cpu): x must be a numpy.ndarray, got {type(x).__name__}"
        )
    if x.dtype != dtype:
        raise TypeError(
            f"r2n.{op} (prepared for cpu): x has dtype {x.dtype}; the layer was prepared "
            f"for {dtype}"
        )
    _checks.check_ndim(op, "x", x, 4, f"(N, {want_channels}, H, W)")


class PreparedConv2d:
    """conv2d + bias (+ residual) (+ ReLU / leaky ReLU) on packed weights.

    Parameters
    ----------
    weight : (C_out, C_in // groups, kH, kW) ; bias : (C_out,) or None
    stride, padding, dilation : (h, w) pairs ; groups : int
    activation : None, "relu" or "leaky_relu" ; negative_slope : float
    reuse_output : return a buffer reused by the next call of the same shape
    """

    def __init__(
        self,
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
    ):
        weight = np.asarray(weight)
        self.dtype = weight.dtype
        self.weight_shape = weight.shape  # for the checks, which read only .shape
        self.c_out = weight.shape[0]
        self.packed = pack_weights(np.ascontiguousarray(weight), groups)
        self.bias = vector_or(
            None if bias is None else np.asarray(bias), 0, self.c_out, self.dtype
        )
        self.geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.activation = activation
        self.negative_slope = negative_slope if activation == "leaky_relu" else 0.0
        self.reuse_output = reuse_output
        self._shapes = {}  # x.shape -> out_shape (see the module docstring)
        self.output_owner = owner_token()  # the scratch role of this layer's outputs
        # Winograd F(2x2, 3x3) weights for 3x3 stride-1 convs whose input
        # channels per group pass v5_winograd.use_winograd (TResNet's 3x3
        # convs: 1.5-1.8x faster than step 4 on its 64-256 channel shapes);
        # each call then asks the same rule with its input's shape.
        self.c_in = weight.shape[1] * groups
        self.wino = None
        if v5_winograd.applicable(weight.shape[2:], stride, dilation) and (
            v5_winograd.use_winograd(self.c_in, groups, None, None, None)
        ):
            self.wino = v5_winograd.transform_weights(np.ascontiguousarray(weight), groups)
        # F(4x4, 3x3) weights (v6_winograd_4x4), for the calls whose shape
        # use_winograd_4x4 sends there: transformed on the first such call
        # from a private copy of the weights (36 values per kernel, 2.25x
        # F(2x2)'s: only the layers that meet such shapes hold them). A
        # function of the weights alone, so two threads computing them at
        # once store equal arrays.
        self._weight = None
        self._wino4 = None
        if self.wino is not None and v6_winograd_4x4.use_winograd_4x4(
            self.c_in, groups, None, None, None
        ):
            self._weight = np.array(weight, copy=True)

    def __call__(self, x, residual=None):
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out); residual shaped like the output."""
        _check_input("conv2d", x, self.dtype, self.weight_shape[1] * self.geometry["groups"])
        out_shape = self._shapes.get(x.shape)
        if out_shape is None:
            g = self.geometry
            args = _checks.conv2d_args(
                "conv2d",
                x,
                _checks.ShapeOnly(self.weight_shape),
                None,
                g["stride"],
                g["padding"],
                g["dilation"],
                g["groups"],
            )
            out_shape = args["out_shape"]
            _remember(self._shapes, x.shape, out_shape)
        if residual is not None:
            if _checks.array_kind(residual) != "numpy" or residual.dtype != self.dtype:
                raise TypeError(
                    f"r2n.conv2d (prepared for cpu): residual must be a {self.dtype} "
                    f"numpy.ndarray, got {type(residual).__name__} "
                    f"{getattr(residual, 'dtype', '')}"
                )
            _checks.check_shape("conv2d", "residual", residual, out_shape, "(N, C_out, Ho, Wo)")
            residual = np.ascontiguousarray(residual)
        x = np.ascontiguousarray(x)
        out = _output(self, out_shape, x, residual)
        g = self.geometry
        algorithm = self.algorithm(x.shape, out_shape)
        if algorithm == "winograd_4x4":
            return self._winograd_4x4(x, out, residual)
        if algorithm == "winograd_2x2":
            return self._winograd(x, out, residual)
        # The padded (or gathered) input goes into this thread's scratch: the
        # copy writes all of it (conv.read_layout).
        return conv_simd(
            x,
            self.packed,
            self.c_out,
            g["groups"],
            self.weight_shape[2:],
            g["stride"],
            g["padding"],
            g["dilation"],
            self.bias,
            out,
            activation=self.activation,
            negative_slope=self.negative_slope,
            residual=residual,
            scratch=scratch,
        )

    def algorithm(self, x_shape, out_shape):
        """How a call on an input of ``x_shape`` (N, C_in, H, W) with output
        ``out_shape`` runs: "direct" (step 4), "winograd_2x2" (step 5) or
        "winograd_4x4" (step 6), by the Winograd rules (a function of the
        shapes; ``r2n profile`` counts the FLOPs by it)."""
        if self.wino is None:
            return "direct"
        # Both rules are asked with the output's size, whose tiles the
        # Winograd convs compute (the same as the input's at padding 1).
        n = x_shape[0]
        h_out, w_out = out_shape[2:]
        groups = self.geometry["groups"]
        if not v5_winograd.use_winograd(self.c_in, groups, n, h_out, w_out):
            return "direct"
        if v6_winograd_4x4.use_winograd_4x4(self.c_in, groups, n, h_out, w_out):
            return "winograd_4x4"
        return "winograd_2x2"

    def _winograd_4x4(self, x, out, residual):
        """The call on F(4x4, 3x3) weights: bias, residual and (leaky) ReLU
        in the kernel's output transform, one launch."""
        g = self.geometry
        if self._wino4 is None:
            self._wino4 = v6_winograd_4x4.transform_weights(
                np.ascontiguousarray(self._weight), g["groups"]
            )
        v6_winograd_4x4.conv_winograd_4x4(
            x, self._wino4, self.c_out, g["groups"], tuple(g["padding"]), self.bias, out,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual,
            scratch=scratch,
        )  # fmt: skip
        return out

    def _winograd(self, x, out, residual):
        """The call on F(2x2, 3x3) weights: bias, residual and (leaky) ReLU in
        the kernel's output transform, one launch, in conv_simd's order."""
        g = self.geometry
        v5_winograd.conv_winograd(
            x, self.wino, self.c_out, g["groups"], tuple(g["padding"]), self.bias, out,
            activation=self.activation, negative_slope=self.negative_slope, residual=residual,
            scratch=scratch,
        )  # fmt: skip
        return out


class PreparedBottle2neckLayer:
    """r2n.bottle2neck on packed weights, for any input shape.

    Parameters
    ----------
    params : r2n.Bottle2neckParams of NumPy arrays (BN folded)
    scale, stype, stride, groups : as r2n.bottle2neck
    reuse_output : return a buffer reused by the next call of the same shape
    """

    def __init__(self, params, *, scale, stype, stride, groups, reuse_output=False):
        self.options = dict(scale=scale, stype=stype, stride=stride, groups=groups)
        self.dtype = np.asarray(params.conv1.weight).dtype
        self.reuse_output = reuse_output
        self._args = {}  # x.shape -> normalised bottle2neck args (module docstring)
        self.output_owner = owner_token()  # the scratch role of this layer's outputs
        # Check the block and pack its weights now, on a stand-in input: the
        # chain's options do not depend on the input's size.
        c_in = params.conv1.weight.shape[1]
        probe = _checks.ShapeOnly((1, c_in, 8, 8))
        args = _checks.bottle2neck_args("bottle2neck", probe, params, scale, stype, stride, groups)
        self._block = PreparedBottle2neck(params, args, self.dtype)
        # Later calls only need the shapes for their checks: keep no array twice.
        self.params = _shapes_only(params)

    def algorithm(self, x_shape):
        """How the block's chain runs its 3x3 convs for an input of ``x_shape``
        (N, C_in, H, W): PreparedChain.algorithm on conv1's output (``r2n
        profile --fused-blocks`` counts the FLOPs by it)."""
        n, _, h, w = x_shape
        return self._block.chain.algorithm(n, h, w)

    def __call__(self, x):
        """x (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        _check_input("bottle2neck", x, self.dtype, "C_in")
        args = self._args.get(x.shape)
        if args is None:
            o = self.options
            args = _checks.bottle2neck_args(
                "bottle2neck", x, self.params, o["scale"], o["stype"], o["stride"], o["groups"]
            )
            _remember(self._args, x.shape, args)
        x = np.ascontiguousarray(x)
        return self._block.run(x, args, _output(self, args["out_shape"], x))


class PreparedStep:
    """A pool or TResNet layer (``r2n._backends.STEPS``) writing into a reused
    output: the same kernel as the public op, ``out=`` the layer's buffer.

    Parameters
    ----------
    op : one of r2n._backends.STEPS
    *weights : squeeze_excite's w1 (C_mid, C, 1, 1), b1 (C_mid,) or None,
        w2 (C, C_mid, 1, 1), b2 (C,) or None; nothing for the others
    reuse_output : return a buffer reused by the next call of the same shape
    activation : squeeze_excite only: None or "relu" (after the residual add)
    **options : the public op's keyword arguments (r2n._checks.step_args)
    """

    def __init__(self, op, *weights, reuse_output=False, activation=None, **options):
        from . import layers, pool  # Numba compiles on first call, not here

        self.op = op
        # Read-only contiguous copies, as the kernels take them (no view per call).
        weights = tuple(None if w is None else kernel_input(np.array(w)) for w in weights)
        if op == "squeeze_excite":  # absent biases as zeros once, not per call
            w1, b1, w2, b2 = weights
            b1 = vector_or(b1, 0, w1.shape[0], w1.dtype)
            b2 = vector_or(b2, 0, w2.shape[0], w2.dtype)
            weights = (w1, b1, w2, b2)
            # ... and the matrices as the kernels take them, so that a warm
            # call goes straight to the launch (layers.squeeze_excite_into;
            # the public op's per-call reshapes and bias vectors cost ~3 us
            # a call, hot)
            self._se_matrices = layers.squeeze_excite_matrices(*weights, w1.dtype)
        self.weights = weights
        self.options = options
        self.relu = activation == "relu"
        self.reuse_output = reuse_output
        self.output_owner = owner_token()  # the scratch role of this layer's outputs
        self._args = {}  # x.shape -> (args, out_shape) (see the module docstring)
        self._kernel = getattr(layers if hasattr(layers, op) else pool, op)
        if op == "squeeze_excite":
            self._kernel = layers.squeeze_excite_into

    def __call__(self, x, residual=None):
        """x (N, C, H, W) -> the op's output; residual (squeeze_excite only) shaped like x."""
        cached = self._args.get(x.shape) if type(x) is np.ndarray else None
        if cached is not None and self._same_kind(x, residual):  # the warm path
            args, out_shape = cached
        else:  # the public op's checks, and its errors
            names, optional = _checks.STEP_WEIGHTS[self.op]
            arrays = {"x": x, **dict(zip(names, self.weights, strict=True))}
            kind, _ = _checks.check_arrays(self.op, arrays, optional)
            if kind != "numpy":
                raise TypeError(
                    f"r2n.{self.op} (prepared for cpu): x must be a numpy.ndarray, "
                    f"got {type(x).__name__}"
                )
            _, args, out_shape = _checks.step_call_args(
                self.op, x, self.weights, residual, self.options
            )
            _remember(self._args, x.shape, (args, out_shape))
        out = _reused(self, out_shape, x.dtype, x, residual)
        if self.op == "squeeze_excite":
            return self._kernel(x, self._se_matrices, residual, self.relu, out)
        return self._kernel(x, **args, out=out)

    def _same_kind(self, x, residual):
        """x (of a shape already checked) of the weights' dtype (any float
        dtype without weights), and residual None or a NumPy array of x's
        shape and dtype: then the full checks would pass."""
        if x.dtype != (self.weights[0].dtype if self.weights else x.dtype):
            return False
        if x.dtype not in _checks.FLOAT_DTYPES:
            return False
        if residual is None:
            return True
        if self.op != "squeeze_excite" or type(residual) is not np.ndarray:
            return False
        return residual.dtype == x.dtype and residual.shape == x.shape


def _remember(cache, key, value):
    """cache[key] = value, emptying ``cache`` first when it holds SHAPE_ENTRIES.
    (Plain dict operations: atomic under the GIL, so threads may share it.)"""
    if len(cache) >= SHAPE_ENTRIES:
        cache.clear()
    cache[key] = value


def _output(layer, shape, *inputs):
    """The array a layer's call writes its output to: with reuse_output, its
    buffer of this shape in the calling thread's scratch (written in full by
    the call), unless an input is that very buffer (the caller passed an
    earlier output back in); else a new array."""
    return _reused(layer, shape, layer.dtype, *inputs)


def _reused(layer, shape, dtype, *inputs):
    """:func:`_output` for a layer whose dtype is its input's (the steps)."""
    if layer.reuse_output:
        out = scratch(("out", layer.output_owner), shape, dtype)
        if not any(a is not None and np.may_share_memory(out, a) for a in inputs):
            return out
    return np.empty(shape, dtype)


def _shapes_only(params):
    """params with every array replaced by a shape-only stand-in (for the checks)."""
    return params.map(lambda a: _checks.ShapeOnly(a.shape))


def prepare_conv2d(weight, bias, **options):
    """The ``"conv2d"`` factory of r2n.cpu.PREPARE."""
    return PreparedConv2d(weight, bias, **options)


def prepare_bottle2neck(params, **options):
    """The ``"bottle2neck"`` factory of r2n.cpu.PREPARE."""
    return PreparedBottle2neckLayer(params, **options)


def prepare_step(op, *weights, **options):
    """The factory of r2n.cpu.PREPARE for each of r2n._backends.STEPS."""
    return PreparedStep(op, *weights, **options)
