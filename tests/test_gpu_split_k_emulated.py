"""Split-K, the 1x1 convs on tensor cores, the one-launch "stage" chain and the
K-concatenated conv3 + shortcut, under the CPU emulator (tests/cuda_emu).

The kernels of r2n/gpu/kernels/conv_gemm.cu and conv_gemm_tensor_core.cu
run as r2n/gpu/conv.py launches them, every launch twice (ascending and
descending thread order) with canaries around every array: odd shapes,
forced splits (the emulator has no SM count, so the launcher's rule never
splits here unless told), float32 / float64 against the float64 reference
with the tolerances of tests/helpers.py, tf32 / bf16 with those of
r2n.gpu.conv_tensor_core. The GPU timings of these changes are owed
(benchmarks/gpu_bench.py, benchmarks/results/NOTES-gpu.md).
"""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import chain_inputs, conv_inputs
from helpers import assert_close, rel_err
from test_gpu_tensor_core_emulated import _block, bottleneck_layers

import r2n
from r2n import _checks
from r2n import reference as ref
from r2n.gpu import conv as gconv
from r2n.gpu import conv_tensor_core as tc
from r2n.gpu import res2net as gres

DTYPE_IDS = ["f64", "f32"]
ONE = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1))


@pytest.fixture(scope="module")
def ex():
    return EmuExecutor()


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _launch(ex, variant, x, weight, bias, args, precision="fp32", **kwargs):
    out = ex.empty(args["out_shape"], x.dtype)
    geometry = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    gconv.launch_conv(ex, variant, x, weight, bias, out, precision=precision, **geometry, **kwargs)
    return out


def _launch_split(ex, variant, x, weight, bias, args, precision="fp32", **kwargs):
    """``_launch``'s output, and the scratch arrays (partials, tile counts) that
    split launch used on ``ex``: launch_conv(plan_only=True) with the very same
    arguments returns that launch's plan (one key), and split_k_scratch hands
    out its arrays again. (Matching a few fields of the plans' keys instead
    once picked another conv's plan: same shapes, other padding.)"""
    out = ex.empty(args["out_shape"], x.dtype)
    geometry = {k: args[k] for k in ("stride", "padding", "dilation", "groups")}
    call = dict(precision=precision, **geometry, **kwargs)
    plan = gconv.launch_conv(ex, variant, x, weight, bias, out, plan_only=True, **call)
    assert plan.split is not None, "the launch did not split"
    gconv.launch_conv(ex, variant, x, weight, bias, out, **call)
    return out, gconv.split_k_scratch(ex, plan.split)


def _check(out, expected, precision, dtype):
    if precision == "fp32":
        assert_close(out, expected)
        assert out.dtype == dtype
    else:
        assert rel_err(out, expected) <= tc.tolerance(precision)


# n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups
SPLIT_CASES = [
    # K = 20 * 9 = 180: 12 slices of 16 (fp32), 6 of 32 (tensor cores);
    # 70 channels: two channel tiles; 13 x 11: three pixel tiles
    (1, 20, 13, 11, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 15, 7, 9, 15, (3, 3), (2, 2), (1, 1), (1, 1), 3),  # 3 groups of 5, stride 2
    (1, 40, 13, 11, 70, (1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1: the plane GEMM
    (2, 99, 7, 9, 12, (1, 1), (1, 1), (0, 0), (1, 1), 3),  # grouped 1x1, K = 33
]


def _variant(case, precision):
    kernel, stride, padding = case[5], case[6], case[7]
    if gconv.is_gemm_1x1(kernel, stride, padding):
        return gconv.GEMM_1X1
    return "4_pipelined" if precision == "fp32" else "5_tensor_core"


@pytest.mark.parametrize(
    "precision, dtype",
    [("fp32", np.float64), ("fp32", np.float32), ("tf32", np.float32), ("bf16", np.float32)],
    ids=["f64", "f32", "tf32", "bf16"],
)
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: f"{c[1]}-{c[4]}-k{c[5][0]}-g{c[9]}")
def test_split_k_matches_reference_and_is_deterministic(ex, rng, case, precision, dtype):
    x, weight, bias, args = conv_inputs(rng, case, dtype)
    residual = rng.standard_normal(args["out_shape"]).astype(dtype)
    expected = np.maximum(ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args) + residual, 0)
    variant = _variant(case, precision)
    epilogue = dict(residual=residual, activation="relu")
    unsplit = _launch(ex, variant, x, weight, bias, args, precision, **epilogue)
    _check(unsplit, expected, precision, dtype)
    for k_splits in (2, 3, 16):
        ex.launches.clear()
        out, (partial, counts) = _launch_split(
            ex, variant, x, weight, bias, args, precision, k_splits=k_splits, **epilogue
        )
        tc_file = precision != "fp32"
        # one launch: each tile's last split adds the partials (no second kernel)
        assert [f for f, _ in ex.launches] == [gconv.TC_GEMM_FILE if tc_file else gconv.GEMM_FILE]
        _check(out, expected, precision, dtype)
        assert not counts.any()  # every tile's count is back to 0 for the next call
        _assert_ordered_sum(out, partial, bias, residual)
        again = _launch(
            ex, variant, x, weight, bias, args, precision, k_splits=k_splits, **epilogue
        )
        np.testing.assert_array_equal(out, again)  # a fixed summation order


def _assert_ordered_sum(out, partial, bias, residual):
    """``out`` is bit for bit relu(((p_0 + p_1) + ... + p_{S-1}) + bias + residual),
    summed in split order in the partials' dtype (what the two-launch path
    computed before, and what the one-launch path must keep)."""
    acc = partial[0].copy()
    for s in range(1, partial.shape[0]):
        acc += partial[s]
    acc = acc.reshape(out.shape)
    if bias is not None:
        acc += bias.astype(acc.dtype)[None, :, None, None]
    acc += residual.astype(acc.dtype)
    np.testing.assert_array_equal(out, np.maximum(acc, 0).astype(out.dtype))


def test_launch_split_returns_the_scratch_of_the_conv_it_launched(ex, rng):
    """Two split convs alike in variant, dtype, x and weight shapes, precision
    and k_splits, but not in padding (so not in output size): each gets the
    scratch arrays of its own plan."""
    n, c_in, h, w, c_out, kernel, stride, _, dilation, groups = SPLIT_CASES[0]
    for padding in ((0, 0), (1, 1), (0, 0)):
        case = (n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups)
        x, weight, bias, args = conv_inputs(rng, case, np.float32)
        residual = rng.standard_normal(args["out_shape"]).astype(np.float32)
        out, (partial, _) = _launch_split(ex, "4_pipelined", x, weight, bias, args, k_splits=3,
                                          residual=residual, activation="relu")  # fmt: skip
        assert partial.shape == (3, *out.shape[:2], out.shape[2] * out.shape[3])
        _assert_ordered_sum(out, partial, bias, residual)


def test_split_k_reads_and_writes_channel_slices(ex, rng):
    """A split chain-like conv: input x slice + addend slice, output slice only."""
    x = rng.standard_normal((2, 30, 7, 9)).astype(np.float32)
    weight = rng.standard_normal((10, 10, 3, 3)).astype(np.float32)
    out = rng.standard_normal((2, 30, 7, 9)).astype(np.float32)
    before = out.copy()
    geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    gconv.launch_conv(ex, "4_pipelined", x, weight, None, out, x_c0=10, add=before,
                      add_c0=20, out_c0=0, activation="relu", k_splits=4,
                      side_mode=gconv.SIDE_COPY, side_c0=20, side_c=10, **geometry)  # fmt: skip
    summed = _f64(x[:, 10:20]) + _f64(before[:, 20:30])
    expected = np.maximum(ref.conv2d(summed, _f64(weight), None, out_shape=(2, 10, 7, 9),
                                     **geometry), 0)  # fmt: skip
    assert_close(out[:, :10], expected)
    np.testing.assert_array_equal(out[:, 10:20], before[:, 10:20])  # untouched
    np.testing.assert_array_equal(out[:, 20:], x[:, 20:])  # the side job's copy


def test_changing_shapes_in_one_process(ex, rng):
    """Plans of several shapes and splits interleaved: each call is its own."""
    for _ in range(2):
        for case, k_splits in ((SPLIT_CASES[0], 3), (SPLIT_CASES[2], None), (SPLIT_CASES[1], 2)):
            x, weight, bias, args = conv_inputs(rng, case, np.float32)
            out = _launch(ex, _variant(case, "fp32"), x, weight, bias, args, k_splits=k_splits)
            assert_close(out, ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_split_k_when_blocks_loop_over_images_and_groups(ex, rng, monkeypatch, precision):
    """A grid of z = 2 for 2 images x 3 groups: each block loops over three
    (image, group) pairs, and every pair's tiles have counts of their own."""
    monkeypatch.setattr(gconv._runtime, "MAX_GRID_DIM", (2**31 - 1, 65535, 2))
    case = (2, 24, 7, 9, 48, (3, 3), (1, 1), (1, 1), (1, 1), 3)  # 3 groups of 16
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    residual = rng.standard_normal(args["out_shape"]).astype(np.float32)
    expected = np.maximum(ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args) + residual, 0)
    variant = _variant(case, precision)
    for k_splits in (2, 4, 2):
        out, (partial, counts) = _launch_split(ex, variant, x, weight, bias, args, precision,
                                               k_splits=k_splits, residual=residual,
                                               activation="relu")  # fmt: skip
        _check(out, expected, precision, np.float32)
        assert counts.size == 2 * 3 and not counts.any()  # one tile per (image, group)
        _assert_ordered_sum(out, partial, bias, residual)


def test_repeated_split_calls_and_changing_shapes_reuse_only_fitting_scratch(ex, rng):
    """Calls of several shapes and split counts, interleaved and repeated: each
    result matches the reference (so every call found its counts at zero), a
    shape keeps its scratch arrays across calls, and other sizes get arrays of
    their own (equal sizes, e.g. a 1x1 and a 3x3 conv of one output shape and
    split count, may share: one stream runs them one after another)."""
    seen = {}
    for _ in range(2):
        for case, k_splits in ((SPLIT_CASES[0], 3), (SPLIT_CASES[1], 2), (SPLIT_CASES[0], 5),
                               (SPLIT_CASES[3], 2), (SPLIT_CASES[2], 4)):  # fmt: skip
            x, weight, bias, args = conv_inputs(rng, case, np.float32)
            variant = _variant(case, "fp32")
            out, (partial, counts) = _launch_split(
                ex, variant, x, weight, bias, args, k_splits=k_splits
            )
            assert_close(out, ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args))
            assert partial.shape[1:] == (x.shape[0], weight.shape[0], np.prod(out.shape[2:]))
            assert not counts.any()
            # arrays are shared exactly by the calls whose sizes are equal
            sizes = (partial.shape, counts.shape)
            assert seen.setdefault(sizes, (id(partial), id(counts))) == (id(partial), id(counts))
    assert len(set(seen.values())) == len(seen) >= 4


class _Stream:
    """A stand-in for a cupy.cuda.Stream (weakly referable, a handle ``ptr``)."""

    def __init__(self, ptr):
        self.ptr = ptr


class StreamEmuExecutor(EmuExecutor):
    """The emulator with a current stream per thread, as CuPy has."""

    def __init__(self):
        super().__init__(check_order=False)
        self.current = threading.local()

    def stream(self):
        return getattr(self.current, "stream", None) or NULL_STREAM


NULL_STREAM = _Stream(0)


def test_split_scratch_belongs_to_the_stream(rng):
    """Two streams get separate arrays (their launches may overlap), one stream
    shares them (its launches run in order), the per-thread default stream's
    are per thread, and a stream's arrays go with it."""
    ex = StreamEmuExecutor()
    split = gconv.SplitK((2, 1, 8, 63), np.dtype(np.float32), 3)
    on_null = gconv.split_k_scratch(ex, split)
    assert on_null[0].shape == (2, 1, 8, 63) and on_null[1].shape == (3,)
    assert on_null[1].dtype == np.int32 and not on_null[1].any()
    assert all(a is b for a, b in zip(gconv.split_k_scratch(ex, split), on_null, strict=True))
    ex.current.stream = other = _Stream(77)
    on_other = gconv.split_k_scratch(ex, split)
    assert on_other[0] is not on_null[0] and on_other[1] is not on_null[1]
    bigger = gconv.split_k_scratch(ex, split._replace(partial_shape=(3, 1, 8, 63), n_counts=4))
    assert bigger[0].shape == (3, 1, 8, 63) and bigger[1].shape == (4,)
    freed = weakref.ref(on_other[0])
    del other, on_other, bigger
    ex.current.stream = None
    gc.collect()
    assert freed() is None  # the stream is gone, and its arrays with it
    # cudaStreamPerThread: one handle, one stream per thread, so arrays per thread
    per_thread = _Stream(gconv._PER_THREAD_STREAM)
    ex.current.stream = per_thread
    mine = gconv.split_k_scratch(ex, split)
    theirs = []

    def other_thread():
        ex.current.stream = per_thread
        theirs.append(gconv.split_k_scratch(ex, split))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert theirs[0][0] is not mine[0]
    assert gconv.split_k_scratch(ex, split)[0] is mine[0]


class _CapturingStream(_Stream):
    capturing = True

    def is_capturing(self):
        return self.capturing


def test_clear_scratch_drops_split_arrays_but_pinned_and_capturing_ones(rng):
    """r2n.clear_scratch() forgets every stream's split-K arrays (the next call
    gets new, zeroed ones) except a pinned stream's (a captured graph holds
    their addresses) and a stream's that is capturing now."""
    ex = StreamEmuExecutor()
    split = gconv.SplitK((2, 1, 8, 63), np.dtype(np.float32), 3)
    on_null = gconv.split_k_scratch(ex, split)
    ex.current.stream = pinned = _Stream(91)
    gconv.pin_split_k_scratch(pinned)
    on_pinned = gconv.split_k_scratch(ex, split)
    ex.current.stream = capturing = _CapturingStream(92)
    on_capturing = gconv.split_k_scratch(ex, split)
    freed = weakref.ref(on_null[0])
    del on_null
    r2n.clear_scratch()
    gc.collect()
    assert freed() is None, "the null stream's partials are still held"
    assert gconv.split_k_scratch(ex, split)[0] is on_capturing[0]
    ex.current.stream = pinned
    assert gconv.split_k_scratch(ex, split)[0] is on_pinned[0]
    ex.current.stream = None
    again = gconv.split_k_scratch(ex, split)
    assert again[1].shape == (3,) and not again[1].any()
    capturing.capturing = False  # the capture ended: now its arrays may go too
    assert gconv.clear_split_k_scratch() >= 2  # the null stream's and the ended capture's
    ex.current.stream = capturing
    assert gconv.split_k_scratch(ex, split)[0] is not on_capturing[0]
    ex.current.stream = pinned
    assert gconv.split_k_scratch(ex, split)[0] is on_pinned[0]


class _NoWeakRefs:
    """An executor-like object that cannot be weakly referenced (no __weakref__)."""

    __slots__ = ()


class _Unhashable:
    """An object that can be weakly referenced but not hashed (``__eq__`` without
    ``__hash__``), so it cannot be a weak key either."""

    __hash__ = None


def test_scratch_owners_that_cannot_be_held_weakly_are_clear_errors():
    """Scratch owners are held weakly (their arrays go with them): an int, a
    tuple or a slotted object is a TypeError naming the function, what it
    expected and what came, not WeakSet's bare "cannot create weak reference";
    a weakly referable but unhashable owner is told that it is unhashable (not
    that it cannot be weakly referenced, which it can)."""
    expected = r"pin_split_k_scratch: owner must be a hashable stream object that supports "
    expected += r"weak references \(a cupy.cuda.Stream\), got "
    no_ref = ", which cannot be weakly referenced$"
    for bad, name in ((7, "int"), ((1, 2), "tuple"), (_NoWeakRefs(), "_NoWeakRefs")):
        with pytest.raises(TypeError, match=expected + name + no_ref):
            gconv.pin_split_k_scratch(bad)
    with pytest.raises(TypeError, match=expected + "_Unhashable, which is unhashable$"):
        gconv.pin_split_k_scratch(_Unhashable())
    unhashable = "_Unhashable, which is unhashable$"
    ex = StreamEmuExecutor()
    split = gconv.SplitK((2, 1, 8, 63), np.dtype(np.float32), 3)
    owner = r"split_k_scratch: the scratch owner .* must be a hashable object .* got "
    for stream, came in ((5, "int" + no_ref), (_Unhashable(), unhashable)):
        ex.current.stream = stream  # a raw handle or an odd object where a stream belongs
        with pytest.raises(TypeError, match=owner + came):
            gconv.split_k_scratch(ex, split)
    executor = r"launch_conv: ex must be a hashable executor object .* got "
    for bad, came in ((_NoWeakRefs(), "_NoWeakRefs" + no_ref), (_Unhashable(), unhashable)):
        with pytest.raises(TypeError, match=executor + came):
            gconv._no_counts(bad)
    assert gconv.pin_split_k_scratch(_Stream(93)) is None  # a stream object is fine


def _prepared_normal_block(rng):
    """(block, params, c_in, (scale, stype, stride, groups)): BLOCK_CASES[3],
    a "normal" bottleneck, prepared in float32 on an emulator of its own."""
    case = BLOCK_CASES[3]
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case).map(lambda a: a.astype(np.float32))
    ex = EmuExecutor(check_order=False)
    block = gres.PreparedBottle2neck(params, scale=scale, stype=stype, stride=stride,
                                     groups=groups, executor=ex)  # fmt: skip
    return block, params, c_in, (scale, stype, stride, groups)


def test_a_split_block_is_right_after_clear_scratch(rng):
    """Calls after r2n.clear_scratch() allocate the split arrays again and
    still compute the block (counts start at zero again)."""
    block, params, c_in, (scale, stype, stride, groups) = _prepared_normal_block(rng)
    x = rng.standard_normal((1, c_in, 7, 9)).astype(np.float32)
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
    for _ in range(2):
        assert_close(block.run(x, args, k_splits=3), expected)
        r2n.clear_scratch()


def test_split_prepared_block_from_four_threads(rng):
    """A prepared "normal" bottleneck run with split-K by four threads at once
    on one stream (the emulator: one launch at a time, in call order, as on
    one CUDA stream), each with inputs of its own shape: every result right."""
    block, params, c_in, (scale, stype, stride, groups) = _prepared_normal_block(rng)
    shapes = [(1, c_in, 7, 9), (2, c_in, 5, 4), (1, c_in, 9, 7), (1, c_in, 3, 11)]
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    errors = []
    barrier = threading.Barrier(len(shapes))

    def work(i):
        try:
            x = inputs[i]
            args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
            expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
            barrier.wait(timeout=60)
            for k_splits in (2, 3, 2):
                assert_close(block.run(x, args, k_splits=k_splits), expected)
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(shapes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_split_rule_is_deterministic_from_shape_and_sm_count(rng):
    assert gconv.split_k_for(8, 936, 132) == 14  # 3x3 104 -> 104 at 14x14, batch 1
    assert gconv.split_k_for(4, 1872, 132) == 16  # 3x3 208 -> 208 at 7x7
    assert gconv.split_k_for(28, 1024, 132) == 9  # conv1 1024 -> 416 at 14x14
    assert gconv.split_k_for(128, 1872, 132) == 2  # batch 32 at 7x7
    assert gconv.split_k_for(400, 576, 132) == 1  # a full wave: never split
    assert gconv.split_k_for(8, 100, 132) == 1  # too few K rows
    assert gconv.split_k_for(49, 234, 132) == 3  # 3x3 26 -> 26 at 56x56 (H200: best)
    assert gconv.split_k_for(13, 468, 132) == 7  # 3x3 52 -> 52 at 28x28 (H200: best)
    assert gconv.split_k_for(196, 104, 132) == 1  # conv3 104 -> 256 at 56x56: K < 128
    assert gconv.split_k_for(2, 576, 132) == 9
    assert gconv.split_k_for(8, 936, None) == 1  # no SM count (the emulator)
    # the executor's SM count drives the launcher: a 132-SM "GPU" splits this
    # 70-channel, K = 576 conv (2 blocks), and the plan is keyed on the count
    case = (1, 64, 7, 9, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    for sm_count, file in ((None, "conv_4_pipelined.cu"), (132, gconv.GEMM_FILE), (None, None)):
        emu = EmuExecutor(check_order=False)
        emu.sm_count = sm_count
        assert_close(_launch(emu, "4_pipelined", x, weight, bias, args), expected)
        assert [f for f, _ in emu.launches] == [file or "conv_4_pipelined.cu"]  # split: one launch


def test_split_rule_constants_are_part_of_the_plan(rng, monkeypatch):
    """Benchmarks change the rule's constants (gpu_bench's "nosplit" rows):
    the next launch follows them, and the old plan is not reused."""
    case = (1, 64, 7, 9, 70, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    emu = EmuExecutor(check_order=False)
    emu.sm_count = 132
    _launch(emu, "4_pipelined", x, weight, bias, args)
    monkeypatch.setattr(gconv, "SPLIT_K_MIN_K", 10**9)
    out = _launch(emu, "4_pipelined", x, weight, bias, args)
    # split (the split-K GEMM), then unsplit (the ladder's step)
    assert [f for f, _ in emu.launches] == [gconv.GEMM_FILE, "conv_4_pipelined.cu"]
    assert_close(out, ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args))


def test_one_by_one_convs_run_on_tensor_cores(ex, rng):
    case = SPLIT_CASES[2]
    x, weight, bias, args = conv_inputs(rng, case, np.float32)
    expected = ref.conv2d(_f64(x), _f64(weight), _f64(bias), **args)
    # a grid of one block: on a 132-SM "GPU" the 64 x 64 plane GEMM (which can
    # split); with no SM count (or a full wave) the multistage GEMM
    few_sms = EmuExecutor(check_order=False)
    few_sms.sm_count = 132
    for precision in tc.PRECISIONS:
        few_sms.launches.clear()
        out = gconv.conv2d(x, weight, bias, executor=few_sms, precision=precision, **args)
        assert few_sms.launches == [
            (gconv.TC_GEMM_FILE, gconv._tc_gemm_name(precision, tc.TILE_WIDE, gconv.LOAD_PLANE))
        ]
        _check(out, expected, precision, np.float32)
        ex.launches.clear()
        out = gconv.conv2d(x, weight, bias, executor=ex, precision=precision, **args)
        tile = tc.gemm_1x1_tile(70, 13 * 11, 40)
        assert ex.launches == [(tc.GEMM_1X1_FILE, tc.gemm_1x1_name(precision, tile))]
        _check(out, expected, precision, np.float32)
        assert gconv.computes_in(gconv.GEMM_1X1, precision, 70) == precision
    assert gconv.computes_in(gconv.GEMM_1X1, "tf32", 4) == "fp32"  # too few rows for a tile


def test_bad_splits_and_shortcuts_are_clear_errors(ex, rng):
    x, weight, bias, args = conv_inputs(rng, SPLIT_CASES[0], np.float32)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k_splits must be None or an int"):
            _launch(ex, "4_pipelined", x, weight, bias, args, k_splits=bad)
    with pytest.raises(ValueError, match="does not split K"):
        _launch(ex, "1_naive", x, weight, bias, args, k_splits=2)
    t2 = rng.standard_normal((1, 12, 4, 5)).astype(np.float32)
    sc_x = rng.standard_normal((1, 6, 7, 9)).astype(np.float32)
    w = rng.standard_normal((8, 18, 1, 1)).astype(np.float32)
    out = np.empty((1, 8, 4, 5), np.float32)
    with pytest.raises(ValueError, match="the shortcut makes"):  # 7x9 at stride 1 is 7x9
        gconv.launch_conv(
            ex, "gemm_1x1", t2, w, None, out, groups=1, shortcut=(sc_x, (1, 1), False), **ONE
        )
    with pytest.raises(ValueError, match="a shortcut joins variant gemm_1x1"):
        gconv.launch_conv(
            ex, "4_pipelined", t2, w, None, out, groups=1, shortcut=(sc_x, (2, 2), False), **ONE
        )
    with pytest.raises(ValueError, match="fewer channels than the weight"):
        gconv.launch_conv(
            ex,
            "gemm_1x1",
            t2,
            np.ascontiguousarray(w[:, :6]),
            None,
            out,
            groups=1,
            shortcut=(sc_x, (2, 2), False),
            **ONE,
        )
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gconv.launch_conv(
            ex,
            "gemm_1x1",
            t2,
            w,
            None,
            out,
            groups=1,
            shortcut=(sc_x[:, ::2], (2, 2), False),
            **ONE,
        )


# --------------------------------------------------------------------------- #
# The chain and the bottleneck: fewer launches
# --------------------------------------------------------------------------- #

# stype, stride, scale, groups, width, batch, H, W
STAGE_CASES = [
    ("stage", 2, 4, 1, 9, 2, 7, 9),
    ("stage", 1, 3, 3, 15, 1, 9, 7),  # 3 groups of 5: 6 groups in the one launch
]


@pytest.mark.parametrize(
    "precision, dtype",
    [("fp32", np.float64), ("fp32", np.float32), ("tf32", np.float32)],
    ids=["f64", "f32", "tf32"],
)
@pytest.mark.parametrize("case", STAGE_CASES, ids=lambda c: f"s{c[1]}-scale{c[2]}-g{c[3]}")
def test_stage_chain_is_one_launch(ex, rng, case, precision, dtype):
    x, weights, biases, args = chain_inputs(rng, case, dtype)
    expected = ref.res2net_chain(
        _f64(x), [_f64(w) for w in weights], [_f64(b) for b in biases], **args
    )
    for k_splits in (None, 2):
        chain = gres.PreparedChain(
            weights,
            biases,
            dtype=dtype,
            executor=ex,
            precision=precision,
            **{k: args[k] for k in ("scale", "stype", "stride", "groups", "width")},
        )
        assert chain.launches() == 1
        ex.launches.clear()
        out = chain(x, k_splits=k_splits)
        assert len(ex.launches) == 1  # split or not: the reduction is in the launch
        _check(out, expected, precision, dtype)


BLOCK_CASES = [
    (20, 40, 10, 2, "stage", 1, 1, "conv"),
    (20, 40, 9, 4, "stage", 2, 1, "conv"),
    (20, 40, 9, 4, "stage", 2, 3, "pool"),  # the "d" shortcut, pooled on load
    (36, 36, 9, 4, "normal", 1, 1, "identity"),
]


@pytest.mark.parametrize(
    "precision, dtype",
    [("fp32", np.float64), ("fp32", np.float32), ("tf32", np.float32), ("bf16", np.float32)],
    ids=["f64", "f32", "tf32", "bf16"],
)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "-".join(map(str, c)))
def test_bottle2neck_launches_and_matches_reference(ex, rng, case, precision, dtype):
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case).map(lambda a: a.astype(dtype))
    x = rng.standard_normal((1, c_in, 7, 9)).astype(dtype)
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    expected = ref.bottle2neck(_f64(x), params.map(_f64), **args)
    block = gres.PreparedBottle2neck(
        params, scale=scale, stype=stype, stride=stride, groups=groups, executor=ex,
        precision=precision,
    )  # fmt: skip
    # conv1, the chain (one launch for "stage" blocks), conv3 + shortcut as one GEMM
    assert block.launches() == (3 if stype == "stage" else 2 + scale - 1)
    for k_splits in (None, 2):
        ex.launches.clear()
        out = block.run(x, args, k_splits=k_splits)
        assert len(ex.launches) == block.launches()  # split-K adds no launch
        if precision == "fp32":
            assert_close(out, expected)
        else:
            files = {f for f, n in ex.launches}
            if groups == 1:  # chain convs of 3 channels per group: step 1_naive
                # all on tensor cores
                assert files <= {tc.FILE, gconv.TC_GEMM_FILE, tc.GEMM_1X1_FILE}
            assert rel_err(out, expected) <= tc.tolerance(
                precision, bottleneck_layers(scale, stype)
            )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_shortcut_gemm_on_the_large_tile(ex, rng, monkeypatch, dtype):
    """conv3 + shortcut on the 128-wide tile (float64's rule picks it for large
    grids: forced here by letting any grid take it; float32's rule no longer
    picks it since the H200 timed it slower, so the rule is wrapped to)."""
    monkeypatch.setattr(gconv, "_LARGE_TILE_MIN_BLOCKS", 1)
    rule = gconv.fp32_tile_rule

    def large_for_shortcuts(kind, *args):
        if kind == gconv.KIND_PLANE_SHORTCUT and args[6] is None:  # not forced
            return "large", 1
        return rule(kind, *args)

    monkeypatch.setattr(gconv, "fp32_tile_rule", large_for_shortcuts)
    case = BLOCK_CASES[2]  # the pooled "d" shortcut
    c_in, c_out, width, scale, stype, stride, groups, kind = case
    params = _block(rng, case).map(lambda a: a.astype(dtype))
    x = rng.standard_normal((2, c_in, 9, 7)).astype(dtype)
    args = _checks.bottle2neck_args("bottle2neck", x, params, scale, stype, stride, groups)
    ex.launches.clear()
    out = gres.bottle2neck(x, params, executor=ex, **args)
    large = ", ".join(map(str, gconv._TILE_LARGE[gconv._runtime.dtype_name(dtype)]))
    assert ex.launches[-1][1].startswith(
        f"conv2d_pipelined_gemm<{gconv._runtime.dtype_name(dtype)}, {large}, 3>"
    )
    assert_close(out, ref.bottle2neck(_f64(x), params.map(_f64), **args))
