// conv2d ladder, step 1_naive: the definition, one thread per output element.
//
// The ladder (r2n/gpu/conv.py LADDER; one idea per step, each file readable
// as a diff of the one before, as siboehm/SGEMM_CUDA's kernels):
//
//   1_naive           this file
//   2_smem_tiles      conv_2_smem_tiles.cu: output tiles, inputs staged in shared memory
//   3_register_tiles  conv_3_register_tiles.cu: a 4 x 4 tile of outputs per thread
//   4_pipelined       conv_4_pipelined.cu: the next slice loaded during the multiply
//   5_tensor_core     conv_5_tensor_core.cu: the multiply on mma.sync (TF32 / bf16)
//
// What every step computes (bias, residual and activation fused into the
// store, channel slices in and out, the chain's add on load and side job,
// R2N_CONV_PARAMS) is in conv_common.cuh; the 1x1 GEMMs the fused launchers
// use beside the ladder are in gemm_1x1.cu.
//
// What it does: a grid-stride loop over the N * C_out * H_out * W_out outputs
// (64-bit index); each thread walks its C_in_g * kH * kW products in the
// order of the definition, (channel, tap row, tap column), and stores through
// the fused epilogue. Any stride, padding, dilation and groups.
//
// Why it is slow: every multiply-add loads its input and its weight from
// global memory (from L1 at best): two loads per FMA, and nothing loaded is
// shared between threads, although the outputs of one channel all read the
// same weights and neighbouring pixels read overlapping inputs. The GPU's
// arithmetic waits on memory.
//
// Why it stays: it is the readable baseline, and the library's choice for
// groups of fewer than 8 output channels (depthwise convs), where a GEMM
// tile of 32 or 64 channel rows would leave at least 3/4 of its rows empty.
//
// Measured: not yet on a GPU (no conv of the H100 session,
// benchmarks/results/NOTES-gpu.md, ran this kernel).

#include "conv_common.cuh"

template <typename T>
__global__ void conv2d_1_naive(R2N_CONV_PARAMS) {
    const idx_t conv_blocks = (idx_t)gridDim.x - side_blocks;
    if ((idx_t)blockIdx.x >= conv_blocks) {
        chain_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, sh, side_mode,
                       side_src_c0, side_dst_c0, side_c, (idx_t)blockIdx.x - conv_blocks,
                       (idx_t)side_blocks);
        return;
    }
    const int c_in_g = c_in / groups, c_out_g = c_out / groups;
    const idx_t plane_in = (idx_t)h * w, plane_out = (idx_t)h_out * w_out;
    const idx_t total = (idx_t)n_img * c_out * plane_out;
    for (idx_t e = (idx_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += conv_blocks * blockDim.x) {
        const idx_t p = e % plane_out;
        const idx_t nc = e / plane_out;
        const int co = (int)(nc % c_out);
        const idx_t n = nc / c_out;
        const int oy = (int)(p / w_out), ox = (int)(p % w_out);
        const int g = co / c_out_g;
        const T* wrow = weight + (idx_t)co * c_in_g * kh * kw;
        T acc = T(0);
        for (int c = 0; c < c_in_g; ++c) {
            const idx_t ci = (idx_t)g * c_in_g + c;
            const idx_t x_plane0 = (n * x_c_total + x_c0 + ci) * plane_in;
            const idx_t add_plane0 = (n * add_c_total + add_c0 + ci) * plane_in;
            for (int i = 0; i < kh; ++i) {
                const int iy = oy * sh - ph + i * dh;
                for (int j = 0; j < kw; ++j) {
                    const int ix = ox * sw - pw + j * dw;
                    acc += wrow[((idx_t)c * kh + i) * kw + j] *
                           conv_load_input(x, x_plane0, add, add_plane0, iy, ix, h, w, flags);
                }
            }
        }
        const idx_t out_idx = (n * out_c_total + out_c0 + co) * plane_out + p;
        conv_store(acc, out, bias, residual, out_idx, co, flags, activation, negative_slope);
    }
}
