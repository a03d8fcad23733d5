// conv2d ladder, step 2_smem_tiles: a block computes a tile of outputs, with
// its inputs staged in shared memory.
//
// Changes from step 1 (conv_1_naive.cu): per (image, group) the conv is a
// GEMM, out (C_out_g x pixels) = W (C_out_g x K) * X (K x pixels) with
// K = C_in_g * kH * kW, whose right matrix (im2col: row k is input channel
// k / (kH kW) at one tap, column p one output pixel) is never materialised.
// A block of BM x BN = 16 x 16 threads computes a 16-channel x 16-pixel tile
// of the output, one output per thread, and walks K in BK = 16-deep slices:
// all threads first copy the slice's 16 x 16 weights and 16 x 16 im2col
// elements from global memory into shared memory (each thread one of each;
// zero outside the matrices and in the image's padding), a barrier, then each
// thread sums its 16 products out of shared memory, a barrier, next slice.
// The (channel, tap) of each of a slice's rows is decoded once, by 16
// threads, into a shared table (conv_decode_k_rows), so the loads do no
// integer division.
//
// Why it is faster: each value copied from global memory is used by 16
// threads (a weight by the 16 pixels of its row, an input by the 16 channels
// of its column) instead of by one, so global traffic per multiply-add falls
// 16-fold; the copies are coalesced (a warp's weight loads are 16 consecutive
// k of two rows, its input loads 16 consecutive pixels of two rows). What
// remains slow: every multiply-add still reads two values, from shared memory
// now, whose bandwidth sets the pace (step 3 keeps values in registers).
//
// Measured: not yet on a GPU (this step was written after the H100 session
// of benchmarks/results/NOTES-gpu.md).
//
// Grid: x = pixel tiles (+ side_blocks extra blocks), y = channel tiles of one
// group, z = images * groups (a grid-stride loop, so N * groups may exceed
// 65535). Block: BM * BN threads.

#include "conv_common.cuh"

template <typename T, int BM, int BN, int BK>
__global__ void __launch_bounds__(BM * BN) conv2d_2_smem_tiles(R2N_CONV_PARAMS) {
    constexpr int NT = BM * BN;  // threads per block: one per output of the tile
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
    const int tx = tid % BN, ty = tid / BN;  // this thread's output: row m0 + ty, pixel p0 + tx
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

        T acc = T(0);

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
            for (int kk = 0; kk < BK; ++kk) acc += As[kk][ty] * Bs[kk][tx];
        }

        const int gm = m0 + ty;
        const idx_t p = p0 + tx;
        if (gm < c_out_g && p < plane_out) {
            const int co = g * c_out_g + gm;
            const idx_t row = (n * out_c_total + out_c0 + co) * plane_out;
            conv_store(acc, out, bias, residual, row + p, co, flags, activation, negative_slope);
        }
    }
}
