// layers.cu: linear, space_to_depth, blur_pool2d and squeeze_excite's pieces.
// Launchers: r2n/gpu/layers.py.
//
//   linear's ladder (r2n/gpu/layers.py LADDER), out (M, N) = x (M, K) @ w (N, K)^T + b:
//     1_naive        linear_1_kernel: one thread per output element, a dot product
//                    over K read straight from global memory (a warp's threads
//                    read 32 different rows of w: K apart, uncoalesced).
//     2_smem_tiles   linear_2_kernel: 16 x 16 output tiles; x and w are staged in
//                    shared memory 16 columns of K at a time with coalesced loads,
//                    and each element loaded is reused by 16 threads. The w tile
//                    has a padding column so reading it by row is bank-conflict free.
//     3_warp_reduce  linear_3_kernel: one warp per output element; the lanes read
//                    consecutive k of the x row and the w row (coalesced) and a
//                    butterfly shuffle sums them. For few rows (a classifier head
//                    on a small batch), where a 16-row tile would sit mostly idle.
//   space_to_depth_kernel  one thread per output element:
//                   out[n, (i*b + j)*C + c, h, w] = x[n, c, b*h + i, b*w + j]
//   blur_pool2d_kernel     one thread per output element: [1,2,1]/4 along rows
//                   then along columns (the reference's order), reflect padding 1,
//                   stride 2.
//   se_fc_kernel           squeeze_excite's small dense layers: out (N, M) =
//                   act(in (N, K) @ w (M, K)^T + b), act = relu (0) or sigmoid (1);
//                   one thread per output (M and K are channel counts).
//   se_scale_kernel        out = x * gate[n, c] per element.

#define R2N_LINEAR_TILE 16

template <typename T>
__global__ void linear_1_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ bias, int has_bias, T* __restrict__ out,
                                idx_t rows, int out_features, int in_features) {
    const idx_t total = rows * out_features;
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int j = static_cast<int>(i % out_features);
        const idx_t m = i / out_features;
        const T* xr = x + m * in_features;
        const T* wr = w + static_cast<idx_t>(j) * in_features;
        T acc = T(0);
        for (int k = 0; k < in_features; ++k) acc += xr[k] * wr[k];
        out[i] = has_bias ? acc + bias[j] : acc;
    }
}

// block (16, 16); grid.x covers the M rows (up to 2^31 - 1 tiles), grid.y the N
// columns (the host checks N <= 65535 * 16).
template <typename T>
__global__ void linear_2_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ bias, int has_bias, T* __restrict__ out,
                                idx_t rows, int out_features, int in_features) {
    __shared__ T x_tile[R2N_LINEAR_TILE][R2N_LINEAR_TILE];
    __shared__ T w_tile[R2N_LINEAR_TILE][R2N_LINEAR_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const idx_t row0 = static_cast<idx_t>(blockIdx.x) * R2N_LINEAR_TILE;
    const int col0 = blockIdx.y * R2N_LINEAR_TILE;
    const idx_t m = row0 + ty;   // the output row this thread computes
    const int j = col0 + tx;     // and its column
    const int w_row = col0 + ty; // the w row this thread loads
    T acc = T(0);
    for (int k0 = 0; k0 < in_features; k0 += R2N_LINEAR_TILE) {
        const int k = k0 + tx;
        x_tile[ty][tx] = (m < rows && k < in_features) ? x[m * in_features + k] : T(0);
        w_tile[ty][tx] = (w_row < out_features && k < in_features)
                             ? w[static_cast<idx_t>(w_row) * in_features + k]
                             : T(0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < R2N_LINEAR_TILE; ++kk) acc += x_tile[ty][kk] * w_tile[tx][kk];
        __syncthreads();  // the next loads overwrite the tiles
    }
    if (m < rows && j < out_features) {
        out[m * out_features + j] = has_bias ? acc + bias[j] : acc;
    }
}

// block: a multiple of 32 threads (host check); warps stride over the outputs.
template <typename T>
__global__ void linear_3_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ bias, int has_bias, T* __restrict__ out,
                                idx_t rows, int out_features, int in_features) {
    const int lane = threadIdx.x % R2N_WARP_SIZE;
    const idx_t total = rows * out_features;
    const idx_t warps_per_grid = r2n_grid_threads_1d() / R2N_WARP_SIZE;
    // The loop bound is the same for all lanes of a warp: the full-mask shuffles
    // are reached by all 32 lanes together.
    for (idx_t i = r2n_global_thread_1d() / R2N_WARP_SIZE; i < total; i += warps_per_grid) {
        const int j = static_cast<int>(i % out_features);
        const T* xr = x + (i / out_features) * in_features;
        const T* wr = w + static_cast<idx_t>(j) * in_features;
        T acc = T(0);
        for (int k = lane; k < in_features; k += R2N_WARP_SIZE) acc += xr[k] * wr[k];
        acc = r2n_warp_sum(acc);
        if (lane == 0) out[i] = has_bias ? acc + bias[j] : acc;
    }
}

template <typename T>
__global__ void space_to_depth_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t total,
                                      int channels, int h, int w, int block) {
    const int h_out = h / block, w_out = w / block;
    const int c_out = block * block * channels;
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int ox = static_cast<int>(i % w_out);
        const int oy = static_cast<int>((i / w_out) % h_out);
        const int oc = static_cast<int>((i / (static_cast<idx_t>(w_out) * h_out)) % c_out);
        const idx_t n = i / (static_cast<idx_t>(w_out) * h_out * c_out);
        const int c = oc % channels;
        const int bi = (oc / channels) / block, bj = (oc / channels) % block;
        const idx_t plane = n * channels + c;
        out[i] = x[(plane * h + static_cast<idx_t>(block) * oy + bi) * w + block * ox + bj];
    }
}

// Index of padded position p (0 .. size + 1) in the input, reflect padding 1.
// In 64 bits: 2 * size and p = 2 * oy + 2 overflow an int for sizes near 2^31.
__device__ __forceinline__ idx_t r2n_reflect(idx_t p, idx_t size) {
    const idx_t q = p - 1;
    return q < 0 ? -q : (q >= size ? 2 * size - 2 - q : q);
}

template <typename T>
__global__ void blur_pool2d_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t total,
                                   int h, int w, int h_out, int w_out) {
    const T t0 = T(0.25), t1 = T(0.5), t2 = T(0.25);
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int ox = static_cast<int>(i % w_out);
        const int oy = static_cast<int>((i / w_out) % h_out);
        const idx_t plane = i / (static_cast<idx_t>(w_out) * h_out);
        const T* src = x + plane * h * w;
        const T* r0 = src + r2n_reflect(2 * static_cast<idx_t>(oy), h) * w;
        const T* r1 = src + r2n_reflect(2 * static_cast<idx_t>(oy) + 1, h) * w;
        const T* r2 = src + r2n_reflect(2 * static_cast<idx_t>(oy) + 2, h) * w;
        T cols[3];
#pragma unroll
        for (int a = 0; a < 3; ++a) {
            const idx_t cx = r2n_reflect(2 * static_cast<idx_t>(ox) + a, w);
            cols[a] = t0 * r0[cx] + t1 * r1[cx] + t2 * r2[cx];
        }
        out[i] = t0 * cols[0] + t1 * cols[1] + t2 * cols[2];
    }
}

template <typename T>
__global__ void se_fc_kernel(const T* __restrict__ in, const T* __restrict__ w,
                             const T* __restrict__ bias, int has_bias, T* __restrict__ out,
                             idx_t rows, int out_features, int in_features, int activation) {
    const idx_t total = rows * out_features;
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        const int j = static_cast<int>(i % out_features);
        const idx_t n = i / out_features;
        const T* a = in + n * in_features;
        const T* wr = w + static_cast<idx_t>(j) * in_features;
        T acc = T(0);
        for (int k = 0; k < in_features; ++k) acc += a[k] * wr[k];
        if (has_bias) acc += bias[j];
        out[i] = activation == 0 ? (acc <= T(0) ? T(0) : acc) : r2n_sigmoid(acc);
    }
}

template <typename T>
__global__ void se_scale_kernel(const T* __restrict__ x, const T* __restrict__ gate,
                                T* __restrict__ out, idx_t total, idx_t plane_size) {
    for (idx_t i = r2n_global_thread_1d(); i < total; i += r2n_grid_threads_1d()) {
        out[i] = x[i] * gate[i / plane_size];
    }
}
