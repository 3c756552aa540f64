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

// ---------- small helpers ----------

__device__ __forceinline__ uint32_t pack_h2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);  // a in the low half (lower k)
    return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ float h_bits(uint32_t bits16) {
    return __half2float(__ushort_as_half((unsigned short)(bits16 & 0xffffu)));
}

// 16 bytes at a 2-byte aligned global address, as raw aligned words (loaded now) plus the
// shift that realigns them (applied at decode). Reads only bytes [A, A+16) rounded out to
// whole words inside that range's own words: never past A+16 (the tail is a 16-bit load), so
// the last block of a tensor is safe.
struct Raw16 {
    uint32_t w[5];
    uint32_t sh;
    __device__ __forceinline__ void load(const uint8_t* A, bool ok) {
        const uint32_t mis = (uint32_t)reinterpret_cast<uintptr_t>(A) & 2u;
        const uint32_t* p = reinterpret_cast<const uint32_t*>(A - mis);
        sh = mis * 8;
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = ok ? __ldg(p + i) : 0u;
        w[4] = (ok && mis) ? (uint32_t)__ldg(reinterpret_cast<const unsigned short*>(A + 14)) : 0u;
    }
    // Bytes [4i, 4i+4) of the 16.
    __device__ __forceinline__ uint32_t word(int i) const {
        return __funnelshift_r(w[i], w[i + 1], sh);
    }
};

__device__ __forceinline__ uint32_t ld_u16(const uint8_t* p, bool ok) {
    return ok ? (uint32_t)__ldg(reinterpret_cast<const unsigned short*>(p)) : 0u;
}

// ---------- weight units: 16 consecutive values [16j, 16j+16) of 32-value chunk c ----------
// load(): issue the global loads (row base wr, ok = row exists); emit(): 8 half2 words, value
// 16j+2i in the low half of word i. A unit that is not ok decodes to zeros.

template <int T> struct Unit;

template <> struct Unit<T_F32> {
    float4 f[4];
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const float4* p = reinterpret_cast<const float4*>(wr) + c * 8 + j * 4;
#pragma unroll
        for (int i = 0; i < 4; i++) f[i] = ok ? __ldg(p + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            o[2 * i] = pack_h2(f[i].x, f[i].y);
            o[2 * i + 1] = pack_h2(f[i].z, f[i].w);
        }
    }
};

template <> struct Unit<T_F16> {
    uint4 h[2];
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint4* p = reinterpret_cast<const uint4*>(wr) + c * 4 + j * 2;
#pragma unroll
        for (int i = 0; i < 2; i++) h[i] = ok ? __ldg(p + i) : make_uint4(0, 0, 0, 0);
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            o[4 * i] = h[i].x; o[4 * i + 1] = h[i].y; o[4 * i + 2] = h[i].z; o[4 * i + 3] = h[i].w;
        }
    }
};

// Q8_0: 34 bytes = d, 32 x int8 (2-byte aligned). Unit j: d and qs[16j, 16j+16).
template <> struct Unit<T_Q8_0> {
    Raw16 q;
    uint32_t d;
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint8_t* b = wr + c * 34;
        d = ld_u16(b, ok);
        q.load(b + 2 + 16 * j, ok);
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
        const float df = h_bits(d);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = q.word(i);
            o[2 * i] = pack_h2(df * (float)(int8_t)(x & 0xff), df * (float)(int8_t)((x >> 8) & 0xff));
            o[2 * i + 1] =
                pack_h2(df * (float)(int8_t)((x >> 16) & 0xff), df * (float)(int8_t)(x >> 24));
        }
    }
};

// Q4_1: 20 bytes = d, m, 16 bytes of nibbles (4-byte aligned: rows are multiples of 20 bytes).
// Unit j: nibble j of bytes 0..15; v = d*q + m.
template <> struct Unit<T_Q4_1> {
    uint32_t dm, q[4], sh;
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint32_t* b = reinterpret_cast<const uint32_t*>(wr + c * 20);
        dm = ok ? __ldg(b) : 0u;
#pragma unroll
        for (int i = 0; i < 4; i++) q[i] = ok ? __ldg(b + 1 + i) : 0u;
        sh = 4 * j;
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
        const float d = h_bits(dm), m = h_bits(dm >> 16);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = q[i] >> sh;
            o[2 * i] = pack_h2(fmaf(d, (float)(x & 15), m), fmaf(d, (float)((x >> 8) & 15), m));
            o[2 * i + 1] =
                pack_h2(fmaf(d, (float)((x >> 16) & 15), m), fmaf(d, (float)((x >> 24) & 15), m));
        }
    }
};

// Q5_0: 22 bytes = d, qh (u32: bit i = 5th bit of value i), 16 bytes of nibbles (2-byte
// aligned). Unit j: nibble j of bytes 0..15 and qh bits [16j, 16j+16); v = d*(q - 16).
template <> struct Unit<T_Q5_0> {
    Raw16 q;
    uint32_t d, qh, nsh;
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint8_t* b = wr + c * 22;
        d = ld_u16(b, ok);
        qh = ld_u16(b + 2 + 2 * j, ok);
        q.load(b + 6, ok);
        nsh = 4 * j;
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
        const float df = h_bits(d);
        float v[16];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t x = q.word(i) >> nsh;
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const int e = 4 * i + b;
                const int qq = (int)(((x >> (8 * b)) & 15) | (((qh >> e) & 1) << 4));
                v[e] = df * (float)(qq - 16);
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
    uint4 hdr, qs;
    int s;
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint8_t* b = wr + (c >> 3) * 144;
        s = c & 7;
        hdr = ok ? __ldg(reinterpret_cast<const uint4*>(b)) : make_uint4(0, 0, 0, 0);
        qs = ok ? __ldg(reinterpret_cast<const uint4*>(b + 16 + (s >> 1) * 32 + 16 * j))
                : make_uint4(0, 0, 0, 0);
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
        // Scale bytes sc[0..11] = hdr.y, hdr.z, hdr.w (little-endian).
        const uint32_t lo = hdr.y, mid = hdr.z, hi = hdr.w;
        const int sb = 8 * (s & 3);
        int scale, mn;
        if (s < 4) {
            scale = (lo >> sb) & 63;
            mn = (mid >> sb) & 63;
        } else {
            const uint32_t a = (hi >> sb) & 0xff;  // sc[s + 4]
            scale = (a & 15) | (((lo >> sb) >> 6 & 3) << 4);   // sc[s - 4] >> 6
            mn = (a >> 4) | (((mid >> sb) >> 6 & 3) << 4);     // sc[s] >> 6
        }
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
    Raw16 ql, qh;
    uint32_t d, sc;
    int s;
    __device__ __forceinline__ void load(const uint8_t* wr, int c, int j, bool ok) {
        const uint8_t* b = wr + (c >> 3) * 210;
        s = c & 7;
        const int h = s >> 2, cc = s & 3;
        ql.load(b + 64 * h + 32 * (cc & 1) + 16 * j, ok);
        qh.load(b + 128 + 32 * h + 16 * j, ok);
        sc = ok ? (uint32_t)__ldg(b + 192 + 8 * h + 2 * cc + j) : 0u;
        d = ld_u16(b + 208, ok);
    }
    __device__ __forceinline__ void emit(uint32_t o[8]) const {
        const int cc = s & 3;
        const float dsc = h_bits(d) * (float)(int8_t)sc;
        const uint32_t lsh = 4 * (cc >> 1), hsh = 2 * cc;
        float v[16];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t a = ql.word(i) >> lsh, b = qh.word(i) >> hsh;
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

// ---------- tensor-core primitives ----------
// (Under MMA_EMULATE, tests/emu provides host versions of these two warp-wide operations.)
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
#endif

// Half offset of (row, 16-byte chunk ch) in a swizzled [row][32 halves] tile.
__device__ __forceinline__ int swz(int row, int ch) { return row * 32 + ((ch ^ ((row >> 1) & 3)) << 3); }

// ---------- the kernel ----------

template <int T, int BM, int BN, int WM, int WN>
__device__ __forceinline__ void mma_matmul(const uint8_t* __restrict__ W, const float* __restrict__ X,
                                           float* __restrict__ Y, int rows, int k, int n_tok,
                                           long long row_bytes) {
    constexpr int NTH = WM * WN * 32;
    constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
    constexpr int MT = TM / 16, NT = TN / 8;   // m16 and n8 tiles per warp
    constexpr int XV = BM * 8 / NTH;           // float4s of X per thread per chunk
    constexpr int WU = (2 * BN + NTH - 1) / NTH;  // weight units (16 values) per thread
    static_assert(MT >= 1 && NT % 2 == 0 && XV >= 1 && BM * 8 % NTH == 0, "tile shape");

    __shared__ __align__(128) __half Xs[2][BM * 32];
    __shared__ __align__(128) __half Ws[2][BN * 32];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int nc = k / 32;

    float4 xr[XV];
    Unit<T> wu[WU];

    auto load = [&](int c) {
#pragma unroll
        for (int v = 0; v < XV; v++) {
            const int idx = tid + v * NTH, r = idx >> 3, c4 = idx & 7, tok = m0 + r;
            xr[v] = tok < n_tok
                        ? __ldg(reinterpret_cast<const float4*>(X + (long long)tok * k + c * 32) + c4)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < WU; u++) {
            const int idx = tid + u * NTH, n = idx >> 1, row = n0 + n;
            const bool ok = idx < 2 * BN && row < rows;
            wu[u].load(W + (ok ? (long long)row * row_bytes : 0), c, idx & 1, ok);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int v = 0; v < XV; v++) {
            const int idx = tid + v * NTH, r = idx >> 3, c4 = idx & 7;
            uint2 h = make_uint2(pack_h2(xr[v].x, xr[v].y), pack_h2(xr[v].z, xr[v].w));
            *reinterpret_cast<uint2*>(&Xs[buf][swz(r, c4 >> 1) + (c4 & 1) * 4]) = h;
        }
#pragma unroll
        for (int u = 0; u < WU; u++) {
            const int idx = tid + u * NTH, n = idx >> 1, j = idx & 1;
            if (idx < 2 * BN) {
                uint32_t o[8];
                wu[u].emit(o);
                *reinterpret_cast<uint4*>(&Ws[buf][swz(n, 2 * j)]) = make_uint4(o[0], o[1], o[2], o[3]);
                *reinterpret_cast<uint4*>(&Ws[buf][swz(n, 2 * j + 1)]) = make_uint4(o[4], o[5], o[6], o[7]);
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

    load(0);
    store(0);
    __syncthreads();
    for (int c = 0; c < nc; c++) {
        const int buf = c & 1;
        if (c + 1 < nc) load(c + 1);
        const __half* xs = Xs[buf];
        const __half* ws = Ws[buf];
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
        if (c + 1 < nc) store(buf ^ 1);
        __syncthreads();
    }

    // Accumulator (g = lane/4, t = lane%4): [0],[1] at (token g, rows 2t, 2t+1), [2],[3] at g+8.
    const int g = lane >> 2, t = lane & 3;
    const bool pairs = (rows & 1) == 0;  // then Y + tok*rows + (even n) is 8-byte aligned
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const int n = n0 + wn * TN + nt * 8 + 2 * t;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int tok = m0 + wm * TM + mt * 16 + g + 8 * h;
                if (tok >= n_tok) continue;
                float* y = Y + (long long)tok * rows + n;
                const float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
                if (pairs && n + 1 < rows) {
                    *reinterpret_cast<float2*>(y) = make_float2(v0, v1);
                } else {
                    if (n < rows) y[0] = v0;
                    if (n + 1 < rows) y[1] = v1;
                }
            }
        }
}

// Tile shapes (BM tokens x BN rows, warps WM x WN); the launcher picks one per shape.
#define MMA_TILES(M, name, T)      \
    M(name, T, 128, 128, 2, 4)     \
    M(name, T, 128, 64, 4, 2)      \
    M(name, T, 64, 64, 2, 2)       \
    M(name, T, 32, 64, 1, 4)

#define MMA_ENTRY(name, T, BM, BN, WM, WN)                                                        \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32) mma_##name##_##BM##x##BN(           \
        const uint8_t* W, const float* X, float* Y, int rows, int k, int n_tok,                   \
        long long row_bytes) {                                                                    \
        mma_matmul<T, BM, BN, WM, WN>(W, X, Y, rows, k, n_tok, row_bytes);                         \
    }
#define MMA_TYPE(name, T) MMA_TILES(MMA_ENTRY, name, T)
FOR_EACH_TYPE(MMA_TYPE)
