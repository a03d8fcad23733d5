"""The CUDA emulator's own tests: correct kernels pass, planted bugs are caught.

The kernels are in tests/cuda_emu/selftest_kernels.cu, compiled after
common.cuh exactly as r2n's sources are.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from cuda_emu import EmuError, EmuOutOfBoundsError, EmuRaceError, compile_module
from helpers import randn

from r2n.gpu import _runtime

SELFTEST = pathlib.Path(__file__).parent / "cuda_emu" / "selftest_kernels.cu"
NAMES = [
    *(f"{k}<{t}>" for k in ("block_sum", "planted_missing_sync") for t in ("float", "double")),
    "planted_missing_first_sync<float>",
    "planted_oob_write<float>",
    "planted_oob_before<double>",
    "planted_oob_read<float>",
    "planted_oob_read<double>",
    "planted_write_race<float>",
    "planted_uninit_dyn<float>",
    "planted_shared_overflow<float>",
    "planted_divergent_sync<float>",
    "planted_assert<float>",
    "warp_shuffles<float>",
    "warp_shuffles<double>",
    "warp_votes",
    "warp_sum_partial<float>",
    "dynamic_reverse<double>",
    "grid_coordinates",
    "atomic_count",
    "scalar_args<float, int>",
    "scalar_args<double, long long>",
    "planted_deadlock",
    "alias_visible<float>",
    "planted_overlap_race<double>",
    "barrier_votes",
]


@pytest.fixture(scope="module")
def mod():
    code = _runtime._read(str(_runtime.KERNEL_DIR / "common.cuh")) + "\n" + SELFTEST.read_text()
    return compile_module(code, NAMES, label="selftest_kernels.cu")


def block_sums(x, threads):
    """Per-block sums of x padded with zeros to whole blocks (the correct answer)."""
    blocks = -(-x.size // threads)
    padded = np.zeros(blocks * threads, np.float64)
    padded[: x.size] = x
    return padded.reshape(blocks, threads).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_correct_shared_memory_reduction_passes(mod, rng, dtype):
    n = 1000  # four blocks of 256, the last one partial
    x = randn(rng, n, dtype=dtype)
    partial = np.full(4, np.nan, dtype)
    name = f"block_sum<{'float' if dtype == np.float32 else 'double'}>"
    mod.launch(name, (4,), (256,), (x, partial, np.int64(n)))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(partial, block_sums(x, 256), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "name",
    [
        "planted_missing_sync<float>",
        "planted_missing_sync<double>",
        "planted_missing_first_sync<float>",
    ],
)
def test_missing_syncthreads_is_reported_as_a_race(mod, rng, name):
    n = 1000
    dtype = np.float64 if "double" in name else np.float32
    x = randn(rng, n, dtype=dtype)
    partial = np.zeros(4, dtype)
    with pytest.raises(EmuRaceError, match="forward and the reverse"):
        mod.launch(name, (4,), (256,), (x, partial, np.int64(n)))
    assert not partial.any(), "a failed launch must leave the arrays untouched"


def test_missing_syncthreads_is_caught_on_every_repeat(mod, rng):
    # Deterministic: no timing involved, the same verdict every time.
    x = randn(rng, 300, dtype=np.float32)
    for _ in range(3):
        with pytest.raises(EmuRaceError):
            mod.launch(
                "planted_missing_sync<float>",
                (2,),
                (256,),
                (x, np.zeros(2, np.float32), np.int64(300)),
            )


def test_without_order_check_a_race_goes_unnoticed(mod, rng):
    # What the second run buys: one run alone cannot see the race.
    x = randn(rng, 300, dtype=np.float32)
    partial = np.zeros(2, np.float32)
    mod.launch(
        "planted_missing_sync<float>", (2,), (256,), (x, partial, np.int64(300)), check_order=False
    )
    assert not np.allclose(partial, block_sums(x, 256), rtol=1e-5)


def test_two_threads_writing_one_element_is_a_race(mod):
    out = np.zeros(3, np.float32)
    with pytest.raises(EmuRaceError, match="argument 0"):
        mod.launch("planted_write_race<float>", (3,), (64,), (out,))


def test_reading_unwritten_dynamic_shared_memory_is_caught(mod):
    out = np.zeros(32, np.float32)
    with pytest.raises(EmuRaceError):
        mod.launch("planted_uninit_dyn<float>", (1,), (32,), (out,), shared_mem=32 * 4)


def test_indexing_past_the_dynamic_shared_memory_is_caught(mod):
    out = np.zeros(32, np.float32)
    mod.launch("planted_shared_overflow<float>", (2,), (32,), (out,), shared_mem=32 * 4)
    np.testing.assert_array_equal(out, np.arange(32)[::-1])
    with pytest.raises(EmuError, match="past the end of dynamic shared memory"):
        mod.launch("planted_shared_overflow<float>", (2,), (32,), (out,), shared_mem=31 * 4)


def test_out_of_bounds_write_after_the_end_is_caught(mod):
    n = 37
    out = np.zeros(n, np.float32)
    with pytest.raises(
        EmuOutOfBoundsError,
        match=r"write to argument 0 after the array: at element 37 \(size 37\)",
    ):
        mod.launch("planted_oob_write<float>", (2,), (32,), (out, np.int64(n)))


def test_out_of_bounds_write_before_the_start_is_caught(mod):
    out = np.zeros(10, np.float64)
    with pytest.raises(EmuOutOfBoundsError, match="1 element\\(s\\) before"):
        mod.launch("planted_oob_before<double>", (1,), (32,), (out, np.int64(10)))


def oob_read(mod, x, shift, strict):
    """Launch planted_oob_read on x (64 threads); returns the output."""
    ctype = "float" if x.dtype == np.float32 else "double"
    out = np.zeros(64, x.dtype)
    args = (x, out, np.int32(x.size), np.int32(shift), np.int32(strict))
    mod.launch(f"planted_oob_read<{ctype}>", (1,), (64,), args)
    return out


def oob_read_expected(x, shift):
    """planted_oob_read's correct output: x[t + shift] where in range, else -1."""
    j = np.arange(64) + shift
    return np.where((j >= 0) & (j < x.size), x[np.clip(j, 0, x.size - 1)], -1).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [40, 64 - 1, 1024])  # 1024 float64: 8 KiB, whole pages
def test_discarded_read_one_past_the_end_is_caught(mod, rng, dtype, n):
    # Thread 40 (= n - shift) reads x[n] and throws it away: the output is
    # right, so only the guard page after the array can tell.
    x = randn(rng, n, dtype=dtype)
    x.flags.writeable = False
    shift = n - 40
    pattern = rf"forward run\): out-of-bounds read of argument 0 after the array: at element {n} "
    with pytest.raises(
        EmuOutOfBoundsError, match=pattern + rf"\(size {n}\); block \(0,0,0\), thread \(40,0,0\)"
    ):
        oob_read(mod, x, shift, strict=0)
    np.testing.assert_array_equal(oob_read(mod, x, shift, strict=1), oob_read_expected(x, shift))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_discarded_read_one_before_the_start_is_caught(mod, rng, dtype):
    # Thread 0 reads x[-1] (and nobody x[70]): the reverse run puts a guard
    # page right before x; the forward run reads a canary and discards it.
    x = randn(rng, 70, dtype=dtype)
    with pytest.raises(
        EmuOutOfBoundsError,
        match=r"reverse run\): out-of-bounds read of argument 0 before the array: "
        r"1 element\(s\) before \(size 70\); block \(0,0,0\), thread \(0,0,0\)",
    ):
        oob_read(mod, x, -1, strict=0)
    np.testing.assert_array_equal(oob_read(mod, x, -1, strict=1), oob_read_expected(x, -1))


def test_memory_faults_are_caught_on_every_repeat(mod, rng):
    # The handler hands the thread back to the scheduler and unblocks SIGSEGV:
    # the next fault is caught again (a blocked SIGSEGV would kill the process),
    # and correct launches in between still work.
    x = randn(rng, 40, dtype=np.float32)
    x_long = randn(rng, 70, dtype=np.float32)
    for _ in range(3):
        with pytest.raises(EmuOutOfBoundsError, match="read of argument 0 after"):
            oob_read(mod, x, 0, strict=0)
        with pytest.raises(EmuOutOfBoundsError, match="read of argument 0 before"):
            oob_read(mod, x_long, -1, strict=0)
        np.testing.assert_array_equal(oob_read(mod, x, 0, strict=1), oob_read_expected(x, 0))


def test_in_bounds_twin_of_the_oob_kernel_passes(mod):
    # planted_oob_write only overflows when a thread reaches index n.
    out = np.zeros(64, np.float32)
    mod.launch("planted_oob_write<float>", (2,), (32,), (out, np.int64(63)))
    assert (out[:64] == 1).all()


def test_divergent_syncthreads_is_an_error(mod):
    with pytest.raises(EmuError, match="__syncthreads divergence"):
        mod.launch("planted_divergent_sync<float>", (1,), (64,), (np.zeros(64, np.float32),))


def test_assert_in_a_kernel_is_an_error_not_a_crash(mod):
    out = np.zeros(64, np.float32)
    with pytest.raises(EmuError, match="assert failed"):
        mod.launch("planted_assert<float>", (1,), (64,), (out, np.int32(40)))
    mod.launch("planted_assert<float>", (1,), (64,), (out, np.int32(64)))


def cuda_shuffle(x, op, arg, width):
    """What CUDA's __shfl_*_sync return for each lane of full warps (PTX semantics)."""
    out = np.empty_like(x)
    for t in range(x.size):
        lane, base = t % 32, t - t % 32
        seg_start = lane & ~(width - 1)
        seg_end = seg_start + width - 1
        if op == "idx":
            j = seg_start + (arg & (width - 1))
        elif op == "up":
            j = lane - arg if lane - arg >= seg_start else lane
        elif op == "down":
            j = lane + arg if lane + arg <= seg_end else lane
        else:
            j = lane ^ arg if (lane ^ arg) <= seg_end else lane
        out[t] = x[base + j]
    return out


@pytest.mark.parametrize("ctype,dtype", [("float", np.float32), ("double", np.float64)])
@pytest.mark.parametrize(
    "src_lane,delta,lane_mask,width",
    [(5, 1, 16, 32), (37, 3, 1, 32), (2, 2, 5, 8), (-1, 7, 31, 16), (0, 1, 2, 4)],
)
def test_warp_shuffles_match_cuda(mod, rng, ctype, dtype, src_lane, delta, lane_mask, width):
    x = randn(rng, 64, dtype=dtype)
    outs = [np.zeros(64, dtype) for _ in range(4)]
    args = (x, *outs, np.int32(src_lane), np.int32(delta), np.int32(lane_mask), np.int32(width))
    mod.launch(f"warp_shuffles<{ctype}>", (1,), (64,), args)
    for out, op, arg in zip(
        outs, ("idx", "up", "down", "xor"), (src_lane, delta, delta, lane_mask), strict=True
    ):
        np.testing.assert_array_equal(out, cuda_shuffle(x, op, arg, width), err_msg=op)


def test_warp_votes_match_cuda(mod, rng):
    pred = (rng.random(96) < 0.5).astype(np.int32)
    pred[64:] = 1  # third warp: all true
    ballot = np.zeros(96, np.uint32)
    any_ = np.zeros(96, np.int32)
    all_ = np.zeros(96, np.int32)
    mod.launch("warp_votes", (1,), (96,), (pred, ballot, any_, all_))
    for w in range(3):
        bits = sum(int(p) << lane for lane, p in enumerate(pred[32 * w : 32 * w + 32]))
        assert (ballot[32 * w : 32 * w + 32] == bits).all()
        assert (any_[32 * w : 32 * w + 32] == (bits != 0)).all()
        assert (all_[32 * w : 32 * w + 32] == (bits == 0xFFFFFFFF)).all()


def test_warp_sum_over_a_partial_warp_reads_poison(mod, rng):
    x = randn(rng, 40, dtype=np.float32)
    out = np.zeros(2, np.float32)
    mod.launch("warp_sum_partial<float>", (1,), (40,), (x, out))
    assert out[0] == pytest.approx(x[:32].sum(dtype=np.float64), rel=1e-5)
    assert np.isnan(out[1]), "lanes absent from a partial warp must not read as zeros"


@pytest.mark.parametrize("threads", [32, 96, 256, 1024])
def test_dynamic_shared_memory(mod, rng, threads):
    n = 3 * threads - 5
    x = randn(rng, n)
    out = np.zeros(n)
    mod.launch(
        "dynamic_reverse<double>", (3,), (threads,), (x, out, np.int64(n)), shared_mem=threads * 8
    )
    padded = np.full(3 * threads, -1.0)
    padded[:n] = x
    np.testing.assert_array_equal(out, padded.reshape(3, threads)[:, ::-1].reshape(-1)[:n])


@pytest.mark.parametrize(
    "grid,block", [((2, 3, 2), (4, 3, 2)), ((5,), (7, 2)), ((1, 2), (1, 1, 3))]
)
def test_multidimensional_grids_and_blocks(mod, grid, block):
    g = tuple(grid) + (1,) * (3 - len(grid))
    b = tuple(block) + (1,) * (3 - len(block))
    total = int(np.prod(g) * np.prod(b))
    coords = np.full(6 * total, -1, np.int32)
    dims = np.zeros(6, np.int32)
    mod.launch("grid_coordinates", grid, block, (coords, dims))
    assert tuple(dims) == b + g
    expected = [
        (tx, ty, tz, bx, by, bz)
        for bz in range(g[2])
        for by in range(g[1])
        for bx in range(g[0])
        for tz in range(b[2])
        for ty in range(b[1])
        for tx in range(b[0])
    ]
    np.testing.assert_array_equal(coords.reshape(total, 6), np.array(expected, np.int32))


def test_atomic_add_counts_every_thread(mod):
    counter = np.zeros(1, np.int32)
    mod.launch("atomic_count", (3, 2), (128,), (counter,))
    assert counter[0] == 3 * 2 * 128


def test_scalars_pass_by_value_with_their_exact_types(mod):
    out = np.zeros(1, np.float32)
    mod.launch(
        "scalar_args<float, int>",
        (1,),
        (1,),
        (out, np.int32(3), np.float32(1.5), np.float32(0.25)),
    )
    assert out[0] == 4.75
    out64 = np.zeros(1)
    big = 2**40
    mod.launch(
        "scalar_args<double, long long>",
        (1,),
        (1,),
        (out64, np.int64(big), np.float64(2), np.float64(1)),
    )
    assert out64[0] == 2.0 * big + 1


@pytest.mark.parametrize(
    "args,error",
    [
        ((3, np.float32(1), np.float32(0)), TypeError),  # a Python int
        ((np.int64(3), np.float32(1), np.float32(0)), TypeError),  # int64 for an int parameter
        ((np.int32(3), np.float64(1), np.float32(0)), TypeError),  # double for a float
        ((np.int32(3), np.float32(1)), TypeError),  # too few
    ],
)
def test_wrong_argument_types_are_refused_before_running(mod, args, error):
    out = np.zeros(1, np.float32)
    with pytest.raises(error):
        mod.launch("scalar_args<float, int>", (1,), (1,), (out, *args))
    assert out[0] == 0


def test_array_of_the_wrong_dtype_is_refused(mod):
    with pytest.raises(TypeError, match="float32 array, the kernel wants a pointer to f8"):
        mod.launch(
            "dynamic_reverse<double>",
            (1,),
            (32,),
            (np.zeros(4), np.zeros(4, np.float32), np.int64(4)),
        )


@pytest.mark.parametrize(
    "grid,block,shared",
    [
        ((0,), (32,), 0),
        ((1,), (1025,), 0),
        ((1,), (32, 32, 2), 0),
        ((1, 70000), (32,), 0),
        ((1,), (32,), 200 * 1024),
    ],
)
def test_launch_configurations_outside_cuda_limits_are_refused(mod, grid, block, shared):
    with pytest.raises(ValueError):
        mod.launch("atomic_count", grid, block, (np.zeros(1, np.int32),), shared_mem=shared)


def test_non_contiguous_array_is_refused(mod):
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.launch("atomic_count", (1,), (1,), (np.zeros((4, 4), np.int32)[:, :1],))


def test_kernel_writing_a_read_only_array_is_an_error(mod):
    counter = np.zeros(1, np.int32)
    counter.flags.writeable = False
    with pytest.raises(EmuError, match="read-only"):
        mod.launch("atomic_count", (1,), (4,), (counter,))


def test_deadlock_is_an_error_not_a_hang(mod):
    with pytest.raises(EmuError, match="deadlock"):
        mod.launch("planted_deadlock", (1,), (64,), (np.zeros(64, np.float32),))


def test_executor_allocates_nan_filled_outputs():
    from cuda_emu import EmuExecutor

    out = EmuExecutor().empty((3, 4), np.float32)
    assert np.isnan(out).all(), "an output element no thread writes must not look valid"


def test_one_array_passed_twice_is_one_buffer(mod):
    buf = np.zeros(40, np.float32)
    mod.launch("alias_visible<float>", (1,), (64,), (buf, buf, np.int32(40)))
    t = np.arange(40)
    np.testing.assert_array_equal(buf, 10 * t + np.where(t + 1 < 40, 10 * (t + 1), 0))


def test_overlapping_views_share_memory_and_canaries(mod):
    base = np.zeros(41, np.float32)
    a, b = base[:40], base[1:]  # b[t + 1] is a[t + 2]
    mod.launch("alias_visible<float>", (1,), (64,), (a, b, np.int32(39)))
    t = np.arange(39)
    expected = 10 * t + np.where(t + 1 < 39, 10 * (t + 2), 0)  # b[t+1] = a[t+2]
    expected[37] = 10 * 37 + 0  # b[38] = base[39]: never written, still 0
    np.testing.assert_array_equal(base[:39], expected)


def test_copy_between_overlapping_views_is_a_race(mod):
    buf = np.arange(33, dtype=np.float64)
    with pytest.raises(EmuRaceError):
        mod.launch("planted_overlap_race<double>", (1,), (32,), (buf[1:], buf[:-1], np.int32(32)))


@pytest.mark.parametrize("k,expected", [(3, (34, 1, 0)), (1, (100, 1, 1)), (1000, (1, 1, 0))])
def test_barrier_votes_match_cuda(mod, k, expected):
    counts = np.zeros(3, np.int32)
    mod.launch("barrier_votes", (1,), (100,), (counts, np.int32(k)))
    assert tuple(counts) == expected


def test_selftest_kernels_are_valid_cuda_for_nvrtc():
    # The emulator must be tested on CUDA C++, not on a g++-only dialect.
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    code = _runtime._read(str(_runtime.KERNEL_DIR / "common.cuh")) + "\n" + SELFTEST.read_text()
    prog = nvrtc.createProgram(code, "selftest_kernels.cu", [], [])
    try:
        for name in NAMES:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, [*_runtime.NVRTC_OPTIONS, "-arch=sm_80"])
        except nvrtc.NVRTCError as e:
            pytest.fail(f"{e}\n{nvrtc.getProgramLog(prog)}")
    finally:
        nvrtc.destroyProgram(prog)
