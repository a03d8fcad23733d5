// selftest_mma.cu: kernels that test the emulator's matrix instructions
// (tests/test_cuda_emu_mma.py), through r2n/gpu/kernels/mma.cuh as r2n's
// kernels call them. Compiled after common.cuh, with mma.cuh pasted in.
//
//   mma_from_registers   each lane loads its a, b, c registers from an array the
//                        test filled with the PTX ISA's layout, runs one mma.sync
//                        (.tf32 m16n8k8 or .bf16 m16n8k16), stores its d registers
//   convert_tf32         cvt.rna.tf32.f32 of every element
//   convert_bf16x2       cvt.rn.bf16x2.f32 of element pairs
//   ldmatrix_probe       fills shared memory, each lane passes the row address the
//                        test chose, one ldmatrix variant, stores the registers
//   cp_async_pipeline    tiles global -> shared with cp.async, double-buffered
//                        (commit, wait_group 1), read back by another thread; `mode`
//                        plants a bug: 1 reads before waiting, 2 waits one group too
//                        few, 3 drops the __syncthreads after the wait, 4 never
//                        waits, 5 zero-fills the odd threads' copies (correct)
//   cp_async_16_copy     16-byte copies of float4 groups, every other one zero-filled
//   cp_async_misaligned  a 16-byte copy to an address 4 bytes off
//   mma_partial_warp     every thread of a 40-thread block runs mma.sync
//   mma_exited_lane      lane 3 returns before the mma.sync of its warp
//   ldmatrix_misaligned  a row address that is 8 bytes off 16

#include "mma.cuh"

// regs: per thread (all warps of the block) a[4], b[2], c[4] as raw bits;
// d: per thread 4 floats.
__global__ void mma_from_registers(const unsigned* regs, float* d, int bf16) {
    const unsigned* r = regs + 10 * threadIdx.x;
    const unsigned a[4] = {r[0], r[1], r[2], r[3]};
    const unsigned b[2] = {r[4], r[5]};
    float acc[4];
    for (int i = 0; i < 4; ++i) acc[i] = __int_as_float(static_cast<int>(r[6 + i]));
    if (bf16)
        r2n_mma_bf16_m16n8k16(acc, a, b);
    else
        r2n_mma_tf32_m16n8k8(acc, a, b);
    for (int i = 0; i < 4; ++i) d[4 * threadIdx.x + i] = acc[i];
}

__global__ void convert_tf32(const float* x, unsigned* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = r2n_to_tf32(x[i]);
}

__global__ void convert_bf16x2(const float* lo, const float* hi, unsigned* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = r2n_pack_bf16x2(lo[i], hi[i]);
}

// variant: 0 x1, 1 x2, 2 x4, 3 x2.trans, 4 x4.trans. words: 32-bit words of
// shared memory to fill; row_offset: per lane, the byte offset of its row.
__global__ void ldmatrix_probe(const unsigned* init, int words, const int* row_offset, int variant,
                               unsigned* out) {
    R2N_DYNAMIC_SHARED(unsigned, smem);
    for (int i = threadIdx.x; i < words; i += blockDim.x) smem[i] = init[i];
    __syncthreads();
    const void* row = reinterpret_cast<const unsigned char*>(smem) + row_offset[threadIdx.x];
    unsigned r[4] = {0, 0, 0, 0};
    if (variant == 0) {
        unsigned q[1];
        r2n_ldmatrix_x1(q, row);
        r[0] = q[0];
    } else if (variant == 1 || variant == 3) {
        unsigned q[2];
        if (variant == 1)
            r2n_ldmatrix_x2(q, row);
        else
            r2n_ldmatrix_x2_trans(q, row);
        r[0] = q[0];
        r[1] = q[1];
    } else if (variant == 2) {
        r2n_ldmatrix_x4(r, row);
    } else {
        r2n_ldmatrix_x4_trans(r, row);
    }
    for (int i = 0; i < 4; ++i) out[4 * threadIdx.x + i] = r[i];
}

// 64 threads; tile t of x (64 floats) -> out[t] reversed and doubled.
__global__ void cp_async_pipeline(const float* x, float* out, int n_tiles, int mode) {
    R2N_DYNAMIC_SHARED(float, buf);  // 2 stages of 64
    const int tid = threadIdx.x;
    const bool zero_fill = mode == 5 && (tid & 1);
    r2n_cp_async_4(&buf[tid], &x[tid], !zero_fill);
    r2n_cp_async_commit();
    for (int t = 0; t < n_tiles; ++t) {
        const bool more = t + 1 < n_tiles;
        if (more) {
            r2n_cp_async_4(&buf[((t + 1) & 1) * 64 + tid], &x[(t + 1) * 64 + tid], !zero_fill);
            r2n_cp_async_commit();
        }
        float v = 0.f;
        if (mode == 1) v = buf[(t & 1) * 64 + 63 - tid];  // BUG: read before the wait
        if (mode == 2) {
            r2n_cp_async_wait<2>();  // BUG: tile t's group may still be pending
        } else if (mode != 4) {
            if (more)
                r2n_cp_async_wait<1>();
            else
                r2n_cp_async_wait<0>();
        }
        if (mode != 3) __syncthreads();  // mode 3, BUG: other threads' copies unseen
        if (mode != 1) v = buf[(t & 1) * 64 + 63 - tid];
        out[t * 64 + tid] = 2.f * v;
        __syncthreads();  // everyone has read stage t & 1 before it is refilled
    }
    if (mode != 4) r2n_cp_async_wait<0>();  // (nothing left, except after mode 2)
}

// 16 threads, 16 float4 groups: group i copied (or, odd i, zero-filled) into
// shared memory, then written back by thread 15 - i.
__global__ void cp_async_16_copy(const float* x, float* out) {
    R2N_DYNAMIC_SHARED(float, buf);
    const int i = threadIdx.x;
    r2n_cp_async_16(&buf[4 * i], &x[4 * i], (i & 1) == 0);
    r2n_cp_async_commit();
    r2n_cp_async_wait<0>();
    __syncthreads();
    for (int j = 0; j < 4; ++j) out[4 * i + j] = buf[4 * (15 - i) + j];
}

__global__ void cp_async_misaligned(const float* x, float* out) {
    R2N_DYNAMIC_SHARED(float, buf);
    r2n_cp_async_16(&buf[1], &x[0], true);  // BUG: buf + 4 bytes is not 16-byte aligned
    r2n_cp_async_commit();
    r2n_cp_async_wait<0>();
    out[threadIdx.x] = buf[1];
}

__global__ void mma_partial_warp(float* d) {
    const unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    r2n_mma_tf32_m16n8k8(acc, a, b);  // BUG: threads 32-39 are not a whole warp
    d[threadIdx.x] = acc[0];
}

__global__ void mma_exited_lane(float* d) {
    if (threadIdx.x == 3) return;  // BUG: lane 3 never reaches the mma.sync
    const unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    r2n_mma_bf16_m16n8k16(acc, a, b);
    d[threadIdx.x] = acc[0];
}

__global__ void ldmatrix_misaligned(unsigned* out) {
    R2N_DYNAMIC_SHARED(unsigned, smem);
    for (int i = threadIdx.x; i < 64; i += blockDim.x) smem[i] = i;
    __syncthreads();
    unsigned r[1];
    r2n_ldmatrix_x1(r, smem + 2 + 4 * (threadIdx.x & 7));  // BUG: 8 bytes off
    out[threadIdx.x] = r[0];
}
