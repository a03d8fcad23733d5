// mma.cuh: the warp-level matrix instructions of sm_80 (Ampere) and later, as
// small device functions, so that kernels read as C++ and the CPU emulator
// can stand in for each instruction.
//
// On the GPU each function is one inline PTX instruction. Under the emulator
// (tests/cuda_emu, R2N_EMULATE) it calls the emulator's implementation of
// the same instruction (tests/cuda_emu/prelude.h, "matrix instructions"),
// which follows the PTX ISA: fragment layouts, rounding, when cp.async copies
// land. tests/test_cuda_emu_mma.py checks the emulator against the layouts
// the PTX ISA documents, written out independently in Python.
//
//   r2n_to_tf32(x)            cvt.rna.tf32.f32: x rounded to TF32 (10 mantissa
//                             bits, to nearest, ties away from zero), as the
//                             .b32 register an mma .tf32 operand is
//   r2n_pack_bf16x2(lo, hi)   cvt.rn.bf16x2.f32: two floats to bfloat16 (to
//                             nearest, ties to even), lo in bits 0-15
//   r2n_mma_tf32_m16n8k8(d, a, b)   d += A * B, A 16 x 8, B 8 x 8, TF32
//                             inputs, float32 accumulators (mma.sync .row.col)
//   r2n_mma_bf16_m16n8k16(d, a, b)  d += A * B, A 16 x 16, B 16 x 8, bfloat16
//   r2n_ldmatrix_x1/x2/x4(r, row), _trans: ldmatrix.sync.aligned.m8n8.xN
//                             [.trans].shared.b16: lane 8j + i passes the
//                             address of row i of matrix j (16 bytes, 16-byte
//                             aligned); register j of lane l receives the
//                             16-bit elements (l / 4, 2 (l % 4) + {0, 1}) of
//                             matrix j, transposed: (2 (l % 4) + {0, 1}, l / 4)
//   r2n_cp_async_4/16(dst, src, full)  cp.async.ca.shared.global, 4 or 16
//                             bytes global -> shared, zeros instead when !full
//   r2n_cp_async_commit()     cp.async.commit_group
//   r2n_cp_async_wait<N>()    cp.async.wait_group N: all but the N most recent
//                             committed groups of this thread have landed
//
// Fragments, with g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix Fragments
// for mma.m16n8k8" (.tf32) and "for mma.m16n8k16 with floating point type"):
//
//   m16n8k8 .tf32   a[0] A[g][t]  a[1] A[g+8][t]  a[2] A[g][t+4]  a[3] A[g+8][t+4]
//                   b[0] B[t][g]  b[1] B[t+4][g]
//   m16n8k16 .bf16  a[0] A[g][2t, 2t+1]    a[1] A[g+8][2t, 2t+1]
//                   a[2] A[g][2t+8, 2t+9]  a[3] A[g+8][2t+8, 2t+9]
//                   b[0] B[2t, 2t+1][g]    b[1] B[2t+8, 2t+9][g]
//                   (two bfloat16 per register, the first in bits 0-15)
//   d (both)        d[0] D[g][2t]  d[1] D[g][2t+1]  d[2] D[g+8][2t]  d[3] D[g+8][2t+1]
//
// A .tf32 operand is a float32 whose low 13 bits the tensor core ignores:
// rounding with r2n_to_tf32 first makes that rounding to nearest instead of
// truncation. Products of TF32 or bfloat16 values are exact in float32; only
// the accumulation rounds.

#pragma once

#ifndef R2N_EMULATE
// The 32-bit shared-state-space address PTX's .shared operands take.
__device__ __forceinline__ unsigned r2n_shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

__device__ __forceinline__ unsigned r2n_to_tf32(float x) {
#ifdef R2N_EMULATE
    return r2n_emu::cvt_rna_tf32(x);
#else
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#endif
}

__device__ __forceinline__ unsigned r2n_pack_bf16x2(float lo, float hi) {
#ifdef R2N_EMULATE
    return r2n_emu::cvt_rn_bf16x2(hi, lo);
#else
    unsigned r;
    // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half, b in the lower
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

__device__ __forceinline__ void r2n_mma_tf32_m16n8k8(float (&d)[4], const unsigned (&a)[4],
                                                     const unsigned (&b)[2]) {
#ifdef R2N_EMULATE
    r2n_emu::mma_m16n8k8_tf32(d, a, b, d);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void r2n_mma_bf16_m16n8k16(float (&d)[4], const unsigned (&a)[4],
                                                      const unsigned (&b)[2]) {
#ifdef R2N_EMULATE
    r2n_emu::mma_m16n8k16_bf16(d, a, b, d);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ldmatrix reads shared memory other threads wrote before a __syncthreads:
// the "memory" clobber keeps the compiler from moving it across other
// shared-memory accesses.
__device__ __forceinline__ void r2n_ldmatrix_x1(unsigned (&r)[1], const void* row) {
#ifdef R2N_EMULATE
    r2n_emu::ldmatrix(r, 1, false, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];"
                 : "=r"(r[0])
                 : "r"(r2n_shared_address(row))
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_ldmatrix_x2(unsigned (&r)[2], const void* row) {
#ifdef R2N_EMULATE
    r2n_emu::ldmatrix(r, 2, false, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(r2n_shared_address(row))
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_ldmatrix_x4(unsigned (&r)[4], const void* row) {
#ifdef R2N_EMULATE
    r2n_emu::ldmatrix(r, 4, false, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(r2n_shared_address(row))
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
#ifdef R2N_EMULATE
    r2n_emu::ldmatrix(r, 2, true, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(r2n_shared_address(row))
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
#ifdef R2N_EMULATE
    r2n_emu::ldmatrix(r, 4, true, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(r2n_shared_address(row))
                 : "memory");
#endif
}

// Asynchronous copies (sm_80): the bytes are in flight until this thread
// waits for their group; other threads see them after the wait and a
// __syncthreads. With full == false nothing is read and zeros land (the
// source-size operand is 0), so a guarded-out tile element costs no branch
// around the copy; `src` must still be a valid address then.
__device__ __forceinline__ void r2n_cp_async_4(void* dst, const void* src, bool full) {
#ifdef R2N_EMULATE
    r2n_emu::cp_async(dst, src, 4, full ? 4 : 0);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(r2n_shared_address(dst)),
                 "l"(src), "r"(full ? 4 : 0)
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_cp_async_16(void* dst, const void* src, bool full) {
#ifdef R2N_EMULATE
    r2n_emu::cp_async(dst, src, 16, full ? 16 : 0);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(r2n_shared_address(dst)),
                 "l"(src), "r"(full ? 16 : 0)
                 : "memory");
#endif
}

__device__ __forceinline__ void r2n_cp_async_commit() {
#ifdef R2N_EMULATE
    r2n_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void r2n_cp_async_wait() {
#ifdef R2N_EMULATE
    r2n_emu::cp_async_wait_group(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
