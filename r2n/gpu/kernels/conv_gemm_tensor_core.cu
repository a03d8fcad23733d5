// The fused launchers' GEMMs beyond the ladder, on tensor cores
// (precision="tf32" / "bf16", float32 data): conv_gemm.cu's kernels with
// step 5's body (conv_5_tensor_core.cu) instead of step 4's.
//
// conv2d_tensor_core_gemm<float, P, BM, BN, BK, WARPS_M, WARPS_N, LOAD>
//     LOAD = R2N_LOAD_PLANE: the 1x1 / stride-1 / padding-0 convs (a
//     bottleneck's conv1, r2n.conv2d's 1x1 convs): the input plane is the
//     GEMM's right matrix, loaded without step 5's row table or border tests;
//     R2N_LOAD_PLANE_SHORTCUT: conv3 and the block's shortcut conv (strided,
//     or the "d" shortcut's pooled 1x1) as one K-concatenated GEMM, so a
//     tf32 / bf16 bottleneck runs on tensor cores end to end;
//     R2N_LOAD_IM2COL: step 5 itself, for split-K.
//     Each with or without split-K (k_splits; conv_common.cuh); the partial
//     sums are float32, added by each tile's last split in the same launch
//     (conv_split_k_finish).
//
// Rounding is step 5's: every operand element of the GEMM (weights, plane or
// shortcut inputs, pooled averages) rounded once to TF32 / bfloat16, float32
// accumulation; the pooled average is computed in float32 first, then
// rounded, as the chain's summed input is (r2n/gpu/conv_tensor_core.py's
// bounds hold with K = K1 + the shortcut's channels).
//
// Measured: not yet on a GPU.

#include "conv_5_tensor_core.cu"

// Blocks per SM: step 5's, but at most 3 (170 registers a thread for the
// narrow tile's 128-thread blocks, where step 5 allows 4 blocks and 128
// registers): the split-K and shortcut arguments and branches cost the
// narrow tile 4-16 bytes of spills on sm_80 at 128 registers.
#define R2N_TC_GEMM_MIN_BLOCKS (R2N_TC_MIN_BLOCKS > 3 ? 3 : R2N_TC_MIN_BLOCKS)

template <typename T, typename P, int BM, int BN, int BK, int WARPS_M, int WARPS_N, int LOAD>
__global__ void __launch_bounds__(R2N_TC_THREADS, R2N_TC_GEMM_MIN_BLOCKS)
    conv2d_tensor_core_gemm(R2N_CONV_PARAMS, R2N_CONV_MORE_PARAMS) {
    conv2d_tensor_core_body<T, P, BM, BN, BK, WARPS_M, WARPS_N, LOAD>(R2N_CONV_ARGS,
                                                                      R2N_CONV_MORE_ARGS);
}
