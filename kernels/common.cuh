// Shared device helpers: f16 loads and the GGUF block formats, decoded 32 values at a time.
// Block layouts follow the `gguf` Python package (quants.py), byte for byte as stored on disk.
// Every format's row is a whole number of 32-value chunks; chunk c of a row holds values
// [32c, 32c+32). The kernels only ever ask for whole chunks, so one decoder shape serves all.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// ggml type ids (same numbers as crate::quant::GgmlType).
#define T_F32 0
#define T_F16 1
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q6_K 14
#define T_MXFP4 39

// f16 at an address that may be only byte-aligned (block fields sit at odd offsets).
__device__ __forceinline__ float f16_at(const uint8_t* p) {
    unsigned short h = (unsigned short)p[0] | ((unsigned short)p[1] << 8);
    return __half2float(__ushort_as_half(h));
}

// Aligned loads of block fields (the fused kernels' decoders): 2 bytes at a 2-byte aligned
// address, an f16's bits as f32, 4 bytes at a 2-byte aligned address.
__device__ __forceinline__ uint32_t u16_at(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}
__device__ __forceinline__ float h16(uint32_t bits) {
    return __half2float(__ushort_as_half((unsigned short)bits));
}
__device__ __forceinline__ uint32_t u32_at2(const uint8_t* p) { return u16_at(p) | (u16_at(p + 2) << 16); }
// Bits 0..3 of b spread to bit 0 of bytes 0..3 (Q5_0's fifth bits, byte-wise).
__device__ __forceinline__ uint32_t spread4(uint32_t b) { return ((b & 15) * 0x00204081u) & 0x01010101u; }
// Scale and min of Q4_K sub-block s (quants.py's get_scale_min_k4) from its 12 scale bytes as
// three little-endian words. Both forms are computed and one selected: with a branch on s < 4,
// lanes of different sub-blocks diverged, which cost the 7B's gate/up product 11% (H100,
// bench/gpu/matvec_bound.cu).
__device__ __forceinline__ void q4k_scale_min(uint32_t w0, uint32_t w1, uint32_t w2, int s,
                                              uint32_t& sc, uint32_t& mn) {
    const int sh = 8 * (s & 3);
    const uint32_t a = w0 >> sh, b = w1 >> sh, c = w2 >> sh;  // bytes s&3, 4+(s&3), 8+(s&3)
    const bool hi = s >= 4;
    sc = hi ? (c & 15) | ((a >> 2) & 0x30) : a & 63;
    mn = hi ? ((c >> 4) & 15) | ((b >> 2) & 0x30) : b & 63;
}

// This block's dynamic shared memory (the CPU emulator of tests/emu hands its own buffer).
#ifdef MMA_EMULATE
#define DYN_SMEM(name) uint8_t* name = emu_dyn_smem
#else
#define DYN_SMEM(name) extern __shared__ __align__(16) uint8_t name[]
#endif

template <int T> struct Fmt;

template <> struct Fmt<T_F32> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        // Rows of k (a multiple of 32) floats from a 256-byte aligned base: 16-byte aligned.
        const float4* p = reinterpret_cast<const float4*>(row) + c * 8;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float4 v = p[i];
            o[4 * i] = v.x; o[4 * i + 1] = v.y; o[4 * i + 2] = v.z; o[4 * i + 3] = v.w;
        }
    }
};

template <> struct Fmt<T_F16> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const __half* p = reinterpret_cast<const __half*>(row) + c * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) o[i] = __half2float(p[i]);
    }
};

// Q8_0: 34 bytes = d (f16), 32 x int8. v = d * q.
template <> struct Fmt<T_Q8_0> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + c * 34;
        float d = f16_at(b);
#pragma unroll
        for (int i = 0; i < 32; i++) o[i] = d * (float)(int8_t)b[2 + i];
    }
};

// Q4_1: 20 bytes = d, m (f16), 16 bytes of nibbles: value i<16 is the low nibble of byte i,
// value i+16 the high nibble. v = d * q + m.
template <> struct Fmt<T_Q4_1> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + c * 20;
        float d = f16_at(b), m = f16_at(b + 2);
        const uint8_t* qs = b + 4;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            o[i] = d * (float)(qs[i] & 15) + m;
            o[i + 16] = d * (float)(qs[i] >> 4) + m;
        }
    }
};

// Q5_0: 22 bytes = d (f16), qh (u32 LE: bit i is the 5th bit of value i), 16 bytes of nibbles
// laid out as Q4_1. v = d * ((nibble | bit << 4) - 16).
template <> struct Fmt<T_Q5_0> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + c * 22;
        float d = f16_at(b);
        uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) |
                      ((uint32_t)b[5] << 24);
        const uint8_t* qs = b + 6;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 15) | (((qh >> i) & 1) << 4);
            int hi = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            o[i] = d * (float)(lo - 16);
            o[i + 16] = d * (float)(hi - 16);
        }
    }
};

// Q4_K: 144 bytes per 256 values = d, dmin (f16), 12 bytes of packed 6-bit (scale, min) for
// the 8 sub-blocks of 32, then 128 bytes of nibbles: bytes [32p, 32p+32) hold sub-block 2p in
// their low nibbles and 2p+1 in their high nibbles. v = d*sc*q - dmin*mn.
template <> struct Fmt<T_Q4_K> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + (c >> 3) * 144;
        const int s = c & 7;
        const float d = f16_at(b), dmin = f16_at(b + 2);
        const uint8_t* sc = b + 4;
        int scale, mn;
        if (s < 4) {
            scale = sc[s] & 63;
            mn = sc[s + 4] & 63;
        } else {
            scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4);
            mn = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
        }
        const float ds = d * (float)scale, dm = dmin * (float)mn;
        const uint8_t* q = b + 16 + (s >> 1) * 32;
        const int shift = (s & 1) * 4;
#pragma unroll
        for (int i = 0; i < 32; i++) o[i] = ds * (float)((q[i] >> shift) & 15) - dm;
    }
};

// Q6_K: 210 bytes per 256 values = ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales
// (one per 16 values), d (f16) last. In each half h of 128 values, 32-value chunk cc (0..3):
// low bits = nibble (cc>>1) of ql[64h + 32(cc&1) + i], high bits = bits 2cc..2cc+1 of
// qh[32h + i]; v = d * scale[8h + 2cc + i/16] * (q - 32).
template <> struct Fmt<T_Q6_K> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + (c >> 3) * 210;
        const int s = c & 7, h = s >> 2, cc = s & 3;
        const uint8_t* ql = b + h * 64 + (cc & 1) * 32;
        const uint8_t* qh = b + 128 + h * 32;
        const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192) + h * 8 + cc * 2;
        const float d = f16_at(b + 208);
        const int sl = 4 * (cc >> 1), sh = 2 * cc;
        const float d0 = d * (float)scales[0], d1 = d * (float)scales[1];
#pragma unroll
        for (int i = 0; i < 32; i++) {
            int q = (((ql[i] >> sl) & 15) | (((qh[i] >> sh) & 3) << 4)) - 32;
            o[i] = (i < 16 ? d0 : d1) * (float)q;
        }
    }
};

// MXFP4: 17 bytes = an E8M0 exponent e, then 16 bytes of 4-bit E2M1 codes laid out as Q4_1's
// nibbles (value i < 16 the low nibble of byte i, value i + 16 the high nibble). A code is a
// sign bit and a magnitude m in 0..7 standing for 0, 0.5, 1, 1.5, 2, 3, 4, 6; v = 2^(e-127) *
// that. As the reference reader computes it: half the scale, 2^(e-128) (a subnormal bit
// pattern for e < 2), times the doubled magnitudes 0, 1, 2, 3, 4, 6, 8, 12 (the nibbles of
// MXFP4_MAGS): every product is exact.
#define MXFP4_MAGS 0xC8643210u
__device__ __forceinline__ float e8m0_half(uint32_t e) {
    return __uint_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23);
}
__device__ __forceinline__ int mxfp4_doubled(uint32_t code) {
    const int m = (int)((MXFP4_MAGS >> (4 * (code & 7))) & 15);
    return code & 8 ? -m : m;
}
// The codes in the low nibbles of q's four bytes -> their doubled values as signed bytes (for
// 4-way int8 dot products; decode.cu, moe.cu).
__device__ __forceinline__ int mxfp4_bytes(uint32_t q) {
    const uint32_t x = q & 0x0F0F0F0Fu;
    // The four codes as selector nibbles (bits 0, 4, 8, 12).
    const uint32_t sel = __byte_perm(x | (x >> 4), 0, 0x4420);
    const uint32_t idx = sel & 0x7777u;                               // magnitude 0..7
    const uint32_t pos = __byte_perm(0x03020100u, 0x0C080604u, idx);  // 0 1 2 3 4 6 8 12
    const uint32_t neg = __byte_perm(0xFDFEFF00u, 0xF4F8FAFCu, idx);  // their negatives
    // Byte n from pos (selector n) or, where the code's sign bit is set, from neg (n + 4).
    return (int)__byte_perm(pos, neg, 0x3210u | ((sel >> 1) & 0x4444u));
}
template <> struct Fmt<T_MXFP4> {
    __device__ static void chunk(const uint8_t* row, int c, float* o) {
        const uint8_t* b = row + c * 17;
        const float d = e8m0_half(b[0]);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            o[i] = d * (float)mxfp4_doubled(b[1 + i] & 15);
            o[i + 16] = d * (float)mxfp4_doubled(b[1 + i] >> 4);
        }
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Programmatic dependent launch (sm_90; launches marked `pdl` in launch.rs). A kernel so
// launched may be running while the kernel before it in the stream still is: pdl_wait()
// returns once that kernel has completed and its writes are visible, so nothing written by
// earlier kernels may be read (or anything written) before it. pdl_trigger() lets the next
// kernel's blocks be scheduled (they then wait in their own pdl_wait). Both are no-ops in a
// launch without the attribute.
#ifndef MMA_EMULATE
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() {
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
#else
// The CPU emulator (tests/emu) runs one kernel at a time: nothing to wait for.
inline void pdl_wait() {}
inline void pdl_trigger() {}
#endif

// Ask the copy engine of the multiprocessor (TMA) to bring bytes [p, p + n) into L2 ahead of
// use; p is rounded down and the end up to 16 bytes (the buffers are padded by 16 bytes).
__device__ __forceinline__ void prefetch_l2(const void* p, long long n) {
#ifndef MMA_EMULATE
    const uintptr_t a = (uintptr_t)p & ~(uintptr_t)15;
    const uintptr_t e = ((uintptr_t)p + (uintptr_t)n + 15) & ~(uintptr_t)15;
#pragma unroll 1
    for (uintptr_t s = a; s < e; s += (1u << 20)) {
        const unsigned len = (unsigned)min((uintptr_t)(1u << 20), e - s);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(s), "r"(len) : "memory");
    }
#endif
}

// Dot of 32 decoded weights with 32 f32 activations (16-byte aligned: chunk starts are
// multiples of 128 bytes from a 256-byte aligned buffer).
__device__ __forceinline__ float dot32(const float* w, const float* x) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 v = x4[i];
        acc += w[4 * i] * v.x + w[4 * i + 1] * v.y + w[4 * i + 2] * v.z + w[4 * i + 3] * v.w;
    }
    return acc;
}

// The pair of dimension d (< rot_dim / 2) of one head x rotated for position p (times
// pos_scale): plain RoPE, the `rope` kernel's and every fused form's arithmetic (precise
// powf/sincosf: the angle reaches thousands of radians). neox: pairs (d, d + rot_dim / 2),
// else (2d, 2d + 1).
// Its two halves, for a caller that computes the angle early (it depends on the position
// only): rope_angle gives pair d's sine and cosine, rope_apply rotates the pair with them.
__device__ __forceinline__ void rope_angle(int d, int p, float pos_scale, int rot_dim, float base,
                                           float& s, float& c) {
    const float inv_freq = powf(base, -2.0f * (float)d / (float)rot_dim);
    sincosf((float)p * pos_scale * inv_freq, &s, &c);
}
__device__ __forceinline__ void rope_apply(float* x, int d, int half, int neox, float s, float c) {
    const int ia = neox ? d : 2 * d;
    const int ib = neox ? d + half : 2 * d + 1;
    const float xa = x[ia], xb = x[ib];
    x[ia] = xa * c - xb * s;
    x[ib] = xa * s + xb * c;
}
__device__ __forceinline__ void rope_rotate(float* x, int d, int p, float pos_scale, int rot_dim,
                                            float base, int neox) {
    float s, c;
    rope_angle(d, p, pos_scale, rot_dim, base, s, c);
    rope_apply(x, d, rot_dim / 2, neox, s, c);
}

// Instantiate one extern "C" entry per supported weight type.
#define FOR_EACH_TYPE(M) \
    M(f32, T_F32) M(f16, T_F16) M(q4_1, T_Q4_1) M(q5_0, T_Q5_0) M(q8_0, T_Q8_0) \
    M(q4_k, T_Q4_K) M(q6_k, T_Q6_K) M(mxfp4, T_MXFP4)
