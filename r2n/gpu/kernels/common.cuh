// common.cuh: device helpers shared by every r2n CUDA source.
//
// r2n/gpu/_runtime.py prepends this file, as text, to each kernels/<area>.cu
// before compiling (NVRTC gets one string, so no #include of project files).
// The same text is compiled by g++ under the CPU emulator (tests/cuda_emu),
// where R2N_EMULATE is defined and a prelude supplies threadIdx,
// __syncthreads, warp shuffles and the rest.

#pragma once

// 64-bit index type: any offset into a tensor that may exceed 2^31 elements
// is computed in idx_t, never in int.
using idx_t = long long;

// Dynamic shared memory, typed. `extern __shared__ T name[]` cannot be used in
// a template instantiated for two T (the declarations conflict), so every
// kernel reinterprets one byte array. Usage: R2N_DYNAMIC_SHARED(T, tile);
#ifdef R2N_EMULATE
#define R2N_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(r2n_emu::dynamic_shared())
#else
#define R2N_DYNAMIC_SHARED(T, name)                                   \
    extern __shared__ __align__(16) unsigned char r2n_dynamic_smem_[]; \
    T* name = reinterpret_cast<T*>(r2n_dynamic_smem_)
#endif

#define R2N_WARP_SIZE 32
#define R2N_FULL_MASK 0xffffffffu

// The global linear index of this thread in a 1-D launch, in 64 bits.
__device__ __forceinline__ idx_t r2n_global_thread_1d() {
    return static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// The total number of threads of a 1-D launch (grid-stride loops), in 64 bits.
__device__ __forceinline__ idx_t r2n_grid_threads_1d() {
    return static_cast<idx_t>(gridDim.x) * blockDim.x;
}

// exp in the precision of T: expf for float, exp for double.
__device__ __forceinline__ float r2n_exp(float x) { return expf(x); }
__device__ __forceinline__ double r2n_exp(double x) { return exp(x); }

__device__ __forceinline__ float r2n_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double r2n_sqrt(double x) { return sqrt(x); }

// -infinity of T (NVRTC has no INFINITY macro without math headers).
template <typename T>
__device__ __forceinline__ T r2n_neg_inf();
template <>
__device__ __forceinline__ float r2n_neg_inf<float>() {
    return __int_as_float(0xff800000u);
}
template <>
__device__ __forceinline__ double r2n_neg_inf<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

// 1 / (1 + exp(-v)) without overflow: exp is only taken of -|v| <= 0.
template <typename T>
__device__ __forceinline__ T r2n_sigmoid(T v) {
    const T e = r2n_exp(v < T(0) ? v : -v);  // exp(-|v|), in (0, 1]; NaN stays NaN
    return v >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// max that propagates NaN (PyTorch's max_pool2d and relu do; fmax does not).
template <typename T>
__device__ __forceinline__ T r2n_max_nan(T a, T b) {
    return (a != a || a > b) ? a : b;
}

// Sum of v over the 32 lanes of a full warp; every lane gets the total.
template <typename T>
__device__ __forceinline__ T r2n_warp_sum(T v) {
#pragma unroll
    for (int offset = R2N_WARP_SIZE / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(R2N_FULL_MASK, v, offset);
    }
    return v;
}
