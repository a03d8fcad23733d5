// conv2d ladder, step 4_pipelined: the next K slice is loaded while this one
// is multiplied (a software pipeline).
//
// Changes from step 3 (conv_3_register_tiles.cu): there, each K slice is
// loaded into shared memory, then multiplied; while a warp's loads are in
// flight (hundreds of cycles from DRAM or L2) its FMAs wait, and while it
// multiplies, its loads do not run. Here slice s + 1 is fetched from global
// memory into registers (a_next, b_next) right after the barrier that
// publishes slice s, and stored into the shared tiles only at the top of the
// next iteration, after slice s's FMAs: the loads' latency overlaps the
// multiply. Slice s + 1's (channel, tap) rows are decoded into a second copy
// of the row table for the same reason (slice s's copy is still in use).
// Still two barriers per slice; 2 x 3 x BK ints of shared memory instead of
// 3 x BK, and A_LOADS + B_LOADS (8 for the 4 x 4 tiles) registers more.
//
// Why it is faster: a warp no longer stalls once per slice for its own loads;
// latency is hidden inside each warp, not only by switching to other warps,
// so fewer resident warps suffice.
//
// Measured on an NVIDIA H100 80GB HBM3 (benchmarks/results/NOTES-gpu.md,
// 2026-11-25, as variant "2_implicit_gemm"; kernel time in a CUDA graph,
// float32): 3x3 26->26, N=32, 56x56 (the 32 x 64 tile) 0.109 ms = 11.2
// TFLOP/s, cuDNN 0.075 ms; 3x3 104->104, N=32, 14x14 (64 x 64) 0.117 ms =
// 10.4 TFLOP/s, cuDNN 0.080 ms; the float32 peak measured there is 51.5
// TFLOP/s. Steps 1 to 3 are not yet measured, so this step's gain over step 3
// is not known.
//
// The body is shared: LOAD selects the GEMM's right matrix. This step is
// LOAD_IM2COL (im2col columns of any conv, through the row table); the 1x1
// GEMMs of gemm_1x1.cu, which the fused launchers use beside the ladder,
// instantiate it with LOAD_PLANE (the plain C_in_g x H*W plane of a 1x1 /
// stride-1 / pad-0 conv: no row table, no image-border checks) and
// LOAD_AVG_POOL (the plane average-pooled on load, kernel = stride = (sh, sw),
// padding 0, ceil mode, count_include_pad=False: the "d" bottleneck
// shortcut, pool + 1x1 conv in one pass). Tile shapes are template
// parameters (r2n/gpu/conv.py: 64 x 64 and, for groups of <= 32 output
// channels such as Res2Net's 26-channel chain convs, 32 x 64; 4 x 4 per
// thread; gemm_1x1.cu also takes 8 x 8 and 8 x 4). conv_gemm.cu adds split-K
// and a bottleneck's shortcut as more K rows through R2N_CONV_MORE_PARAMS,
// which this step and gemm_1x1.cu fix to R2N_CONV_MORE_NONE (their PTX is
// unchanged by them).
//
// Grid: x = pixel tiles (+ side_blocks extra blocks), y = channel tiles of one
// group, z = images * groups (a grid-stride loop, so N * groups may exceed
// 65535). Block: (BN / TN) * (BM / TM) threads.

#include "conv_common.cuh"

template <typename T, int BM, int BN, int BK, int TM, int TN, int LOAD>
__device__ inline void conv2d_pipelined_body(R2N_CONV_PARAMS, R2N_CONV_MORE_PARAMS) {
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
    // K: the main conv's rows, then (conv_gemm.cu) the shortcut's
    const int K = c_in_g * khw + (LOAD == R2N_LOAD_PLANE_SHORTCUT ? sc_c : 0);
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const idx_t sc_plane = (idx_t)sc_h * sc_w;
    // Split-K (conv_gemm.cu): blockIdx.y = split * channel tiles + channel tile.
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

    const idx_t groups_total = (idx_t)n_img * groups;
    for (idx_t ng = blockIdx.z; ng < groups_total; ng += gridDim.z) {
        const idx_t n = ng / groups;
        const int g = (int)(ng % groups);
        const idx_t x_base = (n * x_c_total + x_c0 + (idx_t)g * c_in_g) * plane_in;
        const idx_t add_base = (n * add_c_total + add_c0 + (idx_t)g * c_in_g) * plane_in;
        const T* wg = weight + (idx_t)g * c_out_g * K;
        const idx_t sc_base = n * sc_c_total * sc_plane;

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
        // float plane loads (the 1x1 GEMMs): the addend's elements, summed
        // with b_next only when stored into Bs, after this slice's FMAs.
        // Summed in the fetch (conv_load_plane), each FADD waited for its
        // load, even predicated off when flags has no ADD (a scoreboard wait
        // applies whatever the predicate), and NVRTC put each of the B_LOADS
        // loads and its FADD in a branch of its own: the loads' latency, which
        // the pipeline is there to hide, was paid B_LOADS times per slice, one
        // round trip after another (SASS, sm_90; the H200 measured these
        // kernels 1.75x slower than the same code compiled beside steps 1 and
        // 4, where NVRTC happened to unswitch the flag test out of the loop).
        // float64 keeps the sum in the fetch: B_LOADS more doubles spill its
        // 128-register conv3 + shortcut GEMM.
        //
        // float im2col loads (this step; the Res2Net chain's convs i > 0 read
        // x_i + y_{i-1}) likewise, in a copy of the fetch of their own (terms,
        // below). There NVRTC did unswitch the flag test, but its add path
        // waited for each element's two loads before fetching the next (the
        // FADD right after them, inside the image-border branch): B_LOADS
        // round trips per slice, one after another (4 on the 64 x 64 tile, 8
        // on the chain's 32 x 64; SASS sm_80 / sm_90), where the path without
        // addend waits for none; the H200 timed the chain's add-on-load step
        // (3_fused) 1.2x slower than summing in a pass of its own
        // (2_fused_epilogue), N=32.
        constexpr bool DEFER_ADD = (LOAD == R2N_LOAD_PLANE || LOAD == R2N_LOAD_PLANE_SHORTCUT ||
                                    LOAD == R2N_LOAD_IM2COL) &&
                                   sizeof(T) == 4;
        const bool add_on = DEFER_ADD && (flags & R2N_CONV_ADD);
        T b_add[DEFER_ADD ? B_LOADS : 1];

        // Rows k0 .. k0 + BK - 1 of the row table (im2col loads only). A lambda
        // as in the kernel measured on the H100 (2_implicit_gemm): with it this
        // step's PTX is byte-identical to that kernel's; calling the helper
        // directly made NVRTC schedule the 1x1 GEMMs' loads differently.
        auto decode_rows = [&](int k0, int* tab) {
            if (LOAD == R2N_LOAD_IM2COL) conv_decode_k_rows<BK>(k0, tab, khw, kw, dh, dw);
        };
        // This thread's share of slice k0 into a_next / b_next, zero outside.
        // ``terms`` (a constant at each call, see fetch): the float im2col
        // fetch with an addend, whose elements go to b_add
        // (conv_load_im2col_terms).
        auto fetch_slice = [&](int k0, const int* tab, bool terms) {
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
                if (DEFER_ADD && (LOAD != R2N_LOAD_IM2COL || terms))
                    b_add[DEFER_ADD ? r : 0] = T(0);
                if (b_p_ok && k < K) {
                    if (LOAD == R2N_LOAD_IM2COL && DEFER_ADD && terms)
                        conv_load_im2col_terms<T, BK>(x, x_base, add, add_base, plane_in, tab, kr,
                                                      iy0, ix0, h, w, v, b_add[DEFER_ADD ? r : 0]);
                    else if (LOAD == R2N_LOAD_IM2COL)
                        v = conv_load_im2col<T, BK>(x, x_base, add, add_base, plane_in, tab, kr,
                                                    iy0, ix0, h, w, flags);
                    else if (DEFER_ADD && (LOAD == R2N_LOAD_PLANE || k < c_in_g)) {
                        const idx_t off = (idx_t)k * plane_in + b_p;
                        v = x[x_base + off];
                        if (add_on) b_add[DEFER_ADD ? r : 0] = add[add_base + off];
                    } else if (LOAD == R2N_LOAD_PLANE)
                        v = conv_load_plane(x, x_base, add, add_base, plane_in, k, b_p, flags);
                    else if (LOAD == R2N_LOAD_PLANE_SHORTCUT)
                        v = k < c_in_g ? conv_load_plane(x, x_base, add, add_base, plane_in, k,
                                                         b_p, flags)
                                       : conv_load_shortcut(sc_x, sc_base, sc_plane, k - c_in_g,
                                                            b_oy, b_ox, sc_sh, sc_sw, sc_h, sc_w,
                                                            sc_pool);
                    else
                        v = conv_load_avg_pool(x, x_base, plane_in, k, iy0, ix0, sh, sw, h, w);
                }
                b_next[r] = v;
            }
        };
        // Two inlined copies of the im2col fetch: with terms, and the summing
        // one with the flag off (every other conv's; its SASS grew by 19
        // instructions per slice on the 32 x 64 tile, NOTES-gpu.md).
        auto fetch = [&](int k0, const int* tab) {
            if (LOAD == R2N_LOAD_IM2COL && add_on)
                fetch_slice(k0, tab, true);
            else
                fetch_slice(k0, tab, false);
        };

        // All K slices, or under split-K this block's run of them.
        const int n_slices = (K + BK - 1) / BK;
        int s_begin = 0, s_end = n_slices;
        if (k_splits > 1) conv_split_k_range(n_slices, k_splits, split, s_begin, s_end);
        decode_rows(s_begin * BK, k_tab);
        __syncthreads();
        fetch(s_begin * BK, k_tab);
        for (int s = s_begin; s < s_end; ++s) {
            // Every thread is past the previous slice's FMAs (the barrier at
            // the end of the loop), so the tiles can be overwritten; the
            // table copy decoded here was last read two slices ago.
            int* next_tab = k_tab + ((s - s_begin + 1) & 1) * 3 * BK;
#pragma unroll
            for (int r = 0; r < A_LOADS; ++r) As[a_k][a_row0 + r * (NT / BK)] = a_next[r];
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r)
                Bs[b_row0 + r * (NT / BN)][b_col] =
                    add_on ? b_next[r] + b_add[DEFER_ADD ? r : 0] : b_next[r];
            const bool more = s + 1 < s_end;
            if (more) decode_rows((s + 1) * BK, next_tab);
            __syncthreads();
            if (more) fetch((s + 1) * BK, next_tab);
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
                if (p < plane_out)
                    conv_store_or_partial(acc[i][j], out, bias, residual, row + p, co, flags,
                                          activation, negative_slope, partial, k_splits, split, n,
                                          n_img, c_out, plane_out, p);
            }
        }
        // Split-K (conv_gemm.cu): the tile's last split adds all of them.
        if (k_splits > 1)
            conv_split_k_end<T, BM, BN, NT, sizeof(T) == 8>(
                partial, k_splits, tile_counts, side_blocks, ng, groups, out, bias, residual,
                out_c_total, out_c0, n_img, c_out, h_out, w_out, flags, activation,
                negative_slope);
    }
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS)
    conv2d_4_pipelined(R2N_CONV_PARAMS) {
    conv2d_pipelined_body<T, BM, BN, BK, TM, TN, R2N_LOAD_IM2COL>(R2N_CONV_ARGS,
                                                                  R2N_CONV_MORE_NONE);
}
