// Warp-level tensor-core and asynchronous-copy primitives shared by kernels/mma_matmul.cu,
// kernels/gemm_f16.cu and kernels/mmq.cu (PTX ISA: cp.async, ldmatrix, mma.sync m16n8k16 f16,
// m16n8k32 s8). Under MMA_EMULATE the CPU emulator (tests/emu/emu_runtime.h)
// provides the asynchronous copies, ldmatrix and mma.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// Two f32 values rounded to f16 and packed; a in the low half (lower k).
__device__ __forceinline__ uint32_t pack_h2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);  // a in the low half (lower k)
    return *reinterpret_cast<uint32_t*>(&h);
}

// ---------- asynchronous copies (global -> shared, no registers) ----------
// Under MMA_EMULATE, tests/emu provides these (and the two warp-wide operations below).
#ifndef MMA_EMULATE
// `bytes` of the cp-size are read from global, the rest of the destination is zero-filled (0 =
// zeros, nothing read).
__device__ __forceinline__ void cp16(void* dst, const void* src, uint32_t bytes) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp4(void* dst, const void* src, uint32_t bytes) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ uint32_t dyn_smem_bytes() {
    uint32_t v;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(v));
    return v;
}
#endif

// ---------- tensor-core primitives ----------
// (Under MMA_EMULATE, tests/emu provides host versions of these warp-wide operations.)
#ifndef MMA_EMULATE
// Four 8x8 f16 matrices from shared memory; lane L gives the address of row L%8 of matrix L/8
// and receives, in register i, row L/4 columns 2(L%4), 2(L%4)+1 of matrix i.
__device__ __forceinline__ void ldsm_x4(const __half* p, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
    const uint32_t addr = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr)
                 : "memory");
}

// c += a b for a 16x16 A (row-major fragments) and a 16x8 B (column fragments), f32 accumulators.
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Integer products (kernels/mmq.cu), exact s32 sums of s8 products. g = lane/4, t = lane%4.
// c += a b, A 16x32 s8: a[0] row g, k 4t..4t+3 (byte i = k 4t+i), a[1] row g+8 (same k),
// a[2] row g, k 16+4t.., a[3] row g+8, k 16+4t..; B 32x8 s8: b[0] column g, k 4t..4t+3,
// b[1] column g, k 16+4t..; C 16x8: c[0], c[1] row g, columns 2t, 2t+1; c[2], c[3] row g+8.
__device__ __forceinline__ void imma16832(int c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---------- the output of a warp's tiles ----------
// A warp's MT x NT m16n8 accumulator tiles into Y (M x N f32, row-major) at rows r0.., columns
// c0..; rows >= M and columns >= N are left out, and column pairs go as one 8-byte store when
// N is even (every even column is then 8-byte aligned). Accumulator (g = lane/4, t = lane%4):
// [0],[1] at (row g, cols 2t, 2t+1), [2],[3] at row g + 8.
template <int MT, int NT>
__device__ __forceinline__ void store_acc(const float (&acc)[MT][NT][4], float* Y, int r0, int c0,
                                          int M, int N, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const bool pairs = (N & 1) == 0;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int n = c0 + nt * 8 + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = r0 + mt * 16 + g + 8 * h;
                if (m >= M) continue;
                float* y = Y + (long long)m * N + n;
                const float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
                if (pairs && n + 1 < N) {
                    *reinterpret_cast<float2*>(y) = make_float2(v0, v1);
                } else {
                    if (n < N) y[0] = v0;
                    if (n + 1 < N) y[1] = v1;
                }
            }
        }
}
