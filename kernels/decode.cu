// Fused kernels for one decode step (a single token), written so that a whole step can be
// captured once as a CUDA graph and replayed: nothing here takes the position as a kernel
// argument; it is read from the step's device `pos` buffer.
//
// prep_input: the input of a mat-vec, RMS-normalized if asked and quantized to 16-bit chunk
//   records (two int8 passes per 32 values), once per product.
// fused_matvec: y = W x for up to three weight matrices sharing one input x, with one of three
//   epilogues: plain (+ bias), gated (SwiGLU of a gate and an up row), or add (y also added
//   into the residual stream). The quantized formats multiply with 4-way int8 dot products.
// rope_kv: rotates q and k in place and stores the token's k and v in the KV cache (f16, or
//   f32 in the `_f32kv` instances of the cache's kernels: attn_common.cuh).
// attention_decode: split-K attention of one query over the cache (flash-decoding): blocks
//   take slices of the keys, the last block of a head to finish merges their partial softmax.
#include "attn_common.cuh"

#define DW 8          // warps per block of fused_matvec
#define STAGE 2048    // bytes of a weight row a warp stages in shared memory per step

#include "mv_args.cuh"
#include "prep_input.cuh"

// Block geometry of each format: values and bytes per block.
template <int T> struct Geo;
template <> struct Geo<T_F32> { enum { V = 32, B = 128 }; };
template <> struct Geo<T_F16> { enum { V = 32, B = 64 }; };
template <> struct Geo<T_Q4_1> { enum { V = 32, B = 20 }; };
template <> struct Geo<T_Q5_0> { enum { V = 32, B = 22 }; };
template <> struct Geo<T_Q8_0> { enum { V = 32, B = 34 }; };
template <> struct Geo<T_Q4_K> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_Q6_K> { enum { V = 256, B = 210 }; };
template <> struct Geo<T_MXFP4> { enum { V = 32, B = 17 }; };

// Helpers of the per-format dot products below.
// 4 input values at v (a multiple of 4) of the f32 input in global memory (cached: every
// warp of the grid reads the same vector).
__device__ __forceinline__ float4 x4_at(const float* x, int v) {
    return __ldg(reinterpret_cast<const float4*>(x + v));
}
__device__ __forceinline__ float dot4(float4 x, float a, float b, float c, float d) {
    return x.x * a + x.y * b + x.z * c + x.w * d;
}

// Each format's `Lane<T>::blk<NR>`: one lane's share (lane j of LPB lanes a block) of the dot
// products of one staged block `b` with NR inputs, added to acc[0..NR): the block is decoded
// once, then multiplied with each input (several sequences of a batched step read each weight
// once). `c`: the 32-value chunk where the block starts; `x`: the first input (f32 for the
// float formats, chunk records for the quantized ones), input i at x + i * xst bytes. Block
// layouts as in common.cuh (quants.py).
template <int T> struct Lane;
__device__ __forceinline__ const uint8_t* xrow(const void* x, long long xst, int i) {
    return static_cast<const uint8_t*>(x) + i * xst;
}
#define LANE_BLK                                                                        \
    template <int NR>                                                                   \
    __device__ static void blk(const uint8_t* b, int c, const void* x, long long xst, int j, \
                               float(&acc)[NR])

// F32 (128-byte blocks of 32 values, 16-byte aligned): 8 lanes a block, 4 values a lane.
template <> struct Lane<T_F32> {
    enum { LPB = 8 };
    LANE_BLK {
        const float4 w = reinterpret_cast<const float4*>(b)[j];
#pragma unroll
        for (int i = 0; i < NR; i++)
            acc[i] += dot4(x4_at(reinterpret_cast<const float*>(xrow(x, xst, i)), c * 32 + 4 * j),
                           w.x, w.y, w.z, w.w);
    }
};

// F16 (64-byte blocks of 32 values, 8-byte aligned): 8 lanes a block, 4 values a lane.
template <> struct Lane<T_F16> {
    enum { LPB = 8 };
    LANE_BLK {
        const uint2 w = reinterpret_cast<const uint2*>(b)[j];
        const float w0 = h16(w.x), w1 = h16(w.x >> 16), w2 = h16(w.y), w3 = h16(w.y >> 16);
#pragma unroll
        for (int i = 0; i < NR; i++)
            acc[i] += dot4(x4_at(reinterpret_cast<const float*>(xrow(x, xst, i)), c * 32 + 4 * j),
                           w0, w1, w2, w3);
    }
};

// The quantized formats multiply an input quantized to 16 bits per 32-value chunk, in two
// int8 passes (x ≈ d·q1 + d/254·q2, |error| <= d/508, d = max|x|/127), with 4-way int8 dot
// products (dp4a): a few instructions per 4 values instead of a conversion and an FMA per
// value, which is what bound the f32 version. Each chunk's record in shared memory (80 bytes,
// a stride that keeps 8 neighbouring lanes' 16-byte reads on distinct banks):
// q1[32], q2[32] (int8), d (f32), exact sum of the chunk's x (f32).
__device__ __forceinline__ const uint8_t* xrec(const uint8_t* xq, int c) { return xq + c * XREC; }
__device__ __forceinline__ float xrec_d(const uint8_t* r) {
    return __ldg(reinterpret_cast<const float*>(r + 64));
}
__device__ __forceinline__ float xrec_sum(const uint8_t* r) {
    return __ldg(reinterpret_cast<const float*>(r + 64) + 1);
}
// Σ w·x over a chunk, w as 8 words of 4 signed bytes (values 0..31 in order).
__device__ __forceinline__ float dot_rec(const int (&w)[8], const uint8_t* r) {
    const int4* p = reinterpret_cast<const int4*>(r);
    const int4 a0 = __ldg(p), a1 = __ldg(p + 1), b0 = __ldg(p + 2), b1 = __ldg(p + 3);
    int s1 = __dp4a(w[0], a0.x, 0), s2 = __dp4a(w[0], b0.x, 0);
    s1 = __dp4a(w[1], a0.y, s1); s2 = __dp4a(w[1], b0.y, s2);
    s1 = __dp4a(w[2], a0.z, s1); s2 = __dp4a(w[2], b0.z, s2);
    s1 = __dp4a(w[3], a0.w, s1); s2 = __dp4a(w[3], b0.w, s2);
    s1 = __dp4a(w[4], a1.x, s1); s2 = __dp4a(w[4], b1.x, s2);
    s1 = __dp4a(w[5], a1.y, s1); s2 = __dp4a(w[5], b1.y, s2);
    s1 = __dp4a(w[6], a1.z, s1); s2 = __dp4a(w[6], b1.z, s2);
    s1 = __dp4a(w[7], a1.w, s1); s2 = __dp4a(w[7], b1.w, s2);
    return xrec_d(r) * ((float)s1 + (float)s2 * (1.0f / 254.0f));
}
// Σ w·x over values 8j..8j+7 of a chunk, w as 2 words of 4 signed bytes.
__device__ __forceinline__ float dot_rec8(int w0, int w1, const uint8_t* r, int j) {
    const uint2 a = __ldg(reinterpret_cast<const uint2*>(r + 8 * j));
    const uint2 b = __ldg(reinterpret_cast<const uint2*>(r + 32 + 8 * j));
    const int s1 = __dp4a(w1, (int)a.y, __dp4a(w0, (int)a.x, 0));
    const int s2 = __dp4a(w1, (int)b.y, __dp4a(w0, (int)b.x, 0));
    return xrec_d(r) * ((float)s1 + (float)s2 * (1.0f / 254.0f));
}
// The same for the two 16-value halves separately (Q6_K has a scale per 16 values).
__device__ __forceinline__ void dot_rec_halves(const int (&w)[8], const uint8_t* r, float& lo,
                                               float& hi) {
    const int4* p = reinterpret_cast<const int4*>(r);
    const int4 a0 = __ldg(p), a1 = __ldg(p + 1), b0 = __ldg(p + 2), b1 = __ldg(p + 3);
    int l1 = __dp4a(w[0], a0.x, 0), l2 = __dp4a(w[0], b0.x, 0);
    l1 = __dp4a(w[1], a0.y, l1); l2 = __dp4a(w[1], b0.y, l2);
    l1 = __dp4a(w[2], a0.z, l1); l2 = __dp4a(w[2], b0.z, l2);
    l1 = __dp4a(w[3], a0.w, l1); l2 = __dp4a(w[3], b0.w, l2);
    int h1 = __dp4a(w[4], a1.x, 0), h2 = __dp4a(w[4], b1.x, 0);
    h1 = __dp4a(w[5], a1.y, h1); h2 = __dp4a(w[5], b1.y, h2);
    h1 = __dp4a(w[6], a1.z, h1); h2 = __dp4a(w[6], b1.z, h2);
    h1 = __dp4a(w[7], a1.w, h1); h2 = __dp4a(w[7], b1.w, h2);
    const float d = xrec_d(r);
    lo = d * ((float)l1 + (float)l2 * (1.0f / 254.0f));
    hi = d * ((float)h1 + (float)h2 * (1.0f / 254.0f));
}

// Q8_0 (34 bytes, 2-byte aligned): 4 lanes a block, 8 values a lane.
template <> struct Lane<T_Q8_0> {
    enum { LPB = 4 };
    LANE_BLK {
        const int w0 = (int)u32_at2(b + 2 + 8 * j), w1 = (int)u32_at2(b + 6 + 8 * j);
        const float d = h16(u16_at(b));
#pragma unroll
        for (int i = 0; i < NR; i++) acc[i] += d * dot_rec8(w0, w1, xrec(xrow(x, xst, i), c), j);
    }
};

// Q5_0 (22 bytes, 2-byte aligned): 4 lanes a block; lane j takes values 8j..8j+7 (low
// nibbles of bytes 8(j%2).. for j < 2, high nibbles for j >= 2) with their fifth bits from qh
// joined byte-wise, then 16 subtracted byte-wise (values -16..15 as signed bytes).
template <> struct Lane<T_Q5_0> {
    enum { LPB = 4 };
    LANE_BLK {
        const int sh = 4 * (j >> 1);
        const uint32_t qh = u32_at2(b + 2) >> (8 * j);
        const uint8_t* qs = b + 6 + 8 * (j & 1);
        const uint32_t q0 = (u32_at2(qs) >> sh) & 0x0F0F0F0Fu;
        const uint32_t q1 = (u32_at2(qs + 4) >> sh) & 0x0F0F0F0Fu;
        const int w0 = (int)__vsub4(q0 | (spread4(qh) << 4), 0x10101010u);
        const int w1 = (int)__vsub4(q1 | (spread4(qh >> 4) << 4), 0x10101010u);
        const float d = h16(u16_at(b));
#pragma unroll
        for (int i = 0; i < NR; i++) acc[i] += d * dot_rec8(w0, w1, xrec(xrow(x, xst, i), c), j);
    }
};

// Q4_1 (20 bytes, 4-byte aligned as rows are): 4 lanes a block as Q5_0, v = d·q + m (the
// m·Σx term once per block, by lane 0 of its four).
template <> struct Lane<T_Q4_1> {
    enum { LPB = 4 };
    LANE_BLK {
        const uint32_t* bw = reinterpret_cast<const uint32_t*>(b);
        const int sh = 4 * (j >> 1);
        const int w0 = (int)((bw[1 + 2 * (j & 1)] >> sh) & 0x0F0F0F0Fu);
        const int w1 = (int)((bw[2 + 2 * (j & 1)] >> sh) & 0x0F0F0F0Fu);
        const float d = h16(bw[0]), m = h16(bw[0] >> 16);
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const uint8_t* r = xrec(xrow(x, xst, i), c);
            float v = d * dot_rec8(w0, w1, r, j);
            if (j == 0) v += m * xrec_sum(r);
            acc[i] += v;
        }
    }
};

// Q4_K (144 bytes, 16-byte aligned as rows are): 8 lanes a block, a lane per 32-value
// sub-block s: its 32 nibbles (low or high halves of bytes 32(s/2)..), 6-bit scale and min.
template <> struct Lane<T_Q4_K> {
    enum { LPB = 8 };
    LANE_BLK {
        const int s = j;
        const uint32_t* bw = reinterpret_cast<const uint32_t*>(b);
        const uint32_t dd = bw[0];
        uint32_t sc, mn;
        q4k_scale_min(bw[1], bw[2], bw[3], s, sc, mn);
        const uint4* qp = reinterpret_cast<const uint4*>(b + 16 + 32 * (s >> 1));
        const uint4 u0 = qp[0], u1 = qp[1];
        const int sh = 4 * (s & 1);
        const int w[8] = {(int)((u0.x >> sh) & 0x0F0F0F0Fu), (int)((u0.y >> sh) & 0x0F0F0F0Fu),
                          (int)((u0.z >> sh) & 0x0F0F0F0Fu), (int)((u0.w >> sh) & 0x0F0F0F0Fu),
                          (int)((u1.x >> sh) & 0x0F0F0F0Fu), (int)((u1.y >> sh) & 0x0F0F0F0Fu),
                          (int)((u1.z >> sh) & 0x0F0F0F0Fu), (int)((u1.w >> sh) & 0x0F0F0F0Fu)};
        const float dsc = h16(dd) * (float)sc, dmn = h16(dd >> 16) * (float)mn;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const uint8_t* r = xrec(xrow(x, xst, i), c + s);
            acc[i] += dsc * dot_rec(w, r) - dmn * xrec_sum(r);
        }
    }
};

// Q6_K (210 bytes, 2-byte aligned): 8 lanes a block, a lane per 32-value quarter (h, cc):
// low bits from ql (nibble cc/2 of bytes 64h + 32(cc%2) + i), high bits from qh (bits 2cc
// of bytes 32h + i), minus 32 byte-wise; a scale per 16 values.
template <> struct Lane<T_Q6_K> {
    enum { LPB = 8 };
    LANE_BLK {
        const int s = j;
        const int h = s >> 2, cc = s & 3;
        const int sl = 4 * (cc >> 1), shh = 2 * cc;
        const uint8_t* ql = b + 64 * h + 32 * (cc & 1);
        const uint8_t* qh = b + 128 + 32 * h;
        int w[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t l = (u32_at2(ql + 4 * i) >> sl) & 0x0F0F0F0Fu;
            const uint32_t hb = ((u32_at2(qh + 4 * i) >> shh) & 0x03030303u) << 4;
            w[i] = (int)__vsub4(l | hb, 0x20202020u);
        }
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * h + 2 * cc;
        const float d = h16(u16_at(b + 208)), s0 = (float)sc[0], s1 = (float)sc[1];
#pragma unroll
        for (int i = 0; i < NR; i++) {
            float lo, hi;
            dot_rec_halves(w, xrec(xrow(x, xst, i), c + s), lo, hi);
            acc[i] += d * (s0 * lo + s1 * hi);
        }
    }
};

// MXFP4 (17 bytes, byte-aligned; common.cuh): 4 lanes a block; lane j takes code bytes
// 4j..4j+3, whose low nibbles are values 4j..4j+3 and high nibbles values 16+4j..16+4j+3. Each
// code becomes its doubled E2M1 value (-12..12) as a signed byte by byte permutes, so the dot
// products are the same dp4a as for the other formats; the E8M0 scale (halved) comes last.
// 4 bytes at any address of shared memory: the two aligned words around them (a stage's
// blocks end at least 10 bytes before its STAGE buffer does, so the second word is in it).
__device__ __forceinline__ uint32_t u32_at1(const uint8_t* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(a & ~(uintptr_t)3);
    return __funnelshift_r(w[0], w[1], 8 * (uint32_t)(a & 3));
}
template <> struct Lane<T_MXFP4> {
    enum { LPB = 4 };
    LANE_BLK {
        const uint32_t q = u32_at1(b + 1 + 4 * j);
        const int wlo = mxfp4_bytes(q), whi = mxfp4_bytes(q >> 4);
        const float e = e8m0_half(b[0]);
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const uint8_t* r = xrec(xrow(x, xst, i), c);
            const int a1 = __ldg(reinterpret_cast<const int*>(r + 4 * j));
            const int a2 = __ldg(reinterpret_cast<const int*>(r + 16 + 4 * j));
            const int b1 = __ldg(reinterpret_cast<const int*>(r + 32 + 4 * j));
            const int b2 = __ldg(reinterpret_cast<const int*>(r + 48 + 4 * j));
            const int s1 = __dp4a(whi, a2, __dp4a(wlo, a1, 0));
            const int s2 = __dp4a(whi, b2, __dp4a(wlo, b1, 0));
            acc[i] += e * (xrec_d(r) * ((float)s1 + (float)s2 * (1.0f / 254.0f)));
        }
    }
};

// A lane's share of the dot products of nb staged blocks with the NR inputs (`c0`: the chunk
// where the first block starts), added to out: LPB lanes a block, 32 / LPB blocks at a time.
template <int T, int NR>
__device__ __forceinline__ void dot_run(const uint8_t* sb, int nb, int c0, const void* x,
                                        long long xst, int lane, float (&out)[NR]) {
    constexpr int L = Lane<T>::LPB, CPB = Geo<T>::V / 32;
    const int j = lane % L;
    float acc[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) acc[i] = 0.f;
#pragma unroll 1
    for (int blk = lane / L; blk < nb; blk += 32 / L)
        Lane<T>::template blk<NR>(sb + blk * Geo<T>::B, c0 + blk * CPB, x, xst, j, acc);
#pragma unroll
    for (int i = 0; i < NR; i++) out[i] += acc[i];
}

// The same for two rows' staged blocks over the same columns (a SwiGLU's gate and up), run
// as one sequence of 2nb blocks: when nb is not a multiple of 32 / LPB, no lanes idle at the
// end of the first row (a row of 14 Q4_K blocks: 7 steps instead of 8).
template <int T, int NR>
__device__ __forceinline__ void dot_run2(const uint8_t* sa, const uint8_t* sb, int nb, int c0,
                                         const void* x, long long xst, int lane, float (&oa)[NR],
                                         float (&ob)[NR]) {
    constexpr int L = Lane<T>::LPB, CPB = Geo<T>::V / 32;
    const int j = lane % L;
#pragma unroll 1
    for (int i = lane / L; i < 2 * nb; i += 32 / L) {
        const bool second = i >= nb;
        const int blk = second ? i - nb : i;
        float v[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) v[r] = 0.f;
        Lane<T>::template blk<NR>((second ? sb : sa) + blk * Geo<T>::B, c0 + blk * CPB, x, xst, j, v);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (second) ob[r] += v[r]; else oa[r] += v[r];
        }
    }
}

// Weight rows reach shared memory through cp.async (16 bytes a lane, no registers held while
// in flight), from the 16-byte boundary at or below the first block; each warp has two
// STAGE-byte buffers. (Under MMA_EMULATE, tests/emu provides the copies.)
#ifndef MMA_EMULATE
__device__ __forceinline__ void cp16(uint8_t* s, const uint8_t* g) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(g));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// 16 zero bytes to s, nothing read (g: any address).
__device__ __forceinline__ void cp16_zero(uint8_t* s, const uint8_t* g) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(g), "r"(0));
}
#else
inline void cp16(uint8_t* s, const uint8_t* g) { cp16(static_cast<void*>(s), g, 16u); }
inline void cp16_zero(uint8_t* s, const uint8_t* g) { cp16(static_cast<void*>(s), g, 0u); }
#endif

// Copy blocks [b0, b0 + nb) of `row` into buf (the caller commits the group); returns where
// the first block lands. `stage_off`: the same without copying (a copy issued earlier).
template <int T>
__device__ __forceinline__ int stage_off(const uint8_t* row, int b0) {
    return (int)((uintptr_t)(row + (long long)b0 * Geo<T>::B) & 15);
}
template <int T>
__device__ __forceinline__ int stage_copy(const uint8_t* row, int b0, int nb, uint8_t* buf,
                                          int lane) {
    const uint8_t* g = row + (long long)b0 * Geo<T>::B;
    const int off = (int)((uintptr_t)g & 15);
    const uint8_t* g0 = g - off;
    const int n16 = (off + nb * Geo<T>::B + 15) >> 4;
#pragma unroll 1
    for (int i = lane; i < n16; i += 32) cp16(buf + 16 * i, g0 + 16 * i);
    return off;
}

// The rows a warp multiplies in its next round (their first stage can be fetched while the
// current round's last stage is decoded): rows a (and b, a SwiGLU's up row) of format
// `type`; a null when there is none.
struct NextRows {
    const uint8_t* a;
    const uint8_t* b;
    int type;
};

// One warp: dot products of blocks [blk0, blk1) of row A (and of row B, when given: the
// gate and up rows of a SwiGLU, fetched together) with the input, in stages of up to PER
// blocks through two units of the warp's buffers (a unit: one STAGE buffer, two for a
// SwiGLU): the next stage's copy is in flight while one is decoded, and during the last
// stage, the first stage of the next round's rows (`nx`, blocks [blk0, blk1) too). `phase`:
// the unit the first stage is (`pre`: already issued and committed) or goes in; on return,
// the unit of the next round's first stage, and `npre` whether it was issued.
template <int T, int NR>
__device__ __forceinline__ void row_dot2(const uint8_t* __restrict__ ra, const uint8_t* __restrict__ rb,
                         int blk0, int blk1, const void* xs, long long xst, uint8_t* buf, int lane,
                         float (&oa)[NR], float (&ob)[NR], bool pre, int& phase,
                         const NextRows& nx, bool& npre) {
    constexpr int PER = (STAGE - 16) / Geo<T>::B;  // whole blocks per stage step
    constexpr int CPB = Geo<T>::V / 32;            // 32-value chunks per block
    const int unit = rb ? 2 * STAGE : STAGE;
    float a[NR], b[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) a[i] = b[i] = 0.f;
    npre = false;
    if (blk0 < blk1) {
        int cur = phase;
        const int n0 = min(PER, blk1 - blk0);
        int offa, offb = 0;
        if (pre) {
            offa = stage_off<T>(ra, blk0);
            if (rb) offb = stage_off<T>(rb, blk0);
        } else {
            offa = stage_copy<T>(ra, blk0, n0, buf + cur * unit, lane);
            if (rb) offb = stage_copy<T>(rb, blk0, n0, buf + cur * unit + STAGE, lane);
            cp_commit();
        }
        for (int b0 = blk0; b0 < blk1; b0 += PER) {
            const int nb = min(PER, blk1 - b0);
            uint8_t* u = buf + cur * unit;
            uint8_t* v = buf + (cur ^ 1) * unit;
            int noffa = 0, noffb = 0;
            if (b0 + PER < blk1) {
                const int n1 = min(PER, blk1 - b0 - PER);
                noffa = stage_copy<T>(ra, b0 + PER, n1, v, lane);
                if (rb) noffb = stage_copy<T>(rb, b0 + PER, n1, v + STAGE, lane);
                cp_commit();
                cp_wait<1>();
            } else if (nx.a) {
                stage_copy<T>(nx.a, blk0, n0, v, lane);
                if (rb) stage_copy<T>(nx.b, blk0, n0, v + STAGE, lane);
                cp_commit();
                cp_wait<1>();
                npre = true;
            } else {
                cp_wait<0>();
            }
            __syncwarp();
            if (rb)
                dot_run2<T, NR>(u + offa, u + STAGE + offb, nb, b0 * CPB, xs, xst, lane, a, b);
            else
                dot_run<T, NR>(u + offa, nb, b0 * CPB, xs, xst, lane, a);
            __syncwarp();
            cur ^= 1;
            offa = noffa;
            offb = noffb;
        }
        phase = cur;
    }
#pragma unroll
    for (int i = 0; i < NR; i++) {
        oa[i] = warp_sum(a[i]);
        ob[i] = rb ? warp_sum(b[i]) : 0.f;
    }
}

// The first stage copy of row_dot2 (rows ra, rb, blocks [blk0, blk1)) into unit 0, issued
// early (before the kernel waits for its input).
template <int T>
__device__ __forceinline__ void stage_first(const uint8_t* ra, const uint8_t* rb, int blk0,
                                            int blk1, uint8_t* buf, int lane) {
    constexpr int PER = (STAGE - 16) / Geo<T>::B;
    if (blk0 >= blk1) return;
    const int nb = min(PER, blk1 - blk0);
    stage_copy<T>(ra, blk0, nb, buf, lane);
    if (rb) stage_copy<T>(rb, blk0, nb, buf + STAGE, lane);
    cp_commit();
}

// Part `part` of `parts` of the dot products of rows ra (and rb) with the input (the rows'
// blocks split evenly). With `xs` null, only the first stage copy is issued (early, before
// the kernel waits for its input); `pre`, `phase`, `nx`, `npre`: as row_dot2's (the next
// rows' first stage is fetched only when they are of the same format).
// FA, FB: the formats a kernel handles (FA == FB: one; FA < 0: any, by `type`). A kernel for
// the formats a product has, without the others' code, fits the instruction cache better.
// NR: inputs multiplied with each staged block (xs + i * xst, i < NR), outputs oa[i], ob[i].
template <int FA, int FB, int NR>
__device__ __forceinline__ void row_dot_part(int type, const uint8_t* ra, const uint8_t* rb, int k, int part,
                             int parts, const void* xs, long long xst, uint8_t* buf, int lane,
                             float (&oa)[NR], float (&ob)[NR], bool pre, int& phase, NextRows nx,
                             bool& npre) {
    if (nx.type != type) nx.a = nullptr;
#define ROW_DOT(TY)                                                                       \
    {                                                                                     \
        const int nblk = k / Geo<TY>::V;                                                  \
        const int b0 = nblk * part / parts, b1 = nblk * (part + 1) / parts;               \
        if (!xs)                                                                          \
            stage_first<TY>(ra, rb, b0, b1, buf, lane);                                   \
        else                                                                              \
            row_dot2<TY, NR>(ra, rb, b0, b1, xs, xst, buf, lane, oa, ob, pre, phase, nx, npre); \
        return;                                                                           \
    }
    if constexpr (FA >= 0 && FA == FB) {
        ROW_DOT(FA)
    } else if constexpr (FA >= 0) {
        if (type == FA) ROW_DOT(FA)
        ROW_DOT(FB)
    } else {
        switch (type) {
            case T_F32: ROW_DOT(T_F32)
            case T_F16: ROW_DOT(T_F16)
            case T_Q4_1: ROW_DOT(T_Q4_1)
            case T_Q5_0: ROW_DOT(T_Q5_0)
            case T_Q8_0: ROW_DOT(T_Q8_0)
            case T_Q4_K: ROW_DOT(T_Q4_K)
            case T_MXFP4: ROW_DOT(T_MXFP4)
            default: ROW_DOT(T_Q6_K)
        }
    }
#undef ROW_DOT
}
// One input (a single sequence; the expert products).
template <int FA, int FB>
__device__ __forceinline__ void row_dot_part(int type, const uint8_t* ra, const uint8_t* rb, int k, int part,
                             int parts, const void* xs, uint8_t* buf, int lane, float& oa,
                             float& ob, bool pre, int& phase, NextRows nx, bool& npre) {
    float a[1], b[1];
    row_dot_part<FA, FB, 1>(type, ra, rb, k, part, parts, xs, 0, buf, lane, a, b, pre, phase, nx, npre);
    oa = a[0];
    ob = b[0];
}

// The input of a fused mat-vec, prepared once per product instead of in every block:
// optionally RMS-normalized (the normalized f32 also written to `normed`), and, when `rec` is
// set, quantized to the 16-bit chunk records the quantized formats multiply (prep_input.cuh).
// Launch: block = 32 * DW threads, grid = (ceil(k / 32 / DW), inputs): a warp per 32-value
// chunk (each block computes the norm's sum of squares itself); input y (a row of a step) at
// x + y k, its records at rec + y (k / 32) XREC.
extern "C" __global__ void __launch_bounds__(32 * DW)
prep_input(const float* __restrict__ x, const float* __restrict__ norm, float eps,
           float* __restrict__ normed, uint8_t* __restrict__ rec, int k) {
    if (rec) rec += (long long)blockIdx.y * (k / 32) * XREC;
    prep_body<DW>(x, norm, eps, normed, k, [&](float v, int c, int lane) {
        if (rec) write_record(v, rec + (long long)c * XREC, lane);
    });
}

// The weight rows of this block's jobs (rows or row pairs) [base, base + groups) of each
// round, prefetched into L2: all rounds when the matrices fit well within L2 (the small
// products of a small model), else the first.
__device__ __forceinline__ void prefetch_rows(const MvArgs& a, int total, int groups) {
    const int n_seg = a.mode == MODE_GLU ? 2 : (a.mode == MODE_PLAIN ? a.n_seg : 1);
    long long all = 0;
    for (int s = 0; s < n_seg; s++) all += (long long)a.seg[s].rows * a.seg[s].row_bytes;
    const int rounds = all <= (24ll << 20) ? 1 << 30 : 1;
    int it = 0;
#pragma unroll 1
    for (int base = blockIdx.x * groups; base < total && it < rounds;
         base += gridDim.x * groups, it++) {
        const int end = min(total, base + groups);
        int first = 0;  // job number of seg s's row 0
#pragma unroll 1
        for (int s = 0; s < n_seg; s++) {
            const Seg& sg = a.seg[s];
            // GLU: both segments take the same rows; else the jobs run through the segments.
            const int f = a.mode == MODE_PLAIN ? first : 0;
            const int r0 = max(base - f, 0), r1 = min(end - f, sg.rows);
            if (r0 < r1)
                prefetch_l2(sg.w + (long long)r0 * sg.row_bytes, (long long)(r1 - r0) * sg.row_bytes);
            first += sg.rows;
        }
    }
}

// Launch: block = 32 * DW threads, any grid, dynamic shared memory = 2 * DW * STAGE bytes.
// `xs`: chunk records from prep_input for the quantized formats, f32 for F32/F16. `wpr` warps
// (1, 2, 4 or 8) share each row, each taking a slice of its blocks: few rows still put many
// warps and loads in flight. Groups of wpr warps stride over the rows.
// GLU: 1 for the SwiGLU epilogue, 0 for the others, -1 for any (a.mode's).
// NR: inputs (sequences of a batched step) multiplied with each staged weight block, input i
// at xs + i * a.x_stride bytes; output i of a segment of R rows at out + i * R (act and acc
// alike): the rows of a step's slots.
template <int FA, int FB, int GLU, int NR>
__device__ __forceinline__ void fused_matvec_body(const MvArgs& a, const void* __restrict__ xs,
                                                  int wpr) {
    const bool glu = GLU >= 0 ? GLU == 1 : a.mode == MODE_GLU;
    const long long xst = NR > 1 ? a.x_stride : 0;
    DYN_SMEM(smem);
    __shared__ float red[2][NR][DW];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int k = a.k;
    // Two units of buffers a warp (row_dot2): a SwiGLU's unit is two STAGE buffers.
    uint8_t* buf = smem + warp * (glu ? 4 : 2) * STAGE;

    int total = 0;
    if (a.mode == MODE_PLAIN) {
        for (int s = 0; s < a.n_seg; s++) total += a.seg[s].rows;
    } else {
        total = a.seg[0].rows;
    }
    const int groups = DW / wpr, grp = warp / wpr, part = warp % wpr;
    // A SwiGLU's gate and up rows are fetched and multiplied together when of one format
    // (a kernel of one format is only launched for such); else one after the other.
    const bool paired = !glu || (FA >= 0 && FA == FB) || a.seg[0].type == a.seg[1].type;
    // Job `job`: its segment s, row r, row a (and b: the up row of a SwiGLU), format.
    auto rows = [&](int job, int& s, int& r, const uint8_t*& ra, const uint8_t*& rb) -> int {
        s = 0;
        r = job;
        if (a.mode == MODE_PLAIN)
            while (s + 1 < a.n_seg && r >= a.seg[s].rows) r -= a.seg[s++].rows;
        const Seg& sg = a.seg[s];
        ra = sg.w + (long long)r * sg.row_bytes;
        rb = glu ? a.seg[1].w + (long long)r * a.seg[1].row_bytes : nullptr;
        return sg.type;
    };
    // While the kernel before this one finishes (weights do not depend on it): this block's
    // weight rows toward L2, and each warp's first stage copy into its first unit.
    if (threadIdx.x == 0) prefetch_rows(a, total, groups);
    bool pre = false;
    int phase = 0;
    {
        const int job = blockIdx.x * groups + grp;
        if (job < total && paired) {
            int s, r;
            const uint8_t *ra, *rb;
            const int ty = rows(job, s, r, ra, rb);
            float unused0[NR], unused1[NR];
            bool unused2;
            row_dot_part<FA, FB, NR>(ty, ra, rb, k, part, wpr, nullptr, 0, buf, lane, unused0,
                                     unused1, false, phase, NextRows{nullptr, nullptr, -1}, unused2);
            pre = true;
        }
    }
    pdl_wait();
    pdl_trigger();
    // Every warp of the block runs the same number of rounds (block-wide barriers inside).
    for (int base = blockIdx.x * groups; base < total; base += gridDim.x * groups) {
        const int job = base + grp;
        float d0[NR], d1[NR];
#pragma unroll
        for (int i = 0; i < NR; i++) d0[i] = d1[i] = 0.f;
        int s = 0, r = job;
        bool npre = false;
        if (job < total) {
            const uint8_t *ra, *rb;
            const int ty = rows(job, s, r, ra, rb);
            if (paired) {
                // The next round's rows, whose first stage is fetched during the last one.
                NextRows nx{nullptr, nullptr, -1};
                const int next = job + gridDim.x * groups;
                if (next < total) {
                    int ns, nr;
                    nx.type = rows(next, ns, nr, nx.a, nx.b);
                }
                row_dot_part<FA, FB, NR>(ty, ra, rb, k, part, wpr, xs, xst, buf, lane, d0, d1, pre,
                                         phase, nx, npre);
            } else {
                float unused[NR];
                bool unused2;
                const NextRows none{nullptr, nullptr, -1};
                phase = 0;
                row_dot_part<FA, FB, NR>(ty, ra, nullptr, k, part, wpr, xs, xst, buf, lane, d0,
                                         unused, false, phase, none, unused2);
                phase = 0;
                row_dot_part<FA, FB, NR>(a.seg[1].type, rb, nullptr, k, part, wpr, xs, xst, buf,
                                         lane, d1, unused, false, phase, none, unused2);
            }
        }
        pre = npre;
        if (wpr > 1) {
            if (lane == 0) {
#pragma unroll
                for (int i = 0; i < NR; i++) { red[0][i][warp] = d0[i]; red[1][i][warp] = d1[i]; }
            }
            __syncthreads();
            if (part == 0) {
                for (int w = 1; w < wpr; w++) {
#pragma unroll
                    for (int i = 0; i < NR; i++) {
                        d0[i] += red[0][i][warp + w];
                        d1[i] += red[1][i][warp + w];
                    }
                }
            }
            __syncthreads();
        }
        if (job < total && part == 0 && lane == 0) {
            const int n = glu ? a.seg[0].rows : a.seg[s].rows;  // an output row's stride
#pragma unroll
            for (int i = 0; i < NR; i++) {
                const long long o = (long long)i * n;
                if (glu) {
                    a.seg[0].out[o + job] = d0[i];
                    a.seg[1].out[o + job] = d1[i];
                    a.act[o + job] = d0[i] / (1.0f + expf(-d0[i])) * d1[i];
                } else {
                    const Seg& sg = a.seg[s];
                    float y = d0[i];
                    if (sg.bias) y += sg.bias[r];
                    sg.out[o + r] = y;
                    if (a.mode == MODE_ADD) a.acc[o + r] += y;
                }
            }
        }
    }
    cp_wait<0>();
}

// Registers capped for 3 blocks a multiprocessor (a little spilling): measured faster than 2
// blocks without spills (0.5B 761 vs 741, 7B 283 vs 261 tok/s on the H200).
extern "C" __global__ void __launch_bounds__(32 * DW, 3)
fused_matvec(const MvArgs a, const void* __restrict__ xs, int wpr) {
    fused_matvec_body<-1, -1, -1, 1>(a, xs, wpr);
}
// The same for products of one format (and for a SwiGLU or not), and of the two formats of
// a Q4_K_M file's q/k/v: an eighth of the code or less. The generic kernel's size cost the
// small products most of their time in instruction fetch (ncu, H200: warps stalled on "no
// instruction" 5-10 cycles per issued instruction in the 0.5B's products).
// Kernels of NR inputs (a batched step's sequences, _r<NR>): each staged weight block is
// multiplied with every input, so the step reads its weights once instead of once a sequence.
#define MV_ONE_NR(name, T, NR)                                                                \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                                  \
    fused_matvec_##name(const MvArgs a, const void* __restrict__ xs, int wpr) {                \
        fused_matvec_body<T, T, 0, NR>(a, xs, wpr);                                           \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                                  \
    fused_matvec_##name##_glu(const MvArgs a, const void* __restrict__ xs, int wpr) {          \
        fused_matvec_body<T, T, 1, NR>(a, xs, wpr);                                           \
    }
#define MV_ONE(name, T)                                                                       \
    MV_ONE_NR(name, T, 1) MV_ONE_NR(name##_r2, T, 2) MV_ONE_NR(name##_r4, T, 4)                 \
    MV_ONE_NR(name##_r8, T, 8)
MV_ONE(f32, T_F32) MV_ONE(f16, T_F16) MV_ONE(q4_1, T_Q4_1) MV_ONE(q5_0, T_Q5_0)
MV_ONE(q8_0, T_Q8_0) MV_ONE(q4_k, T_Q4_K) MV_ONE(q6_k, T_Q6_K) MV_ONE(mxfp4, T_MXFP4)
#undef MV_ONE
#undef MV_ONE_NR
#define MV_TWO_NR(name, A, B, NR)                                                    \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                         \
    fused_matvec_##name(const MvArgs a, const void* __restrict__ xs, int wpr) {       \
        fused_matvec_body<A, B, 0, NR>(a, xs, wpr);                                  \
    }
#define MV_TWO(name, A, B)                                                                \
    MV_TWO_NR(name, A, B, 1) MV_TWO_NR(name##_r2, A, B, 2) MV_TWO_NR(name##_r4, A, B, 4)    \
    MV_TWO_NR(name##_r8, A, B, 8)
MV_TWO(q5_0_q8_0, T_Q5_0, T_Q8_0) MV_TWO(q4_k_q6_k, T_Q4_K, T_Q6_K)
#undef MV_TWO
#undef MV_TWO_NR

// ---------- mixture of experts, one token: the selected experts' mat-vecs ----------
// Each expert of a stacked tensor is its own weight buffer (the model uploads the file's
// per-expert views one by one), so a product names its experts through a pointer table in
// device memory: `w[m][e]` is expert e's matrix of `rows` rows of k values. `ids` (device
// memory, n_sel ids, written by the router's top-k just before) names the experts this token
// uses: only their rows are read, and nothing goes back to the host in between.
struct ExpertArgs {
    const uint8_t* const* w[2];  // one or two tables (gate, up) of n_expert matrices, one format and shape
    const float* const* bias[2]; // tables of n_expert bias rows (`rows` f32 each), or null
    float* out[2];               // [n_sel][rows] f32 each: slot s's products at s * rows
    const int* ids;              // n_sel expert ids; one out of range gives NaN rows, nothing read
    long long row_bytes;
    long long x_stride;          // bytes from slot s's input records to slot s+1's (0: one input)
    int n_mat, n_sel, n_expert, rows, k, unused;
};

// out[m][s][r] = row r of expert ids[s] of tensor m · input s (+ bias[m][ids[s]][r]), for
// every m < n_mat, s < n_sel, r < rows: the quantized formats on chunk records (prep_input's,
// at xs + s * x_stride), through row_dot_part as fused_matvec runs them: jobs (m, s, r) in
// rounds over a resident grid, wpr warps a row, each warp's next-round row fetched during its
// last stage. Launch: block = 32 * DW, dynamic shared memory 2 * DW * STAGE.
template <int T>
__device__ __forceinline__ void expert_matvec_body(const ExpertArgs& a, const uint8_t* __restrict__ xs,
                                                   int wpr) {
    DYN_SMEM(smem);
    __shared__ float red[DW];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint8_t* buf = smem + warp * 2 * STAGE;
    const int per_mat = a.n_sel * a.rows, total = a.n_mat * per_mat;
    const int groups = DW / wpr, grp = warp / wpr, part = warp % wpr;
    // Job -> tensor m, slot s, row r, and the weight row (null for an id out of range).
    auto row_of = [&](int job, int& m, int& s, int& r) -> const uint8_t* {
        m = job / per_mat;
        s = (job - m * per_mat) / a.rows;
        r = job - m * per_mat - s * a.rows;
        const int e = a.ids[s];
        if (e < 0 || e >= a.n_expert) return nullptr;
        // (Selects, not a.w[m]: a run-time index into the parameters would copy them to
        // local memory.)
        return (m ? a.w[1] : a.w[0])[e] + (long long)r * a.row_bytes;
    };
    pdl_wait();  // the ids and the input records come from the kernels before
    pdl_trigger();
    bool pre = false;
    int phase = 0;
    // Every warp of the block runs the same number of rounds (block-wide barriers inside).
    for (int base = blockIdx.x * groups; base < total; base += gridDim.x * groups) {
        const int job = base + grp;
        float d = 0.f;
        int m = 0, s = 0, r = 0;
        const uint8_t* ra = nullptr;
        bool npre = false;
        if (job < total) {
            ra = row_of(job, m, s, r);
            NextRows nx{nullptr, nullptr, T};
            const int next = job + gridDim.x * groups;
            if (next < total) {
                int nm, ns, nr;
                nx.a = row_of(next, nm, ns, nr);
            }
            if (ra) {
                float unused;
                row_dot_part<T, T>(T, ra, nullptr, a.k, part, wpr, xs + s * a.x_stride, buf, lane,
                                   d, unused, pre, phase, nx, npre);
            }
        }
        pre = npre;
        if (wpr > 1) {
            if (lane == 0) red[warp] = d;
            __syncthreads();
            if (part == 0)
                for (int w = 1; w < wpr; w++) d += red[warp + w];
            __syncthreads();
        }
        if (job < total && part == 0 && lane == 0) {
            const float* const* bias = m ? a.bias[1] : a.bias[0];
            if (!ra)
                d = __uint_as_float(0x7fc00000u);  // NaN: a bad id shows
            else if (bias)
                d += bias[a.ids[s]][r];
            (m ? a.out[1] : a.out[0])[(long long)s * a.rows + r] = d;
        }
    }
    cp_wait<0>();
}
#define EXPERT_MV(name, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                                \
    expert_matvec_##name(const ExpertArgs a, const uint8_t* __restrict__ xs, int wpr) {     \
        expert_matvec_body<T>(a, xs, wpr);                                                  \
    }
EXPERT_MV(q4_1, T_Q4_1) EXPERT_MV(q5_0, T_Q5_0) EXPERT_MV(q8_0, T_Q8_0) EXPERT_MV(q4_k, T_Q4_K)
EXPERT_MV(q6_k, T_Q6_K) EXPERT_MV(mxfp4, T_MXFP4)
#undef EXPERT_MV

// The experts' weighted sum: y[r] = sum over s < n_sel, in order, of weights[s] * parts[s *
// rows + r] (expert_matvec's per-slot outputs and the router's weights, both in device
// memory); with `acc`, also acc[r] += y[r] (the residual stream).
// Launch: block 256, grid ceil(rows / 256).
extern "C" __global__ void __launch_bounds__(256)
expert_combine(const float* __restrict__ parts, const float* __restrict__ weights,
               float* __restrict__ y, float* acc, int n_sel, int rows) {
    pdl_wait();
    pdl_trigger();
    const int r = blockIdx.x * 256 + threadIdx.x;
    if (r >= rows) return;
    float v = 0.f;
    for (int s = 0; s < n_sel; s++) v += weights[s] * parts[(long long)s * rows + r];
    y[r] = v;
    if (acc) acc[r] += v;
}

// One token: rotate each head of q (n_heads) and k (n_kv) by position pos[0], write them back,
// and store k and v in the layer's cache at that position.
// Launch: block = head_dim threads, grid.x = n_heads + n_kv.
template <class KV>
__device__ __forceinline__ void rope_kv_body(float* q, float* k, const float* __restrict__ v,
                                             const unsigned long long* __restrict__ pages,
                                             int layer, const int* __restrict__ pos,
                                             int n_heads, int n_kv, int head_dim, int rot_dim,
                                             float base, int neox) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, d = threadIdx.x;
    const bool is_k = h >= n_heads;
    float* x = is_k ? k + (h - n_heads) * head_dim : q + h * head_dim;
    const int p = pos[0];
    if (d < rot_dim / 2) rope_rotate(x, d, p, 1.0f, rot_dim, base, neox);
    if (!is_k) return;
    __syncthreads();
    const int kh = h - n_heads;
    if (d < head_dim) {
        kv_put(kv_head<KV>(pages, layer, 0, n_kv, kh, head_dim).row(p), d, x[d]);
        kv_put(kv_head<KV>(pages, layer, 1, n_kv, kh, head_dim).row(p), d, v[kh * head_dim + d]);
    }
}
#define ROPE_KV_ENTRY(name, KV)                                                                \
    extern "C" __global__ void name(float* q, float* k, const float* __restrict__ v,          \
                                    const unsigned long long* __restrict__ pages, int layer,   \
                                    const int* __restrict__ pos, int n_heads, int n_kv,        \
                                    int head_dim, int rot_dim, float base, int neox) {         \
        rope_kv_body<KV>(q, k, v, pages, layer, pos, n_heads, n_kv, head_dim, rot_dim, base,   \
                         neox);                                                                \
    }
ROPE_KV_ENTRY(rope_kv, __half)
ROPE_KV_ENTRY(rope_kv_f32kv, float)
#undef ROPE_KV_ENTRY

// One token: k and v (n_kv x head_dim f32, k already rotated) stored in the layer's cache at
// position pos[0] (the decode step of a rope that attention_decode does not fold).
// Launch: block = head_dim threads, grid.x = n_kv.
#define KV_STORE_DECODE_ENTRY(name, KV)                                                        \
    extern "C" __global__ void name(const float* __restrict__ k, const float* __restrict__ v,  \
                                    const unsigned long long* __restrict__ pages, int layer,   \
                                    const int* __restrict__ pos, int head_dim) {               \
        pdl_wait();                                                                            \
        pdl_trigger();                                                                         \
        const int h = blockIdx.x, d = threadIdx.x, n_kv = gridDim.x;                           \
        if (d >= head_dim) return;                                                             \
        kv_put(kv_head<KV>(pages, layer, 0, n_kv, h, head_dim).row(pos[0]), d,                 \
               k[h * head_dim + d]);                                                           \
        kv_put(kv_head<KV>(pages, layer, 1, n_kv, h, head_dim).row(pos[0]), d,                 \
               v[h * head_dim + d]);                                                           \
    }
KV_STORE_DECODE_ENTRY(kv_store_decode, __half)
KV_STORE_DECODE_ENTRY(kv_store_decode_f32kv, float)
#undef KV_STORE_DECODE_ENTRY

#define AW 4        // warps per block of attention_decode

// Scores of a staged 16-byte word t of a key row against the query qs (shared, f32): its 8
// f16 or 4 f32 values, into two partial sums.
__device__ __forceinline__ void dot_word(const __half*, const uint4& u, const float* qs, int t,
                                         float& s0, float& s1) {
    const float4 qa = reinterpret_cast<const float4*>(qs)[2 * t];
    const float4 qb = reinterpret_cast<const float4*>(qs)[2 * t + 1];
    const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
    const float2 k1 = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
    const float2 k2 = __half22float2(*reinterpret_cast<const __half2*>(&u.z));
    const float2 k3 = __half22float2(*reinterpret_cast<const __half2*>(&u.w));
    s0 += qa.x * k0.x + qa.y * k0.y + qa.z * k1.x + qa.w * k1.y;
    s1 += qb.x * k2.x + qb.y * k2.y + qb.z * k3.x + qb.w * k3.y;
}
__device__ __forceinline__ void dot_word(const float*, const uint4& u, const float* qs, int t,
                                         float& s0, float& s1) {
    const float4 qa = reinterpret_cast<const float4*>(qs)[t];
    s0 += qa.x * __uint_as_float(u.x) + qa.y * __uint_as_float(u.y);
    s1 += qa.z * __uint_as_float(u.z) + qa.w * __uint_as_float(u.w);
}

// Which rows of a chunk attn_stage_rows copies: all of them, all but the new position's (its
// row is not in the cache yet: copied before the kernel before has finished), or only it.
enum StageRows { STAGE_ALL, STAGE_OLD, STAGE_NEW };

// The copies (cp.async, not committed) of the key and value rows of keys c0 .. c0 + 31 into a
// warp's stage (ks: key rows, their 16-byte words XOR-swizzled by the row, row r's word w at
// w ^ (r & 7), so that 8 lanes reading word w of 8 rows hit distinct banks; vs: value rows).
// Lane t looks up key c0 + t's row in the page table; the copies take each row's address from
// its lane (a shuffle). Rows at j1 and past are zeros (nothing read). `which` picks the rows
// (qpos: the new position's).
template <int ND, class KV>
__device__ __forceinline__ void attn_stage_rows(KvHead<KV> kb, long long vdelta, int c0, int j1,
                                                int qpos, StageRows which, int lane, uint8_t* ks,
                                                uint8_t* vs) {
    constexpr int D = 32 * ND, RW = D * (int)sizeof(KV) / 16;  // head size, 16-byte words a row
    const unsigned long long mine =
        reinterpret_cast<unsigned long long>(kb.row(min(c0 + lane, j1 - 1)));
#pragma unroll
    for (int i = 0; i < RW; i++) {
        const int p = lane + 32 * i, r = p / RW, wd = p % RW, key = c0 + r;
        const KV* kr = reinterpret_cast<const KV*>(__shfl_sync(0xffffffffu, mine, r));
        const uint8_t* kw = reinterpret_cast<const uint8_t*>(kr) + wd * 16;
        const uint8_t* vw = reinterpret_cast<const uint8_t*>(kr + vdelta) + wd * 16;
        uint8_t* kd = ks + (r * RW + (wd ^ (r & 7))) * 16;
        if (key >= j1) {
            if (which != STAGE_NEW) {
                cp16_zero(kd, kw);
                cp16_zero(vs + p * 16, kw);
            }
        } else if (which == STAGE_ALL || (which == STAGE_OLD) == (key != qpos)) {
            cp16(kd, kw);
            cp16(vs + p * 16, vw);
        }
    }
}

// One warp's online softmax over keys [j0, j1) of one KV head (kb, vb: its keys and values, D =
// 32 ND), 32 keys at a time: the chunk's key and value rows are copied into the warp's shared
// buffer `sb` (2 x 32 x D KV values) with cp.async (attn_stage_rows), all in flight together;
// then lane t scores key c0 + t against the scaled query `qs` (shared), one warp max a chunk,
// and the values are accumulated with the probabilities passed by shuffles (lane holds dims
// lane + 32 i). Scanning key by key (attn_scan: a warp sum and a round trip to memory per key)
// left a short context's decode step waiting on memory latency: 7.5 us a layer of the 0.5B at
// <= 128 keys. Chunks c0 = j0 + 32 w, step 32 nw (warp w of nw). The caller has copied the
// first chunk's rows but the new position's (qpos) already (committed; before the kernel before
// had finished): its row is copied here. Returns the warp's max m, sum l, acc.
template <int ND, class KV>
__device__ __forceinline__ void attn_scan_staged(const float* qs, KvHead<KV> kb, KvHead<KV> vb,
                                                 int j0, int j1, int qpos, int w, int nw,
                                                 int lane, uint8_t* sb, float& m, float& l,
                                                 float (&acc)[ND]) {
    constexpr int D = 32 * ND, RW = D * (int)sizeof(KV) / 16;  // head size, 16-byte words a row
    uint8_t* ks = sb;
    uint8_t* vs = sb + 32 * D * sizeof(KV);
    m = -INFINITY;
    l = 0.f;  // this lane's keys' share until the end
#pragma unroll
    for (int i = 0; i < ND; i++) acc[i] = 0.f;
    // A key's value row is at a fixed distance from its key row (the same page).
    const long long vdelta = vb.off - kb.off;
#pragma unroll 1
    for (int c0 = j0 + 32 * w; c0 < j1; c0 += 32 * nw) {
        if (c0 != j0 + 32 * w) {
            attn_stage_rows<ND>(kb, vdelta, c0, j1, qpos, STAGE_ALL, lane, ks, vs);
        } else if (c0 <= qpos && qpos < c0 + 32) {
            attn_stage_rows<ND>(kb, vdelta, c0, j1, qpos, STAGE_NEW, lane, ks, vs);
        }
        cp_commit();
        cp_wait<0>();
        __syncwarp();
        const bool valid = c0 + lane < j1;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int t = 0; t < RW; t++) {
            const uint4 u = *reinterpret_cast<const uint4*>(ks + (lane * RW + (t ^ (lane & 7))) * 16);
            dot_word((const KV*)nullptr, u, qs, t, s0, s1);
        }
        const float s = valid ? s0 + s1 : -INFINITY;
        float cm = s;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, o));
        const float mn = fmaxf(m, cm);   // finite: lane 0's key is valid
        const float corr = expf(m - mn);  // m = -inf before the first chunk: 0
        const float p = valid ? expf(s - mn) : 0.f;
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < ND; i++) acc[i] *= corr;
        const KV* vh = reinterpret_cast<const KV*>(vs);
#pragma unroll 8
        for (int t = 0; t < 32; t++) {
            const float pt = __shfl_sync(0xffffffffu, p, t);
#pragma unroll
            for (int i = 0; i < ND; i++) acc[i] += pt * kv_get(vh, t * D + lane + 32 * i);
        }
        __syncwarp();  // the buffer is read before the next chunk's copy
        m = mn;
    }
    cp_wait<0>();  // a warp without a chunk: its (empty) early group
    l = warp_sum(l);
}

// Launch: block = 32 * AW, grid = (n_heads, 32); part: n_heads * n_split * (head_dim + 2)
// f32 scratch; count: n_heads ints, zero before the first launch (the merging block resets
// its head's count). Dynamic shared memory: AW * 2 * 32 * head_dim KV values for the kernels of
// one head size (attn_scan_staged), none for the generic one. The query at position pos[0]
// sees keys lo..pos[0], cut into up to n_split slices of at least 64 keys (the kernels of one
// head size: one slice up to 128 keys); each block runs an online softmax over its slice (AW
// warps, merged in shared memory), writes (max, sum, acc) to `part`, and the last block of
// the head merges all.
// With `rec`, the output's chunk records are written too (the next mat-vec's prepared input).
// With `sinks` (n_heads f32, GPT-OSS), head h's sink logit joins its softmax's denominator.
// With `knew` (the token's k and v, n_kv x head_dim f32, not yet rotated or cached): RoPE
// (rot_dim, base, neox) is applied here to the block's q head in shared memory, and the block
// whose slice holds position pos[0] rotates the new key and stores it and its value in the
// cache before its scan (blocks of heads sharing a KV head store the same values); q and k in
// global memory are left as they are. (The pages: no __restrict__ on their rows, the kernel
// writes them.)
// ND: head_dim / 32 when the kernel is for one head size (its loops and arrays exact), MAXD
// for any (head_dim from the argument).
template <int ND, class KV>
__device__ __forceinline__ void
attention_decode_body(const float* __restrict__ q, const unsigned long long* __restrict__ pages,
                 int layer, float* __restrict__ out, float* part, int* count,
                 const int* __restrict__ pos, int n_heads, int n_kv, int head_dim, float scale,
                 int window, uint8_t* __restrict__ rec,
                 const float* __restrict__ knew, const float* __restrict__ vnew, int rot_dim,
                 float rope_base, int neox, const float* __restrict__ sinks) {
    __shared__ float sm[AW], sl[AW];
    __shared__ float sacc[AW][32 * ND];
    __shared__ bool last;
    const int h = blockIdx.x, split = blockIdx.y, n_split = gridDim.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv);
    const int nd = ND < MAXD ? ND : head_dim / 32;
    // Before the wait, what does not depend on the kernel before (the q/k/v product): the
    // position (uploaded before the step), the page table, the cache's older rows (earlier
    // steps'), the rotation's angles. Nothing is written before the wait.
    const int qpos = pos[0];
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const int len = qpos + 1 - lo;
    // Slices of at least 64 keys; for the staged scan, up to 128 keys (a 32-key chunk for
    // each warp) one block, no merge. H200, 0.5B decode: 128 keys a slice at least was faster to
    // 128 positions, 64 over 1024 (tg128 1143-1205 vs 1138-1176, tg1024 1057 vs 1110).
    const int n_act = ND < MAXD && len <= 32 * AW ? 1 : min(n_split, (len + 63) / 64);
    if (split >= n_act) return;
    const int per = (len + n_act - 1) / n_act;
    const int j0 = lo + split * per, j1 = min(qpos + 1, j0 + per);
    const KvHead<KV> kb = kv_head<KV>(pages, layer, 0, n_kv, kvh, head_dim);
    const KvHead<KV> vb = kv_head<KV>(pages, layer, 1, n_kv, kvh, head_dim);
    const bool has_new = j0 <= qpos && qpos < j1;
    // Threads [0, half) rotate q's pairs, [half, 2 half) k's (one call site of the large
    // precise powf/sincosf code); their angles now when a thread has one pair.
    const int half = rot_dim / 2, n_rot = knew ? (has_new ? 2 : 1) * half : 0;
    const bool one_pair = n_rot <= (int)blockDim.x;
    float rs = 0.f, rc = 1.f;
    if (one_pair && (int)threadIdx.x < n_rot)
        rope_angle(threadIdx.x < half ? threadIdx.x : threadIdx.x - half, qpos, 1.0f, rot_dim,
                   rope_base, rs, rc);
    // The staged scan's first chunk of this warp, but the new position's row (written below).
    uint8_t* stage = nullptr;
    if constexpr (ND < MAXD) {
        DYN_SMEM(attn_smem);
        stage = attn_smem + warp * 2 * 32 * head_dim * (int)sizeof(KV);
        const int c0 = j0 + 32 * warp;
        if (c0 < j1)
            attn_stage_rows<ND>(kb, vb.off - kb.off, c0, j1, qpos, STAGE_OLD, lane, stage,
                                stage + 32 * head_dim * sizeof(KV));
        cp_commit();
    }
    pdl_wait();
    pdl_trigger();

    const float* qv = q + (long long)h * head_dim;
    if (knew) {
        __shared__ float qs[32 * ND], ks[32 * ND];
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            qs[d] = qv[d];
            if (has_new) ks[d] = knew[kvh * head_dim + d];
        }
        __syncthreads();
        for (int t = threadIdx.x; t < n_rot; t += blockDim.x) {
            float* x = t < half ? qs : ks;
            const int d = t < half ? t : t - half;
            if (one_pair) rope_apply(x, d, half, neox, rs, rc);
            else rope_rotate(x, d, qpos, 1.0f, rot_dim, rope_base, neox);
        }
        __syncthreads();
        if (has_new) {
            KV* kd = kb.row(qpos);
            KV* vd = vb.row(qpos);
            for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
                kv_put(kd, d, ks[d]);
                kv_put(vd, d, vnew[kvh * head_dim + d]);
            }
        }
        __syncthreads();  // the block's cache stores visible to its own scan
        qv = qs;
    }
    float acc[ND];
    float m = -INFINITY, l = 0.f;
    if constexpr (ND < MAXD) {
        // One head size: keys staged through shared memory, a key a lane (dynamic shared
        // memory: AW x 2 x 32 x head_dim KV values).
        __shared__ __align__(16) float qsc[32 * ND];
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qsc[d] = qv[d] * scale;
        __syncthreads();
        attn_scan_staged<ND>(qsc, kb, vb, j0, j1, qpos, warp, AW, lane, stage, m, l, acc);
    } else {
        float qr[ND];
#pragma unroll
        for (int i = 0; i < ND; i++) {
            qr[i] = i < nd ? qv[lane + 32 * i] * scale : 0.f;
            acc[i] = 0.f;
        }
        attn_scan(qr, kb, vb, nd, j0 + warp, j1, AW, lane, m, l, acc);
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (int i = 0; i < ND; i++)
        if (i < nd) sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    const int stride = head_dim + 2;
    float* mine = part + ((long long)h * n_split + split) * stride;
    if (n_act == 1) {
        // The only slice: its merged result is the output.
        if (warp == 0) {
            float f[AW], M;
            const float L = attn_merge_factors<AW>(sm, sl, f, &M);
            const float inv = sinks ? attn_sink_factor(M, L, sinks[h]) : 0.f;
            for (int i = 0; i < nd; i++) {
                float o = 0.f;
#pragma unroll
                for (int w = 0; w < AW; w++) o += sacc[w][lane + 32 * i] * f[w];
                o = sinks ? o * inv : o / L;
                out[(long long)h * head_dim + lane + 32 * i] = o;
                if (rec) write_record(o, rec + ((long long)h * nd + i) * XREC, lane);
            }
        }
        return;
    }
    if (warp == 0) {
        float M, f[AW];
        const float L = attn_merge_factors<AW>(sm, sl, f, &M);
        for (int i = 0; i < nd; i++) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < AW; w++) s += sacc[w][lane + 32 * i] * f[w];
            mine[2 + lane + 32 * i] = s;
        }
        if (lane == 0) { mine[0] = M; mine[1] = L; }
        __threadfence();  // partials visible device-wide before the count says so
    }
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&count[h], 1) == n_act - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The last block of head h merges the n_split (= 32, one per lane) partial results. Loads
    // bypass L1 (__ldcg): other blocks wrote them through L2.
    __shared__ float fs[32];
    __shared__ float Ls, Is;
    const float* ph = part + (long long)h * n_split * stride;
    if (warp == 0) {
        const bool act = lane < n_act;
        const float ms = act ? __ldcg(ph + lane * stride) : 0.f;
        const float ls = act ? __ldcg(ph + lane * stride + 1) : 0.f;
        float M = ls > 0.f ? ms : -INFINITY;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float f = ls > 0.f ? expf(ms - M) : 0.f;  // a slice with no keys adds nothing
        fs[lane] = f;
        const float L = warp_sum(ls * f);
        if (lane == 0) {
            Ls = L;
            Is = sinks ? attn_sink_factor(M, L, sinks[h]) : 0.f;
        }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.f;
#pragma unroll 8
        for (int s = 0; s < 32; s++)
            if (s < n_act) o += fs[s] * __ldcg(ph + s * stride + 2 + d);
        o = sinks ? o * Is : o / Ls;
        out[(long long)h * head_dim + d] = o;
        // A warp holds one 32-value chunk here (head_dim is a multiple of 32).
        if (rec) write_record(o, rec + ((long long)h * nd + d / 32) * XREC, lane);
    }
    if (threadIdx.x == 0) count[h] = 0;
}
#define ATTN_DECODE_ARGS(KV)                                                                 \
    const float* __restrict__ q, const unsigned long long *__restrict__ pages, int layer,      \
        float *__restrict__ out, float *part, int *count, const int *__restrict__ pos,         \
        int n_heads, int n_kv, int head_dim, float scale, int window, uint8_t *__restrict__ rec, \
        const float *__restrict__ knew, const float *__restrict__ vnew, int rot_dim,           \
        float rope_base, int neox, const float *__restrict__ sinks
#define ATTN_DECODE_PASS                                                                      \
    q, pages, layer, out, part, count, pos, n_heads, n_kv, head_dim, scale, window, rec, knew, \
        vnew, rot_dim, rope_base, neox, sinks
#define ATTN_DECODE_ENTRY(name, ND, KV)                                                       \
    extern "C" __global__ void __launch_bounds__(32 * AW) name(ATTN_DECODE_ARGS(KV)) {       \
        attention_decode_body<ND, KV>(ATTN_DECODE_PASS);                                      \
    }
ATTN_DECODE_ENTRY(attention_decode, MAXD, __half)
// The same for head sizes 64 and 128: a third of the code (the decode step's kernels then
// fit the instruction cache better) and no idle register slots.
ATTN_DECODE_ENTRY(attention_decode_d64, 2, __half)
ATTN_DECODE_ENTRY(attention_decode_d128, 4, __half)
ATTN_DECODE_ENTRY(attention_decode_f32kv, MAXD, float)
ATTN_DECODE_ENTRY(attention_decode_d64_f32kv, 2, float)
ATTN_DECODE_ENTRY(attention_decode_d128_f32kv, 4, float)
#undef ATTN_DECODE_ARGS
#undef ATTN_DECODE_PASS
#undef ATTN_DECODE_ENTRY
