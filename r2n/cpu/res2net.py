"""The Res2Net chain and bottleneck on the CPU, fused.

A framework runs the chain of a scale-4 block as ~15 steps, each a pass over
memory: split, conv, BN, ReLU, add, conv, BN, ReLU, add, ..., pool, cat. Here:

1. One prologue launch: zero-pad the chunks the convs read first (x_0; every
   x_i for "stage"), and write the last chunk straight into its slice of the
   output: copied ("normal") or 3x3-average-pooled ("stage").
2. The convs (step 4_simd of r2n.cpu.conv): BN is folded into the weights,
   so the epilogue adds the bias, applies ReLU and writes into the conv's
   channel slice of the output (no split, no cat). "normal": one launch per
   conv, whose epilogue also writes ``value + x_{i+1}`` into the next conv's
   padded input, so the hierarchical add costs no pass of its own. "stage":
   the convs are independent, so all of them run in one launch (one wake-up
   of the worker threads and one barrier instead of scale - 1).

``bottle2neck`` adds the 1x1 convs around it: conv1 (+ bias + ReLU), the chain,
the shortcut conv (after the "d" variant's average pool, if any), and conv3
whose epilogue adds the shortcut and applies the final ReLU.

Prepared chains run their 3x3 stride-1 convs as Winograd F(2x2, 3x3)
(step 5_winograd, r2n.cpu.conv.v5_winograd) where ``use_winograd`` says so, and
of those as F(4x4, 3x3) (step 6_winograd_4x4) where ``use_winograd_4x4`` says so
(>= 32 channels, images whose sides are near multiples of 4): 2.25x (4x) fewer
multiplies, the BN-folded weights transformed once (U = G g G^T), the input
transform reading the unpadded chunks (for "normal": adding sp + x_{i+1} on
the read), bias and ReLU in the output transform, each conv writing its
channel slice of the output. Nothing is padded there, so the "normal" chain
needs no prologue: its first conv's launch also copies the last chunk
(``pass_through``), and the chain is scale - 1 parallel regions instead of
scale (each region wakes the sleeping worker threads: 50-90 us at 2 threads,
most of a batch-1 chain's cost over a perfect split; NOTES.md "Fewer
parallel regions at batch 1").

``PreparedChain`` / ``PreparedBottle2neck`` pack the weights once; the public
ops prepare on every call (packing is O(weights), small next to the convs)
and take Winograd where ``use_winograd`` / ``use_winograd_4x4`` pick it for
the input's shape, transforming the weights on that call (a Numba kernel,
~0.14 ms for 104 x 104 channels).
Their intermediate buffers (padded chunks, t1, the chain's output, the
shortcut) come from ``r2n.cpu._scratch.scratch``, a bounded per-thread cache
keyed by role and shape: repeated calls on one shape (a model's forward
passes) allocate only what they return, and blocks of one shape share one set
of buffers (each is dead once its block returns, and reusing it keeps it in
cache). Every one of them is written in full by the call that reads it, so
no earlier call can change a result; ``r2n.clear_scratch()`` frees them.
"""

from __future__ import annotations

import numba
import numpy as np

from ._jit import kernel, prange
from ._scratch import clear_scratch, scratch  # noqa: F401  (clear_scratch: re-exported)
from .conv import v6_winograd_4x4
from .conv.v4_simd import NextInput, conv_simd, input_layout
from .conv.v5_winograd import (
    conv_winograd,
    transform_weights,
    transformed_size,
    use_winograd,
)
from .conv.v6_winograd_4x4 import conv_winograd_4x4, use_winograd_4x4
from .elementwise import unused_array, vector_or
from .microkernel import pack_weights
from .pool import avg_pool2d


@kernel
def _chain_prologue(x, width, n_pad, stage, stride, last_c, xp, next_input, out, out_c0):
    """Pad chunks 0 .. n_pad-1 of x into xp (N, n_pad*width, H+2, W_p), and
    write chunk ``last_c`` (if >= 0) into out[:, out_c0 : out_c0 + width]:
    a copy, or for stage a 3x3 / stride / pad-1 average (count_include_pad).

    ``next_input`` (shaped like xp, or empty): the "normal" chain's second padded
    buffer, whose interior the convs write; here its border (rows 0 and H+1,
    column 0 and the columns from W+1 on) is zeroed, so that no earlier call,
    of any width, leaves values in the padding: O(border), not O(buffer).

    Everything runs a row at a time over row slices, whose loops vectorise.
    """
    n_img, _, h, w = x.shape
    hp, wp = xp.shape[2], xp.shape[3]
    h_out, w_out = out.shape[2], out.shape[3]
    n_last = width if last_c >= 0 else 0
    zero = x.dtype.type(0)
    ninth = x.dtype.type(1.0 / 9.0)
    per_img = n_pad * width + n_last
    border_next = next_input.size > 0
    for job in prange(n_img * per_img):
        n = job // per_img
        c = job % per_img
        if c < n_pad * width:  # a padded chunk plane
            for y in range(hp):
                dst = xp[n, c, y]
                for i in range(wp):
                    dst[i] = zero
                if 1 <= y <= h:
                    src = x[n, c, y - 1]
                    for i in range(w):
                        dst[1 + i] = src[i]
            if border_next:
                for y in range(hp):
                    dst = next_input[n, c, y]
                    if y == 0 or y > h:
                        for i in range(wp):
                            dst[i] = zero
                    else:
                        dst[0] = zero
                        for i in range(w + 1, wp):
                            dst[i] = zero
        elif not stage:  # the last chunk passes through
            c_in = last_c + c - n_pad * width
            c_out = out_c0 + c - n_pad * width
            for y in range(h):
                dst = out[n, c_out, y]
                src = x[n, c_in, y]
                for i in range(w):
                    dst[i] = src[i]
        else:  # the last chunk, 3x3 average-pooled with stride and padding 1
            c_in = last_c + c - n_pad * width
            c_out = out_c0 + c - n_pad * width
            # With kernel 3 and padding 1 every window lies inside the padded
            # input, so PyTorch's count_include_pad divisor is always 9.
            rows = np.zeros(w + 2, x.dtype)  # sum of the window's 3 rows, padded
            for y in range(h_out):
                for i in range(w + 2):
                    rows[i] = zero
                for r in range(3):
                    iy = y * stride - 1 + r
                    if 0 <= iy < h:
                        src = x[n, c_in, iy]
                        for i in range(w):
                            rows[1 + i] += src[i]
                dst = out[n, c_out, y]
                for i in range(w_out):
                    j = i * stride
                    dst[i] = (rows[j] + rows[j + 1] + rows[j + 2]) * ninth


#: A "stage" chain whose input and padded chunks take more bytes than this
#: runs in sub-batches of as many images as threads. Measured on a 2-core Zen 4
#: with a 32 MiB L3 (2026-11-25, NOTES.md): layer2.0 at batch 8 (38 MB) took
#: 18-22% less time in sub-batches; layer1.0 at batch 8 (19 MB) gained nothing
#: and lost 6% at 2 threads, so the line sits between them.
SUB_BATCH_BYTES = 24 * 2**20


class PreparedChain:
    """Packed weights of one Res2Net chain, reusable across calls.

    Parameters as r2n.res2net_chain (weights and biases BN-folded).
    ``winograd``: also prepare Winograd weights, for the shapes
    ``winograd.use_winograd`` sends there (False: direct convs only).
    ``winograd_4x4``: "lazy" (F(4x4) weights transformed on the first call
    ``use_winograd_4x4`` sends there, from a private copy of the weights),
    True (transformed now) or False (none: F(2x2) only).
    """

    def __init__(
        self, weights, biases, *, scale, stype, stride, groups, width, dtype, winograd=True,
        winograd_4x4="lazy",
    ):  # fmt: skip
        if stype == "normal" and stride != 1:  # as r2n._checks.chain_args
            raise ValueError(f"PreparedChain: stype 'normal' needs stride 1, got {stride}")
        self.scale, self.stype, self.stride, self.groups = scale, stype, stride, groups
        self.width = width
        self.nums = max(scale - 1, 1)
        # "stage" convs do not feed each other: all of them run in one launch
        # on their weights and biases laid end to end; "normal" convs run one
        # launch each, on views of the same arrays (the weights are held once).
        self.packed_all = np.concatenate(
            [pack_weights(np.asarray(w, dtype), groups) for w in weights[: self.nums]]
        )
        self.biases_all = np.concatenate(
            [
                vector_or(None if biases is None else biases[i], 0, width, dtype)
                for i in range(self.nums)
            ]
        )
        self.packed = np.split(self.packed_all, self.nums)
        self.biases = np.split(self.biases_all, self.nums)
        # Winograd F(2x2, 3x3) weights (U = G g G^T, r2n.cpu.conv.v5_winograd) for the
        # stride-1 convs of chunks wide enough to use them on some input
        # (winograd.use_winograd); held beside the direct ones, which shapes
        # the rule sends to the direct convs still use.
        self.wino_all = self.wino = None
        if winograd and stride == 1 and use_winograd(width, groups, None, None, None):
            # One buffer for all convs, each transformed into its slice (a
            # concatenation copied 2 MiB more per 104-channel chain).
            per_conv = transformed_size((width, width // groups), groups, dtype)
            self.wino_all = np.empty(self.nums * per_conv, dtype)
            self.wino = np.split(self.wino_all, self.nums)
            for w, u in zip(weights[: self.nums], self.wino, strict=True):
                transform_weights(np.asarray(w, dtype), groups, out=u)
        # F(4x4, 3x3) weights (r2n.cpu.conv.v6_winograd_4x4) for the inputs
        # use_winograd_4x4 sends there, transformed on the first such call
        # from a private copy of the weights (a function of them alone: two
        # threads doing it at once store equal arrays), or now.
        self._weights4 = self.wino4_all = self.wino4 = None
        if (
            winograd_4x4 and self.wino is not None
            and use_winograd_4x4(width, groups, None, None, None)
        ):  # fmt: skip
            # (True: transformed at once, so the caller's arrays need no copy.)
            keep = np.asarray if winograd_4x4 is True else np.array
            self._weights4 = [keep(w, dtype) for w in weights[: self.nums]]
            if winograd_4x4 is True:
                self._winograd_4x4_weights()

    def _winograd_4x4_weights(self):
        """(all convs' F(4x4) weights in one buffer, one view per conv)."""
        if self.wino4_all is None:
            width, groups = self.width, self.groups
            dtype = self._weights4[0].dtype
            per_conv = v6_winograd_4x4.transformed_size((width, width // groups), groups, dtype)
            wino4_all = np.empty(self.nums * per_conv, dtype)
            parts = np.split(wino4_all, self.nums)
            for w, u in zip(self._weights4, parts, strict=True):
                v6_winograd_4x4.transform_weights(w, groups, out=u)
            self.wino4, self.wino4_all = parts, wino4_all
        return self.wino4_all, self.wino4

    def __call__(self, x, out=None):
        """x (N, scale*width, H, W) contiguous -> out (N, scale*width, H_out, W_out).

        ``out``, if given: C-contiguous, x's dtype, not overlapping x (else ValueError).
        """
        # The kernels index raw buffers: refuse what the chain was not prepared
        # for (the public ops run r2n._checks before they get here).
        expected = self.scale * self.width
        ok = (
            x.ndim == 4 and x.shape[1] == expected and x.flags.c_contiguous
            and x.dtype == self.packed[0].dtype and x.shape[2] >= 1 and x.shape[3] >= 1
        )  # fmt: skip
        if not ok:
            raise ValueError(
                f"PreparedChain: x must be a C-contiguous {self.packed[0].dtype} array of "
                f"shape (N, {expected}, H >= 1, W >= 1), got {x.dtype} {x.shape}"
            )
        n, c, h, w = x.shape
        s, width, nums = self.stride, self.width, self.nums
        h_out, w_out = (h - 1) // s + 1, (w - 1) // s + 1
        if out is None:
            out = np.empty((n, c, h_out, w_out), x.dtype)
        elif (
            out.shape != (n, c, h_out, w_out) or out.dtype != x.dtype
            or not out.flags.c_contiguous or np.may_share_memory(out, x)
        ):  # fmt: skip
            # The launches below write out's raw buffer (the Winograd path's
            # prologue before its convs check anything). Both arrays are
            # contiguous here, so may_share_memory is exact.
            raise ValueError(
                f"PreparedChain: out must be a C-contiguous {x.dtype} array of shape "
                f"{(n, c, h_out, w_out)} not overlapping x, got {out.dtype} {out.shape}"
                + ("" if out.flags.c_contiguous else ", not C-contiguous")
                + (", overlapping x" if np.may_share_memory(out, x) else "")
            )
        algorithm = self.algorithm(n, h, w)
        if algorithm != "direct":
            return self._winograd(x, out, algorithm == "winograd_4x4")
        stage = self.stype == "stage" or self.scale == 1
        n_pad = nums if stage else 1
        last = nums * width if self.scale > 1 else -1
        layout = input_layout(h, w, h_out, w_out, (3, 3), (s, s), (1, 1), (1, 1))
        if layout.rows is not None or layout.cols is not None:
            # Stride > 3 (stage chains only): padded chunks with slack columns
            # would grow with the stride; conv_simd gathers what the convs read.
            return self._gathered(x, out)
        # Padded chunks, with slack columns if rows are narrower than a tile.
        wp = layout.shape[1]
        if stage and n > numba.get_num_threads():
            # A large stage batch runs a few images at a time, so that its input
            # and padded chunks stay in the last-level cache between the prologue
            # and the convs (see SUB_BATCH_BYTES).
            per_image = (c * h * w + n_pad * width * (h + 2) * wp) * x.itemsize
            if n * per_image > SUB_BATCH_BYTES:
                step = numba.get_num_threads()
                for i in range(0, n, step):
                    self(x[i : i + step], out[i : i + step])
                return out
        # Both padded buffers are written in full by this call before any conv
        # reads them (see r2n.cpu._scratch): the prologue rewrites all of xp
        # and zeroes next_input's border; "normal" conv i reads one of them and writes
        # sp + x_{i+1} into the other's whole interior (H x W), and the two swap.
        # So what an earlier call of another width left in them (wp is the same
        # for every width up to TILE_PIXELS) is never read.
        xp = scratch("chain.xp", (n, n_pad * width, h + 2, wp), x.dtype)
        next_input = no_buffer = unused_array(x.dtype).reshape(0, 0, 0, 0)
        if not stage and nums > 1:
            next_input = scratch("chain.next_input", xp.shape, x.dtype)
        _chain_prologue(
            x, width, n_pad, self.stype == "stage", s, last, xp, next_input, out, nums * width
        )  # fmt: skip
        if next_input is no_buffer:
            next_input = None
        if stage:
            # Conv i reads padded chunk i and writes output chunk i; one launch
            # for all of them (one wake-up, one barrier, nums times the jobs).
            conv_simd(
                xp,
                self.packed_all,
                width,
                self.groups,
                (3, 3),
                (s, s),
                (0, 0),
                (1, 1),
                self.biases_all,
                out,
                activation="relu",
                c_in_g=width // self.groups,
                n_conv=nums,
                x_conv_step=width,
            )
            return out
        cur = xp
        for i in range(nums):
            feeds_next = i + 1 < nums
            conv_simd(
                cur,
                self.packed[i],
                width,
                self.groups,
                (3, 3),
                (s, s),
                (0, 0),
                (1, 1),
                self.biases[i],
                out,
                out_c0=i * width,
                activation="relu",
                next_input=NextInput(next_input, x, (i + 1) * width) if feeds_next else None,
                c_in_g=width // self.groups,
            )
            if feeds_next:
                cur, next_input = next_input, cur
        return out

    def algorithm(self, n, h, w):
        """How the chain runs its 3x3 convs on ``n`` images of ``h`` x ``w``:
        "direct" (step 4), "winograd_2x2" (step 5) or "winograd_4x4" (step 6),
        by the Winograd rules (a function of the shape; ``r2n profile``
        counts the FLOPs by it)."""
        if self.wino is None or not use_winograd(self.width, self.groups, n, h, w):
            return "direct"
        if self._weights4 is not None and use_winograd_4x4(self.width, self.groups, n, h, w):
            return "winograd_4x4"
        return "winograd_2x2"

    def _gathered(self, x, out):
        """The stage chain for strides whose padded chunks would outgrow the
        input (r2n.cpu.conv.v4_simd.input_layout): the prologue pools the last chunk,
        then one launch runs every conv, on a copy of x holding only the rows
        and columns they read."""
        width, nums = self.width, self.nums
        no_pad = unused_array(x.dtype).reshape(0, 0, 0, 0)
        last = nums * width if self.scale > 1 else -1
        _chain_prologue(x, width, 0, True, self.stride, last, no_pad, no_pad, out, nums * width)
        conv_simd(
            x, self.packed_all, width, self.groups, (3, 3), (self.stride, self.stride), (1, 1),
            (1, 1), self.biases_all, out, activation="relu", c_in_g=width // self.groups,
            n_conv=nums, x_conv_step=width, scratch=scratch,
        )  # fmt: skip
        return out

    def _winograd(self, x, out, f4x4):
        """The stride-1 chain with Winograd convs: F(2x2, 3x3)
        (r2n.cpu.conv.v5_winograd.conv_winograd), or F(4x4, 3x3)
        (v6_winograd_4x4.conv_winograd_4x4) if ``f4x4`` (``algorithm``).

        The convs read the unpadded chunks (their input transform pads), so
        the only other work is the last chunk: "normal" passes it through in
        conv 0's launch (its ``pass_through``: no launch of its own, one
        wake-up of the workers fewer per chain), "stage" pools it in the
        prologue. "normal": conv i > 0 reads output chunk i - 1 plus input
        chunk i, added in its input transform. "stage": one launch for all.
        """
        width, nums, groups = self.width, self.nums, self.groups
        stage = self.stype == "stage" or self.scale == 1
        if stage and self.scale > 1:
            no_pad = unused_array(x.dtype).reshape(0, 0, 0, 0)  # the prologue pads no chunk here
            _chain_prologue(
                x, width, 0, True, 1, nums * width, no_pad, no_pad, out, nums * width
            )  # fmt: skip
        common = dict(c_in_g=width // groups, activation="relu", scratch=scratch)
        conv, u_all, u = conv_winograd, self.wino_all, self.wino
        if f4x4:
            conv = conv_winograd_4x4
            u_all, u = self._winograd_4x4_weights()
        if stage:
            conv(
                x, u_all, width, groups, (1, 1), self.biases_all, out,
                n_conv=nums, a_conv_step=width, **common,
            )  # fmt: skip
            return out
        # The last chunk x_{scale-1} is output chunk scale-1 as it is.
        last = (nums * width, nums * width, width)
        for i in range(nums):
            conv(
                x if i == 0 else out, u[i], width, groups, (1, 1), self.biases[i], out,
                a_c0=0 if i == 0 else (i - 1) * width, add=None if i == 0 else x, add_c0=i * width,
                out_c0=i * width, pass_through=last if i == 0 else None, **common,
            )  # fmt: skip
        return out


def res2net_chain(x, weights, biases, *, scale, stype, stride, groups, width, out_shape):
    """The fused chain. x (N, scale*width, H, W) -> (N, scale*width, H_out, W_out).

    One call, on the convs a prepared chain of this shape runs: Winograd where
    ``use_winograd`` says so for x's shape (the weights are transformed for
    this call only, by one Numba kernel: ~0.14 ms for three 104-channel convs
    at 1 thread), else direct.
    """
    x = np.ascontiguousarray(x)
    n, _, h, w = x.shape
    chain = PreparedChain(
        weights,
        biases,
        scale=scale,
        stype=stype,
        stride=stride,
        groups=groups,
        width=width,
        dtype=x.dtype,
        winograd=use_winograd(width, groups, n, h, w),
        winograd_4x4=use_winograd_4x4(width, groups, n, h, w),
    )
    return chain(x, np.empty(out_shape, x.dtype))


class PreparedBottle2neck:
    """Packed weights of one bottleneck, reusable across calls.

    ``params`` is an r2n.Bottle2neckParams; ``args`` the normalised arguments
    from r2n._checks.bottle2neck_args for the inputs ``__call__`` will get;
    :meth:`run` takes those of another input shape. ``winograd``,
    ``winograd_4x4``: as PreparedChain.
    """

    def __init__(self, params, args, dtype, winograd=True, winograd_4x4="lazy"):
        self.args = args
        self.c1 = params.conv1.weight.shape[0]
        self.conv1 = (
            pack_weights(np.asarray(params.conv1.weight, dtype), 1),
            vector_or(params.conv1.bias, 0, self.c1, dtype),
        )
        self.chain = PreparedChain(
            params.chain_weights,
            params.chain_biases,
            dtype=dtype,
            winograd=winograd,
            winograd_4x4=winograd_4x4,
            **{k: args["chain"][k] for k in ("scale", "stype", "stride", "groups", "width")},
        )
        self.c3 = params.conv3.weight.shape[0]
        self.conv3 = (
            pack_weights(np.asarray(params.conv3.weight, dtype), 1),
            vector_or(params.conv3.bias, 0, self.c3, dtype),
        )
        self.shortcut = None
        if params.shortcut is not None:
            self.shortcut = (
                pack_weights(np.asarray(params.shortcut.weight, dtype), 1),
                vector_or(params.shortcut.bias, 0, self.c3, dtype),
            )

    def __call__(self, x):
        """x (N, C_in, H, W) contiguous -> (N, C_out, H_out, W_out), a new array."""
        return self.run(x, self.args)

    def run(self, x, args, out=None):
        """x (N, C_in, H, W) contiguous, ``args`` = bottle2neck_args for x ->
        ``out`` (N, C_out, H_out, W_out), allocated if None.

        ``out``, if given: C-contiguous, x's dtype, args' output shape, and not
        overlapping x (else ValueError): conv3 writes it while the shortcut
        (x itself, for an identity shortcut) is still being read.
        """
        n, _, h, w = x.shape
        if args["conv1"]["out_shape"] != (n, self.c1, h, w) or not x.flags.c_contiguous:
            raise ValueError(
                f"PreparedBottle2neck.run: x must be C-contiguous and of the shape args were "
                f"made for, (N, C_in, H, W) with N, H, W = "
                f"{tuple(args['conv1']['out_shape'][i] for i in (0, 2, 3))}, got {x.shape}"
            )
        if out is not None and (
            out.shape != tuple(args["out_shape"]) or out.dtype != x.dtype
            or not out.flags.c_contiguous or np.may_share_memory(out, x)
        ):  # fmt: skip
            # Both contiguous (else refused here): may_share_memory is exact.
            raise ValueError(
                f"PreparedBottle2neck.run: out must be a C-contiguous {x.dtype} array of "
                f"shape {tuple(args['out_shape'])} not overlapping x, got {out.dtype} "
                f"{out.shape}"
                + ("" if out.flags.c_contiguous else ", not C-contiguous")
                + (", overlapping x" if np.may_share_memory(out, x) else "")
            )
        # Per-thread buffers (r2n.cpu._scratch), each written in full before it
        # is read: t1 by conv1, t2 by the chain (every channel: its convs and
        # the last chunk), identity by the shortcut conv; conv3 reads them.
        t1 = scratch("block.t1", (n, self.c1, h, w), x.dtype)
        t2 = scratch("block.t2", args["chain"]["out_shape"], x.dtype)
        identity = None
        if self.shortcut is not None:
            identity = scratch("block.identity", args["shortcut"]["conv"]["out_shape"], x.dtype)
        conv_simd(
            x,
            self.conv1[0],
            self.c1,
            1,
            (1, 1),
            (1, 1),
            (0, 0),
            (1, 1),
            self.conv1[1],
            t1,
            activation="relu",
            scratch=scratch,  # an input copy (planes under a tile) from this thread's cache
        )
        self.chain(t1, t2)
        if self.shortcut is None:
            identity = x
        else:
            conv = args["shortcut"]["conv"]
            source = x
            if args["shortcut"]["pool"] is not None:
                pool = args["shortcut"]["pool"]
                source = avg_pool2d(
                    x, **pool, out=scratch("block.pooled", pool["out_shape"], x.dtype)
                )
            conv_simd(
                source,
                self.shortcut[0],
                self.c3,
                1,
                (1, 1),
                conv["stride"],
                (0, 0),
                (1, 1),
                self.shortcut[1],
                identity,
                scratch=scratch,  # the strided shortcut's gathered input: no new array
            )
        if out is None:
            out = np.empty(args["out_shape"], x.dtype)
        conv_simd(
            t2,
            self.conv3[0],
            self.c3,
            1,
            (1, 1),
            (1, 1),
            (0, 0),
            (1, 1),
            self.conv3[1],
            out,
            activation="relu",
            residual=identity,
            scratch=scratch,
        )
        return out


def bottle2neck(x, params, *, conv1, chain, conv3, shortcut, out_shape):
    """The fused bottleneck. x (N, C_in, H, W) -> (N, C_out, H_out, W_out).

    One call: the chain's convs as in res2net_chain (Winograd where
    ``use_winograd`` says so for its input's shape).
    """
    x = np.ascontiguousarray(x)
    args = dict(conv1=conv1, chain=chain, conv3=conv3, shortcut=shortcut, out_shape=out_shape)
    n, _, h, w = x.shape  # the chain's input: conv1 is 1x1, stride 1
    shape = (chain["width"], chain["groups"], n, h, w)
    block = PreparedBottle2neck(
        params, args, x.dtype, winograd=use_winograd(*shape), winograd_4x4=use_winograd_4x4(*shape)
    )
    return block(x)
