// The fused launchers' GEMMs beyond the ladder (float32 / float64): split-K,
// the bottleneck's conv3 and shortcut as one K-concatenated GEMM, and the
// split-K reduction. r2n/gpu/conv.py launches them (launch_conv: k_splits,
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
// loop k_splits times; the blocks store raw partial sums, and
// conv2d_split_k_reduce adds them in split order (the same order every run:
// deterministic, no atomics) and applies the fused epilogue. The launcher's
// rule for k_splits (r2n/gpu/conv.py, split_k_for) is a prediction until a
// GPU measures it.
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

// Split-K's second launch: out[n, out_c0 + co, p] = epilogue(sum over s of
// partial[s, n, co, p]), summed in split order, for every (n, co, p) of the
// N x C_out x H_out*W_out output (a grid-stride loop, 64-bit indices). The
// epilogue is conv_store's: bias, residual, activation. The tensor-core
// kernels' partials are float32 and use the float instantiation.
template <typename T>
__global__ void conv2d_split_k_reduce(const T* partial, int k_splits, const T* bias,
                                      const T* residual, T* out, idx_t out_c_total, idx_t out_c0,
                                      int n_img, int c_out, idx_t plane_out, int flags,
                                      int activation, T negative_slope) {
    const idx_t per_split = (idx_t)n_img * c_out * plane_out;
    for (idx_t e = r2n_global_thread_1d(); e < per_split; e += r2n_grid_threads_1d()) {
        T acc = partial[e];
        for (int s = 1; s < k_splits; ++s) acc += partial[(idx_t)s * per_split + e];
        const idx_t p = e % plane_out;
        const idx_t nc = e / plane_out;
        const int co = (int)(nc % c_out);
        const idx_t n = nc / c_out;
        conv_store(acc, out, bias, residual, (n * out_c_total + out_c0 + co) * plane_out + p, co,
                   flags, activation, negative_slope);
    }
}
