// conv2d ladder, step 3_register_tiles: each thread computes a TM x TN tile of
// outputs from registers.
//
// Changes from step 2 (conv_2_smem_tiles.cu): the block keeps its 256
// threads, but each computes a 4 x 4 tile of outputs instead of one, so the
// block tile grows from 16 x 16 to 64 x 64 (32 x 64 for groups of <= 32
// output channels, such as Res2Net's 26-channel chain convs). Per k of a
// slice a thread reads TM weights and TN inputs from shared memory into
// registers (a[], b[]) and does all TM x TN multiply-adds between them.
// Threads own strided rows and columns of the block tile (row ty + i BM/TM,
// column tx + j BN/TN), so a warp's shared reads are broadcasts or
// consecutive (conflict-free) and its output stores are coalesced along the
// pixel axis.
//
// Why it is faster: step 2 reads two shared-memory values per multiply-add,
// and shared memory's bandwidth, not the FMA units, sets its pace; here
// TM + TN = 8 reads feed TM x TN = 16 multiply-adds. And each value staged
// from global memory now serves 64 outputs instead of 16 (a K slice is BM + BN
// values for BM x BN outputs: 128 for 4096, where step 2 loads 32 for 256),
// so global traffic per FMA falls by 4x too. Launch bounds hold the 4 x 4
// tiles to <= 128 registers, so 16 warps fit per SM.
//
// What stays as in step 2: each K slice is loaded into shared memory, a
// barrier, then multiplied; while a warp waits for its loads it computes
// nothing (step 4 overlaps the two).
//
// Measured: not yet on a GPU (this step was written after the H100 session
// of benchmarks/results/NOTES-gpu.md).
//
// Grid: x = pixel tiles (+ side_blocks extra blocks), y = channel tiles of one
// group, z = images * groups (a grid-stride loop, so N * groups may exceed
// 65535). Block: (BN / TN) * (BM / TM) threads.

#include "conv_common.cuh"

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS)
    conv2d_3_register_tiles(R2N_CONV_PARAMS) {
    constexpr int NT = (BM / TM) * (BN / TN);  // threads per block
    static_assert(NT % BN == 0, "each thread must load one fixed pixel column");
    static_assert(NT % BK == 0, "each thread must load one fixed k of the weights");
    static_assert(NT >= BK, "BK threads decode the im2col rows");
    static_assert((BK * BN) % NT == 0 && (BK * BM) % NT == 0, "loads must split evenly");
    // Transposed tiles: As[k][m] and Bs[k][p], so the compute loop reads
    // contiguous rows of both. Dynamic shared memory of BK * (BM + 1) +
    // BK * BN elements and 3 * BK ints (the launcher passes the size).
    R2N_DYNAMIC_SHARED(T, smem);
    // As rows are padded by one element: the weight loads store a warp's
    // values down a column of As (k fastest), which without the pad would
    // hit one bank up to BK times.
    constexpr int AS_ROW = BM + 1;
    T(*As)[AS_ROW] = reinterpret_cast<T(*)[AS_ROW]>(smem);
    T(*Bs)[BN] = reinterpret_cast<T(*)[BN]>(smem + BK * AS_ROW);
    // The input channel and tap offsets (dy, dx) of the BK rows of a K slice,
    // decoded once per slice by BK threads (conv_decode_k_rows).
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

        constexpr int A_LOADS = (BK * BM) / NT, B_LOADS = (BK * BN) / NT;

        // This thread's share of slice k0 into As / Bs, zero outside.
        auto load_slice = [&](int k0) {
            // Weights: row m of the group's (C_out_g x K) matrix is contiguous.
            const int ak = k0 + a_k;
#pragma unroll
            for (int r = 0; r < A_LOADS; ++r) {
                const int gm = m0 + a_row0 + r * (NT / BK);
                As[a_k][a_row0 + r * (NT / BK)] =
                    (gm < c_out_g && ak < K) ? wg[(idx_t)gm * K + ak] : T(0);
            }
            // Input: row kr of the slice is input channel c, tap (i, j), at pixel b_p.
#pragma unroll
            for (int r = 0; r < B_LOADS; ++r) {
                const int kr = b_row0 + r * (NT / BN);
                Bs[kr][b_col] = (b_p_ok && k0 + kr < K)
                                    ? conv_load_im2col<T, BK>(x, x_base, add, add_base, plane_in,
                                                              k_tab, kr, iy0, ix0, h, w, flags)
                                    : T(0);
            }
        };

        const int n_slices = (K + BK - 1) / BK;
        for (int s = 0; s < n_slices; ++s) {
            // The table's last readers, the loads of slice s - 1, are behind
            // the barrier that published that slice.
            conv_decode_k_rows<BK>(s * BK, k_tab, khw, kw, dh, dw);
            // The table is written, and every thread is past slice s - 1's
            // FMAs, so the tiles can be overwritten.
            __syncthreads();
            load_slice(s * BK);
            __syncthreads();  // the tiles are written
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
                                              activation, negative_slope);
            }
        }
    }
}
