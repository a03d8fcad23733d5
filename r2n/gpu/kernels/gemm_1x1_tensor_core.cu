// The 1x1 / stride-1 / padding-0 convs on tensor cores at batch throughput
// (precision="tf32" / "bf16", float32 data): a multistage cp.async GEMM.
//
// conv2d_gemm_1x1_tensor_core<float, P, BM, BN, BK, WARPS_M, WARPS_N, STAGES>
//
// Same computation, parameters (R2N_CONV_PARAMS), grid, fused epilogue
// (bias, residual, ReLU / LeakyReLU, output channel slice) and rounding as
// conv_gemm_tensor_core.cu's plane GEMM (LOAD = R2N_LOAD_PLANE: a
// bottleneck's conv1, a normal block's conv3 with its residual, r2n.conv2d's
// 1x1 convs): per (image, group) the GEMM (C_out_g x C_in_g) * (C_in_g x H*W)
// whose right matrix is the input plane itself. r2n/gpu/conv.py runs it when
// the grid has at least a wave of its blocks and the launch needs no split-K,
// no add-on-load and no shortcut rows; everything else stays on the old
// kernel. What changes against conv_5_tensor_core.cu's body, which that
// kernel shares:
//
// 1. Both operands go global -> shared memory by cp.async, the input too.
//    Step 5 fetched the input into registers, rounded it and stored it, so
//    that half of every slice waited for its loads inside the loop, through
//    the registers of every thread. Here neither operand passes through
//    registers before shared memory: 16-byte copies where a row is 16-byte
//    aligned (weights: C_in_g % 4 == 0 and a 16-byte-aligned weight pointer;
//    input: H*W % 4 == 0 and a 16-byte-aligned x, so every channel plane
//    starts aligned; both checked in the kernel, on the pointer the kernel
//    sees), 4-byte copies otherwise (Res2Net-50's 7x7 planes). A 16-byte
//    chunk never straddles a tile edge: K and H*W are then multiples of 4,
//    as are the tile's k0 and p0, so a chunk is wholly inside or wholly
//    zero-filled (cp.async with source size 0).
// 2. A STAGES-deep ring of slices (3): slice s + STAGES - 1 is issued while
//    slice s is multiplied, so two slices' loads are in flight behind each
//    multiply instead of one; cp.async.wait_group STAGES - 2, then one
//    __syncthreads per slice, which both publishes slice s and proves every
//    warp is done with the stage refilled next (slice s - 1's).
// 3. Block tiles of 64 x 32 warp tiles (4 x 4 mma tiles each): per 8-deep k
//    step a warp issues 16 mma.sync for 4 ldmatrix.x4 and 8 (TF32) 32-bit
//    shared loads, 3 wavefronts of shared memory per 2 mma (step 5's 64 x 64
//    tile: 32 x 32 warp tiles, 4 wavefronts per 2 mma). 128 x 64 (4 warps,
//    two blocks per SM on sm_90), 64 x 128 for groups of <= 64 output
//    channels, and 128 x 128 (8 warps, one block per SM) for K >= 512 on
//    planes of more than 64 pixels; the rule and why:
//    r2n/gpu/conv_tensor_core.py (gemm_1x1_tile); blocks per SM on each
//    target below ("Blocks per SM").
// 4. The rounding (cvt.rna.tf32 / cvt.rn.bf16x2) moves to the fragment reads
//    of both operands (step 5 rounded the input before storing it). Every
//    operand element is still rounded exactly once per use, by the same
//    instruction, to the same value: conv_tensor_core.py's bounds and the
//    tests' rounded-operand reference hold unchanged.
// 5. The epilogue stores (and reads the residual as) float2 pairs, the two
//    adjacent columns each lane owns, when H*W is even and the pointers are
//    8-byte aligned: a warp's store is 8 rows x 32 bytes, whole sectors.
//
// Shared memory per stage, raw float32 (rounded when read):
//   As[BM][A_PITCH]  weights, A_PITCH = BK + 4 (TF32) or BK + 8 (bf16)
//   Bs[BK][B_PITCH]  input rows (one input channel's pixels), B_PITCH = BN + 8
//                    (TF32) or BN + 4 (bf16)
// Bank arithmetic (32 banks of 4 bytes; g = lane / 4, t = lane % 4):
//   A, TF32: ldmatrix.x4 reads 8 rows of 16 bytes per phase; rows are
//     A_PITCH * 4 = 144 bytes apart, so row r starts at bank 36 r % 32 = 4 r:
//     the 8 rows cover banks 0-31 once.
//   A, bf16: lane (g, t) reads the 8-byte pair at row g, column 2t; a 64-bit
//     load is served per half warp (g = 0-3): banks (40 g + 2t) % 32 =
//     8 g + 2t, + 1: 32 distinct banks.
//   B, TF32: lane (g, t) reads row kk + t (and kk + t + 4), column c0 + g:
//     bank (t B_PITCH + g) % 32 = 8 t + g for B_PITCH = 136 or 72 (= 8 mod
//     32): 32 distinct banks per load.
//   B, bf16: rows kk + 2t + {0, 1, 8, 9}, one load per row offset: bank
//     (2t B_PITCH + g) % 32 = 8 t + g for B_PITCH = 132 or 68 (= 4 mod 32),
//     plus 4 for the odd rows: 32 distinct banks per load.
//   (B_PITCH and A_PITCH are multiples of 4 floats: every 16-byte cp.async
//   destination and ldmatrix row stays 16-byte aligned.)
//
// Blocks per SM by shared memory: a block's is all dynamic (ptxas reports no
// static shared memory), STAGES x (BM x A_PITCH + BK x B_PITCH) x 4 bytes
// (conv_tensor_core.gemm_1x1_shared_bytes), and the driver reserves 1 KiB
// more per block:
//   tile        KiB a block, tf32 / bf16    blocks per SM, tf32 / bf16
//                                           sm_90 (228 KiB)  sm_80 (164 KiB)
//   128 x 64    81 / 85.5                   2 / 2            2 / 1
//   64 x 128    78 / 79.5                   2 / 2            2 / 2
//   128 x 128   140 / 146                   1 / 1            1 / 1
// On an A100 two tf32 128 x 64 blocks fill the SM exactly (2 x (81 + 1) =
// 164 KiB: only with the whole carveout, which the driver picks for
// occupancy; r2n sets no preference), and a bf16 one runs alone (2 x 86.5 >
// 164). sm_86 / sm_89 (100 KiB a SM, 99 a block) run one 4-warp block, and
// the 128 x 128 tile does not fit there. Registers allow two 4-warp blocks
// (R2N_TC1X1_MIN_BLOCKS: at most 255 a thread).
//
// Why it should be faster (H200: TF32 mma 405 TFLOP/s, copy 4.26 TB/s,
// measured by gpu_bench): a Res2Net-50 1x1 conv at batch 32 moves more bytes
// than a TF32 GEMM needs time for (1x1 256->104 at 56x56, N=32: 145 MB of
// input and output, 34 us; 5.3 GFLOP, 13 us at the TF32 peak), so it should
// run at the memory's pace if enough loads are in flight: two 128 x 64
// blocks per H200 SM with two slices each requested ahead keep ~32 KB of input
// (and as much of L2-resident weights) in flight per SM, about the
// latency-bandwidth product of one SM (32 GB/s per SM x ~1 us). The plane
// GEMM it replaces keeps one slice in flight per block, its input waiting in
// registers: layer1.1's two 1x1 convs took ~0.67 ms at N=32 in tf32 (~16
// TFLOP/s), and step 5 0.381 ms on the 256->104 one (14 TFLOP/s).
//
// Prediction (H200, kernel time, TF32; bf16 about the same: memory-bound):
//   1x1 256->104 N=32 56x56:  plane GEMM ~0.33 ms (step 5: 0.381) -> ~0.08 ms
//   1x1 104->256 N=32 56x56:  ~0.33 ms -> ~0.09 ms (its output is the bigger half)
//   N=256: ~8x those. bottle2neck layer1.1 N=32 tf32 1.089 -> ~0.6 ms;
//   res2net50 N=32 tf32 19.3 ms -> ~13-15 ms (the 1x1 convs are ~40% of its
//   time now; the chain's 3x3 convs stay on step 5).
//
// Measured: not yet on a GPU.

#include "conv_5_tensor_core.cu"

// Threads per block, and the blocks per SM the register budget must allow:
// 8 warps per SM either way (one 256-thread block, or two of 128), since the
// compiler keeps the next k step's fragments in registers beside the 64
// accumulators (~185-255 registers; capped at 128, the 256-thread tile
// spilled 60-120 bytes even with the k steps not unrolled).
#define R2N_TC1X1_THREADS (WARPS_M * WARPS_N * 32)
#define R2N_TC1X1_MIN_BLOCKS (R2N_TC1X1_THREADS >= 256 ? 1 : 2)

// The warp tile's mma.sync over one stage of the multistage tensor-core
// kernels (this file and conv_im2col_tensor_core.cu): A[BM][A_PITCH] raw
// float32 weights, B[BK][B_PITCH] raw float32 inputs (k rows of pixels),
// both rounded as their fragments are read, each element once per use
// (header, item 4); the warp tile's MI x NI mma tiles start at row wm0,
// column wn0; bank arithmetic in the header.
template <typename P, int MI, int NI, int BK, int A_PITCH, int B_PITCH>
__device__ __forceinline__ void tc_multistage_multiply(float (&acc)[MI][NI][4], const float* A,
                                                       const float* B, int wm0, int wn0,
                                                       int lane) {
    const int gid = lane >> 2, tig = lane & 3;
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
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const float* col = &B[(kk + tig) * B_PITCH + wn0 + ni * 8 + gid];
                b[ni][0] = r2n_to_tf32(col[0]);
                b[ni][1] = r2n_to_tf32(col[4 * B_PITCH]);
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
            // b[0] = B[2t, 2t + 1][g], b[1] = B[2t + 8, 2t + 9][g]
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const float* col = &B[(kk + 2 * tig) * B_PITCH + wn0 + ni * 8 + gid];
                b[ni][0] = r2n_pack_bf16x2(col[0], col[B_PITCH]);
                b[ni][1] = r2n_pack_bf16x2(col[8 * B_PITCH], col[9 * B_PITCH]);
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
}

// The multistage kernels' epilogue: the warp tile's accumulators (rows m0 +
// wm0 .., columns p0 + wn0 .. of image n, group g's GEMM) through
// conv_store's operations (bias, residual, activation) into the output's
// channel slice. Accumulator q of mma tile (mi, ni) is row gid + 8 (q / 2),
// column 2 tig + q % 2 of the tile; a lane's two columns are adjacent, stored
// (and the residual read) as a float2 when out_vec (header, item 5).
template <typename T, int MI, int NI>
__device__ __forceinline__ void tc_multistage_store(const float (&acc)[MI][NI][4], T* out,
                                                    const T* bias, const T* residual, idx_t n,
                                                    int g, int c_out_g, idx_t out_c_total,
                                                    idx_t out_c0, idx_t plane, int m0, idx_t p0,
                                                    int wm0, int wn0, int lane, bool out_vec,
                                                    int flags, int activation, T negative_slope) {
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int q2 = 0; q2 < 2; ++q2) {
            const int gm = m0 + wm0 + mi * 16 + gid + 8 * q2;
            if (gm >= c_out_g) continue;
            const int co = g * c_out_g + gm;
            const idx_t row = (n * out_c_total + out_c0 + co) * plane;
#pragma unroll
            for (int ni = 0; ni < NI; ++ni) {
                const idx_t p = p0 + wn0 + ni * 8 + 2 * tig;
                if (p >= plane) continue;
                float v0 = acc[mi][ni][2 * q2], v1 = acc[mi][ni][2 * q2 + 1];
                if (out_vec) {  // p is even and H*W too: p + 1 < H*W
                    // conv_store's operations, in its order, on the pair
                    if (flags & R2N_CONV_BIAS) {
                        v0 += bias[co];
                        v1 += bias[co];
                    }
                    if (flags & R2N_CONV_RESIDUAL) {
                        const float2 r = *reinterpret_cast<const float2*>(residual + row + p);
                        v0 += r.x;
                        v1 += r.y;
                    }
                    float2 o;
                    o.x = conv_activation(v0, activation, negative_slope);
                    o.y = conv_activation(v1, activation, negative_slope);
                    *reinterpret_cast<float2*>(out + row + p) = o;
                } else {
                    conv_store<T>(v0, out, bias, residual, row + p, co, flags, activation,
                                  negative_slope);
                    if (p + 1 < plane)
                        conv_store<T>(v1, out, bias, residual, row + p + 1, co, flags,
                                      activation, negative_slope);
                }
            }
        }
}

template <typename T, typename P, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int STAGES>
__global__ void __launch_bounds__(R2N_TC1X1_THREADS, R2N_TC1X1_MIN_BLOCKS)
    conv2d_gemm_1x1_tensor_core(R2N_CONV_PARAMS) {
    static_assert(sizeof(T) == 4, "tensor cores take float32 data, rounded to TF32 or bf16");
    constexpr int NT = R2N_TC1X1_THREADS;
    constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // the warp tile
    constexpr int MI = WTM / 16, NI = WTN / 8;             // its 16 x 8 mma tiles
    constexpr int A_PITCH = BK + (P::IS_TF32 ? 4 : 8);     // floats per As row
    constexpr int B_PITCH = BN + (P::IS_TF32 ? 8 : 4);     // floats per Bs row
    constexpr int A_STAGE = BM * A_PITCH, B_STAGE = BK * B_PITCH;  // floats
    // 16-byte chunks (4 floats) and single floats per thread per slice
    constexpr int A_CHUNKS = BM * BK / 4 / NT, B_CHUNKS = BK * BN / 4 / NT;
    constexpr int A_ELEMS = BM * BK / NT, B_ELEMS = BK * BN / NT;
    static_assert(WTM % 16 == 0 && WTN % 8 == 0 && BK % P::K_STEP == 0, "tile shape");
    static_assert(A_CHUNKS * 4 * NT == BM * BK && B_CHUNKS * 4 * NT == BK * BN, "even loads");
    static_assert(BK % 16 == 0 && BN % 32 == 0 && STAGES >= 2, "pitches and ring");
    static_assert((B_PITCH % 32) == (P::IS_TF32 ? 8 : 4), "conflict-free B fragment reads");

    // Dynamic shared memory (the launcher passes this size): As[STAGES][BM][A_PITCH],
    // then Bs[STAGES][BK][B_PITCH], floats.
    R2N_DYNAMIC_SHARED(float, As);
    float* Bs = As + STAGES * A_STAGE;

    if (gemm_grid_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh,
                           side_mode, side_src_c0, side_dst_c0, side_c, side_blocks))
        return;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int gid = lane >> 2, tig = lane & 3;  // the PTX fragments' groupID, threadID_in_group
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const int K = c_in_g;
    const idx_t plane = (idx_t)h * w;  // = h_out * w_out (1x1, stride 1, padding 0)
    const int m0 = blockIdx.y * BM;
    const idx_t p0 = (idx_t)blockIdx.x * BN;
    // 16-byte copies where every row starts 16-byte aligned (item 1 above).
    const bool a_vec = K % 4 == 0 && reinterpret_cast<unsigned long long>(weight) % 16 == 0;
    const bool b_vec = plane % 4 == 0 && reinterpret_cast<unsigned long long>(x) % 16 == 0;
    const bool out_vec = plane % 2 == 0 && reinterpret_cast<unsigned long long>(out) % 8 == 0 &&
                         reinterpret_cast<unsigned long long>(residual) % 8 == 0;
    const int n_slices = (K + BK - 1) / BK;

    const idx_t groups_total = (idx_t)n_img * groups;
    for (idx_t ng = blockIdx.z; ng < groups_total; ng += gridDim.z) {
        const idx_t n = ng / groups;
        const int g = (int)(ng % groups);
        const T* xg = x + (n * x_c_total + x_c0 + (idx_t)g * c_in_g) * plane;
        const T* wg = weight + (idx_t)g * c_out_g * K;

        // Slice s (K rows s BK ..) of both operands into stage `st`, as this
        // thread's cp.async copies (the caller commits them as one group).
        auto issue = [&](int s, int st) {
            const int k0 = s * BK;
            float* A = As + st * A_STAGE;
            float* B = Bs + st * B_STAGE;
            if (a_vec) {
#pragma unroll
                for (int r = 0; r < A_CHUNKS; ++r) {
                    const int c = tid + r * NT, row = c / (BK / 4), kc = (c % (BK / 4)) * 4;
                    const bool ok = m0 + row < c_out_g && k0 + kc < K;
                    r2n_cp_async_16(&A[row * A_PITCH + kc],
                                    ok ? wg + (idx_t)(m0 + row) * K + k0 + kc : weight, ok);
                }
            } else {  // the fallback: a loop, so that 16-32 addresses are not all kept live
#pragma unroll 1
                for (int r = 0; r < A_ELEMS; ++r) {
                    const int e = tid + r * NT, row = e / BK, k = e % BK;
                    const bool ok = m0 + row < c_out_g && k0 + k < K;
                    r2n_cp_async_4(&A[row * A_PITCH + k],
                                   ok ? wg + (idx_t)(m0 + row) * K + k0 + k : weight, ok);
                }
            }
            if (b_vec) {
#pragma unroll
                for (int r = 0; r < B_CHUNKS; ++r) {
                    const int c = tid + r * NT, kr = c / (BN / 4), col = (c % (BN / 4)) * 4;
                    const bool ok = k0 + kr < K && p0 + col < plane;
                    r2n_cp_async_16(&B[kr * B_PITCH + col],
                                    ok ? xg + (idx_t)(k0 + kr) * plane + p0 + col : x, ok);
                }
            } else {
#pragma unroll 1
                for (int r = 0; r < B_ELEMS; ++r) {
                    const int e = tid + r * NT, kr = e / BN, col = e % BN;
                    const bool ok = k0 + kr < K && p0 + col < plane;
                    r2n_cp_async_4(&B[kr * B_PITCH + col],
                                   ok ? xg + (idx_t)(k0 + kr) * plane + p0 + col : x, ok);
                }
            }
        };

        float acc[MI][NI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
#pragma unroll
                for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

        // The warp tile's mma.sync over stage `st`, operands rounded as read.
        auto multiply = [&](int st) {
            tc_multistage_multiply<P, MI, NI, BK, A_PITCH, B_PITCH>(acc, As + st * A_STAGE,
                                                                  Bs + st * B_STAGE, wm0, wn0,
                                                                  lane);
        };

        // The ring: slices 0 .. STAGES - 2 in flight first (one group each,
        // empty past the last slice, so that wait_group counts stay uniform).
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < n_slices) issue(s, s);
            r2n_cp_async_commit();
        }
        int read_stage = 0, write_stage = STAGES - 1;
        for (int s = 0; s < n_slices; ++s) {
            r2n_cp_async_wait<STAGES - 2>();  // this thread's copies of slice s have landed
            // Slice s is visible to all, and every warp is done with slice s - 1,
            // whose stage (write_stage) is refilled now.
            __syncthreads();
            if (s + STAGES - 1 < n_slices) issue(s + STAGES - 1, write_stage);
            r2n_cp_async_commit();
            multiply(read_stage);
            read_stage = read_stage + 1 == STAGES ? 0 : read_stage + 1;
            write_stage = write_stage + 1 == STAGES ? 0 : write_stage + 1;
        }
        r2n_cp_async_wait<0>();  // only empty groups are left; none outlives the tile

        tc_multistage_store<T, MI, NI>(acc, out, bias, residual, n, g, c_out_g, out_c_total, out_c0,
                                       plane, m0, p0, wm0, wn0, lane, out_vec, flags, activation,
                                       negative_slope);
        __syncthreads();  // the next (image, group) refills every stage
    }
}
