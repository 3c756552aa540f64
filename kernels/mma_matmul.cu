// Y = X W^T on the tensor cores (prompt processing): X n_tok x k f32 (token-major), W `rows`
// rows of k values in GGUF block layout (`row_bytes` apart), Y n_tok x rows f32 (token-major).
//
// mma.sync m16n8k16, f16 operands, f32 accumulation. M = tokens (A = X tile, row-major),
// N = weight rows (B = W tile: W is stored [n][k], which is the "col" B operand as is).
// A block computes a BM x BN tile of Y (grid.x over tokens, grid.y over rows, so blocks that
// share a weight tile run together and find it in L2). The k loop goes one 32-value chunk at a
// time (every format's natural unit: a Q*_0/Q4_1 block, a K-quant sub-block):
//   - the next chunk's raw bytes are loaded into registers before the current chunk's MMAs
//     (X as 16-byte float4 loads; W per format, 16-byte loads where the format's alignment
//     allows: F32, F16, Q4_K; 4-byte words where blocks are only 2-byte aligned),
//   - after the MMAs they are decoded to f16 (weights: the format's f32 formula, then one
//     rounding to f16; activations: one rounding) and stored into the other of two shared
//     buffers; one barrier per chunk.
// Shared tiles are [row][32 halves] (64 bytes a row) with the 16-byte chunks XOR-swizzled by
// (row >> 1) & 3, so ldmatrix (8 rows x 16 bytes), the 16-byte weight stores and the 8-byte
// activation stores are all free of bank conflicts.
#include "common.cuh"

#include "mma_prims.cuh"

// ---------- small helpers ----------

__device__ __forceinline__ float h_bits(uint32_t bits16) {
    return __half2float(__ushort_as_half((unsigned short)(bits16 & 0xffffu)));
}

// cp_wait with a run-time count (the stage count follows the shared memory given).
__device__ __forceinline__ void cp_wait_n(int n) {
    switch (n) {
    case 1: cp_wait<1>(); break;
    case 2: cp_wait<2>(); break;
    case 3: cp_wait<3>(); break;
    case 4: cp_wait<4>(); break;
    case 5: cp_wait<5>(); break;
    case 6: cp_wait<6>(); break;
    default: cp_wait<0>(); break;
    }
}

__device__ __forceinline__ const uint8_t* align4(const uint8_t* a) {
    return reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(a) & ~(uintptr_t)3);
}
__device__ __forceinline__ uint32_t lo2(const uint8_t* a) {  // 0 or 2: a's offset in its word
    return (uint32_t)reinterpret_cast<uintptr_t>(a) & 2u;
}
// A thread's slots in one stage: piece i at base + i * stride (words).
struct Slot {
    uint32_t* base;
    int stride;
    __device__ __forceinline__ uint32_t* operator[](int i) const { return base + i * stride; }
    __device__ __forceinline__ Slot operator+(int i) const { return Slot{base + i * stride, stride}; }
};

// The tensor's last 2 bytes can start a word that runs past its end: such a word is read
// with a plain 16-bit load instead (once per tensor: its last block), since a cp.async of
// the word counts as reading all 4 bytes (compute-sanitizer flags it).
__device__ __forceinline__ void st_u16_now(uint32_t* dst, const uint8_t* a, bool ok) {
    *dst = ok ? (uint32_t)__ldg(reinterpret_cast<const unsigned short*>(a)) : 0u;
}
// The u16 at 2-byte aligned a, via its aligned word; reads no byte past a+1 (`end`: the
// tensor's end).
__device__ __forceinline__ void cp_u16(uint32_t* dst, const uint8_t* a, bool ok, const uint8_t* end) {
    if (!lo2(a) && a + 4 > end)
        st_u16_now(dst, a, ok);  // its word runs past the end; the value lands in the low half
    else
        cp4(dst, align4(a), ok ? (lo2(a) ? 4u : 2u) : 0u);
}
__device__ __forceinline__ uint32_t u16_of(uint32_t w, const uint8_t* a) { return lo2(a) ? w >> 16 : w & 0xffffu; }

// 16 bytes at a 2-byte aligned address A as 5 aligned words; reads no byte past A+15.
__device__ __forceinline__ void cp_raw16(const Slot& dst, const uint8_t* A, bool ok, const uint8_t* end) {
    const uint8_t* p = A - lo2(A);
#pragma unroll
    for (int i = 0; i < 4; i++) cp4(dst[i], p + 4 * i, ok ? 4u : 0u);
    if (lo2(A) && p + 20 > end)
        st_u16_now(dst[4], A + 14, ok);
    else
        cp4(dst[4], p + 16, (ok && lo2(A)) ? 2u : 0u);
}
// Bytes [4i, 4i+4) of those 16, from the 5 words w.
__device__ __forceinline__ uint32_t raw16_word(const uint32_t* w, const uint8_t* A, int i) {
    return __funnelshift_r(w[i], w[i + 1], 8 * lo2(A));
}

// ---------- weight units: 16 consecutive values [16j, 16j+16) of 32-value chunk c ----------
// A thread copies its unit's raw bytes into its own shared-memory slots (`pieces` of VEC words,
// N of them; copy()), and decodes them after they land (emit(): 8 half2 words, value 16j+2i in
// the low half of word i). Only the copying thread reads its slots, so waiting for its own
// copies is all the ordering needed. A unit whose row does not exist copies nothing and its
// zero-filled slots decode to zeros. `p[i]` is piece i's slot.

template <int T> struct Unit;

template <> struct Unit<T_F32> {
    static constexpr int VEC = 4, N = 4;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const float4* src = reinterpret_cast<const float4*>(wr) + c * 8 + j * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) cp16(p[i], src + i, ok ? 16u : 0u);
    }
    __device__ static void emit(const Slot& p, const uint8_t*, int, int, uint32_t o[8]) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 f = *reinterpret_cast<const float4*>(p[i]);
            o[2 * i] = pack_h2(f.x, f.y);
            o[2 * i + 1] = pack_h2(f.z, f.w);
        }
    }
};

template <> struct Unit<T_F16> {
    static constexpr int VEC = 4, N = 2;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const uint4* src = reinterpret_cast<const uint4*>(wr) + c * 4 + j * 2;
#pragma unroll
        for (int i = 0; i < 2; i++) cp16(p[i], src + i, ok ? 16u : 0u);
    }
    __device__ static void emit(const Slot& p, const uint8_t*, int, int, uint32_t o[8]) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const uint4 h = *reinterpret_cast<const uint4*>(p[i]);
            o[4 * i] = h.x; o[4 * i + 1] = h.y; o[4 * i + 2] = h.z; o[4 * i + 3] = h.w;
        }
    }
};

// Q8_0: 34 bytes = d, 32 x int8 (2-byte aligned). Unit j: d and qs[16j, 16j+16).
template <> struct Unit<T_Q8_0> {
    static constexpr int VEC = 1, N = 6;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const uint8_t* b = wr + c * 34;
        cp_u16(p[0], b, ok, end);
        cp_raw16(p + 1, b + 2 + 16 * j, ok, end);
    }
    __device__ static void emit(const Slot& p, const uint8_t* wr, int c, int j, uint32_t o[8]) {
        const uint8_t* b = wr + c * 34;
        const float df = h_bits(u16_of(*p[0], b));
        uint32_t w[5];
#pragma unroll
        for (int i = 0; i < 5; i++) w[i] = *p[1 + i];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = raw16_word(w, b + 2 + 16 * j, i);
            o[2 * i] = pack_h2(df * (float)(int8_t)(x & 0xff), df * (float)(int8_t)((x >> 8) & 0xff));
            o[2 * i + 1] =
                pack_h2(df * (float)(int8_t)((x >> 16) & 0xff), df * (float)(int8_t)(x >> 24));
        }
    }
};

// Q4_1: 20 bytes = d, m, 16 bytes of nibbles (4-byte aligned: rows are multiples of 20 bytes).
// Unit j: nibble j of bytes 0..15; v = d*q + m.
template <> struct Unit<T_Q4_1> {
    static constexpr int VEC = 1, N = 5;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int, bool ok, const uint8_t*) {
        const uint8_t* b = wr + c * 20;
#pragma unroll
        for (int i = 0; i < 5; i++) cp4(p[i], b + 4 * i, ok ? 4u : 0u);
    }
    __device__ static void emit(const Slot& p, const uint8_t*, int, int j, uint32_t o[8]) {
        const uint32_t dm = *p[0];
        const float d = h_bits(dm), m = h_bits(dm >> 16);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = *p[1 + i] >> (4 * j);
            o[2 * i] = pack_h2(fmaf(d, (float)(x & 15), m), fmaf(d, (float)((x >> 8) & 15), m));
            o[2 * i + 1] =
                pack_h2(fmaf(d, (float)((x >> 16) & 15), m), fmaf(d, (float)((x >> 24) & 15), m));
        }
    }
};

// Q5_0: 22 bytes = d, qh (u32: bit i = 5th bit of value i), 16 bytes of nibbles (2-byte
// aligned). Unit j: nibble j of bytes 0..15 and qh bits [16j, 16j+16); v = d*(q - 16).
template <> struct Unit<T_Q5_0> {
    static constexpr int VEC = 1, N = 7;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const uint8_t* b = wr + c * 22;
        cp_u16(p[0], b, ok, end);
        cp_u16(p[1], b + 2 + 2 * j, ok, end);
        cp_raw16(p + 2, b + 6, ok, end);
    }
    __device__ static void emit(const Slot& p, const uint8_t* wr, int c, int j, uint32_t o[8]) {
        const uint8_t* b = wr + c * 22;
        const float df = h_bits(u16_of(*p[0], b));
        const uint32_t qh = u16_of(*p[1], b + 2 + 2 * j);
        uint32_t w[5];
#pragma unroll
        for (int i = 0; i < 5; i++) w[i] = *p[2 + i];
        float v[16];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = raw16_word(w, b + 6, i) >> (4 * j);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int q = (int)(((x >> (8 * e)) & 15) | (((qh >> (4 * i + e)) & 1) << 4));
                v[4 * i + e] = df * (float)(q - 16);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) o[i] = pack_h2(v[2 * i], v[2 * i + 1]);
    }
};

// Q4_K: 144 bytes per 256 values (16-byte aligned): d, dmin, 12 bytes of 6-bit scales/mins,
// 128 bytes of nibbles. Chunk c = sub-block s = c & 7 of super-block c >> 3; its values are
// nibble (s & 1) of bytes [32 (s >> 1), +32) of the nibbles. v = d*sc*q - dmin*mn.
template <> struct Unit<T_Q4_K> {
    static constexpr int VEC = 4, N = 2;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const uint8_t* b = wr + (c >> 3) * 144;
        cp16(p[0], b, ok ? 16u : 0u);
        cp16(p[1], b + 16 + ((c & 7) >> 1) * 32 + 16 * j, ok ? 16u : 0u);
    }
    __device__ static void emit(const Slot& p, const uint8_t*, int c, int, uint32_t o[8]) {
        const uint4 hdr = *reinterpret_cast<const uint4*>(p[0]);
        const uint4 qs = *reinterpret_cast<const uint4*>(p[1]);
        const int s = c & 7;
        // Scale bytes sc[0..11] = hdr.y, hdr.z, hdr.w (little-endian).
        const uint32_t lo = hdr.y, mid = hdr.z, hi = hdr.w;
        uint32_t scale, mn;
        q4k_scale_min(lo, mid, hi, s, scale, mn);
        const float ds = h_bits(hdr.x) * (float)scale, dm = h_bits(hdr.x >> 16) * (float)mn;
        const int nsh = 4 * (s & 1);
        const uint32_t w[4] = {qs.x, qs.y, qs.z, qs.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = w[i] >> nsh;
            o[2 * i] = pack_h2(fmaf(ds, (float)(x & 15), -dm), fmaf(ds, (float)((x >> 8) & 15), -dm));
            o[2 * i + 1] = pack_h2(fmaf(ds, (float)((x >> 16) & 15), -dm),
                                   fmaf(ds, (float)((x >> 24) & 15), -dm));
        }
    }
};

// Q6_K: 210 bytes per 256 values (2-byte aligned): ql[128], qh[64], int8 scales[16], d.
// Chunk c: s = c & 7, half h = s >> 2, cc = s & 3; value l (0..31) has low bits nibble
// (cc >> 1) of ql[64h + 32(cc & 1) + l], high bits 2cc..2cc+1 of qh[32h + l], scale
// sc[8h + 2cc + l/16]. v = d*sc*(q - 32). Unit j: l in [16j, 16j+16), one scale.
template <> struct Unit<T_Q6_K> {
    static constexpr int VEC = 1, N = 12;
    __device__ static void at(const uint8_t* wr, int c, int j, const uint8_t*& ql, const uint8_t*& qh,
                              const uint8_t*& sc, const uint8_t*& d) {
        const uint8_t* b = wr + (c >> 3) * 210;
        const int s = c & 7, h = s >> 2, cc = s & 3;
        ql = b + 64 * h + 32 * (cc & 1) + 16 * j;
        qh = b + 128 + 32 * h + 16 * j;
        sc = b + 192 + 8 * h + 2 * cc + j;
        d = b + 208;
    }
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int j, bool ok, const uint8_t* end) {
        const uint8_t *ql, *qh, *sc, *d;
        at(wr, c, j, ql, qh, sc, d);
        cp_raw16(p, ql, ok, end);
        cp_raw16(p + 5, qh, ok, end);
        // The scale byte's word, read up to that byte only.
        cp4(p[10], align4(sc), ok ? (uint32_t)(reinterpret_cast<uintptr_t>(sc) & 3) + 1 : 0u);
        cp_u16(p[11], d, ok, end);
    }
    __device__ static void emit(const Slot& p, const uint8_t* wr, int c, int j, uint32_t o[8]) {
        const uint8_t *ql, *qh, *sc, *d;
        at(wr, c, j, ql, qh, sc, d);
        const int cc = c & 3;
        const uint32_t scb = *p[10] >> (8 * (reinterpret_cast<uintptr_t>(sc) & 3));
        const float dsc = h_bits(u16_of(*p[11], d)) * (float)(int8_t)(scb & 0xff);
        const uint32_t lsh = 4 * (cc >> 1), hsh = 2 * cc;
        uint32_t wl[5], wh[5];
#pragma unroll
        for (int i = 0; i < 5; i++) wl[i] = *p[i], wh[i] = *p[5 + i];
        float v[16];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t a = raw16_word(wl, ql, i) >> lsh, b = raw16_word(wh, qh, i) >> hsh;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int q = (int)(((a >> (8 * e)) & 15) | (((b >> (8 * e)) & 3) << 4));
                v[4 * i + e] = dsc * (float)(q - 32);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) o[i] = pack_h2(v[2 * i], v[2 * i + 1]);
    }
};

// MXFP4: 17 bytes = E8M0 exponent, 16 bytes of E2M1 codes (byte-aligned: blocks are 17 bytes;
// decoding as Fmt<T_MXFP4> in common.cuh). Unit j: code nibble j of bytes 1..16 (values
// 16j..16j+15). The block comes as the five aligned words from the one holding the exponent;
// a word running past the tensor's end (only in its last block) is read up to the end with
// byte loads instead.
template <> struct Unit<T_MXFP4> {
    static constexpr int VEC = 1, N = 5;
    __device__ static void copy(const Slot& p, const uint8_t* wr, int c, int, bool ok, const uint8_t* end) {
        const uint8_t* a = align4(wr + c * 17);
#pragma unroll
        for (int i = 0; i < 5; i++) {
            const uint8_t* w = a + 4 * i;
            if (w + 4 <= end) {
                cp4(p[i], w, ok ? 4u : 0u);
            } else {
                uint32_t v = 0;
                for (int b = 0; ok && w + b < end; b++) v |= (uint32_t)__ldg(w + b) << (8 * b);
                *p[i] = v;
            }
        }
    }
    __device__ static void emit(const Slot& p, const uint8_t* wr, int c, int j, uint32_t o[8]) {
        const uint32_t sh = 8 * (uint32_t)(reinterpret_cast<uintptr_t>(wr + c * 17) & 3);
        uint32_t w[5];
#pragma unroll
        for (int i = 0; i < 5; i++) w[i] = *p[i];
        const float d = e8m0_half((w[0] >> sh) & 255);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            // Code bytes 4i..4i+3 (block bytes 1+4i..): 8 bits past the exponent.
            const uint32_t x = __funnelshift_rc(w[i], w[i + 1], sh + 8) >> (4 * j);
            o[2 * i] = pack_h2(d * (float)mxfp4_doubled(x & 15), d * (float)mxfp4_doubled((x >> 8) & 15));
            o[2 * i + 1] =
                pack_h2(d * (float)mxfp4_doubled((x >> 16) & 15), d * (float)mxfp4_doubled((x >> 24) & 15));
        }
    }
};

// Half offset of (row, 16-byte chunk ch) in a swizzled [row][32 halves] tile.
__device__ __forceinline__ int swz(int row, int ch) { return row * 32 + ((ch ^ ((row >> 1) & 3)) << 3); }

// ---------- the kernel ----------
// A block has KG groups of WM x WN warps; group g multiplies chunks g, g+KG, g+2KG, ... (an
// in-block split of k: more warps on one output tile, for products with few tiles) and the
// groups' sums are added in a fixed order at the end. Each group has its own shared memory:
// f16 tiles Xs[2][BM*32], Ws[2][BN*32], then S stages of raw slots: per thread XV float4 of
// X, then WU weight units of U::N * U::VEC words. S = as many stages as the group's share of
// the dynamic shared memory holds, at most 8 (the launcher sizes it for an occupancy: see
// mma_smem in src/backend/cuda/launch.rs); fewer than 2 traps.
template <int T, int BM, int BN, int NTH> struct Layout {
    static constexpr int XV = BM * 8 / NTH;                  // float4s of X per thread and chunk
    static constexpr int WU = (2 * BN + NTH - 1) / NTH;      // weight units per thread
    static constexpr int WORDS = Unit<T>::N * Unit<T>::VEC;  // words of one unit
    static constexpr int TILES = (BM + BN) * 2 * 32 * 2;     // bytes of the f16 tiles
    static constexpr int XBYTES = NTH * 16 * XV;             // X part of a stage
    static constexpr int STAGE = XBYTES + NTH * 4 * WORDS * WU;
    static constexpr int MAX_STAGES = 8;
};

template <int T, int BM, int BN, int WM, int WN, int KG>
__device__ __forceinline__ void mma_matmul(const uint8_t* __restrict__ W, const float* __restrict__ X,
                                           float* __restrict__ Y, int rows, int k, int n_tok,
                                           long long row_bytes) {
    constexpr int NTH = WM * WN * 32;          // threads of a group
    constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
    constexpr int MT = TM / 16, NT = TN / 8;   // m16 and n8 tiles per warp
    using L = Layout<T, BM, BN, NTH>;
    constexpr int XV = L::XV, WU = L::WU;
    using U = Unit<T>;
    static_assert(MT >= 1 && NT % 2 == 0 && XV >= 1 && BM * 8 % NTH == 0, "tile shape");
    static_assert(L::WORDS <= 16, "raw slots");

#ifdef MMA_EMULATE
    uint8_t* smem = emu_dyn_smem;
#else
    extern __shared__ __align__(128) uint8_t smem[];
#endif
    const int share = (int)dyn_smem_bytes() / KG & ~127;  // each group's bytes
    const int S = min(L::MAX_STAGES, (share - L::TILES) / L::STAGE);
    if (S < 2) __trap();
    const int grp = threadIdx.x / NTH, tid = threadIdx.x % NTH;
    uint8_t* gsm = smem + grp * share;
    __half* Xs = reinterpret_cast<__half*>(gsm);              // [2][BM * 32]
    __half* Ws = Xs + 2 * BM * 32;                            // [2][BN * 32]
    uint8_t* raw = gsm + L::TILES;

    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int nc = k / 32;                  // chunks of the row
    const int ni = (nc + KG - 1) / KG;      // iterations (the same for every group)
    const int mine = (nc - grp + KG - 1) / KG;  // chunks of this group: grp + KG*i, i < mine
    const uint8_t* wend = W + (long long)rows * row_bytes;

    // This thread's slots in stage st: X piece v at xslot(st)[v * NTH]; weight unit u's
    // pieces via wslot(st, u).
    auto xslot = [&](int st) {
        return reinterpret_cast<float4*>(raw + st * L::STAGE) + tid;
    };
    auto wslot = [&](int st, int u) {
        uint32_t* base = reinterpret_cast<uint32_t*>(raw + st * L::STAGE + L::XBYTES) +
                         u * L::WORDS * NTH + tid * U::VEC;
        return Slot{base, NTH * U::VEC};
    };
    // Units: idx = tid + u*NTH -> weight row n0 + idx/2, half idx&1.
    auto unit_row = [&](int u, bool& ok) {
        const int idx = tid + u * NTH, row = n0 + (idx >> 1);
        ok = idx < 2 * BN && row < rows;
        return W + (ok ? (long long)row * row_bytes : 0);
    };

    // Issue the copies of this group's i-th chunk into stage i % S (one commit group per
    // call, even empty).
    auto issue = [&](int i) {
        if (i < mine) {
            const int st = i % S, c = grp + KG * i;
            float4* xd = xslot(st);
#pragma unroll
            for (int v = 0; v < XV; v++) {
                const int idx = tid + v * NTH, tok = m0 + (idx >> 3), c4 = idx & 7;
                const bool ok = tok < n_tok;
                const float* src = X + (ok ? (long long)tok * k + c * 32 + 4 * c4 : 0);
                cp16(xd + v * NTH, src, ok ? 16u : 0u);
            }
#pragma unroll
            for (int u = 0; u < WU; u++) {
                bool ok;
                const uint8_t* wr = unit_row(u, ok);
                if (tid + u * NTH < 2 * BN)
                    U::copy(wslot(st, u), wr, c, (tid + u * NTH) & 1, ok, wend);
            }
        }
        cp_commit();
    };
    // Decode the i-th chunk (this thread's own slots; its copies have landed) into f16
    // buffer i & 1.
    auto decode = [&](int i) {
        const int st = i % S, buf = i & 1, c = grp + KG * i;
        const float4* xs = xslot(st);
        __half* xt = Xs + buf * BM * 32;
#pragma unroll
        for (int v = 0; v < XV; v++) {
            const int idx = tid + v * NTH, r = idx >> 3, c4 = idx & 7;
            const float4 f = xs[v * NTH];
            *reinterpret_cast<uint2*>(xt + swz(r, c4 >> 1) + (c4 & 1) * 4) =
                make_uint2(pack_h2(f.x, f.y), pack_h2(f.z, f.w));
        }
        __half* wt = Ws + buf * BN * 32;
#pragma unroll
        for (int u = 0; u < WU; u++) {
            const int idx = tid + u * NTH, n = idx >> 1, j = idx & 1;
            if (idx < 2 * BN) {
                bool ok;
                const uint8_t* wr = unit_row(u, ok);
                uint32_t o[8];
                U::emit(wslot(st, u), wr, c, j, o);
                *reinterpret_cast<uint4*>(wt + swz(n, 2 * j)) = make_uint4(o[0], o[1], o[2], o[3]);
                *reinterpret_cast<uint4*>(wt + swz(n, 2 * j + 1)) = make_uint4(o[4], o[5], o[6], o[7]);
            }
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int a = 0; a < MT; a++)
#pragma unroll
        for (int b = 0; b < NT; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;

    // Pipeline: chunk i's copies are issued S-1 chunks ahead; chunk i+1 is decoded while
    // chunk i is multiplied (two f16 buffers); one barrier per iteration.
#pragma unroll 1
    for (int i = 0; i < S - 1; i++) issue(i);
    cp_wait_n(S - 2);  // chunk 0 landed
    if (mine > 0) decode(0);
    __syncthreads();
#pragma unroll 1
    for (int i = 0; i < ni; i++) {
        issue(i + S - 1);  // into the stage chunk i-1 used (decoded two barriers ago)
        if (i < mine) {
            const __half* xs = Xs + (i & 1) * BM * 32;
            const __half* ws = Ws + (i & 1) * BN * 32;
#pragma unroll
            for (int kk = 0; kk < 2; kk++) {
                uint32_t a[MT][4], b[NT][2];
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    // Lane groups of 8 address the four 8x8 matrices: rows +0/+8, k +0/+8.
                    const int r = wm * TM + mt * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                    ldsm_x4(xs + swz(r, 2 * kk + (lane >> 4)), a[mt][0], a[mt][1], a[mt][2], a[mt][3]);
                }
#pragma unroll
                for (int np = 0; np < NT / 2; np++) {
                    // Matrices: (n-tile 2np, k lo), (2np, k hi), (2np+1, k lo), (2np+1, k hi).
                    const int r = wn * TN + np * 16 + (lane & 7) + 8 * (lane >> 4);
                    ldsm_x4(ws + swz(r, 2 * kk + ((lane >> 3) & 1)), b[2 * np][0], b[2 * np][1],
                            b[2 * np + 1][0], b[2 * np + 1][1]);
                }
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int nt = 0; nt < NT; nt++) mma16816(acc[mt][nt], a[mt], b[nt]);
            }
        }
        cp_wait_n(S - 2);  // chunk i+1 landed (chunks up to i+S-1 committed)
        if (i + 1 < mine) decode(i + 1);
        __syncthreads();
    }

    if (KG > 1) {
        // Groups 1.. hand their sums to group 0 through shared memory (every copy has landed
        // and been decoded, and the last barrier ended all reads of the tiles).
        float* red = reinterpret_cast<float*>(smem);  // [KG-1][MT*NT*4][NTH]
        if (grp > 0) {
#pragma unroll
            for (int a = 0; a < MT; a++)
#pragma unroll
                for (int b = 0; b < NT; b++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        red[((grp - 1) * MT * NT * 4 + (a * NT + b) * 4 + e) * NTH + tid] = acc[a][b][e];
        }
        __syncthreads();
        if (grp > 0) return;
        for (int g = 1; g < KG; g++)
#pragma unroll
            for (int a = 0; a < MT; a++)
#pragma unroll
                for (int b = 0; b < NT; b++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        acc[a][b][e] += red[((g - 1) * MT * NT * 4 + (a * NT + b) * 4 + e) * NTH + tid];
    }

    // Y is n_tok x rows (tokens are the tile's M, weight rows its N).
    store_acc<MT, NT>(acc, Y, m0 + wm * TM, n0 + wn * TN, n_tok, rows, lane);
}

// Tile shapes (BM tokens x BN rows, warps WM x WN, KG groups, MINB blocks a multiprocessor
// that the registers must allow); the launcher picks one per shape and lists the same
// (MMA_TILES, with MINB as per_sm).
#define MMA_TILES(M, name, T)            \
    M(name, T, 128, 128, 2, 4, 1, 2)     \
    M(name, T, 128, 64, 4, 2, 1, 2)      \
    M(name, T, 64, 64, 2, 2, 1, 4)       \
    M(name, T, 32, 64, 1, 4, 1, 6)       \
    M(name, T, 64, 64, 2, 2, 2, 2)       \
    M(name, T, 32, 64, 1, 4, 4, 2)

#define MMA_ENTRY(name, T, BM, BN, WM, WN, KG, MINB)                                          \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32 * KG, MINB)                     \
        mma_##name##_##BM##x##BN##k##KG(const uint8_t* W, const float* X, float* Y, int rows, \
                                        int k, int n_tok, long long row_bytes) {              \
        pdl_wait();                                                                           \
        pdl_trigger();                                                                        \
        mma_matmul<T, BM, BN, WM, WN, KG>(W, X, Y, rows, k, n_tok, row_bytes);                 \
    }
#define MMA_TYPE(name, T) MMA_TILES(MMA_ENTRY, name, T)
FOR_EACH_TYPE(MMA_TYPE)

// ---------- a mixture of experts' products over a step's tokens grouped by expert ----------
// Y_m[r] = X[r] W_m[e]^T for each expert e's grouped rows r in offsets[e] .. offsets[e+1]
// (moe.cu's moe_group; no host round trip): W_m[e] expert e's matrix in table m (one table,
// or two of one format and shape: a gate and an up), X and Y_m grouped rows (k and `rows`
// f32). Grid: x over the tokens an expert may have (a tile past its count returns at once),
// y over the weight rows, z = m * n_exp + e. The tiles that suit a few to a few hundred
// tokens an expert (MMA_TILES 1 to 3; launch.rs's MOE_MMA_TILES).
#define MMA_MOE_TILES(M, name, T)    \
    M(name, T, 128, 64, 4, 2, 1, 2)  \
    M(name, T, 64, 64, 2, 2, 1, 4)   \
    M(name, T, 32, 64, 1, 4, 1, 6)

#define MMA_MOE_ENTRY(name, T, BM, BN, WM, WN, KG, MINB)                                        \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32 * KG, MINB)                       \
        mma_moe_##name##_##BM##x##BN##k##KG(const uint8_t* const* W0, const uint8_t* const* W1, \
                                            const float* X, float* Y0, float* Y1,                 \
                                            const int* offsets, int n_exp, int rows, int k,       \
                                            long long row_bytes) {                                \
        pdl_wait();                                                                             \
        pdl_trigger();                                                                          \
        const int m = (int)blockIdx.z >= n_exp, e = (int)blockIdx.z - m * n_exp;                \
        const int r0 = offsets[e], count = offsets[e + 1] - r0;                                 \
        if ((int)blockIdx.x * BM >= count) return;                                              \
        mma_matmul<T, BM, BN, WM, WN, KG>((m ? W1 : W0)[e], X + (long long)r0 * k,              \
                                          (m ? Y1 : Y0) + (long long)r0 * rows, rows, k, count, \
                                          row_bytes);                                           \
    }
#define MMA_MOE_TYPE(name, T) MMA_MOE_TILES(MMA_MOE_ENTRY, name, T)
FOR_EACH_TYPE(MMA_MOE_TYPE)
