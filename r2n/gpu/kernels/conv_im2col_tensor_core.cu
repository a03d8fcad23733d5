// Any conv (3x3, KxK, strided, dilated, grouped) on tensor cores at batch
// throughput (precision="tf32" / "bf16", float32 data): a multistage cp.async
// implicit GEMM.
//
// conv2d_im2col_tensor_core<float, P, BM, BN, BK, WARPS_M, WARPS_N, STAGES>
//
// Same computation, parameters (R2N_CONV_PARAMS), grid, fused epilogue
// (bias, residual, ReLU / LeakyReLU, output channel slice), side job (the
// chain's last chunk, copied or pooled) and rounding as step 5
// (conv_5_tensor_core.cu), except the add on load: an input that is a sum
// (the "normal" chain's x_i + y_{i-1}) cannot be copied by cp.async, so
// r2n/gpu/conv.py keeps launches with an add, and split-K ones, on step 5.
// It runs only when selected (r2n.gpu.conv.TC_IM2COL_MULTISTAGE, or the
// environment variable R2N_TC_IM2COL=multistage): it has not been timed yet.
// Selected, it runs every tf32 / bf16 im2col conv that does not split K:
// r2n.conv2d's KxK convs, the first conv of a "normal" chain (a plain channel
// slice of x), a "stage" chain's one grouped launch, and a "normal" chain's
// later convs, whose x_i + y_{i-1} r2n/gpu/res2net.py then writes by an
// elementwise pass of its own into one buffer (float32, as step 5 sums on
// load: the same operands, rounded the same; layer3's at N=256 moves 63 MB,
// ~15 us at the copy rate, ~1% of step 5's conv there).
// What changes against step 5, as gemm_1x1_tensor_core.cu changed the 1x1
// plane GEMM (whose multiply and epilogue this kernel shares:
// tc_multistage_multiply / tc_multistage_store):
//
// 1. The im2col input goes global -> shared memory by cp.async, 4 bytes per
//    element, zero-filled (source size 0) in the padding, past the image, past
//    K and past the last pixel. Step 5 fetched it into registers, rounded it
//    and stored it, so the whole fetch of slice s + 1 waited in registers
//    across slice s's multiply and then in the store. No 16-byte input
//    copies: a 3x3 tap's run of pixels starts at ox + dx - 1, so it is never
//    16-byte aligned for all three taps at once, and strided runs are not
//    contiguous. The weights go by 16-byte copies when K = C_in_g kH kW is a
//    multiple of 4 and the pointer 16-byte aligned (Res2Net-50's 52-, 104- and
//    208-channel chains: K = 468, 936, 1872; the 26-channel one, K = 234,
//    copies 4 bytes), as in gemm_1x1_tensor_core.cu.
// 2. A STAGES-deep ring of slices (3): two slices' copies in flight behind
//    each multiply instead of one; cp.async.wait_group STAGES - 2 and one
//    __syncthreads per slice, as the 1x1 kernel.
// 3. The im2col rows of each slice are decoded into a ring of STAGES tables
//    in shared memory, one per stage: slice s + STAGES is decoded right after
//    slice s + STAGES - 1 is issued, into the table of slice s (whose copies
//    were issued STAGES - 1 barriers ago), so the barrier of the next slice
//    publishes it; step 5 decoded one slice ahead into two tables. A row is
//    one int2 (im2col_decode_rows): the tap's 32-bit offset in the group's
//    input and its (dy, dx) packed, so a copy costs one 8-byte shared load,
//    two adds and three compares for its border test and one add for its
//    address (step 5's table: three loads and 64-bit multiplies per
//    element); the launcher runs the kernel only where the offsets fit
//    (conv_tensor_core.im2col_fits). Each thread keeps one pixel column of
//    the tile (its oy sh - ph, ox sw - pw computed once per block) and
//    issues the copies of its rows of that column: consecutive threads copy
//    consecutive pixels of one row.
// 4. The rounding (cvt.rna.tf32 / cvt.rn.bf16x2) moves to the fragment reads
//    of both operands (step 5 rounded the input before storing it): every
//    operand element is still rounded exactly once per use, by the same
//    instruction, to the same value, so conv_tensor_core.py's bounds and the
//    tests' rounded-operand reference hold unchanged.
// 5. Block tiles of 64 x 32 warp tiles (4 x 4 mma tiles: 3 shared-memory
//    wavefronts per 2 mma, step 5's 32 x 32 warp tiles 4) where the channels
//    fill them: 128 x 64 for groups of more than 64 output channels, 64 x 128
//    for 33-64, and 32 x 128 (32 x 32 warp tiles) for <= 32 (Res2Net's
//    26-channel chain); r2n/gpu/conv_tensor_core.py (im2col_tile).
//
// Shared memory per stage: As[BM][A_PITCH] raw float32 weights, Bs[BK][B_PITCH]
// raw float32 im2col rows (pitches and bank arithmetic as
// gemm_1x1_tensor_core.cu's), then STAGES tables of BK int2 (item 3).
//
// Why it should be faster (H200: TF32 mma ~405 TFLOP/s dense by the vendor's
// figure, copy 4.26 TB/s measured by gpu_bench): a chain conv is compute-heavy
// for a tensor core only at large batch, and there it is latency-bound in
// step 5. Layer3.1's 3x3 104->104 at 14x14, N=256: 9.8 GFLOP (24 us at the
// TF32 peak); its input (20 MB) and output (20 MB) take ~10 us at the copy
// rate, and L1 / L2 serve the 9 taps' re-reads of the input. Step 5
// ran the chain at 0.14x cuDNN (NOTES-gpu.md): each block had one slice in
// flight, and its 16 input loads per thread per slice went through registers
// with a dependent store before the next slice could be fetched, so a
// block's warps waited ~1 us on memory per 32-deep slice (~150 mma each).
// Here two slices (2 x (128 x 32 + 32 x 64) x 4 B = 48 KB per block, two
// blocks per SM on sm_90; on an A100 one 128 x 64 block, since 81.75 KiB of
// shared memory in tf32, + 1 KiB reserved, twice is over its 164 KiB) are in
// flight while one is multiplied, as in the 1x1 kernel, which measured
// 1.5-2.15x the step-5-style plane GEMM (second H200 calls).
//
// Prediction (H200, kernel time, TF32; bf16 about the same): ~2x step 5 on
// the 3x3 convs of batch 32-256. The 1x1 kernel measured 1.8-3.2x step 5 on
// its convs (0.416 -> 0.227 ms at N=32, 2.719 -> 1.006 at N=256); here each
// 4-byte input copy costs ~24 instructions (sm_90 SASS of the 128 x 64 tf32
// tile: 95 per 4 copies, the destination and the zero-fill select included)
// where the 1x1 kernel's 16-byte copies cost a few per 4 elements. A thread's
// slice is ~1020 instructions for 64 mma.sync (96 of them the operands'
// TF32 rounding, as in the 1x1 kernel): 8 warps per SM issue ~2000 clocks of
// instructions per slice pair against ~512 of the tensor cores', so the
// kernel is issue-bound, at best ~1/4 of the TF32 peak (~100 TFLOP/s); step 5
// reaches ~8 here. Layer3.1's 3x3 104 -> 104 at 14x14, N=256: ~1.18 ms per
// conv on step 5 (its chain 3.54 ms, 0.14x cuDNN's 0.49) -> ~0.55 ms; the
// chain ~1.7 ms (sum passes ~15 us each), ~0.3x cuDNN. Small grids (batch 1;
// 7x7 at N=32) gain nothing: they split K, which stays on step 5's GEMM.
//
// Measured: not yet on a GPU.

#include "gemm_1x1_tensor_core.cu"

// Rows k0 .. k0 + BK - 1 of a K slice, decoded by the block's first BK threads
// into tab: for row k = c kH kW + i kW + j (channel c, tap (i, j)), .x = c H W
// + i dh W + j dw, the tap's offset from a pixel's (0, 0) tap in the group's
// input, and .y = (i dh) << 16 | j dw, the tap's (dy, dx) for the border test
// (the launcher runs this kernel only where they fit:
// conv_tensor_core.im2col_fits). One 8-byte shared load per copy then gives
// its address and border test, without 64-bit multiplies (step 5's
// conv_decode_k_rows stores c, dy, dx: three loads and a multiply per copy).
// Rows k >= K are decoded (unsigned arithmetic: no overflow) but never loaded.
template <int BK>
__device__ inline void im2col_decode_rows(int k0, int2* tab, int khw, int kw, int dh, int dw,
                                          int h, int w) {
    const int r = threadIdx.x;
    if (r < BK) {
        const int k = k0 + r;
        const int c = k / khw, t = k - c * khw, i = t / kw;
        const unsigned dy = (unsigned)(i * dh), dx = (unsigned)((t - i * kw) * dw);
        tab[r].x = (int)(((unsigned)c * (unsigned)h + dy) * (unsigned)w + dx);
        tab[r].y = (int)(dy << 16 | dx);
    }
}

// Threads per block and the blocks per SM the registers must allow: as the
// 1x1 kernel's (8 warps per SM; the 64 accumulators and the next k step's
// fragments take ~190-255 registers a thread).
#define R2N_TC_IM2COL_THREADS (WARPS_M * WARPS_N * 32)
#define R2N_TC_IM2COL_MIN_BLOCKS (R2N_TC_IM2COL_THREADS >= 256 ? 1 : 2)

template <typename T, typename P, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(R2N_TC_IM2COL_THREADS, R2N_TC_IM2COL_MIN_BLOCKS)
    conv2d_im2col_tensor_core(R2N_CONV_PARAMS) {
    static_assert(sizeof(T) == 4, "tensor cores take float32 data, rounded to TF32 or bf16");
    constexpr int NT = R2N_TC_IM2COL_THREADS;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // the warp tile
    constexpr int MI = WTM / 16, NI = WTN / 8;             // its 16 x 8 mma tiles
    constexpr int A_PITCH = BK + (P::IS_TF32 ? 4 : 8);     // floats per As row
    constexpr int B_PITCH = BN + (P::IS_TF32 ? 8 : 4);     // floats per Bs row
    constexpr int A_STAGE = BM * A_PITCH, B_STAGE = BK * B_PITCH;  // floats
    constexpr int A_CHUNKS = BM * BK / 4 / NT, A_ELEMS = BM * BK / NT;
    // This thread's rows of its pixel column per slice: b_row0 + r * B_ROW_STEP.
    constexpr int B_ROW_STEP = NT / BN, B_ROWS = BK / B_ROW_STEP;
    static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % P::K_STEP == 0, "tile shape");
    static_assert(A_CHUNKS * 4 * NT == BM * BK, "even weight loads");
    static_assert(NT % BN == 0 && BK % B_ROW_STEP == 0 && NT >= BK, "fixed pixel columns");
    static_assert(BK % 16 == 0 && BN % 32 == 0 && STAGES >= 2, "pitches and ring");
    static_assert((B_PITCH % 32) == (P::IS_TF32 ? 8 : 4), "conflict-free B fragment reads");

    // Dynamic shared memory (the launcher passes this size): As[STAGES][BM][A_PITCH]
    // and Bs[STAGES][BK][B_PITCH] floats, then k_tab[STAGES][BK] int2 (8-byte
    // aligned: the float counts before it are multiples of 4).
    R2N_DYNAMIC_SHARED(float, As);
    float* Bs = As + STAGES * A_STAGE;
    int2* k_tab = reinterpret_cast<int2*>(Bs + STAGES * B_STAGE);

    if (gemm_grid_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh,
                           side_mode, side_src_c0, side_dst_c0, side_c, side_blocks))
        return;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const int khw = kh * kw;
    const int K = c_in_g * khw;
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const int m0 = blockIdx.y * BM;
    const idx_t p0 = (idx_t)blockIdx.x * BN;
    const bool a_vec = K % 4 == 0 && reinterpret_cast<unsigned long long>(weight) % 16 == 0;
    const bool out_vec = plane_out % 2 == 0 && reinterpret_cast<unsigned long long>(out) % 8 == 0 &&
                         reinterpret_cast<unsigned long long>(residual) % 8 == 0;
    const int n_slices = (K + BK - 1) / BK;

    // This thread's pixel column of the tile (fixed for the block) and the
    // input pixel its (0, 0) tap reads; past the plane's last pixel, a row far
    // above the image, so that every tap fails the border test (dy < 2^15)
    const int b_col = tid % BN, b_row0 = tid / BN;
    const idx_t b_p = p0 + b_col;
    const bool b_p_ok = b_p < plane_out;
    const int iy0 = b_p_ok ? (int)(b_p / w_out) * sh - ph : -(1 << 30);
    const int ix0 = b_p_ok ? (int)(b_p % w_out) * sw - pw : 0;

    const idx_t groups_total = (idx_t)n_img * groups;
    for (idx_t ng = blockIdx.z; ng < groups_total; ng += gridDim.z) {
        const idx_t n = ng / groups;
        const int g = (int)(ng % groups);
        const T* xg = x + (n * x_c_total + x_c0 + (idx_t)g * c_in_g) * plane_in;
        const T* wg = weight + (idx_t)g * c_out_g * K;
        // This thread's pixel's (0, 0) tap in channel 0 of the group (outside
        // the image in the padding): a copy adds its row's offset, and reads
        // only when the border test puts the sum inside the image
        const T* x_pix = xg + (b_p_ok ? (idx_t)iy0 * w + ix0 : 0);

        // Slice s's rows (offset, dy, dx) into table `st`.
        auto decode = [&](int s, int st) {
            im2col_decode_rows<BK>(s * BK, k_tab + st * BK, khw, kw, dh, dw, h, w);
        };
        // Slice s of both operands into stage `st`, as this thread's cp.async
        // copies (the caller commits them as one group); table `st` holds
        // slice s's decoded rows.
        auto issue = [&](int s, int st) {
            const int k0 = s * BK;
            float* A = As + st * A_STAGE;
            float* B = Bs + st * B_STAGE;
            const int2* tab = k_tab + st * BK;
            if (a_vec) {
#pragma unroll
                for (int r = 0; r < A_CHUNKS; ++r) {
                    const int c = tid + r * NT, row = c / (BK / 4), kc = (c % (BK / 4)) * 4;
                    const bool ok = m0 + row < c_out_g && k0 + kc < K;
                    r2n_cp_async_16(&A[row * A_PITCH + kc],
                                    ok ? wg + (idx_t)(m0 + row) * K + k0 + kc : weight, ok);
                }
            } else {  // a loop, so that 16-32 addresses are not all kept live
#pragma unroll 1
                for (int r = 0; r < A_ELEMS; ++r) {
                    const int e = tid + r * NT, row = e / BK, k = e % BK;
                    const bool ok = m0 + row < c_out_g && k0 + k < K;
                    r2n_cp_async_4(&A[row * A_PITCH + k],
                                   ok ? wg + (idx_t)(m0 + row) * K + k0 + k : weight, ok);
                }
            }
            // this thread's rows: b_row0 + r B_ROW_STEP, those below k_rows exist
            const int k_rows = K - k0 - b_row0;
            const int2* b_tab = tab + b_row0;
            float* b_dst = B + b_row0 * B_PITCH + b_col;
#pragma unroll 4
            for (int r = 0; r < B_ROWS; ++r) {
                const int2 row = b_tab[r * B_ROW_STEP];
                const int iy = iy0 + (row.y >> 16), ix = ix0 + (row.y & 0xffff);
                const bool ok = r * B_ROW_STEP < k_rows && (unsigned)iy < (unsigned)h &&
                                (unsigned)ix < (unsigned)w;
                r2n_cp_async_4(b_dst + r * B_ROW_STEP * B_PITCH, ok ? x_pix + row.x : x, ok);
            }
        };

        float acc[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

        // The ring: the tables of slices 0 .. STAGES - 1, then slices 0 ..
        // STAGES - 2 in flight (one group each, empty past the last slice, so
        // that wait_group counts stay uniform).
#pragma unroll
        for (int s = 0; s < STAGES; ++s) decode(s, s);
        __syncthreads();
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < n_slices) issue(s, s);
            r2n_cp_async_commit();
        }
        int read_stage = 0, write_stage = STAGES - 1;
        for (int s = 0; s < n_slices; ++s) {
            r2n_cp_async_wait<STAGES - 2>();  // this thread's copies of slice s have landed
            // Slice s and slice s + STAGES - 1's table are visible to all, and
            // every warp is done with slice s - 1, whose stage (write_stage) is
            // refilled now.
            __syncthreads();
            if (s + STAGES - 1 < n_slices) issue(s + STAGES - 1, write_stage);
            r2n_cp_async_commit();
            // Slice s's table was last read by its issue, STAGES - 1 barriers
            // ago: it takes slice s + STAGES's rows, published by the next barrier.
            if (s + STAGES < n_slices) decode(s + STAGES, read_stage);
            tc_multistage_multiply<P, MI, NI, BK, A_PITCH, B_PITCH>(
                acc, As + read_stage * A_STAGE, Bs + read_stage * B_STAGE, wm0, wn0, lane);
            read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
            write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;
        }
        r2n_cp_async_wait<0>();  // only empty groups are left; none outlives the tile

        tc_multistage_store<T, MI, NI>(acc, out, bias, residual, n, g, c_out_g, out_c_total,
                                       out_c0, plane_out, m0, p0, wm0, wn0, lane, out_vec, flags,
                                       activation, negative_slope);
        __syncthreads();  // the next (image, group) refills every stage and table
    }
}
