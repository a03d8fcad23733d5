// conv2d (NCHW cross-correlation, PyTorch's conv2d) and the fused Res2Net chain.
//
// Every kernel computes, for image n, group g, output channel co and pixel p:
//
//     v = bias[co] + sum_k W[co, k] * X[n, g, k, p]           (K = C_in_g * kH * kW)
//     v = act(v + residual[n, co, p])                          (each step optional)
//     out[n, out_c0 + co, p] = v
//
// where the input X is read from a channel slice of a larger buffer
// (x_c0 .. x_c0 + C_in of x_c_total channels) and, optionally, summed on load
// with a channel slice of a second buffer of the same H x W (``add``): that
// is how the Res2Net chain feeds conv i with x_i + y_{i-1} without a pass of
// its own, and why every output goes straight into its channel slice of the
// concatenated chain output (no split, no cat). The chain's last chunk
// (copied, or 3x3 average-pooled for "stage" blocks) is written by extra
// blocks of the first conv's launch ("side job", see chain_side_job).
//
// Variants (numbered as in siboehm/SGEMM_CUDA; r2n/gpu/conv.py VARIANTS):
//
//   1_direct         one thread per output element, a grid-stride loop over
//                    N*C_out*H_out*W_out (64-bit). Every multiply-add loads
//                    its input and weight from global memory (cached in L1
//                    at best): ~2 loads per FMA. Any stride / padding /
//                    dilation / groups. The readable baseline.
//   2_implicit_gemm  per (image, group), the conv is a GEMM
//                    (C_out_g x K) * (K x H_out*W_out) whose right matrix
//                    (im2col) is never materialised: each block stages a
//                    BK-deep slice of weights and of on-the-fly im2col
//                    columns in shared memory (loads guarded at every tile
//                    edge and at the image border = zero padding), and each
//                    thread accumulates a TM x TN register tile, so one
//                    shared-memory load feeds TM (or TN) FMAs instead of
//                    two global loads feeding one. A thread's im2col pixel
//                    is decoded once per tile (NT % BN == 0), and the
//                    (channel, tap) of each of the BK rows once per slice by
//                    BK threads into shared memory, so the loads themselves
//                    do no integer division (runtime kH, kW: the compiler
//                    cannot strength-reduce k / (kH*kW); decoded per load,
//                    it cost about as many instructions as the FMAs).
//                    Threads own strided rows/columns of the tile, so
//                    shared reads are conflict-free and output stores are
//                    coalesced along the pixel axis. The next K slice is
//                    fetched into registers while the current one is
//                    multiplied (a software pipeline: global-load latency
//                    overlaps the FMAs), and launch bounds hold the 4 x 4
//                    tiles to <= 128 registers so >= 16 warps fit per SM.
//                    Tile shapes are template parameters (a 32-row tile for
//                    narrow layers such as Res2Net's 26-channel chain convs).
//   3_gemm_1x1       1x1, stride 1, padding 0 convs: the input plane is
//                    already the GEMM's right matrix (C_in_g x H*W, pixels
//                    contiguous), so loads need no im2col arithmetic at all,
//                    and the register tile grows to 8 x 8 for float (64 FMAs
//                    per 16 shared loads instead of 16 per 8; 8 x 4 for
//                    double, to stay under 255 registers without spills) in
//                    128 x 128 (128 x 64) block tiles when the problem has
//                    enough tiles to fill the GPU, else the 4 x 4 tile.
//   (avgpool_gemm_1x1, not a conv2d variant: the "d" bottleneck shortcut,
//    a ceil-mode average pool folded into variant 3's loads.)
//   4_tensor_core    in conv_tensor_core.cu: variant 2 on warp-level mma.sync
//                    with TF32 or bf16 operands (precision="tf32" / "bf16").
//
// None of these choices has been timed yet: no GPU was available when they
// were written (each is verified for correctness under tests/cuda_emu and
// for zero register spills with NVRTC/ptxas for sm_80 and sm_90).
//
// Offsets into tensors (image, channel and plane products) are idx_t
// (64-bit); only per-axis coordinates are int. The launcher checks that every
// size it passes as int (and H + 2 * padding, H + stride) fits in int32 before launching.
//
// The epilogue flags, act and side_mode codes, the shared device helpers and
// the parameter list R2N_CONV_PARAMS are in conv_common.cuh.
#include "conv_common.cuh"

// ------------------------------------------------------------------------- //
// Variant 1: direct, one thread per output element
// ------------------------------------------------------------------------- //

template <typename T>
__global__ void conv2d_1_direct(R2N_CONV_PARAMS) {
    const idx_t conv_blocks = (idx_t)gridDim.x - side_blocks;
    if ((idx_t)blockIdx.x >= conv_blocks) {
        chain_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh, side_mode,
                       side_src_c0, side_dst_c0, side_c, (idx_t)blockIdx.x - conv_blocks,
                       (idx_t)side_blocks);
        return;
    }
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const idx_t total = (idx_t)n_img * c_out * plane_out;
    for (idx_t e = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += conv_blocks * blockDim.x) {
        const idx_t p = e % plane_out;
        const idx_t nc = e / plane_out;
        const int co = (int)(nc % c_out);
        const idx_t n = nc / c_out;
        const int oy = (int)(p / w_out), ox = (int)(p % w_out);
        const int g = co / c_out_g;
        const T* wrow = weight + (idx_t)co * c_in_g * kh * kw;
        T acc = T(0);
        for (int c = 0; c < c_in_g; ++c) {
            const idx_t ci = (idx_t)g * c_in_g + c;
            const idx_t x_plane0 = (n * x_c_total + x_c0 + ci) * plane_in;
            const idx_t add_plane0 = (n * add_c_total + add_c0 + ci) * plane_in;
            for (int i = 0; i < kh; ++i) {
                const int iy = oy * sh - ph + i * dh;
                for (int j = 0; j < kw; ++j) {
                    const int ix = ox * sw - pw + j * dw;
                    acc += wrow[((idx_t)c * kh + i) * kw + j] *
                           conv_load_input(x, x_plane0, add, add_plane0, iy, ix, h, w, flags);
                }
            }
        }
        const idx_t out_idx = (n * out_c_total + out_c0 + co) * plane_out + p;
        conv_store(acc, out, bias, residual, out_idx, co, flags, act, slope);
    }
}

// ------------------------------------------------------------------------- //
// Variants 2 and 3: tiled GEMM, BM x BN block tile, TM x TN thread tile
// ------------------------------------------------------------------------- //
//
// Grid: x = pixel tiles (+ side_blocks extra blocks), y = channel tiles of one
// group, z = images * groups (a grid-stride loop, so N * groups may exceed
// 65535). Block: (BN / TN) * (BM / TM) threads.
//
// LOAD selects the right matrix: LOAD_IM2COL reads im2col columns of any
// conv (variant 2), LOAD_PLANE the plain (C_in_g x H*W) plane of a
// 1x1/stride-1/pad-0 conv (variant 3), LOAD_AVG_POOL the plane average-pooled
// on load (kernel = stride = (sh, sw), padding 0, ceil_mode, a window's
// divisor = its elements inside the image, i.e. count_include_pad=False):
// the "d" bottleneck shortcut, pool + 1x1 conv in one pass, no pooled tensor.
#define R2N_LOAD_IM2COL 0
#define R2N_LOAD_PLANE 1
#define R2N_LOAD_AVG_POOL 2

template <typename T, int BM, int BN, int BK, int TM, int TN, int LOAD>
__device__ inline void conv2d_gemm_body(R2N_CONV_PARAMS) {
    constexpr int NT = (BM / TM) * (BN / TN);  // threads per block
    static_assert(NT % BN == 0, "each thread must load one fixed pixel column");
    static_assert(NT % BK == 0, "each thread must load one fixed k of the weights");
    static_assert(NT >= BK, "BK threads decode the im2col rows");
    static_assert((BK * BN) % NT == 0 && (BK * BM) % NT == 0, "loads must split evenly");
    // Transposed tiles: As[k][m] and Bs[k][p], so the compute loop reads
    // contiguous rows of both. Dynamic shared memory of BK * (BM + 1) +
    // BK * BN elements and 2 * 3 * BK ints (the launcher passes the size).
    R2N_DYNAMIC_SHARED(T, smem);
    // As rows are padded by one element: the weight loads store a warp's
    // values down a column of As (k fastest), which without the pad would
    // hit one bank up to BK times.
    constexpr int AS_ROW = BM + 1;
    T(*As)[AS_ROW] = reinterpret_cast<T(*)[AS_ROW]>(smem);
    T(*Bs)[BN] = reinterpret_cast<T(*)[BN]>(smem + BK * AS_ROW);
    // im2col only: the input channel and tap offsets (dy, dx) of the BK rows
    // of a K slice, decoded once per slice by BK threads so that the loads
    // need no integer division; two copies (3 * BK ints each, after the
    // tiles), because slice s + 1 is decoded while slice s is in use.
    int* k_tab = reinterpret_cast<int*>(smem + BK * AS_ROW + BK * BN);

    if (gemm_grid_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh,
                           side_mode, side_src_c0, side_dst_c0, side_c, side_blocks))
        return;
    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const int khw = kh * kw;
    const int K = c_in_g * khw;
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const int m0 = blockIdx.y * BM;
    const idx_t p0 = (idx_t)blockIdx.x * BN;

    // This thread's fixed load coordinates: one pixel column of Bs, one k of As.
    const int b_col = tid % BN, b_row0 = tid / BN;
    const int a_k = tid % BK, a_row0 = tid / BK;
    const idx_t b_p = p0 + b_col;
    const bool b_p_ok = b_p < plane_out;
    const int b_oy = b_p_ok ? (int)(b_p / w_out) : 0;
    const int b_ox = b_p_ok ? (int)(b_p % w_out) : 0;
    const int iy0 = b_oy * sh - ph, ix0 = b_ox * sw - pw;

    const idx_t groups_total = (idx_t)n_img * groups;
    for (idx_t ng = blockIdx.z; ng < groups_total; ng += gridDim.z) {
        const idx_t n = ng / groups;
        const int g = (int)(ng % groups);
        const idx_t x_base = (n * x_c_total + x_c0 + (idx_t)g * c_in_g) * plane_in;
        const idx_t add_base = (n * add_c_total + add_c0 + (idx_t)g * c_in_g) * plane_in;
        const T* wg = weight + (idx_t)g * c_out_g * K;

        T acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = T(0);

        // Software pipeline: slice s + 1 is fetched from global memory into
        // registers while slice s is multiplied out of shared memory, so the
        // loads' latency overlaps the FMAs (two barriers per slice).
        constexpr int A_LOADS = (BK * BM) / NT, B_LOADS = (BK * BN) / NT;
        T a_next[A_LOADS], b_next[B_LOADS];

        // Decode rows k0 .. k0 + BK - 1 into tab (rows k >= K are never loaded).
        auto decode_rows = [&](int k0, int* tab) {
            if (LOAD == R2N_LOAD_IM2COL && tid < BK) {
                const int k = k0 + tid;
                const int c = k / khw, t = k - c * khw, i = t / kw;
                tab[tid] = c;
                tab[BK + tid] = i * dh;
                tab[2 * BK + tid] = (t - i * kw) * dw;
            }
        };
        // This thread's share of slice k0 into a_next / b_next, zero outside.
        auto fetch_slice = [&](int k0, const int* tab) {
            // Weights: row m of the group's (C_out_g x K) matrix is contiguous.
            const int ak = k0 + a_k;
#pragma unroll
            for (int r = 0; r < A_LOADS; ++r) {
                const int gm = m0 + a_row0 + r * (NT / BK);
                a_next[r] = (gm < c_out_g && ak < K) ? wg[(idx_t)gm * K + ak] : T(0);
            }
            // Input: row kr of the slice is input channel c, tap (i, j), at pixel b_p.
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r) {
                const int kr = b_row0 + r * (NT / BN);
                const int k = k0 + kr;
                T v = T(0);
                if (b_p_ok && k < K) {
                    if (LOAD == R2N_LOAD_IM2COL) {
                        const int c = tab[kr], iy = iy0 + tab[BK + kr], ix = ix0 + tab[2 * BK + kr];
                        v = conv_load_input(x, x_base + (idx_t)c * plane_in, add,
                                            add_base + (idx_t)c * plane_in, iy, ix, h, w, flags);
                    } else if (LOAD == R2N_LOAD_AVG_POOL) {
                        // Window rows iy0 .. iy0 + sh - 1 clipped to the image
                        // (ceil mode: the last window may stick out).
                        const int y1 = iy0 + sh < h ? iy0 + sh : h;
                        const int x1 = ix0 + sw < w ? ix0 + sw : w;
                        const T* plane = x + x_base + (idx_t)k * plane_in;
                        for (int iy = iy0; iy < y1; ++iy)
                            for (int ix = ix0; ix < x1; ++ix) v += plane[(idx_t)iy * w + ix];
                        v /= T((y1 - iy0) * (x1 - ix0));
                    } else {
                        const idx_t off = (idx_t)k * plane_in + b_p;
                        v = x[x_base + off];
                        if (flags & R2N_CONV_ADD) v += add[add_base + off];
                    }
                }
                b_next[r] = v;
            }
        };

        const int n_slices = (K + BK - 1) / BK;
        decode_rows(0, k_tab);
        __syncthreads();
        fetch_slice(0, k_tab);
        for (int s = 0; s < n_slices; ++s) {
            // Every thread is past the previous slice's FMAs (the barrier at
            // the end of the loop), so the tiles can be overwritten; the
            // table copy decoded here was last read two slices ago.
            int* next_tab = k_tab + ((s + 1) & 1) * 3 * BK;
#pragma unroll
            for (int r = 0; r < A_LOADS; ++r) As[a_k][a_row0 + r * (NT / BK)] = a_next[r];
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r) Bs[b_row0 + r * (NT / BN)][b_col] = b_next[r];
            const bool more = s + 1 < n_slices;
            if (more) decode_rows((s + 1) * BK, next_tab);
            __syncthreads();
            if (more) fetch_slice((s + 1) * BK, next_tab);
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                T a[TM], b[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = As[kk][ty + i * (BM / TM)];
#pragma unroll
                for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx + j * (BN / TN)];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
            }
            __syncthreads();
        }

#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int gm = m0 + ty + i * (BM / TM);
            if (gm >= c_out_g) continue;
            const int co = g * c_out_g + gm;
            const idx_t row = (n * out_c_total + out_c0 + co) * plane_out;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const idx_t p = p0 + tx + j * (BN / TN);
                if (p < plane_out) conv_store(acc[i][j], out, bias, residual, row + p, co, flags,
                                              act, slope);
            }
        }
    }
}

// Threads per block of a tile, and the blocks per SM the register budget must
// allow: the 4 x 4 tiles keep <= 128 registers per thread (at least 16 warps
// per SM to hide latency); the 8 x 8 / 8 x 4 tiles need up to 255.
#define R2N_GEMM_THREADS ((BM / TM) * (BN / TN))
#define R2N_GEMM_MIN_BLOCKS (TM * TN <= 16 ? 512 / R2N_GEMM_THREADS : 1)

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS) conv2d_2_implicit_gemm(R2N_CONV_PARAMS) {
    conv2d_gemm_body<T, BM, BN, BK, TM, TN, R2N_LOAD_IM2COL>(
        x, x_c_total, x_c0, add, add_c_total, add_c0, weight, bias, residual, out, out_c_total,
        out_c0, n_img, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw, groups,
        flags, act, slope, side_mode, side_src_c0, side_dst_c0, side_c, side_blocks);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS) conv2d_3_gemm_1x1(R2N_CONV_PARAMS) {
    conv2d_gemm_body<T, BM, BN, BK, TM, TN, R2N_LOAD_PLANE>(
        x, x_c_total, x_c0, add, add_c_total, add_c0, weight, bias, residual, out, out_c_total,
        out_c0, n_img, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw, groups,
        flags, act, slope, side_mode, side_src_c0, side_dst_c0, side_c, side_blocks);
}

// The "d" shortcut: avg_pool2d(kernel = stride = (sh, sw), ceil_mode=True,
// count_include_pad=False) then a 1x1 conv, as one GEMM whose right matrix is
// pooled on load. h, w: the input's size; h_out, w_out: the pooled size.
template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS) conv2d_avgpool_gemm_1x1(R2N_CONV_PARAMS) {
    conv2d_gemm_body<T, BM, BN, BK, TM, TN, R2N_LOAD_AVG_POOL>(
        x, x_c_total, x_c0, add, add_c_total, add_c0, weight, bias, residual, out, out_c_total,
        out_c0, n_img, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw, groups,
        flags, act, slope, side_mode, side_src_c0, side_dst_c0, side_c, side_blocks);
}
