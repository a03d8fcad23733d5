// conv_common.cuh: what every conv2d variant shares (conv.cu, conv_tensor_core.cu).
//
// The epilogue flags, the activation, the summed input load, the fused
// epilogue store, the Res2Net chain's side job and the parameter list
// R2N_CONV_PARAMS: see the header of conv.cu for what they compute. A .cu file
// that needs them says `#include "conv_common.cuh"`; r2n/gpu/_runtime.py
// (kernel_source) pastes the text in, as NVRTC gets one string.

#pragma once

// Epilogue flags (``flags``, a bit set):
#define R2N_CONV_BIAS 1      // add bias[co]
#define R2N_CONV_ADD 2       // input = x slice + add slice (the chain's x_i + y_{i-1})
#define R2N_CONV_RESIDUAL 4  // add residual[n, out_c0 + co, p] before the activation
// act: 0 none, 1 ReLU, 2 LeakyReLU(slope).
// side_mode: 0 none, 1 copy chunk (stride 1), 2 3x3 average pool, stride sh,
// padding 1, count_include_pad=True (every window then divides by 9).

template <typename T>
__device__ inline T conv_activation(T v, int act, T slope) {
    // Written so that NaN propagates, as PyTorch's relu / leaky_relu.
    if (act == 1) return v < T(0) ? T(0) : v;
    if (act == 2) return v < T(0) ? v * slope : v;
    return v;
}

// One input element of the (possibly summed) input slice, or 0 outside the image.
template <typename T>
__device__ inline T conv_load_input(const T* x, idx_t x_plane0, const T* add, idx_t add_plane0,
                                    int iy, int ix, int h, int w, int flags) {
    if (iy < 0 || iy >= h || ix < 0 || ix >= w) return T(0);
    idx_t off = (idx_t)iy * w + ix;
    T v = x[x_plane0 + off];
    if (flags & R2N_CONV_ADD) v += add[add_plane0 + off];
    return v;
}

// The epilogue for one output element: bias, residual, activation, store.
template <typename T>
__device__ inline void conv_store(T acc, T* out, const T* bias, const T* residual, idx_t out_idx,
                                  int co, int flags, int act, T slope) {
    if (flags & R2N_CONV_BIAS) acc += bias[co];
    if (flags & R2N_CONV_RESIDUAL) acc += residual[out_idx];
    out[out_idx] = conv_activation(acc, act, slope);
}

// The Res2Net chain's last chunk, run by the extra blocks of a launch:
// ``job`` of ``n_jobs`` blocks, each a grid-stride share of the
// n_img * side_c * h_out * w_out outputs. Mode 1 copies chunk
// x[:, side_src_c0 : +side_c] into out[:, side_dst_c0 : +side_c] (same H x W);
// mode 2 writes its 3x3 / stride / pad-1 average (count_include_pad: / 9).
template <typename T>
__device__ void chain_side_job(const T* x, idx_t x_c_total, T* out, idx_t out_c_total,
                               int n_img, int h, int w, int h_out, int w_out, int stride,
                               int side_mode, idx_t side_src_c0, idx_t side_dst_c0, int side_c,
                               idx_t job, idx_t n_jobs) {
    const idx_t plane_out = (idx_t)h_out * w_out;
    const idx_t total = (idx_t)n_img * side_c * plane_out;
    const T ninth = T(1) / T(9);
    for (idx_t e = job * blockDim.x + threadIdx.x; e < total; e += n_jobs * blockDim.x) {
        const idx_t p = e % plane_out;
        const idx_t nc = e / plane_out;
        const int c = (int)(nc % side_c);
        const idx_t n = nc / side_c;
        const int oy = (int)(p / w_out), ox = (int)(p % w_out);
        const T* src = x + (n * x_c_total + side_src_c0 + c) * ((idx_t)h * w);
        T v;
        if (side_mode == 1) {
            v = src[(idx_t)oy * w + ox];
        } else {
            v = T(0);
            for (int i = 0; i < 3; ++i) {
                const int iy = oy * stride - 1 + i;
                if (iy < 0 || iy >= h) continue;
                for (int j = 0; j < 3; ++j) {
                    const int ix = ox * stride - 1 + j;
                    if (ix >= 0 && ix < w) v += src[(idx_t)iy * w + ix];
                }
            }
            v *= ninth;
        }
        out[(n * out_c_total + side_dst_c0 + c) * plane_out + p] = v;
    }
}

// The side job in the grid of the GEMM-tiled variants (2, 3, 4): x = pixel
// tiles + side_blocks extra blocks, y = channel tiles, z = images * groups.
// In an extra block (blockIdx.x >= pixel tiles) this runs the block's share of
// the chain's last chunk and returns true; in a GEMM block it returns false.
template <typename T>
__device__ inline bool gemm_grid_side_job(const T* x, idx_t x_c_total, T* out, idx_t out_c_total,
                                          int n_img, int h, int w, int h_out, int w_out,
                                          int stride, int side_mode, idx_t side_src_c0,
                                          idx_t side_dst_c0, int side_c, int side_blocks) {
    const idx_t pixel_tiles = (idx_t)gridDim.x - side_blocks;
    if ((idx_t)blockIdx.x < pixel_tiles) return false;
    const idx_t job = ((idx_t)blockIdx.z * gridDim.y + blockIdx.y) * side_blocks +
                      ((idx_t)blockIdx.x - pixel_tiles);
    chain_side_job(x, x_c_total, out, out_c_total, n_img, h, w, h_out, w_out, stride, side_mode,
                   side_src_c0, side_dst_c0, side_c, job,
                   (idx_t)side_blocks * gridDim.y * gridDim.z);
    return true;
}

// The parameter list every variant shares (so the launcher and the chain can
// swap variants): input slice (+ optional addend slice), weights, bias,
// residual, output slice, sizes, conv geometry, epilogue, the side job.
#define R2N_CONV_PARAMS                                                                       \
    const T *x, idx_t x_c_total, idx_t x_c0, const T *add, idx_t add_c_total, idx_t add_c0,  \
        const T *weight, const T *bias, const T *residual, T *out, idx_t out_c_total,          \
        idx_t out_c0, int n_img, int c_in, int h, int w, int c_out, int h_out, int w_out,      \
        int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int groups, int flags, \
        int act, T slope, int side_mode, idx_t side_src_c0, idx_t side_dst_c0, int side_c,    \
        int side_blocks
