// The fused launchers' GEMMs beyond the ladder (float32 / float64): split-K
// and the bottleneck's conv3 and shortcut as one K-concatenated GEMM.
// r2n/gpu/conv.py launches them (launch_conv: k_splits,
// shortcut_x); conv_gemm_tensor_core.cu is the same on tensor cores.
//
// conv2d_pipelined_gemm<T, BM, BN, BK, TM, TN, LOAD>
//     step 4's pipelined body (conv_4_pipelined.cu) with R2N_CONV_MORE_PARAMS
//     (conv_common.cuh): LOAD = R2N_LOAD_IM2COL (any conv), R2N_LOAD_PLANE (1x1
//     / stride 1 / padding 0) or R2N_LOAD_PLANE_SHORTCUT (conv3 + shortcut),
//     each with or without split-K (k_splits, a run-time argument: one
//     instantiation serves both).
//
// Split-K, and why: at batch 1 the 14x14 and 7x7 convs of a Res2Net-50 launch
// a handful of blocks (3x3 104->104 at 14x14: 4 pixel tiles x 2 channel tiles
// = 8 blocks on 132 SMs), each running all K = C_in * 9 = 936 rows, 59
// slices whose load latency sets the pace (NOTES-gpu.md, v3: a smaller tile
// made it slower). Splitting K over k_splits blocks shortens each block's
// loop k_splits times; the blocks store raw partial sums, and the last block
// of each output tile to finish (a per-tile count, conv_split_k_finish in
// conv_common.cuh) adds them in split order (the same order every run:
// deterministic, and no atomics on the data) and applies the fused epilogue,
// in the same launch: no second kernel, no launch's host time (at batch 1
// without a CUDA graph a launch costs more host time than these convs take).
// The launcher's rule for k_splits (r2n/gpu/conv.py, split_k_for) is a
// prediction until a GPU measures it.
//
// conv3 + shortcut: out = act(W3 t2 + Ws x' + (b3 + bs)) where x' is the
// block input sampled at the stride (a strided 1x1 conv) or average-pooled
// (the "d" shortcut). Both are GEMMs over the same output tile, so one GEMM
// with the weight rows [W3 | Ws] and the right matrix's rows t2 then x'
// computes their sum: one launch instead of two, and the shortcut's output
// never goes through memory.
//
// Measured: not yet on a GPU.

#include "conv_4_pipelined.cu"

template <typename T, int BM, int BN, int BK, int TM, int TN, int LOAD>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS)
    conv2d_pipelined_gemm(R2N_CONV_PARAMS, R2N_CONV_MORE_PARAMS) {
    conv2d_pipelined_body<T, BM, BN, BK, TM, TN, LOAD>(R2N_CONV_ARGS, R2N_CONV_MORE_ARGS);
}
