// Host stand-in for the CUDA headers that kernels/common.cuh and kernels/mma_matmul.cu use, so
// the tensor-core kernel's indexing and decoding can run on a CPU under tests/emu/mma_emu.cpp.
// f16 conversions go through GCC's _Float16 (round to nearest even, as cvt.rn).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __shared__ static  // one block runs at a time: statics are that block's shared memory
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct dim3u {
    unsigned x, y, z;
};
extern dim3u threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();
void __syncwarp();  // tests/emu/emu_runtime.h

struct __half {
    uint16_t bits;
};
struct __half2 {
    __half x, y;
};
inline float __half2float(__half h) {
    _Float16 f;
    memcpy(&f, &h.bits, 2);
    return (float)f;
}
inline __half __float2half_rn(float v) {
    _Float16 f = (_Float16)v;
    __half h;
    memcpy(&h.bits, &f, 2);
    return h;
}
inline __half __ushort_as_half(unsigned short b) { return __half{b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }

struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) uint2 {
    uint32_t x, y;
};
struct alignas(8) float2 {
    float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
template <class T> inline T __ldg(const T* p) { return *p; }
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t sh) {
    return (uint32_t)((((uint64_t)hi << 32) | lo) >> (sh & 31));
}
template <class T> inline T __ldcg(const T* p) { return *p; }
inline uint32_t __funnelshift_rc(uint32_t lo, uint32_t hi, uint32_t sh) {
    return (uint32_t)((((uint64_t)hi << 32) | lo) >> (sh > 32 ? 32 : sh));
}
// Bytes of (y:x) picked by the low 3 bits of the selector's four low nibbles.
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t v = ((uint64_t)y << 32) | x;
    uint32_t r = 0;
    for (int n = 0; n < 4; n++) r |= (uint32_t)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xff) << (8 * n);
    return r;
}
// c + the sum of the four products of a's and b's bytes as signed 8-bit integers.
inline int __dp4a(int a, int b, int c) {
    for (int n = 0; n < 4; n++) c += (int)(int8_t)(a >> (8 * n)) * (int)(int8_t)(b >> (8 * n));
    return c;
}
// Byte-wise a - b modulo 256.
inline uint32_t __vsub4(uint32_t a, uint32_t b) {
    uint32_t r = 0;
    for (int n = 0; n < 4; n++) r |= ((((a >> (8 * n)) & 0xff) - ((b >> (8 * n)) & 0xff)) & 0xff) << (8 * n);
    return r;
}
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline int __float2int_rn(float v) { return (int)nearbyintf(v); }  // default mode: to nearest even
inline float2 __half22float2(__half2 h) { return {__half2float(h.x), __half2float(h.y)}; }
// One block runs at a time: plain read-modify-write, no fence needed.
inline int atomicAdd(int* p, int v) {
    const int o = *p;
    *p = o + v;
    return o;
}
inline void __threadfence() {}
#include <stdio.h>
#include <stdlib.h>
[[noreturn]] inline void __trap() {
    fprintf(stderr, "EMU: __trap()\n");
    abort();
}
float __shfl_xor_sync(unsigned mask, float v, int lane_xor);  // tests/emu/emu_runtime.h
float __shfl_sync(unsigned mask, float v, int src_lane);
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
// Ints through the float shuffles, bit for bit.
inline int __shfl_xor_sync(unsigned mask, int v, int lane_xor) {
    return __float_as_int(__shfl_xor_sync(mask, __int_as_float(v), lane_xor));
}
