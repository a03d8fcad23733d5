// The 1x1 GEMMs of the fused launchers: building blocks beside the conv2d
// ladder, not steps of it (r2n/gpu/conv.py: variants "gemm_1x1" and
// "avg_pool_gemm_1x1"; r2n/gpu/res2net.py runs a bottleneck's conv1, conv3
// and stride-1 or pooled shortcut on them, and conv2d picks gemm_1x1 for
// every 1x1 / stride-1 / padding-0 conv).
//
// Both are step 4's pipelined body (conv_4_pipelined.cu) with another load of
// the GEMM's right matrix:
//
//   conv2d_gemm_1x1           1x1, stride 1, padding 0 convs: the input plane
//                             is already the right matrix (C_in_g x H*W,
//                             pixels contiguous), so the loads need no row
//                             table, no image-border checks, no im2col
//                             arithmetic at all; and the register tile can
//                             grow to 8 x 8 for float (64 FMAs per 16 shared
//                             loads instead of 16 per 8; 8 x 4 for double, to
//                             stay under 255 registers without spills) in
//                             128 x 128 (128 x 64) block tiles when the
//                             problem has enough of them to fill the GPU,
//                             else the ladder's 4 x 4 / 64 x 64 tile.
//   conv2d_avg_pool_gemm_1x1  the "d" bottleneck shortcut: avg_pool2d(kernel =
//                             stride = (sh, sw), ceil_mode=True,
//                             count_include_pad=False), then a 1x1 conv, as one
//                             GEMM whose right matrix is pooled on load (no
//                             pooled tensor). h, w: the input's size; h_out,
//                             w_out: the pooled size.
//
// Measured on an NVIDIA H100 80GB HBM3 (benchmarks/results/NOTES-gpu.md,
// 2026-11-25, as variant "3_gemm_1x1"; kernel time in a CUDA graph, float32):
// 1x1 256->104, N=32, 56x56 (the 128 x 128 tile) 0.283 ms = 18.9 TFLOP/s,
// cuDNN 0.216 ms; N=1 (the 64 x 64 tile) 0.020 ms, cuDNN 0.022 ms. That
// build compiled these kernels in one module with steps 1 and 4; in a module
// of their own NVRTC schedules them slightly differently (same code, a few
// registers more or less), so these figures are to be measured again.

#include "conv_4_pipelined.cu"

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS)
    conv2d_gemm_1x1(R2N_CONV_PARAMS) {
    conv2d_pipelined_body<T, BM, BN, BK, TM, TN, R2N_LOAD_PLANE>(R2N_CONV_ARGS,
                                                                 R2N_CONV_MORE_NONE);
}

template <typename T, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__(R2N_GEMM_THREADS, R2N_GEMM_MIN_BLOCKS)
    conv2d_avg_pool_gemm_1x1(R2N_CONV_PARAMS) {
    conv2d_pipelined_body<T, BM, BN, BK, TM, TN, R2N_LOAD_AVG_POOL>(R2N_CONV_ARGS,
                                                                    R2N_CONV_MORE_NONE);
}
