// pool.cu: max / average pooling and the global average pool, NCHW.
// Launchers: r2n/gpu/pool.py.
//
//   max_pool2d_kernel   one thread per output element (grid-stride, 64-bit index);
//                       max over the window's real input elements (padding never
//                       wins), NaN propagates as in PyTorch.
//   avg_pool2d_kernel   one thread per output element; sums the real input
//                       elements (padding adds zeros) and divides by PyTorch's
//                       divisor: the window clipped to the padded input
//                       (count_include_pad) or the number of real elements.
//   global_avg_pool2d's ladder (r2n/gpu/pool.py LADDER):
//     1_naive        global_avg_pool_1_kernel: one thread sums one (n, c) plane
//                    serially, the definition. A warp's 32 threads read 32
//                    planes, so its loads are H*W apart (uncoalesced), and there
//                    are only N*C threads.
//     2_warp_reduce  global_avg_pool_2_kernel: one warp per plane; lanes read
//                    consecutive elements (coalesced), then a butterfly
//                    __shfl_xor_sync sum; 8 planes per block.

// The rows (or columns) of window `o` inside the input: [*lo, *hi).
__device__ __forceinline__ void r2n_pool_window(int o, int stride, int pad, int kernel, int size,
                                                int* lo, int* hi) {
    const int start = o * stride - pad;
    *lo = max(start, 0);
    *hi = min(start + kernel, size);
}

template <typename T>
__global__ void max_pool2d_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t total,
                                  int h, int w, int h_out, int w_out, int kh, int kw, int sh,
                                  int sw, int ph, int pw) {
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int ox = static_cast<int>(i % w_out);
        const int oy = static_cast<int>((i / w_out) % h_out);
        const idx_t plane = i / (static_cast<idx_t>(w_out) * h_out);  // n * C + c
        const T* src = x + plane * h * w;
        int y0, y1, x0, x1;
        r2n_pool_window(oy, sh, ph, kh, h, &y0, &y1);
        r2n_pool_window(ox, sw, pw, kw, w, &x0, &x1);
        T m = r2n_neg_inf<T>();  // every window holds at least one real element (checked on the host)
        for (int yy = y0; yy < y1; ++yy) {
            for (int xx = x0; xx < x1; ++xx) {
                const T v = src[static_cast<idx_t>(yy) * w + xx];
                if (v > m || v != v) m = v;
                if (m != m) break;
            }
        }
        out[i] = m;
    }
}

template <typename T>
__global__ void avg_pool2d_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t total,
                                  int h, int w, int h_out, int w_out, int kh, int kw, int sh,
                                  int sw, int ph, int pw, int count_include_pad) {
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int ox = static_cast<int>(i % w_out);
        const int oy = static_cast<int>((i / w_out) % h_out);
        const idx_t plane = i / (static_cast<idx_t>(w_out) * h_out);
        const T* src = x + plane * h * w;
        int y0, y1, x0, x1;
        r2n_pool_window(oy, sh, ph, kh, h, &y0, &y1);
        r2n_pool_window(ox, sw, pw, kw, w, &x0, &x1);
        T sum = T(0);
        for (int yy = y0; yy < y1; ++yy) {
            for (int xx = x0; xx < x1; ++xx) sum += src[static_cast<idx_t>(yy) * w + xx];
        }
        int div_h = y1 - y0, div_w = x1 - x0;
        if (count_include_pad) {  // the window clipped to the padded input, not to the input
            const int sy = oy * sh - ph, sx = ox * sw - pw;
            div_h = min(sy + kh, h + ph) - sy;
            div_w = min(sx + kw, w + pw) - sx;
        }
        // in T: div_h * div_w (up to (H + pad) * (W + pad)) can overflow an int
        out[i] = sum / (static_cast<T>(div_h) * static_cast<T>(div_w));
    }
}

template <typename T>
__global__ void global_avg_pool_1_kernel(const T* __restrict__ x, T* __restrict__ out,
                                         idx_t planes, idx_t plane_size) {
    for (idx_t p = r2n_global_thread_1d(); p < planes; p += r2n_grid_threads_1d()) {
        const T* src = x + p * plane_size;
        T sum = T(0);
        for (idx_t k = 0; k < plane_size; ++k) sum += src[k];
        out[p] = sum / static_cast<T>(plane_size);
    }
}

template <typename T>
__global__ void global_avg_pool_2_kernel(const T* __restrict__ x, T* __restrict__ out,
                                         idx_t planes, idx_t plane_size) {
    const int lane = threadIdx.x % R2N_WARP_SIZE;
    const idx_t warps_per_grid = r2n_grid_threads_1d() / R2N_WARP_SIZE;
    // The loop bound is the same for all lanes of a warp, so every lane reaches the
    // full-mask shuffles together. The block size is a multiple of 32 (host check).
    for (idx_t p = r2n_global_thread_1d() / R2N_WARP_SIZE; p < planes; p += warps_per_grid) {
        const T* src = x + p * plane_size;
        T sum = T(0);
        for (idx_t k = lane; k < plane_size; k += R2N_WARP_SIZE) sum += src[k];
        sum = r2n_warp_sum(sum);
        if (lane == 0) out[p] = sum / static_cast<T>(plane_size);
    }
}
