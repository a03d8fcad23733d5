// conv_common.cuh: what every conv2d kernel shares (the ladder's steps
// conv_1_naive.cu .. conv_5_tensor_core.cu, and gemm_1x1.cu).
//
// Every kernel computes, for image n, group g, output channel co and pixel p:
//
//     v = bias[co] + sum_k W[co, k] * X[n, g, k, p]           (K = C_in_g * kH * kW)
//     v = activation(v + residual[n, co, p])                   (each step optional)
//     out[n, out_c0 + co, p] = v
//
// where the input X is read from a channel slice of a larger buffer
// (x_c0 .. x_c0 + C_in of x_c_total channels) and, optionally, summed on load
// with a channel slice of a second buffer of the same H x W (``add``): that
// is how the Res2Net chain feeds conv i with x_i + y_{i-1} without a pass of
// its own, and why every output goes straight into its channel slice of the
// concatenated chain output (no split, no cat). The chain's last chunk
// (copied, or 3x3 average-pooled for "stage" blocks) is written by extra
// blocks of the first conv's launch ("side job", see chain_side_job).
//
// Here: the epilogue flags, the activation, the summed input load, the fused
// epilogue store, the side job, the loads of the GEMM-tiled kernels (steps 2
// to 5 and the 1x1 GEMMs) and the parameter list R2N_CONV_PARAMS that every
// kernel takes (so the launcher and the chain can swap them). A .cu file that
// needs them says `#include "conv_common.cuh"`; r2n/gpu/_runtime.py
// (kernel_source) pastes the text in, as NVRTC gets one string.
//
// Offsets into tensors (image, channel and plane products) are idx_t
// (64-bit); only per-axis coordinates are int. The launcher checks that every
// size it passes as int (and H + 2 * padding, H + stride) fits in int32 before
// launching.

#pragma once

// Epilogue flags (``flags``, a bit set):
#define R2N_CONV_BIAS 1      // add bias[co]
#define R2N_CONV_ADD 2       // input = x slice + add slice (the chain's x_i + y_{i-1})
#define R2N_CONV_RESIDUAL 4  // add residual[n, out_c0 + co, p] before the activation
// activation: 0 none, 1 ReLU, 2 LeakyReLU(negative_slope).
// side_mode: 0 none, 1 copy chunk (stride 1), 2 3x3 average pool, stride sh,
// padding 1, count_include_pad=True (every window then divides by 9).

template <typename T>
__device__ inline T conv_activation(T v, int activation, T negative_slope) {
    // Written so that NaN propagates, as PyTorch's relu / leaky_relu.
    if (activation == 1) return v < T(0) ? T(0) : v;
    if (activation == 2) return v < T(0) ? v * negative_slope : v;
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
                                  int co, int flags, int activation, T negative_slope) {
    if (flags & R2N_CONV_BIAS) acc += bias[co];
    if (flags & R2N_CONV_RESIDUAL) acc += residual[out_idx];
    out[out_idx] = conv_activation(acc, activation, negative_slope);
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

// The side job in the grid of the GEMM-tiled kernels (steps 2 to 5, the 1x1
// GEMMs): x = pixel tiles + side_blocks extra blocks, y = channel tiles,
// z = images * groups. In an extra block (blockIdx.x >= pixel tiles) this runs
// the block's share of the chain's last chunk and returns true; in a GEMM
// block it returns false.
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

// ------------------------------------------------------------------------- //
// The GEMM-tiled kernels' loads
// ------------------------------------------------------------------------- //
//
// Per (image, group) the conv is a GEMM (C_out_g x K) * (K x H_out*W_out)
// whose right matrix (im2col) is never materialised: row k of it is input
// channel c = k / (kH kW) at tap (i, j), i.e. input pixel (oy sh - ph + i dh,
// ox sw - pw + j dw) for output pixel (oy, ox).

// Rows k0 .. k0 + BK - 1 of a K slice, decoded by the block's first BK threads
// into tab: input channel in tab[0 : BK], tap offsets dy = i * dh in
// tab[BK : 2 BK] and dx = j * dw in tab[2 BK : 3 BK]. Once per slice, so that
// the loads do no integer division (kH, kW are runtime values: the compiler
// cannot strength-reduce k / (kH kW), and decoded per load it cost about as
// many instructions as the FMAs). Rows k >= K are decoded but never loaded.
template <int BK>
__device__ inline void conv_decode_k_rows(int k0, int* tab, int khw, int kw, int dh, int dw) {
    const int r = threadIdx.x;
    if (r < BK) {
        const int k = k0 + r;
        const int c = k / khw, t = k - c * khw, i = t / kw;
        tab[r] = c;
        tab[BK + r] = i * dh;
        tab[2 * BK + r] = (t - i * kw) * dw;
    }
}

// Element (row kr of a slice decoded into tab, this thread's pixel) of the
// im2col matrix: input (iy0 + dy, ix0 + dx) of channel c, summed with the
// addend slice when flags say so, 0 in the padding. (iy0, ix0) = (oy sh - ph,
// ox sw - pw); x_base, add_base: the group's first channel plane.
template <typename T, int BK>
__device__ inline T conv_load_im2col(const T* x, idx_t x_base, const T* add, idx_t add_base,
                                     idx_t plane_in, const int* tab, int kr, int iy0, int ix0,
                                     int h, int w, int flags) {
    const idx_t c_off = (idx_t)tab[kr] * plane_in;
    return conv_load_input(x, x_base + c_off, add, add_base + c_off, iy0 + tab[BK + kr],
                           ix0 + tab[2 * BK + kr], h, w, flags);
}

// The same element's two terms, not summed, for an input with an addend: the
// input's into v, the addend's into a, both left as they are (the caller's
// zeros) in the padding, so that v + a is conv_load_im2col's value bit for bit
// (x + add, or 0 + 0 outside the image). For the pipelined bodies, which sum
// the two when they store the slice into shared memory: an add right after
// the loads made each thread wait for every element's round trip in turn
// (SASS; conv_4_pipelined.cu says more).
template <typename T, int BK>
__device__ inline void conv_load_im2col_terms(const T* x, idx_t x_base, const T* add,
                                              idx_t add_base, idx_t plane_in, const int* tab,
                                              int kr, int iy0, int ix0, int h, int w, T& v,
                                              T& a) {
    const idx_t c_off = (idx_t)tab[kr] * plane_in;
    const int iy = iy0 + tab[BK + kr], ix = ix0 + tab[2 * BK + kr];
    if (iy < 0 || iy >= h || ix < 0 || ix >= w) return;
    const idx_t off = (idx_t)iy * w + ix;
    v = x[x_base + c_off + off];
    a = add[add_base + c_off + off];
}

// The right matrix of a 1x1 / stride-1 / padding-0 conv is the input plane
// itself (C_in_g x H*W, pixels contiguous): element (k, p), no im2col
// arithmetic (gemm_1x1.cu).
template <typename T>
__device__ inline T conv_load_plane(const T* x, idx_t x_base, const T* add, idx_t add_base,
                                    idx_t plane_in, int k, idx_t p, int flags) {
    const idx_t off = (idx_t)k * plane_in + p;
    T v = x[x_base + off];
    if (flags & R2N_CONV_ADD) v += add[add_base + off];
    return v;
}

// The same plane average-pooled on load (gemm_1x1.cu's "d" shortcut): the
// window of kernel = stride = (sh, sw) at (iy0, ix0) = (oy sh, ox sw), clipped
// to the image (ceil mode: the last window may stick out), divided by the
// elements inside (count_include_pad=False).
template <typename T>
__device__ inline T conv_load_avg_pool(const T* x, idx_t x_base, idx_t plane_in, int k, int iy0,
                                       int ix0, int sh, int sw, int h, int w) {
    const int y1 = iy0 + sh < h ? iy0 + sh : h;
    const int x1 = ix0 + sw < w ? ix0 + sw : w;
    const T* plane = x + x_base + (idx_t)k * plane_in;
    T v = T(0);
    for (int iy = iy0; iy < y1; ++iy)
        for (int ix = ix0; ix < x1; ++ix) v += plane[(idx_t)iy * w + ix];
    return v / T((y1 - iy0) * (x1 - ix0));
}

// The right matrices the GEMM bodies load (their LOAD template parameter):
// im2col columns of any conv (conv_load_im2col), the plain plane of a 1x1 /
// stride-1 / pad-0 conv (conv_load_plane), that plane average-pooled on load
// (conv_load_avg_pool: the "d" shortcut), and the plane followed by the
// shortcut's rows (R2N_CONV_MORE_PARAMS below: conv3 + shortcut in one GEMM).
#define R2N_LOAD_IM2COL 0
#define R2N_LOAD_PLANE 1
#define R2N_LOAD_AVG_POOL 2
#define R2N_LOAD_PLANE_SHORTCUT 3

// ------------------------------------------------------------------------- //
// Beyond the ladder: split-K and a K-concatenated shortcut (conv_gemm.cu)
// ------------------------------------------------------------------------- //
//
// The fused launchers' GEMM kernels (conv_gemm.cu, conv_gemm_tensor_core.cu)
// take R2N_CONV_MORE_PARAMS after R2N_CONV_PARAMS; the ladder's kernels pass
// R2N_CONV_MORE_NONE to the bodies they share with them, which makes every
// extra branch below dead code there.
//
//   partial, k_splits, split-K. With k_splits > 1 the grid's y is k_splits x
//   tile_counts        the channel tiles (blockIdx.y = split * channel tiles +
//                      channel tile); a block sums only the K slices of its
//                      split (conv_split_k_range) and stores the raw sums in
//                      partial[split][n][co][p] (k_splits x N x C_out x
//                      H_out*W_out), then counts itself in tile_counts (one int
//                      per output tile, zero before the launch); the block that
//                      arrives last adds the splits in split order 0 .. k_splits
//                      - 1 (deterministic), applies the epilogue and sets the
//                      count back to zero (conv_split_k_finish), so the next
//                      launch, or a CUDA graph's next replay, starts clean.
//   sc_x ... sc_pool   the bottleneck's shortcut conv as more rows of the
//                      GEMM's right matrix (R2N_LOAD_PLANE_SHORTCUT): rows
//                      K1 .. K1 + sc_c - 1 (K1 = C_in of the main 1x1 conv) are
//                      channels 0 .. sc_c - 1 of sc_x (N x sc_c_total x sc_h x
//                      sc_w) at output pixel (oy, ox), sampled at (oy sc_sh,
//                      ox sc_sw) (a strided 1x1 conv) or, with sc_pool, averaged
//                      over the sc_sh x sc_sw window there (the "d" shortcut:
//                      ceil mode, count_include_pad=False). The weight rows are
//                      [W3 | W_shortcut] and the bias b3 + b_shortcut, so one
//                      GEMM computes conv3(t2) + shortcut(x).
#define R2N_CONV_MORE_PARAMS                                                           \
    T *partial, int k_splits, int *tile_counts, const T *sc_x, idx_t sc_c_total, int sc_c, \
        int sc_h, int sc_w, int sc_sh, int sc_sw, int sc_pool
#define R2N_CONV_MORE_ARGS \
    partial, k_splits, tile_counts, sc_x, sc_c_total, sc_c, sc_h, sc_w, sc_sh, sc_sw, sc_pool
// No split, no shortcut (inside a template with parameter T).
#define R2N_CONV_MORE_NONE                                                                    \
    static_cast<T*>(nullptr), 1, static_cast<int*>(nullptr), static_cast<const T*>(nullptr), \
        idx_t(0), 0, 1, 1, 1, 1, 0

// The K slices [s_begin, s_end) of split `split` of k_splits: consecutive runs
// of ceil(n_slices / k_splits) slices (the launcher picks k_splits so that no
// split is empty; an empty one would store zeros).
__device__ inline void conv_split_k_range(int n_slices, int k_splits, int split, int& s_begin,
                                          int& s_end) {
    const int per = (n_slices + k_splits - 1) / k_splits;
    s_begin = split * per < n_slices ? split * per : n_slices;
    s_end = s_begin + per < n_slices ? s_begin + per : n_slices;
}

// Element (shortcut channel c, output pixel (oy, ox)) of the shortcut's input:
// sampled at (oy sh, ox sw), or the sh x sw window there averaged (sc_pool).
// sc_base: image n's first channel plane of sc_x.
template <typename T>
__device__ inline T conv_load_shortcut(const T* sc_x, idx_t sc_base, idx_t sc_plane, int c, int oy,
                                       int ox, int sc_sh, int sc_sw, int sc_h, int sc_w,
                                       int sc_pool) {
    const int iy0 = oy * sc_sh, ix0 = ox * sc_sw;
    if (sc_pool)
        return conv_load_avg_pool(sc_x, sc_base, sc_plane, c, iy0, ix0, sc_sh, sc_sw, sc_h, sc_w);
    return sc_x[sc_base + (idx_t)c * sc_plane + (idx_t)iy0 * sc_w + ix0];
}

// The store of one GEMM output: the fused epilogue (conv_store), or under
// split-K the raw sum into the block's split of ``partial``.
template <typename T>
__device__ inline void conv_store_or_partial(T acc, T* out, const T* bias, const T* residual,
                                             idx_t out_idx, int co, int flags, int activation,
                                             T negative_slope, T* partial, int k_splits,
                                             int split, idx_t n, int n_img, int c_out,
                                             idx_t plane_out, idx_t p) {
    if (k_splits > 1)
        partial[(((idx_t)split * n_img + n) * c_out + co) * plane_out + p] = acc;
    else
        conv_store(acc, out, bias, residual, out_idx, co, flags, activation, negative_slope);
}

// Split-K's reduction, in the launch itself. Every block of a split grid
// calls this (all its threads, after storing its BM x BN partial tile with
// conv_store_or_partial) for its output tile of image-group ng:
//   1. each thread fences its partial stores (__threadfence: visible to the
//      whole GPU before the count says so), the block meets at a barrier,
//      and thread 0 adds 1 to the tile's count;
//   2. the block that brings the count to k_splits is the last of the tile:
//      every other split's partial tile is in memory. It alone reads the
//      k_splits partials of each output (volatile loads: from L2, never a
//      stale L1 line), adds them in split order 0 .. k_splits - 1, exactly as
//      the former second launch did (so the result does not depend on which
//      block comes last, and is bit-identical to it), applies the fused
//      epilogue (conv_store: bias, residual, activation, the output's channel
//      slice) and sets the count back to 0 for the next launch.
// No block waits for another, so this is correct whatever the order or
// residency of blocks (the CPU emulator runs them one after another). The
// tile's threads walk its BM * BN outputs in pixel order (coalesced loads),
// independently of how the GEMM body mapped them.
template <typename T, int BM, int BN, int NT>
__device__ inline void conv_split_k_finish(const T* partial, int k_splits, int* tile_counts,
                                           int side_blocks, idx_t ng, int groups, T* out,
                                           const T* bias, const T* residual, idx_t out_c_total,
                                           idx_t out_c0, int n_img, int c_out, int h_out,
                                           int w_out, int flags, int activation,
                                           T negative_slope) {
    // The tile's coordinates again from the grid (not kept live through the
    // GEMM's loop by the caller: registers are tight there).
    const int channel_tiles = gridDim.y / k_splits;
    const int m_tile = blockIdx.y % channel_tiles;
    const idx_t pixel_tiles = (idx_t)gridDim.x - side_blocks;
    const idx_t tile = (ng * channel_tiles + m_tile) * pixel_tiles + blockIdx.x;
    __threadfence();
    __syncthreads();  // every thread's partial stores are fenced
    int last = 0;
    if (threadIdx.x == 0) last = atomicAdd(tile_counts + tile, 1) == k_splits - 1;
    if (!__syncthreads_or(last)) return;
    __threadfence();  // the other splits' partials, seen through the count, are read after it
    const volatile T* parts = partial;
    const idx_t plane_out = (idx_t)h_out * w_out;
    const idx_t per_split = (idx_t)n_img * c_out * plane_out;
    const idx_t n = ng / groups;
    const int c_out_g = c_out / groups, g = (int)(ng % groups);
    const int m0 = m_tile * BM;
    const idx_t p0 = (idx_t)blockIdx.x * BN;
    for (int e = threadIdx.x; e < BM * BN; e += NT) {
        const int gm = m0 + e / BN;
        const idx_t p = p0 + e % BN;
        if (gm >= c_out_g || p >= plane_out) continue;
        const int co = g * c_out_g + gm;
        const idx_t i = (n * c_out + co) * plane_out + p;
        T acc = parts[i];
        for (int s = 1; s < k_splits; ++s) acc += parts[(idx_t)s * per_split + i];
        conv_store(acc, out, bias, residual, (n * out_c_total + out_c0 + co) * plane_out + p, co,
                   flags, activation, negative_slope);
    }
    if (threadIdx.x == 0) tile_counts[tile] = 0;
}

// conv_split_k_finish as a call rather than inlined (OUTLINE): the GEMM
// bodies call conv_split_k_end, which picks. Inlined, its values raise the
// register pressure of the whole kernel: float64's 4 x 4 tiles sit at the
// 128-register cap of two blocks per SM, and the conv3 + shortcut GEMM then
// spilled 48 bytes (sm_80); the tensor-core GEMMs' narrow tile 4 bytes (tf32,
// 1x1, sm_80). As a call (once per tile and image, at the end of the block)
// none spills and those kernels keep their registers; step 4's float32 GEMMs
// inline it (no spills either way, and no call).
template <typename T, int BM, int BN, int NT>
__device__ __noinline__ void conv_split_k_finish_call(const T* partial, int k_splits,
                                                      int* tile_counts, int side_blocks, idx_t ng,
                                                      int groups, T* out, const T* bias,
                                                      const T* residual, idx_t out_c_total,
                                                      idx_t out_c0, int n_img, int c_out,
                                                      int h_out, int w_out, int flags,
                                                      int activation, T negative_slope) {
    conv_split_k_finish<T, BM, BN, NT>(partial, k_splits, tile_counts, side_blocks, ng, groups,
                                       out, bias, residual, out_c_total, out_c0, n_img, c_out,
                                       h_out, w_out, flags, activation, negative_slope);
}

template <typename T, int BM, int BN, int NT, bool OUTLINE>
__device__ inline void conv_split_k_end(const T* partial, int k_splits, int* tile_counts,
                                        int side_blocks, idx_t ng, int groups, T* out,
                                        const T* bias, const T* residual, idx_t out_c_total,
                                        idx_t out_c0, int n_img, int c_out, int h_out, int w_out,
                                        int flags, int activation, T negative_slope) {
    if (OUTLINE)
        conv_split_k_finish_call<T, BM, BN, NT>(partial, k_splits, tile_counts, side_blocks, ng,
                                                groups, out, bias, residual, out_c_total, out_c0,
                                                n_img, c_out, h_out, w_out, flags, activation,
                                                negative_slope);
    else
        conv_split_k_finish<T, BM, BN, NT>(partial, k_splits, tile_counts, side_blocks, ng,
                                           groups, out, bias, residual, out_c_total, out_c0,
                                           n_img, c_out, h_out, w_out, flags, activation,
                                           negative_slope);
}

// Threads per block of a BM x BN block tile of TM x TN thread tiles (steps 3
// and 4, gemm_1x1.cu), and the blocks per SM their register budget must
// allow: the 4 x 4 tiles keep <= 128 registers per thread (at least 16 warps
// per SM to hide latency); the 8 x 8 / 8 x 4 tiles need up to 255. For
// __launch_bounds__ inside a template with parameters BM, BN, TM, TN.
#define R2N_GEMM_THREADS ((BM / TM) * (BN / TN))
#define R2N_GEMM_MIN_BLOCKS (TM * TN <= 16 ? 512 / R2N_GEMM_THREADS : 1)

// The parameter list every kernel shares (so the launcher and the chain can
// swap them): input slice (+ optional addend slice), weights, bias, residual,
// output slice, sizes, conv geometry, epilogue, the side job. The scalars, in
// this order, are r2n/gpu/conv.py's ConvScalars (a test compares the names).
#define R2N_CONV_PARAMS                                                                      \
    const T *x, idx_t x_c_total, idx_t x_c0, const T *add, idx_t add_c_total, idx_t add_c0, \
        const T *weight, const T *bias, const T *residual, T *out, idx_t out_c_total,         \
        idx_t out_c0, int n_img, int c_in, int h, int w, int c_out, int h_out, int w_out,     \
        int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int groups,           \
        int flags, int activation, T negative_slope, int side_mode, idx_t side_src_c0,        \
        idx_t side_dst_c0, int side_c, int side_blocks
// The same parameters as arguments: a kernel passing all of them on to a
// device function (one body, several kernels).
#define R2N_CONV_ARGS                                                                        \
    x, x_c_total, x_c0, add, add_c_total, add_c0, weight, bias, residual, out, out_c_total,  \
        out_c0, n_img, c_in, h, w, c_out, h_out, w_out, kh, kw, sh, sw, ph, pw, dh, dw,      \
        groups, flags, activation, negative_slope, side_mode, side_src_c0, side_dst_c0,      \
        side_c, side_blocks
