// selftest_kernels.cu: kernels that test the emulator itself (tests/test_cuda_emu.py).
//
// Compiled after r2n/gpu/kernels/common.cuh, like r2n's sources. Some are correct
// and must pass; the ones named planted_* carry a deliberate bug the emulator
// must report.
//
//   block_sum            shared-memory tree reduction, one partial sum per block (correct)
//   planted_missing_sync the same without the __syncthreads between tree levels
//   planted_missing_first_sync  the same without the barrier after the loads only
//   planted_oob_write    writes one element past the end of its output
//   planted_oob_before   writes one element before the start of its output
//   planted_oob_read     stages x[t + shift] in shared memory with a guard one element
//                        too wide on both sides; the bad values are never used
//   planted_write_race   every thread of a block writes the same element
//   planted_uninit_dyn   reads dynamic shared memory nobody wrote
//   planted_shared_overflow  indexes one element past the dynamic shared memory it got
//   planted_divergent_sync  half the block waits at one __syncthreads, half at another
//   planted_assert       fails an assert
//   warp_shuffles        __shfl_sync / _up / _down / _xor of lane values, with a width
//   warp_votes           __ballot_sync, __any_sync, __all_sync
//   warp_sum_partial     a full-mask warp sum in a block of 40 threads (reads absent lanes)
//   dynamic_reverse      reverses each block's slice through dynamic shared memory
//   grid_coordinates     writes thread/block coordinates of a 3-D grid of 3-D blocks
//   atomic_count         atomicAdd of 1 by every thread into one counter
//   scalar_args          out[0] = a * b + c, for int, long long, float, double scalars
//   planted_deadlock     half a warp at a shuffle, the other half at __syncthreads
//   alias_visible        two pointer arguments to one buffer see each other's writes
//   planted_overlap_race copies between overlapping views without a barrier
//   barrier_votes        __syncthreads_count / _or / _and

template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ partial, idx_t n) {
    __shared__ T buf[256];
    const idx_t i = r2n_global_thread_1d();
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

template <typename T>
__global__ void planted_missing_sync(const T* __restrict__ x, T* __restrict__ partial, idx_t n) {
    __shared__ T buf[256];
    const idx_t i = r2n_global_thread_1d();
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        // BUG: no __syncthreads(): the next level reads sums not yet written
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

template <typename T>
__global__ void planted_missing_first_sync(const T* __restrict__ x, T* __restrict__ partial,
                                           idx_t n) {
    __shared__ T buf[256];
    const idx_t i = r2n_global_thread_1d();
    buf[threadIdx.x] = i < n ? x[i] : T(0);
    // BUG: no __syncthreads(): the first level reads loads of other threads
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

template <typename T>
__global__ void planted_oob_write(T* out, idx_t n) {
    const idx_t i = r2n_global_thread_1d();
    if (i <= n) out[i] = T(1);  // BUG: <= writes out[n]
}

template <typename T>
__global__ void planted_oob_before(T* out, idx_t n) {
    const idx_t i = r2n_global_thread_1d();
    if (i < n) out[i - 1] = T(1);  // BUG: thread 0 writes out[-1]
}

// Thread t stages x[t + shift] in a tile and writes it out only when
// 0 <= t + shift < n; with `strict` == 0 the load's guard is one element too
// wide on both sides (the planted bug), so x[-1] or x[n] is read and then
// discarded: the output is still right, only the read is out of bounds.
template <typename T>
__global__ void planted_oob_read(const T* x, T* out, int n, int shift, int strict) {
    __shared__ T tile[64];
    const int t = threadIdx.x, j = t + shift;
    const bool in_range = j >= 0 && j < n;
    const bool load = strict ? in_range : (j >= -1 && j <= n);  // BUG unless strict
    tile[t] = load ? x[j] : T(0);
    __syncthreads();
    out[t] = in_range ? tile[t] : T(-1);
}

template <typename T>
__global__ void planted_write_race(T* out) {
    out[blockIdx.x] = T(threadIdx.x);  // BUG: the last writer wins
}

template <typename T>
__global__ void planted_uninit_dyn(T* out) {
    R2N_DYNAMIC_SHARED(T, tile);
    if (threadIdx.x > 0) tile[threadIdx.x] = T(threadIdx.x);
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x];  // BUG: tile[0] was never written
}

// Launched with blockDim.x - 1 elements of dynamic shared memory (or blockDim.x: correct).
template <typename T>
__global__ void planted_shared_overflow(T* out) {
    R2N_DYNAMIC_SHARED(T, tile);
    tile[threadIdx.x] = T(threadIdx.x);  // BUG when the launch gave one element too few
    __syncthreads();
    out[threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

template <typename T>
__global__ void planted_divergent_sync(T* out) {
    if (threadIdx.x % 2) {
        __syncthreads();
        out[threadIdx.x] = T(1);
    } else {
        __syncthreads();  // BUG: a different barrier
        out[threadIdx.x] = T(2);
    }
}

template <typename T>
__global__ void planted_assert(T* out, int n) {
    assert(threadIdx.x < n);
    out[threadIdx.x] = T(0);
}

// out_*[t] for thread t of a 1-D block; width and the lane offsets are arguments.
template <typename T>
__global__ void warp_shuffles(const T* __restrict__ x, T* idx_out, T* up_out, T* down_out,
                              T* xor_out, int src_lane, int delta, int lane_mask, int width) {
    const idx_t i = r2n_global_thread_1d();
    const T v = x[i];
    idx_out[i] = __shfl_sync(R2N_FULL_MASK, v, src_lane, width);
    up_out[i] = __shfl_up_sync(R2N_FULL_MASK, v, delta, width);
    down_out[i] = __shfl_down_sync(R2N_FULL_MASK, v, delta, width);
    xor_out[i] = __shfl_xor_sync(R2N_FULL_MASK, v, lane_mask, width);
}

__global__ void warp_votes(const int* __restrict__ pred, unsigned* ballot, int* any, int* all) {
    const idx_t i = r2n_global_thread_1d();
    ballot[i] = __ballot_sync(R2N_FULL_MASK, pred[i]);
    any[i] = __any_sync(R2N_FULL_MASK, pred[i]);
    all[i] = __all_sync(R2N_FULL_MASK, pred[i]);
}

template <typename T>
__global__ void warp_sum_partial(const T* __restrict__ x, T* out) {
    // BUG for blocks that are not a multiple of 32: lanes 8..31 of warp 1 do not exist
    const T s = r2n_warp_sum(x[threadIdx.x]);
    if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = s;
}

template <typename T>
__global__ void dynamic_reverse(const T* __restrict__ x, T* __restrict__ out, idx_t n) {
    R2N_DYNAMIC_SHARED(T, tile);
    const idx_t i = r2n_global_thread_1d();
    tile[threadIdx.x] = i < n ? x[i] : T(-1);
    __syncthreads();
    if (i < n) out[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// coords[6 * t + k]: threadIdx.xyz, blockIdx.xyz of the thread whose linear id is t.
__global__ void grid_coordinates(int* coords, int* dims) {
    const idx_t block = blockIdx.x + (idx_t)gridDim.x * (blockIdx.y + (idx_t)gridDim.y * blockIdx.z);
    const idx_t in_block = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const idx_t t = block * (blockDim.x * blockDim.y * blockDim.z) + in_block;
    int* c = coords + 6 * t;
    c[0] = threadIdx.x;
    c[1] = threadIdx.y;
    c[2] = threadIdx.z;
    c[3] = blockIdx.x;
    c[4] = blockIdx.y;
    c[5] = blockIdx.z;
    if (t == 0) {
        dims[0] = blockDim.x;
        dims[1] = blockDim.y;
        dims[2] = blockDim.z;
        dims[3] = gridDim.x;
        dims[4] = gridDim.y;
        dims[5] = gridDim.z;
    }
}

__global__ void atomic_count(int* counter) { atomicAdd(counter, 1); }

template <typename T, typename I>
__global__ void scalar_args(T* out, I a, T b, T c) {
    out[0] = T(a) * b + c;
}

// BUG: half of each warp waits at a full-mask shuffle that the other half never
// reaches (it waits at __syncthreads): a hang on a GPU, an error here.
__global__ void planted_deadlock(float* out) {
    float v = out[threadIdx.x];
    if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(R2N_FULL_MASK, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// a and b are the same buffer (or overlapping views): a write through a must be
// visible through b after the barrier. Thread t: a[t] = 10 t; then a[t] += b[t + 1].
template <typename T>
__global__ void alias_visible(T* a, const T* b, int n) {
    const int t = threadIdx.x;
    if (t < n) a[t] = T(10 * t);
    __syncthreads();
    const T next = (t + 1 < n) ? b[t + 1] : T(0);
    __syncthreads();
    if (t < n) a[t] += next;
}

// BUG when src and dst overlap (dst = buf[:-1], src = buf[1:]): thread t reads
// what thread t + 1 writes, with no barrier between.
template <typename T>
__global__ void planted_overlap_race(const T* src, T* dst, int n) {
    const int t = threadIdx.x;
    if (t < n) dst[t] = src[t];
}

// counts[0..2] = __syncthreads_count / _or / _and of (threadIdx.x % k == 0).
__global__ void barrier_votes(int* counts, int k) {
    const int pred = threadIdx.x % k == 0;
    const int count = __syncthreads_count(pred);
    const int any = __syncthreads_or(pred);
    const int all = __syncthreads_and(pred);
    if (threadIdx.x == 0) {
        counts[0] = count;
        counts[1] = any;
        counts[2] = all;
    }
}
