// prelude.h: the CUDA device environment, emulated in plain C++17 for g++.
//
// tests/cuda_emu/emulator.py compiles `common.cuh + <area>.cu` with
// `g++ -include prelude.h -DR2N_EMULATE`. This header makes that text valid C++
// and supplies a runtime that runs a kernel launch on the CPU:
//
// * every CUDA thread of a block is a fiber (ucontext) with its own stack, so
//   local variables are per thread, as registers are on a GPU;
// * the fibers of a block run one at a time, each until it reaches a barrier
//   (__syncthreads), a warp-synchronous call (__shfl_*_sync, __syncwarp,
//   __ballot_sync, mma.sync, ...) or its end; then the next one in *order*
//   runs. Warps go one after another, each as far as it can before the next
//   __syncthreads (its lanes in order, its warp calls completed as soon as
//   all its lanes wait at them). The order is ascending thread index (forward
//   run) or descending (reverse run). Switching only at barriers makes each
//   run deterministic, and a kernel whose result depends on the order (a data
//   race between threads or between warps, a missing __syncthreads) gives
//   different outputs in the two runs, which emulator.py reports;
// * __shared__ variables are function-local statics (one copy, shared by the
//   fibers; blocks run one after another); dynamic shared memory
//   (R2N_DYNAMIC_SHARED) is a buffer poisoned at the start of every block
//   with a pattern that differs between the two runs;
// * a warp-synchronous call is a rendezvous of the lanes named in its mask:
//   each lane deposits its value, and when every live lane of the mask has
//   arrived the results are computed at once with CUDA's rules (widths,
//   out-of-segment lanes keep their own value) and the lanes continue.
//   Reading a lane that did not take part (exited, absent from a partial
//   warp, not in the mask) yields a NaN-patterned poison value;
// * atomics are plain read-modify-writes (fibers never interleave inside one);
// * the warp-wide matrix instructions of r2n/gpu/kernels/mma.cuh (mma.sync
//   m16n8k8 .tf32 and m16n8k16 .bf16, ldmatrix) are rendezvous of all 32
//   lanes like the shuffles, computed with the fragment layouts of the PTX
//   ISA; cvt.rna.tf32.f32 and cvt.rn.bf16x2.f32 round bit-exactly; cp.async
//   copies land only when the issuing thread waits for their group
//   (cp.async.wait_group / wait_all), and their destination holds the run's
//   poison bytes from the issue until then (see "Matrix instructions" below).
//
// * a memory fault in a kernel (emulator.py puts a PROT_NONE page right after
//   or right before every array argument's copy) is caught by a SIGSEGV
//   handler installed for the duration of the launch: it records the address
//   and whether it was a read or a write, and resumes the scheduler, which
//   aborts the launch; emulator.py names the argument and the element.
//
// Errors found while running (barrier or warp-call divergence, deadlock,
// assert, __trap, a memory fault) abort the launch and are reported by
// emulator.py.
#pragma once

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef R2N_EMULATE
#define R2N_EMULATE 1
#endif

// ---------------------------------------------------------------- keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Vector types, aligned like CUDA's (see
// README.md, "Vector loads and alignment").
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
    double x, y;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }

static const int warpSize = 32;

namespace r2n_emu {

enum State { READY, AT_BARRIER, AT_WARP_CALL, DONE, ABORTED };
enum WarpOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, SYNCWARP, BALLOT, MMA_TF32, MMA_BF16, LDMATRIX };

// A cp.async copy issued and not yet complete: its bytes (read from global
// memory at the issue, zero-filled past src-size) land in `dst` when the
// issuing thread waits for its group.
struct AsyncCopy {
    unsigned char* dst;
    unsigned char data[16];
    int size;
    int group;  // -1 until cp.async.commit_group puts it in a group
};

struct Thread {
    uint3 idx;
    int linear, lane, warp;
    State state;
    ucontext_t ctx;
    char* stack;
    // the pending warp-synchronous call
    WarpOp op;
    unsigned mask;
    int size;  // bytes of the value
    uint64_t value, result;
    int src, width;
    const void* site;  // the __syncthreads the thread waits at: file and line
    int line;
    int predicate;  // __syncthreads_count / _and / _or
    // the pending warp-wide matrix instruction: this lane's registers (mma: a,
    // b, c; ldmatrix: the 16-byte row its address points at), the variant
    // (ldmatrix: matrices * 2 + trans) and the result registers
    uint32_t matrix_in[12];
    uint32_t matrix_out[4];
    int matrix_kind;
    // cp.async copies not yet complete, and the groups committed so far
    std::vector<AsyncCopy> async_copies;
    int async_groups;
};

struct Runtime {
    uint3 block_idx;
    dim3 block_dim, grid_dim;
    std::vector<Thread> threads;
    Thread* current = nullptr;
    ucontext_t scheduler;
    std::vector<unsigned char> dynamic_shared;  // the launch's bytes, then a guard
    size_t dynamic_shared_bytes = 0;            // what the launch asked for
    size_t stack_size = 256 * 1024;
    void (*thunk)(void**) = nullptr;
    void** args = nullptr;
    std::string error;
    unsigned char poison_byte = 0xff;  // this run's fill of unwritten shared memory
    int barrier_count = 0;  // threads with a non-zero predicate at the last barrier
    // A memory fault inside a fiber (set by on_fault): the address, and
    // FAULT_READ / FAULT_WRITE / FAULT_ACCESS (read or write, unknown).
    int fault_kind = 0;
    uintptr_t fault_address = 0;
    struct sigaction previous_segv;  // restored when the launch ends
};

enum FaultKind { NO_FAULT, FAULT_READ, FAULT_WRITE, FAULT_ACCESS };

inline Runtime& rt() {
    static Runtime r;
    return r;
}

inline unsigned char* dynamic_shared() { return rt().dynamic_shared.data(); }

// Bytes after the launch's dynamic shared memory that are checked after every
// block: a kernel that indexes past the size its launcher passed writes there
// (on a GPU: another block's shared memory or an illegal address).
constexpr size_t SHARED_GUARD_BYTES = 1024;

// Leave the fiber and return to the scheduler.
inline void yield() {
    Thread* t = rt().current;
    swapcontext(&t->ctx, &rt().scheduler);
}

// Abort the launch from inside a kernel: record the message, never resume.
[[noreturn]] inline void fail(const std::string& message) {
    Runtime& r = rt();
    Thread* t = r.current;
    if (r.error.empty()) {
        char where[160];
        snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", r.block_idx.x,
                 r.block_idx.y, r.block_idx.z, t->idx.x, t->idx.y, t->idx.z);
        r.error = message + where;
    }
    t->state = ABORTED;
    yield();
    __builtin_unreachable();
}

// `file` and `line` identify the __syncthreads call (compiler transforms may
// duplicate a call, so its return address would not). Returns how many
// threads of the block passed a non-zero `predicate` (__syncthreads_count).
inline int syncthreads(const char* file, int line, int predicate = 0) {
    Thread* t = rt().current;
    t->site = file;
    t->line = line;
    t->predicate = predicate != 0;
    t->state = AT_BARRIER;
    yield();
    return rt().barrier_count;  // set when the barrier opened, before anyone resumed
}

template <typename T>
__attribute__((noinline)) T warp_call(WarpOp op, unsigned mask, T var, int src, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp calls take values of at most 8 bytes");
    Thread* t = rt().current;
    if (!(mask >> t->lane & 1u)) fail("warp call: the calling lane is not in the mask");
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("warp call: width must be a power of two in 1..32");
    t->op = op;
    t->mask = mask;
    t->size = sizeof(T);
    t->value = 0;
    memcpy(&t->value, &var, sizeof(T));
    t->src = src;
    t->width = width;
    t->state = AT_WARP_CALL;
    yield();
    T out;
    memcpy(&out, &t->result, sizeof(T));
    return out;
}

inline uint64_t poison(int size) {
    // NaN in float and double (and an unlikely integer)
    return size == 8 ? 0x7ff8deaddeaddeadull : (size == 4 ? 0x7fc0deadull : 0x7e00ull);
}

inline bool release_matrix_call(int w, int lanes, WarpOp op, Thread** lane, std::string& error);

// Complete the warp call of warp `w` if every live lane of its mask waits at it.
// Returns true when lanes were released; sets `error` on divergence.
inline bool release_warp(int w, std::string& error) {
    Runtime& r = rt();
    const int n = (int)r.threads.size();
    const int first = w * 32, last = std::min(n, first + 32);
    Thread* lead = nullptr;
    for (int i = first; i < last; ++i)
        if (r.threads[i].state == AT_WARP_CALL) {
            lead = &r.threads[i];
            break;
        }
    if (!lead) return false;
    const unsigned mask = lead->mask;
    Thread* lane_thread[32] = {nullptr};
    unsigned arrived = 0;
    for (int i = first; i < last; ++i) {
        Thread& t = r.threads[i];
        if (!(mask >> t.lane & 1u) || t.state == DONE) continue;
        if (t.state != AT_WARP_CALL) return false;  // a participant is still elsewhere
        if (t.mask != mask || t.op != lead->op) {
            error = "warp call divergence: lanes of warp " + std::to_string(w) +
                    " wait at different kinds of warp-synchronous call or with different masks";
            return false;
        }
        lane_thread[t.lane] = &t;
        arrived |= 1u << t.lane;
    }
    if (lead->op == MMA_TF32 || lead->op == MMA_BF16 || lead->op == LDMATRIX)
        return release_matrix_call(w, last - first, lead->op, lane_thread, error);
    uint64_t ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (lane_thread[l] && lane_thread[l]->value) ballot |= 1ull << l;
    for (int l = 0; l < 32; ++l) {
        Thread* t = lane_thread[l];
        if (!t) continue;
        const int width = t->width;
        const int seg_start = l & ~(width - 1), seg_end = seg_start + width - 1;
        int j = l;
        bool in_range = true;
        switch (t->op) {
            case SHFL_IDX: j = seg_start + (t->src & (width - 1)); break;
            case SHFL_UP: j = l - t->src; in_range = j >= seg_start; break;
            case SHFL_DOWN: j = l + t->src; in_range = j <= seg_end; break;
            case SHFL_XOR: j = l ^ t->src; in_range = j <= seg_end; break;
            case SYNCWARP: break;
            case BALLOT: break;
        }
        if (t->op == BALLOT) {
            t->result = ballot;
        } else if (t->op == SYNCWARP) {
            t->result = 0;
        } else if (!in_range) {
            t->result = t->value;  // CUDA: out of the segment, keep your own value
        } else if (j >= 0 && j < 32 && lane_thread[j]) {
            t->result = lane_thread[j]->value;
        } else {
            t->result = poison(t->size);  // undefined in CUDA: a lane that did not take part
        }
    }
    for (int l = 0; l < 32; ++l)
        if (lane_thread[l]) lane_thread[l]->state = READY;
    (void)arrived;
    return true;
}

// ------------------------------------------------------- matrix instructions
//
// mma.sync, ldmatrix, cp.async and the tf32 / bf16 conversions of
// r2n/gpu/kernels/mma.cuh. Fragment layouts follow the PTX ISA ("Matrix
// Fragments for mma.m16n8k8" (.tf32) and "for mma.m16n8k16 with floating
// point type" (.bf16), "ldmatrix"); with g = lane / 4, t = lane % 4:
//
//   m16n8k8 .tf32   a0 A[g][t]  a1 A[g+8][t]  a2 A[g][t+4]  a3 A[g+8][t+4]
//                   b0 B[t][g]  b1 B[t+4][g]
//   m16n8k16 .bf16  a0,a1 A[g][2t..2t+1]    a2,a3 A[g+8][2t..2t+1]
//                   a4,a5 A[g][2t+8..2t+9]  a6,a7 A[g+8][2t+8..2t+9]
//                   b0,b1 B[2t..2t+1][g]    b2,b3 B[2t+8..2t+9][g]
//                   (two bf16 per register, the lower-numbered in bits 0-15)
//   C / D (both)    c0 C[g][2t]  c1 C[g][2t+1]  c2 C[g+8][2t]  c3 C[g+8][2t+1]
//
// The products of tf32 or bf16 values are exact in float32; this emulator
// adds them to the accumulator in k order, each step rounded to float32 (an
// FMA). The tensor core's own summation order and rounding are not
// documented, so a GPU may differ in the last bits of the sum, never in the
// rounding of the inputs. A .tf32 operand register is read as float32 with
// its low 13 bits ignored (zeroed), as the tensor core does.

// cvt.rna.tf32.f32: round to 10 mantissa bits, to nearest, ties away from
// zero (adding half of the dropped part to the magnitude carries into the
// kept bits exactly when it is >= half), then clear the low 13 bits. NaN and
// infinity are only masked, as the sm_80 instruction sequence does (compiled
// by ptxas: add 0x1000 unless |x| >= inf or NaN, then and 0xffffe000), so a
// NaN whose payload sits only in the low 13 bits becomes infinity there too.
inline uint32_t cvt_rna_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) < 0x7f800000u) u += 0x1000u;
    return u & 0xffffe000u;
}

// cvt.rn.bf16x2.f32 d, hi, lo: each float to bfloat16, to nearest, ties to
// even; NaN becomes the canonical bf16 NaN 0x7fff. `lo` lands in bits 0-15.
inline uint32_t bf16_rn(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline uint32_t cvt_rn_bf16x2(float hi, float lo) { return bf16_rn(hi) << 16 | bf16_rn(lo); }

inline float tf32_value(uint32_t bits) {
    bits &= 0xffffe000u;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
inline float bf16_value(uint32_t half) {
    const uint32_t bits = (half & 0xffffu) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
inline float f32_of(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
inline uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

// Deposit this lane's registers, wait for the warp, collect the result.
__attribute__((noinline)) inline void matrix_call(WarpOp op, int kind, const uint32_t* in, int n_in,
                                                  uint32_t* out, int n_out) {
    Thread* t = rt().current;
    t->op = op;
    t->mask = 0xffffffffu;
    t->matrix_kind = kind;
    memcpy(t->matrix_in, in, 4 * n_in);
    t->size = 4;
    t->state = AT_WARP_CALL;
    yield();
    memcpy(out, t->matrix_out, 4 * n_out);
}

// Complete a matrix instruction of warp `w` (`lanes` threads) whose lanes
// have all arrived. .aligned: every one of the 32 lanes must execute it.
inline bool release_matrix_call(int w, int lanes, WarpOp op, Thread** lane, std::string& error) {
    const char* what = op == LDMATRIX ? "ldmatrix" : "mma.sync";
    for (int l = 0; l < 32; ++l) {
        if (!lane[l]) {
            error = std::string(what) + ": warp " + std::to_string(w) + " has " +
                    (lanes < 32 ? std::to_string(lanes) + " threads; the instruction needs all 32 lanes"
                                : "a lane that exited (" + std::to_string(l) +
                                      "); the instruction needs all 32 lanes");
            return false;
        }
        if (lane[l]->matrix_kind != lane[0]->matrix_kind) {
            error = std::string(what) + ": lanes of warp " + std::to_string(w) +
                    " execute different variants of the instruction";
            return false;
        }
    }
    if (op == LDMATRIX) {
        // matrix j's row r is the 16 bytes lane 8j + r deposited
        const int num = lane[0]->matrix_kind >> 1;
        const bool trans = lane[0]->matrix_kind & 1;
        for (int l = 0; l < 32; ++l) {
            const int g = l >> 2, t = l & 3;
            for (int j = 0; j < num; ++j) {
                auto half = [&](int row, int col) {  // 16-bit element (row, col) of matrix j
                    const uint32_t word = lane[8 * j + row]->matrix_in[col >> 1];
                    return (word >> (16 * (col & 1))) & 0xffffu;
                };
                lane[l]->matrix_out[j] = trans ? half(2 * t, g) | half(2 * t + 1, g) << 16
                                               : half(g, 2 * t) | half(g, 2 * t + 1) << 16;
            }
        }
    } else {
        const bool bf16 = op == MMA_BF16;
        const int K = bf16 ? 16 : 8;
        float A[16][16], B[16][8], C[16][8];
        for (int l = 0; l < 32; ++l) {
            const int g = l >> 2, t = l & 3;
            const uint32_t* r = lane[l]->matrix_in;  // a0..a3, b0, b1, c0..c3
            if (bf16) {
                for (int i = 0; i < 8; ++i) {  // element ai is half i & 1 of register i / 2
                    const int row = g + ((i >> 1) & 1) * 8, col = 2 * t + (i & 1) + (i >> 2) * 8;
                    A[row][col] = bf16_value(r[i >> 1] >> (16 * (i & 1)));
                }
                for (int i = 0; i < 4; ++i)
                    B[2 * t + (i & 1) + (i >> 1) * 8][g] = bf16_value(r[4 + (i >> 1)] >> (16 * (i & 1)));
            } else {
                A[g][t] = tf32_value(r[0]);
                A[g + 8][t] = tf32_value(r[1]);
                A[g][t + 4] = tf32_value(r[2]);
                A[g + 8][t + 4] = tf32_value(r[3]);
                B[t][g] = tf32_value(r[4]);
                B[t + 4][g] = tf32_value(r[5]);
            }
            for (int i = 0; i < 4; ++i) C[g + (i >> 1) * 8][2 * t + (i & 1)] = f32_of(r[6 + i]);
        }
        for (int l = 0; l < 32; ++l) {
            const int g = l >> 2, t = l & 3;
            for (int i = 0; i < 4; ++i) {
                const int row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
                float acc = C[row][col];
                for (int k = 0; k < K; ++k) acc = fmaf(A[row][k], B[k][col], acc);
                lane[l]->matrix_out[i] = bits_of(acc);
            }
        }
    }
    for (int l = 0; l < 32; ++l) lane[l]->state = READY;
    return true;
}

inline void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
    uint32_t in[10] = {a[0], a[1], a[2], a[3], b[0], b[1],
                       bits_of(c[0]), bits_of(c[1]), bits_of(c[2]), bits_of(c[3])};
    uint32_t out[4];
    matrix_call(MMA_TF32, 0, in, 10, out, 4);
    for (int i = 0; i < 4; ++i) d[i] = f32_of(out[i]);
}

inline void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
    uint32_t in[10] = {a[0], a[1], a[2], a[3], b[0], b[1],
                       bits_of(c[0]), bits_of(c[1]), bits_of(c[2]), bits_of(c[3])};
    uint32_t out[4];
    matrix_call(MMA_BF16, 0, in, 10, out, 4);
    for (int i = 0; i < 4; ++i) d[i] = f32_of(out[i]);
}

// ldmatrix.sync.aligned.m8n8.x{num}[.trans].shared.b16: lane 8j + r gives the
// address of row r of matrix j (lanes past 8 * num give none). The lane reads
// its row here, in its own fiber (a bad address faults on this lane); the
// rows are dealt out when the whole warp has arrived.
inline void ldmatrix(uint32_t* r, int num, bool trans, const void* row) {
    Thread* t = rt().current;
    uint32_t in[4] = {0, 0, 0, 0};
    if (t->lane < 8 * num) {
        if ((uintptr_t)row % 16 != 0) fail("ldmatrix: a row address is not 16-byte aligned");
        memcpy(in, row, 16);
    }
    matrix_call(LDMATRIX, num * 2 + (trans ? 1 : 0), in, 4, r, num);
}

// cp.async.ca.shared.global [dst], [src], cp_size, src_size: the source is
// read now (src_size bytes, the rest zero); the destination is poisoned with
// this run's shared-memory fill until the thread waits for the copy's group,
// so a read before the wait sees different garbage in the two runs.
inline void cp_async(void* dst, const void* src, int cp_size, int src_size) {
    if (cp_size != 4 && cp_size != 8 && cp_size != 16)
        fail("cp.async: the copy size must be 4, 8 or 16 bytes");
    if (src_size < 0 || src_size > cp_size) fail("cp.async: src-size must be in 0..cp-size");
    if ((uintptr_t)dst % cp_size || (src_size > 0 && (uintptr_t)src % cp_size))
        fail("cp.async: an address is not aligned to the copy size");
    AsyncCopy c;
    c.dst = (unsigned char*)dst;
    c.size = cp_size;
    c.group = -1;
    memset(c.data, 0, sizeof c.data);
    if (src_size > 0) memcpy(c.data, src, src_size);
    memset(dst, rt().poison_byte, cp_size);
    rt().current->async_copies.push_back(c);
}

// cp.async.commit_group: the copies issued since the last commit form a group
// (possibly empty: it still counts for wait_group).
inline void cp_async_commit() {
    Thread* t = rt().current;
    for (AsyncCopy& c : t->async_copies)
        if (c.group < 0) c.group = t->async_groups;
    ++t->async_groups;
}

// cp.async.wait_group n: every committed group but the n most recent is
// complete; their copies land now, oldest first. Uncommitted copies stay.
inline void cp_async_wait_group(int n) {
    Thread* t = rt().current;
    const int limit = t->async_groups - n;
    std::vector<AsyncCopy> pending;
    for (AsyncCopy& c : t->async_copies) {
        if (c.group >= 0 && c.group < limit) memcpy(c.dst, c.data, c.size);
        else pending.push_back(c);
    }
    t->async_copies.swap(pending);
}

// cp.async.wait_all = commit_group, then wait_group 0.
inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait_group(0);
}

// SIGSEGV handler, installed only while a launch runs. A fault on a fiber's
// stack (kernel code: typically a guard page next to an array) aborts that
// thread like fail() does: record the address, resume the scheduler (setcontext
// also restores the scheduler's signal mask, so SIGSEGV is unblocked again).
// Any other fault is not ours: put the previous handler back and return, so
// the faulting instruction faults again and that handler (Python's
// faulthandler, or the default core dump) sees it.
inline void on_fault(int sig, siginfo_t* info, void* context) {
    Runtime& r = rt();
    Thread* t = r.current;
    char probe;
    const uintptr_t sp = (uintptr_t)&probe;
    if (t == nullptr || sp < (uintptr_t)t->stack || sp >= (uintptr_t)t->stack + r.stack_size ||
        r.fault_kind != NO_FAULT) {
        sigaction(sig, &r.previous_segv, nullptr);
        return;
    }
    r.fault_address = (uintptr_t)info->si_addr;
#if defined(__x86_64__)
    // bit 1 of the page-fault error code: the access was a write
    const long long code = ((ucontext_t*)context)->uc_mcontext.gregs[REG_ERR];
    r.fault_kind = (code & 2) ? FAULT_WRITE : FAULT_READ;
#else
    (void)context;
    r.fault_kind = FAULT_ACCESS;
#endif
    t->state = ABORTED;
    setcontext(&r.scheduler);
}

inline void fiber_entry() {
    Runtime& r = rt();
    r.thunk(r.args);
    if (!r.current->async_copies.empty())
        fail("the thread exited with " + std::to_string(r.current->async_copies.size()) +
             " cp.async copies it never waited for (cp.async.wait_group / wait_all)");
    r.current->state = DONE;
    // returning resumes uc_link, the scheduler
}

// Run one block to completion in the given order. Returns false on error.
inline bool run_block(bool reverse, unsigned char poison_byte) {
    Runtime& r = rt();
    const int n = (int)r.threads.size();
    memset(r.dynamic_shared.data(), poison_byte, r.dynamic_shared.size());
    r.poison_byte = poison_byte;
    for (int i = 0; i < n; ++i) {
        Thread& t = r.threads[i];
        t.state = READY;
        t.async_copies.clear();
        t.async_groups = 0;
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = t.stack;
        t.ctx.uc_stack.ss_size = r.stack_size;
        t.ctx.uc_link = &r.scheduler;
        makecontext(&t.ctx, fiber_entry, 0);
    }
    const int warps = (n + 31) / 32;
    for (;;) {
        // Warp by warp (descending in the reverse run), each as far as it can
        // go: its lanes run in order until each waits at a barrier, a warp
        // call or its end, the warp call is completed, and so on. A warp thus
        // runs ahead of the others up to the next __syncthreads (as a GPU may
        // let it), so a shared-memory hazard between warps in one phase shows
        // up as a difference between the two runs, not only between threads.
        for (int wi = 0; wi < warps; ++wi) {
            const int w = reverse ? warps - 1 - wi : wi;
            const int first = w * 32, last = std::min(n, first + 32);
            for (;;) {
                for (int k = 0; k < last - first; ++k) {
                    Thread& t = r.threads[reverse ? last - 1 - k : first + k];
                    if (t.state != READY) continue;
                    r.current = &t;
                    swapcontext(&r.scheduler, &t.ctx);
                    if (r.fault_kind != NO_FAULT && r.error.empty()) {
                        // the details go to emulator.py through r2n_emu_launch's `fault`
                        char where[160];
                        snprintf(where, sizeof where, "block (%u,%u,%u), thread (%u,%u,%u)",
                                 r.block_idx.x, r.block_idx.y, r.block_idx.z, t.idx.x, t.idx.y,
                                 t.idx.z);
                        r.error = where;
                    }
                    r.current = nullptr;
                    if (!r.error.empty()) return false;
                }
                // no lane of the warp can run: complete its warp call, if any
                const bool released = release_warp(w, r.error);
                if (!r.error.empty()) return false;
                if (!released) break;
            }
        }
        int done = 0, at_barrier = 0;
        const void* site = nullptr;
        int line = 0;
        for (int i = 0; i < n; ++i) {
            const Thread& t = r.threads[i];
            if (t.state == DONE) ++done;
            if (t.state == AT_BARRIER) {
                if (at_barrier && (t.site != site || t.line != line)) {
                    r.error = "__syncthreads divergence: threads of a block wait at different "
                              "__syncthreads calls";
                    return false;
                }
                site = t.site;
                line = t.line;
                ++at_barrier;
            }
        }
        if (done == n) {
            const unsigned char* guard = r.dynamic_shared.data() + r.dynamic_shared_bytes;
            for (size_t i = 0; i < SHARED_GUARD_BYTES; ++i)
                if (guard[i] != poison_byte) {
                    r.error = "write past the end of dynamic shared memory (the launch gave " +
                              std::to_string(r.dynamic_shared_bytes) + " bytes; byte " +
                              std::to_string(r.dynamic_shared_bytes + i) + " was written)";
                    return false;
                }
            return true;
        }
        if (done + at_barrier == n) {
            // exited threads count as arrived (as on sm_70 and later)
            r.barrier_count = 0;
            for (int i = 0; i < n; ++i)
                if (r.threads[i].state == AT_BARRIER) {
                    r.barrier_count += r.threads[i].predicate;
                    r.threads[i].state = READY;
                }
            continue;
        }
        r.error = "deadlock: some threads wait at __syncthreads while others wait at a warp "
                  "call that their warp never completes";
        return false;
    }
}

template <typename... P, size_t... I>
void call_with(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<P>*>(args[I])...);
}

// Call `kernel` with its arguments read from args[i] (pointers to the values).
template <typename... P>
void call(void (*kernel)(P...), void** args) {
    call_with(kernel, args, std::index_sequence_for<P...>{});
}

template <typename T>
std::string type_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_floating_point_v<U>) return "f" + std::to_string(sizeof(U));
    else if constexpr (std::is_same_v<U, bool>) return "b1";
    else if constexpr (std::is_integral_v<U> && std::is_signed_v<U>)
        return "i" + std::to_string(sizeof(U));
    else if constexpr (std::is_integral_v<U>) return "u" + std::to_string(sizeof(U));
    else return "?";
}

template <typename T>
std::string param_code() {
    if constexpr (std::is_pointer_v<T>) return "p" + type_code<std::remove_pointer_t<T>>();
    else return type_code<T>();
}

// "pf4,pf4,i8,f4": the parameter types, for the Python side to check arguments.
template <typename... P>
std::string signature(void (*)(P...)) {
    std::string s;
    ((s += (s.empty() ? "" : ",") + param_code<P>()), ...);
    return s;
}

}  // namespace r2n_emu

// --------------------------------------------------------------- built-ins
#define threadIdx (static_cast<const uint3&>(r2n_emu::rt().current->idx))
#define blockIdx (static_cast<const uint3&>(r2n_emu::rt().block_idx))
#define blockDim (static_cast<const dim3&>(r2n_emu::rt().block_dim))
#define gridDim (static_cast<const dim3&>(r2n_emu::rt().grid_dim))

#define __syncthreads() ((void)r2n_emu::syncthreads(__FILE__, __LINE__))
#define __syncthreads_count(p) r2n_emu::syncthreads(__FILE__, __LINE__, (p))
#define __syncthreads_or(p) (r2n_emu::syncthreads(__FILE__, __LINE__, (p)) != 0)
#define __syncthreads_and(p) \
    (r2n_emu::syncthreads(__FILE__, __LINE__, !(p)) == 0)
__attribute__((always_inline)) inline void __syncwarp(unsigned mask = 0xffffffffu) {
    r2n_emu::warp_call<int>(r2n_emu::SYNCWARP, mask, 0, 0, 32);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
[[noreturn]] inline void __trap() { r2n_emu::fail("__trap() called"); }

template <typename T>
__attribute__((always_inline)) inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return r2n_emu::warp_call<T>(r2n_emu::SHFL_IDX, mask, var, src_lane, width);
}
template <typename T>
__attribute__((always_inline)) inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return r2n_emu::warp_call<T>(r2n_emu::SHFL_UP, mask, var, (int)delta, width);
}
template <typename T>
__attribute__((always_inline)) inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return r2n_emu::warp_call<T>(r2n_emu::SHFL_DOWN, mask, var, (int)delta, width);
}
template <typename T>
__attribute__((always_inline)) inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return r2n_emu::warp_call<T>(r2n_emu::SHFL_XOR, mask, var, lane_mask, width);
}
__attribute__((always_inline)) inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return (unsigned)r2n_emu::warp_call<int>(r2n_emu::BALLOT, mask, predicate != 0, 0, 32);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
    return __ballot_sync(mask, predicate) == (mask & __ballot_sync(mask, 1));
}

#undef assert
#define assert(cond) ((cond) ? (void)0 : r2n_emu::fail("assert failed: " #cond))

// Atomics: fibers never interleave inside a call, so a plain update is atomic.
template <typename T>
T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}
template <typename T>
T atomicMax(T* address, T value) {
    T old = *address;
    *address = old > value ? old : value;
    return old;
}
template <typename T>
T atomicMin(T* address, T value) {
    T old = *address;
    *address = old < value ? old : value;
    return old;
}
template <typename T>
T atomicExch(T* address, T value) {
    T old = *address;
    *address = value;
    return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
    T old = *address;
    if (old == compare) *address = value;
    return old;
}

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// Device math that glibc lacks, and CUDA's overloaded min/max.
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}
inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }

#define R2N_EMU_MINMAX(T)                                  \
    inline T min(T a, T b) { return a < b ? a : b; }       \
    inline T max(T a, T b) { return a > b ? a : b; }
R2N_EMU_MINMAX(int)
R2N_EMU_MINMAX(unsigned int)
R2N_EMU_MINMAX(long)
R2N_EMU_MINMAX(unsigned long)
R2N_EMU_MINMAX(long long)
R2N_EMU_MINMAX(unsigned long long)
#undef R2N_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ------------------------------------------------------------ launch entry
// cfg: grid x, y, z, block x, y, z, dynamic shared bytes.
// Returns 0 on success; 1 or 2 with a message in `error`; 3 after a memory
// fault: fault[0] = the address, fault[1] = its FaultKind, `error` = the
// block and thread.
extern "C" int r2n_emu_launch_body(void (*thunk)(void**), void** args, const long long* cfg,
                                   int reverse, char* error, int error_len);

extern "C" int r2n_emu_launch(void (*thunk)(void**), void** args, const long long* cfg,
                              int reverse, char* error, int error_len,
                              unsigned long long* fault) {
    using namespace r2n_emu;
    Runtime& r = rt();
    r.fault_kind = NO_FAULT;
    r.fault_address = 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &r.previous_segv) != 0) {
        snprintf(error, error_len, "could not install the SIGSEGV handler");
        return 1;
    }
    int rc = r2n_emu_launch_body(thunk, args, cfg, reverse, error, error_len);
    // (the handler may have put the previous one back already: harmless to repeat)
    sigaction(SIGSEGV, &r.previous_segv, nullptr);
    fault[0] = r.fault_address;
    fault[1] = (unsigned long long)r.fault_kind;
    if (r.fault_kind != NO_FAULT) rc = 3;
    return rc;
}

extern "C" int r2n_emu_launch_body(void (*thunk)(void**), void** args, const long long* cfg,
                                   int reverse, char* error, int error_len) {
    using namespace r2n_emu;
    Runtime& r = rt();
    r.error.clear();
    r.thunk = thunk;
    r.args = args;
    r.grid_dim = dim3((unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]);
    r.block_dim = dim3((unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]);
    r.dynamic_shared_bytes = (size_t)cfg[6];
    r.dynamic_shared.assign((size_t)cfg[6] + SHARED_GUARD_BYTES, 0);
    const int n = (int)(cfg[3] * cfg[4] * cfg[5]);
    if ((int)r.threads.size() < n) {
        const size_t old = r.threads.size();
        r.threads.resize(n);
        for (size_t i = old; i < (size_t)n; ++i) {
            void* stack = mmap(nullptr, r.stack_size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (stack == MAP_FAILED) {
                snprintf(error, error_len, "could not allocate a fiber stack");
                r.threads.resize(i);
                return 1;
            }
            r.threads[i].stack = (char*)stack;
        }
    }
    // keep the stacks of larger earlier launches, but run exactly n threads
    std::vector<Thread> spare(r.threads.begin() + n, r.threads.end());
    r.threads.resize(n);
    for (int i = 0; i < n; ++i) {
        Thread& t = r.threads[i];
        t.idx = {(unsigned)(i % cfg[3]), (unsigned)(i / cfg[3] % cfg[4]),
                 (unsigned)(i / (cfg[3] * cfg[4]))};
        t.linear = i;
        t.lane = i % 32;
        t.warp = i / 32;
    }
    const unsigned char poison_byte = reverse ? 0x7f : 0xff;
    const long long blocks = cfg[0] * cfg[1] * cfg[2];
    bool ok = true;
    for (long long b = 0; b < blocks && ok; ++b) {
        const long long id = reverse ? blocks - 1 - b : b;
        r.block_idx = {(unsigned)(id % cfg[0]), (unsigned)(id / cfg[0] % cfg[1]),
                       (unsigned)(id / (cfg[0] * cfg[1]))};
        ok = run_block(reverse != 0, poison_byte);
    }
    r.threads.insert(r.threads.end(), spare.begin(), spare.end());
    if (!ok) {
        snprintf(error, error_len, "%s", r.error.c_str());
        return 2;
    }
    return 0;
}
