"""Review checks of r2n.gpu under the emulator: paths the op tests do not reach.

* Grid-stride loops: launchers cap 1-D grids at ``_runtime.MAX_BLOCKS_1D``
  and every thread loops over the rest. On a GPU the cap is hit only by
  tensors of > 2^28 elements, too big to emulate, so here the cap is
  lowered to one block and each kernel launched that way
  must still cover every element (a kernel that is not grid-stride leaves
  outputs unwritten: NaN from EmuExecutor.empty).
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
from cuda_emu import EmuExecutor
from gpu_cases import normalised
from helpers import assert_close

import r2n.gpu
import r2n.gpu.res2net
from r2n import _checks, reference
from r2n.gpu import _runtime, conv


class GridRecordingExecutor(EmuExecutor):
    """The emulator, remembering the grid of every launch."""

    def __init__(self):
        super().__init__()
        self.grids = []

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        self.grids.append(tuple(grid))
        super().launch(file, name_expr, grid, block, args, shared_mem)


@pytest.fixture
def one_block(monkeypatch):
    """Grid caps of one block: every grid-stride kernel loops over its whole tensor."""
    monkeypatch.setattr(_runtime, "MAX_BLOCKS_1D", 1)
    return GridRecordingExecutor()


def _r(rng, *shape):
    return rng.standard_normal(shape)


def _pos(rng, *shape):
    return rng.uniform(0.5, 2.0, shape)


# Each case has more work items than one 256-thread block.
CASES = {
    "batch_norm-300-channels": (
        "batch_norm",
        lambda rng: (_r(rng, 2, 300), _r(rng, 300), _pos(rng, 300), _r(rng, 300), _r(rng, 300)),
        {},
        None,
    ),
    "fold_batch_norm-300-channels": (
        "fold_batch_norm",
        lambda rng: (
            _r(rng, 300, 2),
            _r(rng, 300),
            _r(rng, 300),
            _pos(rng, 300),
            _r(rng, 300),
            _r(rng, 300),
        ),
        {},
        None,
    ),
    "relu": ("relu", lambda rng: (_r(rng, 1000),), {}, None),
    "max_pool2d": (
        "max_pool2d",
        lambda rng: (_r(rng, 1, 3, 20, 20),),
        dict(kernel_size=3, stride=1, padding=1),
        None,
    ),
    "global_avg_pool2d-warps": (
        "global_avg_pool2d",
        lambda rng: (_r(rng, 1, 20, 3, 3),),
        {},
        "2_warp_reduce",
    ),
    "linear-warp-reduce": (
        "linear",
        lambda rng: (_r(rng, 2, 5), _r(rng, 9, 5), _r(rng, 9)),
        {},
        "3_warp_reduce",
    ),
    "res2net_chain-direct-with-side-job": (
        "res2net_chain",
        lambda rng: (_r(rng, 1, 12, 12, 12), [_r(rng, 3, 3, 3, 3) for _ in range(3)], None),
        dict(scale=4, stype="normal", stride=1),
        "1_naive",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_grid_stride_kernels_cover_everything_from_one_block(one_block, rng, name):
    op, make, kwargs, variant = CASES[name]
    args = make(rng)
    call_args, call_kwargs = normalised(op, args, kwargs)
    extra = {} if variant is None else {"variant": variant}
    out = r2n.gpu.OPS[op](*call_args, **call_kwargs, **extra, executor=one_block)
    ref = reference.OPS[op](*call_args, **call_kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for o, r in zip(outs, refs, strict=True):
        assert_close(o, r, np.float64)
    # the caps were hit: one block per launch (the chain's direct conv: + one side block)
    assert one_block.grids and all(g[0] <= 2 for g in one_block.grids), one_block.grids


# --------------------------------------------------------------------------- #
# Per-axis int32 coordinates: sizes near 2^31 must be refused before a launch
# --------------------------------------------------------------------------- #


class RecordingExecutor:
    """Accepts huge zero-stride views without copying and records launches
    (nothing runs): for the launchers' size checks on tensors too big to emulate."""

    xp = types.SimpleNamespace(ascontiguousarray=lambda a: a)

    def __init__(self):
        self.launches = []
        self.blocks = []  # (file, name expression, block) of every launch

    @staticmethod
    def empty(shape, dtype):
        return np.broadcast_to(np.zeros((), dtype), shape)

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        self.launches.append(name_expr)
        self.blocks.append((file, name_expr, tuple(block)))


def _huge(*shape):
    """A float32 array of ``shape`` that takes no memory (every element is one zero)."""
    return np.broadcast_to(np.zeros((), np.float32), shape)


INT_MAX = 2**31 - 1


@pytest.mark.parametrize(
    "h,fits",
    # kernel 3, padding 1, stride 1: the last window ends at (H - 1) - 1 + 3 = H + 1,
    # which wraps to -2^31 for H = INT_MAX (an empty window: -inf / 0 out)
    [(INT_MAX - 3, True), (INT_MAX, False)],
)
@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pool_window_ends_must_fit_an_int(op, h, fits):
    kw = dict(kernel_size=(3, 1), stride=(1, 1), padding=(1, 0), ceil_mode=True)
    if op == "avg_pool2d":
        kw["count_include_pad"] = True
    x = _huge(1, 1, h, 1)
    ex = RecordingExecutor()
    run = getattr(r2n.gpu.pool, op)
    if fits:
        run(x, **kw, out_shape=(1, 1, h, 1), executor=ex)
        assert len(ex.launches) == 1
    else:
        with pytest.raises(ValueError, match="int"):
            run(x, **kw, out_shape=(1, 1, h, 1), executor=ex)
        assert ex.launches == []


@pytest.mark.parametrize("variant", ["1_naive", "2_smem_tiles", "3_warp_reduce"])
@pytest.mark.parametrize("k,fits", [(INT_MAX - 32, True), (INT_MAX - 5, False)])
def test_linear_k_loops_must_not_step_past_int32(variant, k, fits):
    """linear_2 / linear_3 step k by 16 / 32 in an int: k + 32 must fit."""
    ex = RecordingExecutor()
    x, w = _huge(1, k), _huge(2, k)
    if fits:
        r2n.gpu.layers.linear(x, w, None, variant=variant, executor=ex)
        assert len(ex.launches) == 1
    else:
        with pytest.raises(ValueError, match="int"):
            r2n.gpu.layers.linear(x, w, None, variant=variant, executor=ex)
        assert ex.launches == []


# --------------------------------------------------------------------------- #
# The GEMM kernels' z loop: N * groups > 65535 (grid.z) images-groups
# --------------------------------------------------------------------------- #


@pytest.fixture
def z_of_two(monkeypatch):
    """grid.z capped at 2: each block loops over several (image, group) pairs, and
    the chain's side job spreads over a grid of depth 2 (on a GPU: N * groups > 65535)."""
    limits = _runtime.MAX_GRID_DIM
    monkeypatch.setattr(_runtime, "MAX_GRID_DIM", (limits[0], limits[1], 2))
    return GridRecordingExecutor()


@pytest.mark.parametrize(
    "variant,kernel,stride,padding,groups",
    [
        ("2_smem_tiles", (3, 3), (2, 1), (1, 1), 3),
        ("3_register_tiles", (3, 3), (2, 1), (1, 1), 3),
        ("4_pipelined", (3, 3), (2, 1), (1, 1), 3),
        ("gemm_1x1", (1, 1), (1, 1), (0, 0), 3),
    ],
)
def test_gemm_conv_loops_over_images_and_groups_past_grid_z(
    z_of_two, rng, variant, kernel, stride, padding, groups
):
    x = _r(rng, 3, 3 * groups, 7, 9)
    weight = _r(rng, 4 * groups, 3, *kernel)
    bias = _r(rng, 4 * groups)
    args = _checks.conv2d_args("conv2d", x, weight, bias, stride, padding, 1, groups)
    out = conv.conv2d(x, weight, bias, executor=z_of_two, variant=variant, **args)
    assert_close(out, reference.conv2d(x, weight, bias, **args), np.float64)
    assert [len(g) == 3 and g[2] == 2 for g in z_of_two.grids] == [True]


@pytest.mark.parametrize("variant", ["2_smem_tiles", "3_register_tiles", "4_pipelined"])
@pytest.mark.parametrize("stype,stride", [("stage", 2), ("normal", 1)])
def test_chain_side_job_spreads_over_grid_z(z_of_two, rng, stype, stride, variant):
    """The last chunk, copied or pooled by the first conv's extra blocks, from a
    grid whose z is smaller than N * groups."""
    x = _r(rng, 5, 4 * 6, 7, 9)  # 5 images, scale 4, width 6, 2 groups
    weights = [_r(rng, 6, 3, 3, 3) / 3 for _ in range(3)]
    args = _checks.chain_args("res2net_chain", x, weights, None, 4, stype, stride, 2)
    out = r2n.gpu.res2net.res2net_chain(
        x, weights, None, executor=z_of_two, variant=variant, **args
    )
    assert_close(out, reference.res2net_chain(x, weights, None, **args), np.float64)
    assert all(g[2] == 2 for g in z_of_two.grids), z_of_two.grids


def _c_contiguous_huge(*shape):
    """A C-contiguous-flagged float32 array of ``shape`` over 4 bytes of memory:
    only for launchers that must refuse it before reading (RecordingExecutor)."""
    base = np.zeros(1, np.float32)
    strides = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) * 4 for i in range(len(shape)))
    return np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides, writeable=False)


@pytest.mark.parametrize("h,fits", [(INT_MAX - 2, True), (INT_MAX, False)])
def test_pooled_shortcut_window_ends_must_fit_an_int(h, fits):
    """The "d" shortcut pools on load: window rows iy0 .. iy0 + stride with
    iy0 = (H_out - 1) * stride, which for H = 2^31 - 1, stride 2 is 2^31 - 2."""
    x = _c_contiguous_huge(1, 1, h, 1)
    assert x.flags.c_contiguous
    weight, out = np.ones((1, 1, 1, 1), np.float32), _c_contiguous_huge(1, 1, (h + 1) // 2, 1)
    ex = RecordingExecutor()

    def launch():
        conv.launch_conv(ex, "avg_pool_gemm_1x1", x, weight, None, out, stride=(2, 2),
                         padding=(0, 0), dilation=(1, 1), groups=1)  # fmt: skip

    if fits:
        launch()
        assert len(ex.launches) == 1
    else:
        with pytest.raises(ValueError, match="int"):
            launch()
        assert ex.launches == []


# --------------------------------------------------------------------------- #
# __launch_bounds__ against the blocks the launchers use
# --------------------------------------------------------------------------- #


def _max_threads_of_entries(file):
    """name expression -> the thread limit of its __launch_bounds__ (PTX .maxntid),
    for the kernels of ``file`` that declare one."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC is not installed")
    names = _runtime.names_of(file)
    prog = nvrtc.createProgram(_runtime.kernel_source(file), file, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        nvrtc.compileProgram(prog, [*_runtime.NVRTC_OPTIONS, "-arch=compute_80"])
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        lowered = {nvrtc.getLoweredName(prog, name): name for name in names}
    finally:
        nvrtc.destroyProgram(prog)
    limits = {}
    for entry in re.finditer(r"\.entry\s+(\w+)\(.*?\)\s*((?:\.\w+[^\n]*\n\s*)*)\{", ptx, re.S):
        found = re.search(r"\.maxntid\s+(\d+),\s*(\d+),\s*(\d+)", entry.group(2))
        if found and entry.group(1) in lowered:
            limits[lowered[entry.group(1)]] = int(np.prod([int(v) for v in found.groups()]))
    return limits


def test_conv_launches_fit_their_kernels_launch_bounds(monkeypatch):
    """A block larger than a kernel's __launch_bounds__ fails on a GPU ("too many
    resources requested"); the emulator ignores launch bounds, so compare here."""
    limits = {}
    for file in sorted({file for file, _ in conv.KERNELS.values()}):
        limits.update(_max_threads_of_entries(file))
    assert limits, "no fp32 conv kernel declares __launch_bounds__"
    monkeypatch.setattr(conv, "_LARGE_TILE_MIN_BLOCKS", 0)  # gemm_1x1's large tile too
    ex = RecordingExecutor()
    for dtype in (np.float32, np.float64):
        x = np.zeros((1, 40, 6, 6), dtype)
        for variant, c_out, k, stride in [
            ("1_naive", 8, 3, 1),
            ("2_smem_tiles", 40, 3, 1),
            ("3_register_tiles", 16, 3, 1),  # the 32-row tile
            ("3_register_tiles", 40, 3, 1),  # the 64-row tile
            ("4_pipelined", 16, 3, 1),
            ("4_pipelined", 40, 3, 1),
            ("gemm_1x1", 40, 1, 1),  # float64's large tile (cap lowered above)
            ("avg_pool_gemm_1x1", 40, 1, 2),
        ]:
            pad = k // 2 if variant != "avg_pool_gemm_1x1" else 0
            size = 6 if stride == 1 else 3
            conv.launch_conv(ex, variant, x, np.zeros((c_out, 40, k, k), dtype), None,
                             np.zeros((1, c_out, size, size), dtype), stride=(stride, stride),
                             padding=(pad, pad), dilation=(1, 1), groups=1)  # fmt: skip
        monkeypatch.setattr(conv, "_LARGE_TILE_MIN_BLOCKS", 10**9)  # and the 64 x 64 one
        conv.launch_conv(ex, "gemm_1x1", x, np.zeros((40, 40, 1, 1), dtype), None,
                         np.zeros((1, 40, 6, 6), dtype), stride=(1, 1), padding=(0, 0),
                         dilation=(1, 1), groups=1)  # fmt: skip
        monkeypatch.setattr(conv, "_LARGE_TILE_MIN_BLOCKS", 0)
        if dtype == np.float32:  # float32's large and half tiles (6x6: forced)
            for tile in ("large", "half"):
                conv.launch_conv(ex, "gemm_1x1", x, np.zeros((40, 40, 1, 1), dtype), None,
                                 np.zeros((1, 40, 6, 6), dtype), stride=(1, 1), padding=(0, 0),
                                 dilation=(1, 1), groups=1, tile=tile)  # fmt: skip
    launched = {name for _, name, _ in ex.blocks}
    assert set(limits) <= launched, f"not launched here: {set(limits) - launched}"
    for _, name, block in ex.blocks:
        threads = int(np.prod(block))
        assert threads <= limits.get(name, _runtime.MAX_THREADS_PER_BLOCK), (name, block)


# --------------------------------------------------------------------------- #
# launch_conv's plan cache: a cached plan must not skip a check or go stale
# --------------------------------------------------------------------------- #


class GridRecorder:
    """Records the grid and arguments of each launch (nothing runs)."""

    def __init__(self):
        self.grids, self.args = [], []

    def launch(self, file, name_expr, grid, block, args, shared_mem=0):
        self.grids.append(tuple(grid))
        self.args.append(args)


def _conv_arrays(dtype=np.float32):
    x = np.zeros((1, 8, 9, 7), dtype)
    return x, np.zeros((8, 8, 3, 3), dtype), np.zeros((1, 8, 9, 7), dtype)


def test_cached_plan_still_checks_every_calls_arrays():
    ex = GridRecorder()
    geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x, w, out = _conv_arrays()
    conv.launch_conv(ex, "4_pipelined", x, w, None, out, **geometry)  # plan cached
    with pytest.raises(ValueError, match="C-contiguous float32"):
        conv.launch_conv(ex, "4_pipelined", x, w.astype(np.float64), None, out, **geometry)
    strided = np.zeros((1, 16, 9, 7), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="non-contiguous"):
        conv.launch_conv(ex, "4_pipelined", strided, w, None, out, **geometry)
    # the same shapes with other arrays: the launch passes the new arrays
    x2, w2, out2 = _conv_arrays()
    conv.launch_conv(ex, "4_pipelined", x2, w2, None, out2, **geometry)
    assert ex.args[-1][0] is x2 and ex.args[-1][6] is w2 and ex.args[-1][9] is out2


def _conv_params_of_the_kernels():
    """(type, name) of each parameter of R2N_CONV_PARAMS (kernels/conv_common.cuh)."""
    text = (_runtime.KERNEL_DIR / "conv_common.cuh").read_text()
    macro = re.search(r"#define R2N_CONV_PARAMS((?:[^\n]*\\\n)*[^\n]*)", text).group(1)
    params = [p.strip() for p in macro.replace("\\", " ").split(",")]
    return [tuple(p.replace("*", " * ").split()[-2:]) for p in params]


def test_plan_scalars_are_the_kernels_parameters_by_name_and_type(monkeypatch):
    params = _conv_params_of_the_kernels()
    names = [n for _, n in params]
    scalars = [(t, n) for t, n in params if t != "*"]
    assert [n for t, n in params if t == "*"] == ["x", "add", "weight", "bias", "residual", "out"]
    assert [n for _, n in scalars] == list(conv.ConvScalars._fields)
    # launch_conv unpacks ConvPlan.channels into these names, between the arrays,
    # and appends ConvPlan.sizes after the last array
    channels = conv.ConvScalars._fields[: conv._SIZES_START]
    assert channels == ("x_c_total", "x_c0", "add_c_total", "add_c0", "out_c_total", "out_c0")
    assert names[names.index("out") + 3 :] == list(conv.ConvScalars._fields[conv._SIZES_START :])
    monkeypatch.setattr(conv, "_PLANS", {})
    ex = GridRecorder()
    x, w, out = _conv_arrays(np.float64)
    conv.launch_conv(ex, "4_pipelined", x, w, None, out, stride=(1, 1), padding=(1, 1),
                     dilation=(1, 1), groups=1, negative_slope=0.25)  # fmt: skip
    (plan,) = conv._PLANS.values()
    kernel_args = dict(zip(names, ex.args[-1], strict=True))
    c_types = {"idx_t": np.int64, "int": np.int32, "T": np.float64}
    for c_type, name in scalars:
        value = getattr(plan.scalars, name)
        assert type(value) is c_types[c_type], (name, type(value))
        assert kernel_args[name] is value, name
    assert (plan.scalars.x_c_total, plan.scalars.kh, plan.scalars.negative_slope) == (8, 3, 0.25)
    assert plan.channels + plan.sizes == plan.scalars


def test_plan_follows_the_launch_limits_it_was_computed_with(monkeypatch):
    ex = GridRecorder()
    geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x, w, out = _conv_arrays()
    conv.launch_conv(ex, "1_naive", x, w, None, out, **geometry)
    monkeypatch.setattr(_runtime, "MAX_BLOCKS_1D", 1)
    conv.launch_conv(ex, "1_naive", x, w, None, out, **geometry)
    assert ex.grids[0][0] > 1 and ex.grids[1] == (1,)
