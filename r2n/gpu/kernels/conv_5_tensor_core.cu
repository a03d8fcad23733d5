// conv2d ladder, step 5_tensor_core: step 4's pipelined implicit GEMM on the
// tensor cores.
//
// Same computation, parameter list (R2N_CONV_PARAMS), grid, fused epilogue,
// channel slices, add-on-load and chain side job as step 4
// (conv_4_pipelined.cu), so the Res2Net chain and bottleneck run on it
// unchanged (r2n/gpu/conv.py VARIANTS, r2n/gpu/conv_tensor_core.py for the
// launch). What changes is the multiply: per (image, group) the GEMM
// (C_out_g x K) * (K x pixels) runs on warp-level mma.sync instead of FMAs,
// in a lower input precision that the caller chose (precision="tf32" or
// "bf16"; float32 data only):
//
//   r2n_tf32   both operands rounded to TF32 (cvt.rna: 10 mantissa bits, to
//              nearest, ties away), mma.sync.m16n8k8, float32 accumulators.
//   r2n_bf16   both operands rounded to bfloat16 (to nearest even, 7 bits),
//              mma.sync.m16n8k16, float32 accumulators.
//
// Products of rounded operands are exact in float32 and the sums are float32,
// so the error against exact arithmetic is that of the input rounding (unit
// roundoff u = 2^-11 for TF32, 2^-8 for bfloat16) plus float32 accumulation;
// r2n/gpu/conv_tensor_core.py derives the bounds.
//
// Block tile BM (output channels) x BN (pixels), K in BK-deep slices;
// WARPS_M x WARPS_N warps, each owning a (BM / WARPS_M) x (BN / WARPS_N) warp
// tile of 16 x 8 mma tiles whose float32 accumulators stay in registers.
// Per K slice:
//
//   weights  cp.async (4 bytes per element: K is rarely a multiple of 4, so
//            16-byte copies would be misaligned) straight from global memory
//            into As[stage][m][k], raw float32, zero-filled outside the
//            group's C_out_g x K matrix. Fragments are loaded with ldmatrix
//            (TF32: each 32-bit element is a pair of b16, so the x4 form
//            gives exactly the four a registers) or as 64-bit pairs (bf16),
//            and rounded in registers. Rows are padded (BK + 4 floats for
//            ldmatrix, BK + 8 for the pairs) so that a warp's reads hit 32
//            distinct banks.
//   input    im2col columns as in step 4 (the (channel, tap) of each of
//            the BK rows decoded once per slice into shared memory, one fixed
//            pixel per thread, zero padding at the image border, the chain's
//            addend summed on load): global -> registers -> rounded ->
//            Bs[stage][k][pixel]. cp.async cannot sum or round, so this half
//            goes through registers. B fragments: two 32-bit loads (TF32; the
//            BN + 8 row pitch puts a warp's 32 reads on 32 banks) or one
//            ldmatrix.x4.trans for two n-tiles (bf16 rows of 16-bit values,
//            pitch 144 bytes: the eight rows of a matrix on distinct banks).
//
// Two stages: slice s + 1's weight copies are issued and its input fetched
// into registers right after the barrier that publishes slice s, so both
// memory streams overlap slice s's mma.sync; one __syncthreads per slice
// (cp.async.wait_group 0 just before it: a thread's own copies must have
// landed before the barrier publishes them).
//
// Why it is faster: one mma.sync.m16n8k8 (TF32) is 1024 multiply-adds of
// one warp, where an FMA is 32; the H100's TF32 tensor cores peak at several
// times its float32 FMA rate (vendor figures; bf16 twice TF32). The operands'
// precision is the price, which is why only precision="tf32" / "bf16" runs
// this step (never the default).
//
// Measured: not yet on a GPU (written after the H100 session of
// benchmarks/results/NOTES-gpu.md). The tiles are template parameters. The
// body is shared with conv_gemm_tensor_core.cu (the 1x1 plane loader without
// the row table, split-K, a bottleneck's shortcut as more K rows), through
// LOAD and R2N_CONV_MORE_PARAMS, which this step fixes to R2N_LOAD_IM2COL and
// R2N_CONV_MORE_NONE: its PTX is unchanged by them.

#include "conv_common.cuh"
#include "mma.cuh"

// The input formats, the template's second parameter (and the name
// expressions': conv2d_5_tensor_core<float, r2n_tf32, ...>).
struct r2n_tf32 {
    static constexpr bool IS_TF32 = true;
    static constexpr int K_STEP = 8;    // mma.m16n8k8
    static constexpr int A_PAD = 4;     // As rows of BK + 4 floats: ldmatrix conflict-free
    static constexpr int B_BYTES = 4;   // a TF32 in a 32-bit word
};
struct r2n_bf16 {
    static constexpr bool IS_TF32 = false;
    static constexpr int K_STEP = 16;   // mma.m16n8k16
    static constexpr int A_PAD = 8;     // BK + 8 floats: the 64-bit pair loads conflict-free
    static constexpr int B_BYTES = 2;   // one bfloat16
};

// Blocks per SM the register budget must allow: 128-thread blocks whose
// warps hold 16 mma tiles' accumulators or fewer fit in 128 registers (4
// blocks, 16 warps per SM); the 32-tile warps of the wide tile need up to
// ~220 (sm_90), so 2 blocks (8 warps per SM, as tensor-core GEMMs usually
// run: the warps' independent mma.sync keep the tensor cores busy).
#define R2N_TC_THREADS (WARPS_M * WARPS_N * 32)
#define R2N_TC_MMA_TILES ((BM / WARPS_M / 16) * (BN / WARPS_N / 8))
#define R2N_TC_MIN_BLOCKS ((R2N_TC_MMA_TILES >= 8 ? 256 : 512) / R2N_TC_THREADS)

// The body, shared with the fused launchers' tensor-core GEMMs
// (conv_gemm_tensor_core.cu): LOAD selects the GEMM's right matrix as in step
// 4 (R2N_LOAD_IM2COL here; the plain plane, and the plane followed by the
// bottleneck shortcut's rows, there), and R2N_CONV_MORE_PARAMS add split-K
// and that shortcut (conv_common.cuh); this step passes R2N_CONV_MORE_NONE.
template <typename T, typename P, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int LOAD>
__device__ inline void conv2d_tensor_core_body(R2N_CONV_PARAMS, R2N_CONV_MORE_PARAMS) {
    static_assert(sizeof(T) == 4, "tensor cores take float32 data, rounded to TF32 or bf16");
    constexpr int NT = R2N_TC_THREADS;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // the warp tile
    constexpr int MI = WTM / 16, NI = WTN / 8;             // its 16 x 8 mma tiles
    static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % P::K_STEP == 0, "tile shape");
    static_assert(P::IS_TF32 || NI % 2 == 0, "bf16 B fragments are loaded in pairs of n-tiles");
    static_assert(NT % BN == 0 && NT % BK == 0 && NT >= BK, "fixed load coordinates");
    static_assert((BK * BN) % NT == 0 && (BK * BM) % NT == 0, "loads must split evenly");
    static_assert(BN % 32 == 0 && BK % 16 == 0, "bank-conflict-free pitches");
    constexpr int A_PITCH = BK + P::A_PAD;  // floats per As row
    constexpr int B_PITCH = BN + 8;         // elements per Bs row
    constexpr int A_STAGE = BM * A_PITCH;   // floats
    constexpr int B_STAGE = BK * B_PITCH * P::B_BYTES;  // bytes
    // Dynamic shared memory (the launcher passes this size): As[2][BM][A_PITCH]
    // floats, Bs[2][BK][B_PITCH] TF32 words or bf16, then two copies of the
    // 3 * BK ints of decoded im2col rows (slice s + 1 is decoded while slice
    // s's copy may still be read).
    R2N_DYNAMIC_SHARED(unsigned char, smem);
    float* As = reinterpret_cast<float*>(smem);
    unsigned char* Bs = smem + 2 * A_STAGE * sizeof(float);
    int* k_tab = reinterpret_cast<int*>(Bs + 2 * B_STAGE);

    if (gemm_grid_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh,
                           side_mode, side_src_c0, side_dst_c0, side_c, side_blocks))
        return;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int gid = lane >> 2, tig = lane & 3;  // the PTX fragments' groupID, threadID_in_group
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const int khw = kh * kw;
    // K: the main conv's rows, then (conv_gemm_tensor_core.cu) the shortcut's
    const int K = c_in_g * khw + (LOAD == R2N_LOAD_PLANE_SHORTCUT ? sc_c : 0);
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const idx_t sc_plane = (idx_t)sc_h * sc_w;
    // Split-K: blockIdx.y = split * channel tiles + channel tile.
    int m_tile = blockIdx.y, split = 0;
    if (k_splits > 1) {
        const int channel_tiles = gridDim.y / k_splits;
        split = m_tile / channel_tiles;
        m_tile -= split * channel_tiles;
    }
    const int m0 = m_tile * BM;
    const idx_t p0 = (idx_t)blockIdx.x * BN;

    // This thread's fixed load coordinates: one pixel column of Bs, one k of As.
    const int b_col = tid % BN, b_row0 = tid / BN;
    const int a_k = tid % BK, a_row0 = tid / BK;
    const idx_t b_p = p0 + b_col;
    const bool b_p_ok = b_p < plane_out;
    const int b_oy = b_p_ok ? (int)(b_p / w_out) : 0;
    const int b_ox = b_p_ok ? (int)(b_p % w_out) : 0;
    const int iy0 = b_oy * sh - ph, ix0 = b_ox * sw - pw;
    constexpr int A_LOADS = (BK * BM) / NT, B_LOADS = (BK * BN) / NT;

    const idx_t groups_total = (idx_t)n_img * groups;
    for (idx_t ng = blockIdx.z; ng < groups_total; ng += gridDim.z) {
        const idx_t n = ng / groups;
        const int g = (int)(ng % groups);
        const idx_t x_base = (n * x_c_total + x_c0 + (idx_t)g * c_in_g) * plane_in;
        const idx_t add_base = (n * add_c_total + add_c0 + (idx_t)g * c_in_g) * plane_in;
        const T* wg = weight + (idx_t)g * c_out_g * K;
        const idx_t sc_base = n * sc_c_total * sc_plane;

        float acc[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;
        T b_next[B_LOADS];

        // The weights of slice k0 into As[stage]: this thread's A_LOADS
        // elements of column a_k, one cp.async group.
        auto issue_weights = [&](int k0, int stage) {
            const int ak = k0 + a_k;
#pragma unroll
            for (int r = 0; r < A_LOADS; ++r) {
                const int row = a_row0 + r * (NT / BK);
                const int gm = m0 + row;
                const bool ok = gm < c_out_g && ak < K;
                r2n_cp_async_4(&As[stage * A_STAGE + row * A_PITCH + a_k],
                               ok ? wg + (idx_t)gm * K + ak : weight, ok);
            }
            r2n_cp_async_commit();
        };
        // This thread's share of slice k0's input columns into b_next.
        auto fetch_input = [&](int k0, const int* tab) {
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r) {
                const int kr = b_row0 + r * (NT / BN);
                const int k = k0 + kr;
                T v = T(0);
                if (b_p_ok && k < K) {
                    if (LOAD == R2N_LOAD_IM2COL)
                        v = conv_load_im2col<T, BK>(x, x_base, add, add_base, plane_in, tab, kr,
                                                    iy0, ix0, h, w, flags);
                    else if (LOAD == R2N_LOAD_PLANE || k < c_in_g)
                        v = conv_load_plane(x, x_base, add, add_base, plane_in, k, b_p, flags);
                    else
                        v = conv_load_shortcut(sc_x, sc_base, sc_plane, k - c_in_g, b_oy, b_ox,
                                               sc_sh, sc_sw, sc_h, sc_w, sc_pool);
                }
                b_next[r] = v;
            }
        };
        auto decode_rows = [&](int k0, int* tab) {
            if (LOAD == R2N_LOAD_IM2COL) conv_decode_k_rows<BK>(k0, tab, khw, kw, dh, dw);
        };
        // b_next, rounded, into Bs[stage].
        auto store_input = [&](int stage) {
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r) {
                const int at = (b_row0 + r * (NT / BN)) * B_PITCH + b_col;
                if constexpr (P::IS_TF32) {
                    reinterpret_cast<unsigned*>(Bs + stage * B_STAGE)[at] = r2n_to_tf32(b_next[r]);
                } else {
                    reinterpret_cast<unsigned short*>(Bs + stage * B_STAGE)[at] =
                        static_cast<unsigned short>(r2n_pack_bf16x2(b_next[r], 0.f) & 0xffffu);
                }
            }
        };
        // The warp tile's mma.sync over slice `stage`.
        auto multiply = [&](int stage) {
            const float* A = As + stage * A_STAGE;
#pragma unroll
            for (int kk = 0; kk < BK; kk += P::K_STEP) {
                unsigned a[MI][4], b[NI][2];
                if constexpr (P::IS_TF32) {
                    // Matrices 0-3 of ldmatrix.x4: rows 0-7 / 8-15 at k 0-3, then at k 4-7.
#pragma unroll
                    for (int mi = 0; mi < MI; ++mi) {
                        r2n_ldmatrix_x4(
                            a[mi], &A[(wm0 + mi * 16 + (lane & 15)) * A_PITCH + kk + (lane >> 4) * 4]);
#pragma unroll
                        for (int i = 0; i < 4; ++i) a[mi][i] = r2n_to_tf32(__uint_as_float(a[mi][i]));
                    }
                    const unsigned* B = reinterpret_cast<const unsigned*>(Bs + stage * B_STAGE);
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) {
                        const int col = wn0 + ni * 8 + gid;
                        b[ni][0] = B[(kk + tig) * B_PITCH + col];
                        b[ni][1] = B[(kk + tig + 4) * B_PITCH + col];
                    }
                } else {
#pragma unroll
                    for (int mi = 0; mi < MI; ++mi) {
                        const float* r0 = &A[(wm0 + mi * 16 + gid) * A_PITCH + kk + 2 * tig];
                        const float* r8 = r0 + 8 * A_PITCH;
                        const float2 v0 = *reinterpret_cast<const float2*>(r0);
                        const float2 v1 = *reinterpret_cast<const float2*>(r8);
                        const float2 v2 = *reinterpret_cast<const float2*>(r0 + 8);
                        const float2 v3 = *reinterpret_cast<const float2*>(r8 + 8);
                        a[mi][0] = r2n_pack_bf16x2(v0.x, v0.y);
                        a[mi][1] = r2n_pack_bf16x2(v1.x, v1.y);
                        a[mi][2] = r2n_pack_bf16x2(v2.x, v2.y);
                        a[mi][3] = r2n_pack_bf16x2(v3.x, v3.y);
                    }
                    // ldmatrix.x4.trans: k rows 0-7 / 8-15 of n-tile ni, then of ni + 1.
                    const unsigned short* B =
                        reinterpret_cast<const unsigned short*>(Bs + stage * B_STAGE);
#pragma unroll
                    for (int ni = 0; ni < NI; ni += 2) {
                        unsigned q[4];
                        r2n_ldmatrix_x4_trans(q, &B[(kk + (lane & 7) + ((lane >> 3) & 1) * 8) * B_PITCH +
                                                    wn0 + (ni + (lane >> 4)) * 8]);
                        b[ni][0] = q[0];
                        b[ni][1] = q[1];
                        b[ni + 1][0] = q[2];
                        b[ni + 1][1] = q[3];
                    }
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) {
                        if constexpr (P::IS_TF32)
                            r2n_mma_tf32_m16n8k8(acc[mi][ni], a[mi], b[ni]);
                        else
                            r2n_mma_bf16_m16n8k16(acc[mi][ni], a[mi], b[ni]);
                    }
            }
        };

        // All K slices, or under split-K this block's run of them (never
        // empty: r2n/gpu/conv.py picks k_splits so).
        const int n_slices = (K + BK - 1) / BK;
        int s_begin = 0, s_end = n_slices;
        if (k_splits > 1) conv_split_k_range(n_slices, k_splits, split, s_begin, s_end);
        decode_rows(s_begin * BK, k_tab);
        issue_weights(s_begin * BK, 0);
        __syncthreads();  // the first slice's table
        fetch_input(s_begin * BK, k_tab);
        store_input(0);
        for (int s = s_begin; s < s_end; ++s) {
            const int cur = (s - s_begin) & 1, nxt = cur ^ 1;
            const bool more = s + 1 < s_end;
            int* next_tab = k_tab + nxt * 3 * BK;  // last read by slice s - 1's fetch
            if (more) decode_rows((s + 1) * BK, next_tab);
            r2n_cp_async_wait<0>();  // this thread's weights of slice s have landed
            // Slice s (weights, input) and the next table are visible to all, and
            // every warp is done with slice s - 1's stage, which is refilled now.
            __syncthreads();
            if (more) {
                issue_weights((s + 1) * BK, nxt);
                fetch_input((s + 1) * BK, next_tab);
            }
            multiply(cur);
            if (more) store_input(nxt);
        }

        // Epilogue: accumulator q of mma tile (mi, ni) is row gid + 8 (q / 2),
        // column 2 tig + q % 2 of the tile.
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int q2 = 0; q2 < 2; ++q2) {
                const int gm = m0 + wm0 + mi * 16 + gid + 8 * q2;
                if (gm >= c_out_g) continue;
                const int co = g * c_out_g + gm;
                const idx_t row = (n * out_c_total + out_c0 + co) * plane_out;
#pragma unroll
                for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                    for (int q1 = 0; q1 < 2; ++q1) {
                        const idx_t p = p0 + wn0 + ni * 8 + 2 * tig + q1;
                        if (p < plane_out)
                            conv_store_or_partial<T>(acc[mi][ni][2 * q2 + q1], out, bias,
                                                     residual, row + p, co, flags, activation,
                                                     negative_slope, partial, k_splits, split, n,
                                                     n_img, c_out, plane_out, p);
                    }
            }
        // Split-K (conv_gemm_tensor_core.cu): the tile's last split adds all of them.
        if (k_splits > 1)
            conv_split_k_end<T, BM, BN, NT, true>(
                partial, k_splits, tile_counts, side_blocks, ng, groups, out, bias, residual,
                out_c_total, out_c0, n_img, c_out, h_out, w_out, flags, activation,
                negative_slope);
        __syncthreads();  // the next (image, group) refills every buffer
    }
}

template <typename T, typename P, int BM, int BN, int BK, int WARPS_M, int WARPS_N>
__global__ void __launch_bounds__(R2N_TC_THREADS, R2N_TC_MIN_BLOCKS)
    conv2d_5_tensor_core(R2N_CONV_PARAMS) {
    conv2d_tensor_core_body<T, P, BM, BN, BK, WARPS_M, WARPS_N, R2N_LOAD_IM2COL>(
        R2N_CONV_ARGS, R2N_CONV_MORE_NONE);
}
