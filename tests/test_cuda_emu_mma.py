"""The emulator's warp-level matrix instructions against the PTX ISA.

The kernels (tests/cuda_emu/selftest_mma.cu) call r2n/gpu/kernels/mma.cuh as
r2n's tensor-core kernels do. The expected results here are written from the
PTX ISA's text, independently of the emulator's C++:

* fragment layouts: "Matrix Fragments for mma.m16n8k8" (.tf32) and "for
  mma.m16n8k16 with floating point type" (.bf16), and ldmatrix's
  distribution of rows and (with .trans) columns;
* rounding: cvt.rna.tf32.f32 (to nearest, ties away from zero, 10 mantissa
  bits) and cvt.rn.bf16x2.f32 (to nearest, ties to even, 7 bits), computed
  here from the value (floor / rint on the scaled magnitude), not from bits,
  on values at and next to ties, subnormals, the overflow edge, inf and NaN;
* mma .tf32 ignores the low 13 bits of an operand register;
* cp.async data lands only when its group is waited for: a pipeline that
  reads before waiting, waits for too few groups, skips the barrier after
  the wait or never waits is caught.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from cuda_emu import EmuError, EmuRaceError, compile_module

from r2n.gpu import _runtime

SELFTEST = pathlib.Path(__file__).parent / "cuda_emu" / "selftest_mma.cu"
NAMES = [
    "mma_from_registers",
    "convert_tf32",
    "convert_bf16x2",
    "ldmatrix_probe",
    "cp_async_pipeline",
    "cp_async_16_copy",
    "cp_async_misaligned",
    "mma_partial_warp",
    "mma_exited_lane",
    "ldmatrix_misaligned",
]


@pytest.fixture(scope="module")
def mod():
    common = _runtime._read(str(_runtime.KERNEL_DIR / "common.cuh"))
    code = common + "\n" + _runtime.expand_includes(SELFTEST.read_text(), SELFTEST.name)
    return compile_module(code, NAMES, label="selftest_mma.cu")


# --------------------------------------------------------------------------- #
# Rounding, from the values
# --------------------------------------------------------------------------- #


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def _floats(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


def _spacing(x: float, mantissa_bits: int) -> float:
    """The distance between neighbours of the format at |x| (float32's exponent
    range: subnormals are evenly spaced below 2^-126)."""
    exponent = max(np.frexp(abs(x))[1] - 1, -126) if x != 0 else -126
    return 2.0 ** (exponent - mantissa_bits)


def tf32_rna(x: float) -> float:
    """x rounded to 10 mantissa bits, to nearest, ties away from zero."""
    if not np.isfinite(x):
        return x
    step = _spacing(x, 10)
    magnitude = np.floor(abs(x) / step + 0.5) * step
    return float(np.copysign(np.inf if magnitude >= 2.0**128 else magnitude, x))


def bf16_rne(x: float) -> float:
    """x rounded to 7 mantissa bits, to nearest, ties to even."""
    if not np.isfinite(x):
        return x
    step = _spacing(x, 7)
    magnitude = np.rint(abs(x) / step) * step  # rint: half to even
    return float(np.copysign(np.inf if magnitude >= 2.0**128 else magnitude, x))


def edge_values(rng, dropped_bits: int) -> np.ndarray:
    """float32 values at ties, one below, one above, for a format keeping
    23 - dropped_bits mantissa bits; both signs, even and odd kept parts,
    subnormals, the largest finite, zeros, infinities, random normals."""
    half = 1 << (dropped_bits - 1)
    kept = rng.integers(0, 1 << 31, 64, dtype=np.uint64).astype(np.uint32)
    kept &= np.uint32(0x7FFFFFFF) ^ np.uint32((1 << dropped_bits) - 1)
    kept = kept[(kept >> 23) != 0xFF]  # finite
    subnormal = kept[:8] & np.uint32(0x007FFFFF & ~((1 << dropped_bits) - 1))
    kept = np.concatenate([kept, subnormal])
    bits = [kept | np.uint32(half + d) for d in (0, -1, 1)]
    bits = np.concatenate(bits)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    special = _bits([0.0, -0.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1e-45, -1e-45])
    normals = _bits(rng.standard_normal(64).astype(np.float32))
    return _floats(np.concatenate([bits, special, normals, _bits([1.0 + 2.0**-11])]))


def test_cvt_rna_tf32_rounds_to_nearest_ties_away(mod, rng):
    x = edge_values(rng, 13)
    out = np.zeros(x.size, np.uint32)
    mod.launch("convert_tf32", (-(-x.size // 64),), (64,), (x, out, np.int32(x.size)))
    assert not (out & 0x1FFF).any(), "the low 13 bits of a tf32 are zero"
    expected = np.array([tf32_rna(float(v)) for v in x])
    np.testing.assert_array_equal(_floats(out).astype(np.float64), expected)
    ties = (_bits(x) & 0x1FFF) == 0x1000
    assert ties.sum() > 100 and (np.abs(_floats(out)[ties]) > np.abs(x[ties])).all()
    assert np.isinf(_floats(out)[x == np.float32(3.4028235e38)]).all()  # rounds up to inf


def test_cvt_rna_tf32_keeps_nan(mod):
    x = _floats([0x7FC00000, 0xFFC00000, 0x7FFFFFFF])
    out = np.zeros(3, np.uint32)
    mod.launch("convert_tf32", (1,), (32,), (x, out, np.int32(3)))
    assert np.isnan(_floats(out)).all()


def test_cvt_rn_bf16x2_rounds_to_nearest_even(mod, rng):
    x = edge_values(rng, 16)
    lo, hi = x, np.roll(x, 7)
    out = np.zeros(x.size, np.uint32)
    mod.launch("convert_bf16x2", (-(-x.size // 64),), (64,), (lo, hi, out, np.int32(x.size)))
    for half, source in ((out & 0xFFFF, lo), (out >> 16, hi)):
        got = _floats(half.astype(np.uint32) << 16).astype(np.float64)
        np.testing.assert_array_equal(got, [bf16_rne(float(v)) for v in source])
    ties = (_bits(lo) & 0xFFFF) == 0x8000
    kept_even = ((_bits(lo) >> 16) & 1) == 0
    assert (ties & kept_even).sum() > 20 and (ties & ~kept_even).sum() > 20
    nan = np.zeros(1, np.uint32)
    mod.launch(
        "convert_bf16x2", (1,), (32,), (_floats([0x7FC00001]), _floats([0xFFC00000]), nan,
                                        np.int32(1)),
    )  # fmt: skip
    assert np.isnan(_floats([(int(nan[0]) & 0xFFFF) << 16, int(nan[0]) & 0xFFFF0000])).all()


# --------------------------------------------------------------------------- #
# mma.sync fragments, written from the PTX ISA's formulas
# --------------------------------------------------------------------------- #


def ptx_fragments(kind: str, lane: int):
    """(A, B, C) element coordinates of a lane's registers, as the PTX ISA lists
    them: for A and B one (row, col) per element ai / bi, for C one per ci."""
    group, tig = lane >> 2, lane % 4
    if kind == "tf32":  # m16n8k8
        a = [
            (group if i in (0, 2) else group + 8, tig if i in (0, 1) else tig + 4)
            for i in range(4)
        ]
        b = [(tig if i == 0 else tig + 4, group) for i in range(2)]
    else:  # m16n8k16 .bf16: two elements per register
        a = [
            (
                group if (0 <= i < 2 or 4 <= i < 6) else group + 8,
                tig * 2 + (i & 1) + (8 if i >= 4 else 0),
            )
            for i in range(8)
        ]
        b = [(tig * 2 + (i & 1) + (8 if i >= 2 else 0), group) for i in range(4)]
    c = [(group if i < 2 else group + 8, tig * 2 + (i & 1)) for i in range(4)]
    return a, b, c


def _bf16_bits(x) -> np.ndarray:
    """float32 values that are exact bfloat16s -> their 16-bit patterns."""
    bits = _bits(x)
    assert not (bits & 0xFFFF).any()
    return bits >> 16


def mma_registers(kind, A, B, C) -> np.ndarray:
    """(32, 10) uint32: each lane's a[4], b[2], c[4] registers holding A, B, C."""
    regs = np.zeros((32, 10), np.uint32)
    for lane in range(32):
        a, b, c = ptx_fragments(kind, lane)
        if kind == "tf32":
            regs[lane, :4] = [_bits(A[r, k]) for r, k in a]
            regs[lane, 4:6] = [_bits(B[k, n]) for k, n in b]
        else:
            halves = [_bf16_bits(A[r, k]) for r, k in a]
            regs[lane, :4] = [halves[2 * i] | halves[2 * i + 1] << 16 for i in range(4)]
            halves = [_bf16_bits(B[k, n]) for k, n in b]
            regs[lane, 4:6] = [halves[0] | halves[1] << 16, halves[2] | halves[3] << 16]
        regs[lane, 6:] = [_bits(C[r, n]) for r, n in c]
    return regs


def gather_d(kind, d) -> np.ndarray:
    """The 16 x 8 D matrix from each lane's d[4] registers, (32, 4)."""
    D = np.full((16, 8), np.nan, np.float32)
    for lane in range(32):
        for (r, n), v in zip(ptx_fragments(kind, lane)[2], d[lane], strict=True):
            D[r, n] = v
    return D


def mma_model(A, B, C) -> np.ndarray:
    """C + A @ B accumulated in k order, each step rounded to float32 (the
    emulator's documented model; the products are exact, so a float64
    multiply-add of float32 values rounded once equals an FMA)."""
    acc = C.astype(np.float32).copy()
    for k in range(A.shape[1]):
        acc = (acc.astype(np.float64) + np.outer(A[:, k], B[k]).astype(np.float64)).astype(
            np.float32
        )
    return acc


def truncate_tf32(x) -> np.ndarray:
    return _floats(_bits(x) & np.uint32(0xFFFFE000))


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_mma_fragments_follow_the_ptx_layout(mod, rng, kind):
    k = 8 if kind == "tf32" else 16
    # Two warps with different data: each warp's mma uses its own lanes only.
    warps = []
    for _ in range(2):
        A = rng.standard_normal((16, k)).astype(np.float32)
        B = rng.standard_normal((k, 8)).astype(np.float32)
        if kind == "bf16":
            A, B = (_floats(_bits(m) & np.uint32(0xFFFF0000)).reshape(m.shape) for m in (A, B))
        C = rng.standard_normal((16, 8)).astype(np.float32)
        warps.append((A, B, C))
    regs = np.concatenate([mma_registers(kind, *w) for w in warps])
    d = np.zeros((64, 4), np.float32)
    mod.launch("mma_from_registers", (1,), (64,), (regs, d, np.int32(kind == "bf16")))
    for w, (A, B, C) in enumerate(warps):
        D = gather_d(kind, d[32 * w : 32 * (w + 1)])
        if kind == "tf32":  # raw float32 operands: the low 13 bits are ignored
            A, B = truncate_tf32(A).reshape(A.shape), truncate_tf32(B).reshape(B.shape)
        np.testing.assert_array_equal(D, mma_model(A, B, C))
        exact = C.astype(np.float64) + A.astype(np.float64) @ B.astype(np.float64)
        np.testing.assert_allclose(D, exact, rtol=0, atol=1e-5 * np.abs(exact).max())


def test_mma_tf32_differs_from_float32_by_the_dropped_bits(mod, rng):
    # An operand with only low bits set beyond the tf32 part contributes the
    # truncated value: 1 + 2^-20 times 1 adds exactly 1.
    A = np.zeros((16, 8), np.float32)
    B = np.zeros((8, 8), np.float32)
    A[:, 0] = np.float32(1 + 2.0**-20)
    B[0, :] = 1
    C = np.zeros((16, 8), np.float32)
    d = np.zeros((32, 4), np.float32)
    regs = mma_registers("tf32", A, B, C)
    mod.launch("mma_from_registers", (1,), (32,), (regs, d, np.int32(0)))
    np.testing.assert_array_equal(gather_d("tf32", d), np.ones((16, 8), np.float32))


# --------------------------------------------------------------------------- #
# ldmatrix
# --------------------------------------------------------------------------- #

LDMATRIX = {0: (1, False), 1: (2, False), 2: (4, False), 3: (2, True), 4: (4, True)}


@pytest.mark.parametrize("variant", list(LDMATRIX), ids=["x1", "x2", "x4", "x2.trans", "x4.trans"])
def test_ldmatrix_distributes_rows_as_documented(mod, rng, variant):
    num, trans = LDMATRIX[variant]
    words = 32 * 4 * 2  # 64 rows of 16 bytes
    init = rng.integers(0, 2**32, words, dtype=np.uint64).astype(np.uint32)
    # Every lane points at its own row, scattered (16-byte aligned); lanes past
    # 8 * num point at rows too, which ldmatrix must ignore.
    row_offset = (rng.permutation(64)[:32] * 16).astype(np.int32)
    out = np.zeros((32, 4), np.uint32)
    args = (init, np.int32(words), row_offset, np.int32(variant), out)
    mod.launch("ldmatrix_probe", (1,), (32,), args, shared_mem=words * 4)
    mem16 = init.view(np.uint16)

    def element(j, row, col):  # 16-bit element (row, col) of matrix j
        return int(mem16[row_offset[8 * j + row] // 2 + col])

    for lane in range(32):
        for j in range(num):
            r, c = lane // 4, 2 * (lane % 4)
            lo, hi = (
                (element(j, c, r), element(j, c + 1, r))
                if trans
                else (element(j, r, c), element(j, r, c + 1))
            )
            assert out[lane, j] == lo | hi << 16, (lane, j)
        assert not out[lane, num:].any()


# --------------------------------------------------------------------------- #
# cp.async
# --------------------------------------------------------------------------- #


def _pipeline(mod, rng, mode, n_tiles=3):
    x = rng.standard_normal(64 * n_tiles).astype(np.float32)
    out = np.full(64 * n_tiles, np.nan, np.float32)
    args = (x, out, np.int32(n_tiles), np.int32(mode))
    mod.launch("cp_async_pipeline", (1,), (64,), args, shared_mem=2 * 64 * 4)
    return x, out


def test_cp_async_double_buffer_is_correct(mod, rng):
    x, out = _pipeline(mod, rng, 0)
    np.testing.assert_array_equal(out, 2 * x.reshape(-1, 64)[:, ::-1].ravel())


def test_cp_async_zero_fill(mod, rng):
    x, out = _pipeline(mod, rng, 5)
    expected = 2 * x.reshape(-1, 64)
    expected[:, 1::2] = 0  # thread i copied x[i]; the odd ones were zero-filled
    np.testing.assert_array_equal(out, expected[:, ::-1].ravel())


@pytest.mark.parametrize(
    "mode", [1, 2, 3], ids=["read-before-wait", "wait-too-few-groups", "no-barrier-after-wait"]
)
def test_cp_async_missing_wait_is_caught(mod, rng, mode):
    with pytest.raises(EmuRaceError, match="forward and the reverse"):
        _pipeline(mod, rng, mode)


def test_cp_async_never_waited_is_an_error(mod, rng):
    with pytest.raises(EmuError, match="never waited for"):
        _pipeline(mod, rng, 4)


def test_cp_async_16_bytes_and_alignment(mod, rng):
    x = rng.standard_normal(64).astype(np.float32)
    out = np.full(64, np.nan, np.float32)
    mod.launch("cp_async_16_copy", (1,), (16,), (x, out), shared_mem=64 * 4)
    expected = x.reshape(16, 4).copy()
    expected[1::2] = 0
    np.testing.assert_array_equal(out.reshape(16, 4), expected[::-1])
    with pytest.raises(EmuError, match="not aligned to the copy size"):
        mod.launch("cp_async_misaligned", (1,), (32,), (x, out[:32].copy()), shared_mem=64 * 4)


# --------------------------------------------------------------------------- #
# .aligned: the whole warp, and aligned rows
# --------------------------------------------------------------------------- #


def test_mma_needs_a_whole_warp(mod):
    with pytest.raises(EmuError, match="has 8 threads; the instruction needs all 32 lanes"):
        mod.launch("mma_partial_warp", (1,), (40,), (np.zeros(40, np.float32),))


def test_mma_with_an_exited_lane_is_an_error(mod):
    with pytest.raises(EmuError, match=r"a lane that exited \(3\)"):
        mod.launch("mma_exited_lane", (1,), (32,), (np.zeros(32, np.float32),))


def test_ldmatrix_row_addresses_must_be_16_byte_aligned(mod):
    with pytest.raises(EmuError, match="not 16-byte aligned"):
        mod.launch("ldmatrix_misaligned", (1,), (32,), (np.zeros(32, np.uint32),),
                   shared_mem=64 * 4)  # fmt: skip


# --------------------------------------------------------------------------- #
# The same text assembles for the GPU
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("arch", ["80", "90"])
def test_selftest_kernels_compile_under_nvrtc(arch):
    # The emulator never sees mma.cuh's inline PTX; NVRTC and ptxas check it.
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="NVRTC is not installed")
    common = _runtime._read(str(_runtime.KERNEL_DIR / "common.cuh"))
    code = common + "\n" + _runtime.expand_includes(SELFTEST.read_text(), SELFTEST.name)
    prog = nvrtc.createProgram(code, SELFTEST.name, [], [])
    try:
        for name in NAMES:
            nvrtc.addNameExpression(prog, name)
        options = [*_runtime.NVRTC_OPTIONS, "-ftz=true", f"-arch=sm_{arch}"]
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            pytest.fail(f"{e}\n{nvrtc.getProgramLog(prog)}")
        assert len(nvrtc.getCUBIN(prog)) > 0
    finally:
        nvrtc.destroyProgram(prog)
