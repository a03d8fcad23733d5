// elementwise.cu: activations and inference batch norm, one thread per element.
//
// Every kernel walks its elements with a grid-stride loop over a 64-bit index,
// so one launch of a capped grid covers tensors of any size (> 2^31 included).
// Launchers: r2n/gpu/elementwise.py.
//
//   relu_kernel        out = x > 0 ? x : 0, NaN kept (as PyTorch)
//   leaky_relu_kernel  out = x > 0 ? x : x * slope
//   sigmoid_kernel     1 / (1 + exp(-x)), exp taken only of -|x| (never overflows)
//   bn_scale_kernel    scale[c] = weight[c] / sqrt(var[c] + eps)  (weight optional)
//   batch_norm_kernel  out = (x - mean[c]) * scale[c] + bias[c], c = (i / inner) % C
//   fold_weight_kernel out = w * scale[row], row = i / inner
//   fold_bias_kernel   out[c] = (conv_bias[c] - mean[c]) * scale[c] + bias[c]
//
// Optional vectors come with a has_* flag; when it is 0 the pointer is a dummy
// that is never read.

template <typename T>
__global__ void relu_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t n) {
    for (idx_t i = r2n_global_thread_1d(); i < n; i += r2n_grid_threads_1d()) {
        const T v = x[i];
        out[i] = v <= T(0) ? T(0) : v;  // NaN <= 0 is false: NaN stays; -0 gives +0
    }
}

template <typename T>
__global__ void leaky_relu_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t n,
                                  T negative_slope) {
    for (idx_t i = r2n_global_thread_1d(); i < n; i += r2n_grid_threads_1d()) {
        const T v = x[i];
        out[i] = v > T(0) ? v : v * negative_slope;
    }
}

template <typename T>
__global__ void sigmoid_kernel(const T* __restrict__ x, T* __restrict__ out, idx_t n) {
    for (idx_t i = r2n_global_thread_1d(); i < n; i += r2n_grid_threads_1d()) {
        out[i] = r2n_sigmoid(x[i]);
    }
}

template <typename T>
__global__ void bn_scale_kernel(const T* __restrict__ var, const T* __restrict__ weight,
                                int has_weight, T eps, T* __restrict__ scale, int channels) {
    // Grid-stride: the launcher caps the grid (grid_1d), so one thread may own several c.
    for (idx_t c = r2n_global_thread_1d(); c < channels; c += r2n_grid_threads_1d()) {
        const T inv_std = T(1) / r2n_sqrt(var[c] + eps);
        scale[c] = has_weight ? weight[c] * inv_std : inv_std;
    }
}

template <typename T>
__global__ void batch_norm_kernel(const T* __restrict__ x, const T* __restrict__ mean,
                                  const T* __restrict__ scale, const T* __restrict__ bias,
                                  int has_bias, T* __restrict__ out, idx_t n, idx_t inner,
                                  int channels) {
    for (idx_t i = r2n_global_thread_1d(); i < n; i += r2n_grid_threads_1d()) {
        const int c = static_cast<int>((i / inner) % channels);
        T v = (x[i] - mean[c]) * scale[c];
        if (has_bias) v += bias[c];
        out[i] = v;
    }
}

template <typename T>
__global__ void fold_weight_kernel(const T* __restrict__ w, const T* __restrict__ scale,
                                   T* __restrict__ out, idx_t n, idx_t inner) {
    for (idx_t i = r2n_global_thread_1d(); i < n; i += r2n_grid_threads_1d()) {
        out[i] = w[i] * scale[i / inner];
    }
}

template <typename T>
__global__ void fold_bias_kernel(const T* __restrict__ conv_bias, int has_conv_bias,
                                 const T* __restrict__ mean, const T* __restrict__ scale,
                                 const T* __restrict__ bias, int has_bias, T* __restrict__ out,
                                 int channels) {
    for (idx_t c = r2n_global_thread_1d(); c < channels; c += r2n_grid_threads_1d()) {
        const T b = has_conv_bias ? conv_bias[c] - mean[c] : -mean[c];
        T v = b * scale[c];
        if (has_bias) v += bias[c];
        out[c] = v;
    }
}
