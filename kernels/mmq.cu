// Products of a batched step (several inputs: a batched decode step's sequences, or a prompt
// chunk's tokens) on the tensor cores, reading the weights in their GGUF blocks: int8
// mma.sync m16n8k32 of the weights' integer quants with the inputs' 16-bit chunk records
// (prep_input.cuh: x ≈ d·(q1 + q2/254) per 32 values, two int8 planes), which mmq_prep lays
// out in fragment order (below). Each (weight row, input, 32-value chunk) gives the two
// planes' exact int32 dot products, the integers the one-input mat-vecs form with dp4a; they
// are scaled to f32 there (weight scale x record scale, a min term through the record's exact
// sum of x) and summed in f32 over the chunks in order. Epilogues and output layout as decode.cu's
// fused mat-vecs of several inputs (mv_args.cuh: plain + bias over up to three matrices,
// SwiGLU of gate and up, residual add; output i of a matrix of R rows at out + i R).
//
// Block: 4 warps, a tile of 32 weight-row slots (two m16 tiles; for a SwiGLU, m-tile 0 holds
// 16 gate rows and m-tile 1 the same up rows, so that both products of an output sit in one
// thread) x up to 64 inputs (NT n8 tiles of 8 inputs: each staged weight fragment is decoded
// once per block and multiplied with every input). The 4 warps split k: warp w takes chunks
// w, w + 4, ... of each stage, and at the end the warps' sums are added in the order 0, 1, 2,
// 3 (a fixed order: an input's outputs do not depend on the other inputs). Small tiles and
// the split of k give a 3584-row product 112 blocks (a first version, 128 rows a block each
// walking all of k, gave it 28 and lost 2-4x to the mat-vecs: bench/RESULTS.md). Weights go
// through a ring of MQ_STAGES shared-memory stages, each a slice of k of every slot's row (8
// chunks; 4 for Q8_0), copied with cp.async as 16-byte words from the 16-byte boundary below
// (every format's alignment); each slot's row is SLOT bytes apart, an odd number of 16-byte
// words (8 rows x 4 lanes' word reads of the fragments then spread over the banks). The
// inputs' records are read from global memory (L1/L2: every warp of a block and every block
// of a product reads the same few KB), in
// fragment order: one 16-byte load a lane gives an n8 tile's both planes, one more its
// inputs' scales and sums (with decode.cu's 80-byte records, six loads each touching the 8
// inputs' 8 cache lines).
//
// The order of k inside a chunk is free (the mma sums over it): lane (g, t) takes values
// 8t..8t+7, as k 4t..4t+3 (b[0], A regs 0 and 1) and k 16+4t..16+4t+3 (b[1], A regs 2, 3).
// Grid: weight tiles x input tiles in one dimension, input tiles fastest, so the blocks that
// share a weight tile run together (its second read comes from L2). A tile never spans two
// matrices.
#include "common.cuh"
#include "mma_prims.cuh"
#include "mv_args.cuh"
#include "prep_input.cuh"

#define MQ_WARPS 4
#define MQ_SLOTS 32    // weight-row slots a block
#ifndef MQ_STAGES      // (tests/emu builds it with 3, so that short rows wrap the ring)
#define MQ_STAGES 6    // 5 stages in flight: 24-34 KB of weights a block
#endif
#define MQ_NT 8        // most n8 input tiles a block (64 inputs)
// Shared memory of the warps' partial sums (warps 1..3, 2 x MQ_NT x 4 floats a lane), which
// reuse the ring at the end; src/backend/cuda/mmq.rs sizes the launch to hold both.
#define MQ_RED_BYTES ((MQ_WARPS - 1) * 2 * MQ_NT * 4 * 32 * 4)

__device__ __forceinline__ uint32_t mq_u32_4(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
// An int of magnitude below 2^22 as f32, exactly, without the conversion unit (a quarter of
// the FMA rate): its bits added to those of 1.5·2^23, whose ulp is 1.
__device__ __forceinline__ float mq_i2f(int v) { return __int_as_float(v + 0x4B400000) - 12582912.0f; }

// Each format: V values and B bytes a block, KC 32-value chunks a stage; `frag`: chunk `sub`
// of block `b` (in shared memory), the values 8t..8t+3 (lo) and 8t+4..8t+7 (hi) as signed
// bytes; `scale`: the chunk's w = d·q + m. Layouts as common.cuh (quants.py).
template <int T> struct Mq;
template <> struct Mq<T_Q8_0> {
    enum { V = 32, B = 34, KC = 4, MIN = 0 };
    __device__ static void frag(const uint8_t* b, int, int t, uint32_t& lo, uint32_t& hi) {
        lo = u32_at2(b + 2 + 8 * t);
        hi = u32_at2(b + 6 + 8 * t);
    }
    __device__ static float2 scale(const uint8_t* b, int) { return make_float2(h16(u16_at(b)), 0.f); }
};
// Q5_0: value i < 16 the low nibble of byte 6 + i, i + 16 its high nibble, bit i of qh (bytes
// 2..5) the fifth bit; minus 16. Values 8t.. are the low (t < 2) or high nibbles of bytes
// 6 + 8(t % 2)...
template <> struct Mq<T_Q5_0> {
    enum { V = 32, B = 22, KC = 8, MIN = 0 };
    __device__ static void frag(const uint8_t* b, int, int t, uint32_t& lo, uint32_t& hi) {
        const int sh = 4 * (t >> 1);
        const uint32_t qh = u32_at2(b + 2) >> (8 * t);
        const uint8_t* q = b + 6 + 8 * (t & 1);
        lo = __vsub4(((u32_at2(q) >> sh) & 0x0F0F0F0Fu) | (spread4(qh) << 4), 0x10101010u);
        hi = __vsub4(((u32_at2(q + 4) >> sh) & 0x0F0F0F0Fu) | (spread4(qh >> 4) << 4), 0x10101010u);
    }
    __device__ static float2 scale(const uint8_t* b, int) { return make_float2(h16(u16_at(b)), 0.f); }
};
// Q4_1: d, m, then nibbles as Q5_0's; w = d·q + m.
template <> struct Mq<T_Q4_1> {
    enum { V = 32, B = 20, KC = 8, MIN = 1 };
    __device__ static void frag(const uint8_t* b, int, int t, uint32_t& lo, uint32_t& hi) {
        const int sh = 4 * (t >> 1);
        const uint8_t* q = b + 4 + 8 * (t & 1);
        lo = (mq_u32_4(q) >> sh) & 0x0F0F0F0Fu;
        hi = (mq_u32_4(q + 4) >> sh) & 0x0F0F0F0Fu;
    }
    __device__ static float2 scale(const uint8_t* b, int) {
        const uint32_t w = mq_u32_4(b);
        return make_float2(h16(w), h16(w >> 16));
    }
};
// Q4_K: sub-block s: nibbles (low for even s) of bytes 16 + 32(s/2) + i; 6-bit scale and
// min (get_scale_min_k4); w = d·sc·q - dmin·mn.
template <> struct Mq<T_Q4_K> {
    enum { V = 256, B = 144, KC = 8, MIN = 1 };
    __device__ static void frag(const uint8_t* b, int s, int t, uint32_t& lo, uint32_t& hi) {
        const uint8_t* q = b + 16 + 32 * (s >> 1) + 8 * t;
        const int sh = 4 * (s & 1);
        lo = (mq_u32_4(q) >> sh) & 0x0F0F0F0Fu;
        hi = (mq_u32_4(q + 4) >> sh) & 0x0F0F0F0Fu;
    }
    __device__ static float2 scale(const uint8_t* b, int s) {
        uint32_t d, m;
        q4k_scale_min(mq_u32_4(b + 4), mq_u32_4(b + 8), mq_u32_4(b + 12), s, d, m);
        const uint32_t dd = mq_u32_4(b);
        return make_float2(h16(dd) * (float)d, -h16(dd >> 16) * (float)m);
    }
};
// Q6_K: 32-value quarter s = 4h + cc: low bits nibble cc/2 of ql bytes 64h + 32(cc%2) + i,
// high bits 2cc of qh bytes 128 + 32h + i, minus 32; a signed scale per 16 values (`scale`:
// d only; `scales16` the two: values 0..15 are lanes t < 2's).
template <> struct Mq<T_Q6_K> {
    enum { V = 256, B = 210, KC = 8, MIN = 0 };
    __device__ static uint32_t four(const uint8_t* ql, const uint8_t* qh, int sl, int shh) {
        const uint32_t l = (u32_at2(ql) >> sl) & 0x0F0F0F0Fu;
        const uint32_t h = ((u32_at2(qh) >> shh) & 0x03030303u) << 4;
        return __vsub4(l | h, 0x20202020u);
    }
    __device__ static void frag(const uint8_t* b, int s, int t, uint32_t& lo, uint32_t& hi) {
        const int h = s >> 2, cc = s & 3;
        const uint8_t* ql = b + 64 * h + 32 * (cc & 1) + 8 * t;
        const uint8_t* qh = b + 128 + 32 * h + 8 * t;
        lo = four(ql, qh, 4 * (cc >> 1), 2 * cc);
        hi = four(ql + 4, qh + 4, 4 * (cc >> 1), 2 * cc);
    }
    __device__ static float2 scale(const uint8_t* b, int) { return make_float2(h16(u16_at(b + 208)), 0.f); }
    __device__ static void scales16(const uint8_t* b, int s, int& lo, int& hi) {
        const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * (s >> 2) + 2 * (s & 3);
        lo = sc[0];
        hi = sc[1];
    }
};

// Bytes of a weight-row slot of one stage: the stage's blocks from up to 15 bytes past a
// 16-byte boundary, rounded up to an odd number of 16-byte words (src/backend/cuda/mmq.rs
// computes the same, `slot_bytes`).
template <int T> struct MqGeo {
    enum {
        CPB = Mq<T>::V / 32,                          // chunks a block
        STAGE_BYTES = Mq<T>::KC / CPB * Mq<T>::B,      // a slot's bytes of one stage
        WORDS0 = (STAGE_BYTES + 15 + 15) / 16,
        WORDS = WORDS0 | 1,
        SLOT = 16 * WORDS,
    };
};

// The inputs in fragment order (mmq_prep), n inputs in n8 = ceil(n / 8) groups of 8, k / 32
// chunks: first the planes, 512 bytes per (chunk c, group G) at (c n8 + G) 512, lane
// 4g + t's 16 bytes the q1 then the q2 bytes of values 8t..8t+7 of input 8G + g; then each
// (chunk c, input y)'s record scale d and exact sum (2 f32) at planes + (c 8 n8 + y) 8.
// (src/backend/cuda/mmq.rs: `mmq_input_bytes`.) Inputs past n in the last group: never
// written, multiplied, not stored.
__device__ __forceinline__ long long mq_planes_bytes(int k, int n8) { return (long long)(k / 32) * n8 * 512; }

// prep_input's work (norm, 16-bit chunk records) with the records in fragment order.
// Launch: block 256, grid (ceil(k / 256), n); pk: (k / 32) n8 576 bytes.
extern "C" __global__ void __launch_bounds__(256)
mmq_prep(const float* __restrict__ x, const float* __restrict__ norm, float eps, float* __restrict__ normed,
         uint8_t* __restrict__ pk, int k, int n8) {
    const int y = blockIdx.y;
    float* ds = reinterpret_cast<float*>(pk + mq_planes_bytes(k, n8));
    prep_body<8>(x, norm, eps, normed, k, [&](float v, int c, int lane) {
        int q1, q2;
        float d, sum;
        chunk_quant(v, q1, q2, d, sum);
        uint8_t* o = pk + ((long long)c * n8 + y / 8) * 512 + (4 * (y % 8) + lane / 8) * 16 + lane % 8;
        o[0] = (uint8_t)(int8_t)q1;
        o[8] = (uint8_t)(int8_t)q2;
        if (lane == 0) {
            float* p = ds + ((long long)c * 8 * n8 + y) * 2;
            p[0] = d;
            p[1] = sum;
        }
    });
}

// Which rows a block's slots hold: matrix `seg` (GLU: gate for m-tile 0, up for m-tile 1),
// rows from r0.
struct MqTile {
    int seg, r0, x0;  // first weight row, first input of the tile
};

// A slot's weight row (clamped into its matrix: rows past the end are copied and discarded).
__device__ __forceinline__ const uint8_t* mq_row(const MvArgs& a, const MqTile& tl, bool glu, int slot,
                                                 int& row, int& seg) {
    if (glu) {
        seg = (slot >> 4) & 1;
        row = tl.r0 + (slot & 15);
    } else {
        seg = tl.seg;
        row = tl.r0 + slot;
    }
    const Seg& s = a.seg[seg];
    return s.w + (long long)min(row, s.rows - 1) * s.row_bytes;
}

// Copy stage `st` (chunks [st KC, ..)) of every slot's row into buffer `buf` (the caller
// commits the group): 16-byte words, consecutive threads on consecutive words of a row.
template <int T>
__device__ __forceinline__ void mq_stage_copy(const MvArgs& a, const MqTile& tl, bool glu, int st, int nch,
                                              uint8_t* buf) {
    constexpr int KC = Mq<T>::KC, CPB = MqGeo<T>::CPB, W = MqGeo<T>::WORDS;
    const int c0 = st * KC, nc = min(KC, nch - c0);
    const int bytes = nc / CPB * Mq<T>::B;
#pragma unroll 1
    for (int i = threadIdx.x; i < MQ_SLOTS * W; i += 32 * MQ_WARPS) {
        const int slot = i / W, wd = i - slot * W;
        int row, seg;
        const uint8_t* g = mq_row(a, tl, glu, slot, row, seg) + (long long)(c0 / CPB) * Mq<T>::B;
        const int off = (int)((uintptr_t)g & 15);
        if (16 * wd < off + bytes) cp16(buf + slot * MqGeo<T>::SLOT + 16 * wd, g - off + 16 * wd, 16);
    }
}

// f(mt, nt, e, i) for each of a thread's accumulators acc[mt][nt][e], i its index 0..63.
template <class F>
__device__ __forceinline__ void mq_each(F f) {
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < MQ_NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) f(mt, nt, e, (mt * MQ_NT + nt) * 4 + e);
}

// One tile: acc[mt][nt][e] (thread's C fragment elements) of the products of its slots'
// rows with inputs x0 + 8 nt + ..., over the warp's chunks of k (see mq_reduce). `nt_n`: n8
// input tiles used (1..MQ_NT).
template <int T>
__device__ __forceinline__ void mq_tile(const MvArgs& a, const MqTile& tl, bool glu, const uint8_t* __restrict__ xs,
                                        int n_x, int nt_n, float (&acc)[2][MQ_NT][4]) {
    constexpr int KC = Mq<T>::KC, CPB = MqGeo<T>::CPB, SLOT = MqGeo<T>::SLOT;
    DYN_SMEM(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int nch = a.k / 32, nst = (nch + KC - 1) / KC;
    // The inputs in fragment order; the n8 tiles of this tile that exist.
    const int n8 = (n_x + 7) / 8, ntn = min(nt_n, n8 - tl.x0 / 8);
    const float* dsum = reinterpret_cast<const float*>(xs + mq_planes_bytes(a.k, n8));
    // The thread's four fragment rows: m-tile mt, rows g and g + 8.
    const uint8_t* rowp[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int row, seg;
            rowp[mt][h] = mq_row(a, tl, glu, 16 * mt + g + 8 * h, row, seg);
        }
    mq_each([&](int mt, int nt, int e, int) { acc[mt][nt][e] = 0.f; });
    // The weights depend on no earlier kernel: the first stages are in flight before the
    // wait for the inputs' records.
#pragma unroll
    for (int s = 0; s < MQ_STAGES - 1; s++) {
        if (s < nst) mq_stage_copy<T>(a, tl, glu, s, nch, smem + s * MQ_SLOTS * SLOT);
        cp_commit();
    }
    pdl_wait();
    pdl_trigger();
#pragma unroll 1
    for (int st = 0; st < nst; st++) {
        cp_wait<MQ_STAGES - 2>();
        __syncthreads();  // stage st landed for all; stage st - 1's buffer is free
        {
            const int nx = st + MQ_STAGES - 1;
            if (nx < nst) mq_stage_copy<T>(a, tl, glu, nx, nch, smem + (nx % MQ_STAGES) * MQ_SLOTS * SLOT);
            cp_commit();
        }
        const uint8_t* buf = smem + (st % MQ_STAGES) * MQ_SLOTS * SLOT;
        const int c0 = st * KC, nc = min(KC, nch - c0);
#pragma unroll 1
        for (int lc = warp; lc < nc; lc += MQ_WARPS) {
            const int c = c0 + lc, sub = lc % CPB;
            // The weight fragments of both m-tiles and their scales.
            uint32_t A[2][4];
            float2 sc[2][2];
            int s16[2][2][2];
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const uint8_t* gb = rowp[mt][h] + (long long)(c0 / CPB) * Mq<T>::B;
                    const int off = (int)((uintptr_t)gb & 15);
                    const uint8_t* b =
                        buf + (16 * mt + g + 8 * h) * SLOT + off + (lc / CPB) * Mq<T>::B;
                    Mq<T>::frag(b, sub, t, A[mt][h], A[mt][2 + h]);
                    sc[mt][h] = Mq<T>::scale(b, sub);
                    if constexpr (T == T_Q6_K) Mq<T>::scales16(b, sub, s16[mt][h][0], s16[mt][h][1]);
                }
#pragma unroll
            for (int nt = 0; nt < MQ_NT; nt++) {
                if (nt >= ntn) break;
                // B fragments: input x0 + 8nt + g, values 8t..8t+7 of both planes.
                const uint4 q = __ldg(reinterpret_cast<const uint4*>(
                                          xs + ((long long)c * n8 + tl.x0 / 8 + nt) * 512) + lane);
                const uint32_t b1[2] = {q.x, q.y}, b2[2] = {q.z, q.w};
                // The C columns' inputs, x0 + 8nt + 2t and + 1: their scales and sums.
                const float4 dd = __ldg(reinterpret_cast<const float4*>(
                    dsum + ((long long)c * 8 * n8 + tl.x0 + 8 * nt + 2 * t) * 2));
                const float2 ds[2] = {make_float2(dd.x, dd.y), make_float2(dd.z, dd.w)};
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    if constexpr (T == T_Q6_K) {
                        // The 16-value halves (values 0..15: lanes t < 2) apart, each plane
                        // twice with the other half's quants zeroed; their scales apply to
                        // the exact sums (|Σ| < 2^24: exact in f32).
                        int l1[4] = {0, 0, 0, 0}, h1[4] = {0, 0, 0, 0}, l2[4] = {0, 0, 0, 0},
                            h2[4] = {0, 0, 0, 0};
                        const uint32_t m = t < 2 ? 0xFFFFFFFFu : 0u;
                        const uint32_t alo[4] = {A[mt][0] & m, A[mt][1] & m, A[mt][2] & m, A[mt][3] & m};
                        const uint32_t ahi[4] = {A[mt][0] & ~m, A[mt][1] & ~m, A[mt][2] & ~m, A[mt][3] & ~m};
                        imma16832(l1, alo, b1);
                        imma16832(h1, ahi, b1);
                        imma16832(l2, alo, b2);
                        imma16832(h2, ahi, b2);
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int h = e >> 1;
                            const int s1 = s16[mt][h][0] * l1[e] + s16[mt][h][1] * h1[e];
                            const int s2 = s16[mt][h][0] * l2[e] + s16[mt][h][1] * h2[e];
                            const float f = (float)s1 + (float)s2 * (1.0f / 254.0f);
                            acc[mt][nt][e] += sc[mt][h].x * (ds[e & 1].x * f);
                        }
                    } else {
                        int c1[4] = {0, 0, 0, 0}, c2[4] = {0, 0, 0, 0};
                        imma16832(c1, A[mt], b1);
                        imma16832(c2, A[mt], b2);
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int h = e >> 1;
                            const float f = mq_i2f(c1[e]) + mq_i2f(c2[e]) * (1.0f / 254.0f);
                            float v = acc[mt][nt][e] + sc[mt][h].x * (ds[e & 1].x * f);
                            if constexpr (Mq<T>::MIN) v += sc[mt][h].y * ds[e & 1].y;
                            acc[mt][nt][e] = v;
                        }
                    }
                }
            }
        }
    }
    cp_wait<0>();
}

// The warps' partial sums of the tile added in warp order into warp 0's: ((w0 + w1) + w2) + w3
// (through shared memory, reusing the ring). Returns whether this warp holds the sums.
__device__ __forceinline__ bool mq_reduce(float (&acc)[2][MQ_NT][4]) {
    DYN_SMEM(smem);
    float* red = reinterpret_cast<float*>(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int N = 2 * MQ_NT * 4;
    __syncthreads();  // every warp is done with the ring
    if (warp > 0)
        mq_each([&](int mt, int nt, int e, int i) { red[((warp - 1) * N + i) * 32 + lane] = acc[mt][nt][e]; });
    __syncthreads();
    if (warp > 0) return false;
#pragma unroll 1
    for (int w = 1; w < MQ_WARPS; w++)
        mq_each([&](int mt, int nt, int e, int i) { acc[mt][nt][e] += red[((w - 1) * N + i) * 32 + lane]; });
    return true;
}

// The block's tile: blockIdx.x = weight tile * n_xt + input tile. Tiles of MQ_SLOTS rows of
// one matrix (a SwiGLU's: MQ_SLOTS / 2 gate/up row pairs).
__device__ __forceinline__ bool mq_tile_of(const MvArgs& a, int n_xt, MqTile& tl) {
    const int xt = blockIdx.x % n_xt;
    int wt = blockIdx.x / n_xt;
    tl.x0 = 64 * xt;
    if (a.mode == MODE_GLU) {
        tl.seg = 0;
        tl.r0 = MQ_SLOTS / 2 * wt;
        return tl.r0 < a.seg[0].rows;
    }
    const int n_seg = a.mode == MODE_PLAIN ? a.n_seg : 1;
    for (int s = 0; s < n_seg; s++) {
        const int tiles = (a.seg[s].rows + MQ_SLOTS - 1) / MQ_SLOTS;
        if (wt < tiles) {
            tl.seg = s;
            tl.r0 = MQ_SLOTS * wt;
            return true;
        }
        wt -= tiles;
    }
    return false;
}

// The epilogue (warp 0, after mq_reduce): each output of the thread's fragments to its slot
// of the step (input i of a matrix of R rows at out + i R).
__device__ __forceinline__ void mq_store(const MvArgs& a, const MqTile& tl, bool glu, int n_x, int nt_n,
                                         const float (&acc)[2][MQ_NT][4]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < MQ_NT; nt++) {
        if (nt >= nt_n) break;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int i = tl.x0 + 8 * nt + 2 * t + (e & 1);
            if (i >= n_x) continue;
            if (glu) {
                const int r = tl.r0 + g + 8 * (e >> 1), R = a.seg[0].rows;
                if (r >= R) continue;
                const long long o = (long long)i * R + r;
                const float gv = acc[0][nt][e], uv = acc[1][nt][e];
                a.seg[0].out[o] = gv;
                a.seg[1].out[o] = uv;
                a.act[o] = gv / (1.0f + expf(-gv)) * uv;
                continue;
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const Seg& s = a.seg[tl.seg];
                const int r = tl.r0 + 16 * mt + g + 8 * (e >> 1);
                if (r >= s.rows) continue;
                const long long o = (long long)i * s.rows + r;
                float y = acc[mt][nt][e];
                if (s.bias) y += s.bias[r];
                s.out[o] = y;
                if (a.mode == MODE_ADD) a.acc[o] += y;
            }
        }
    }
}

// Launch: block 32 * MQ_WARPS, grid (weight tiles x n_xt), dynamic shared memory MQ_STAGES x
// MQ_SLOTS x SLOT of the format (the larger of a pair's), at least MQ_RED_BYTES. `xs`: n_x
// inputs in fragment order (mmq_prep); n_xt = ceil(n_x / 64) input tiles, nt_n = n8 tiles a
// tile (fewer in the last).
// FA, FB: the product's formats (a pair: q/k/v of a Q4_K_M file; a tile is of one matrix).
template <int FA, int FB, int GLU>
__device__ __forceinline__ void mmq_body(const MvArgs& a, const uint8_t* __restrict__ xs, int n_x, int n_xt,
                                         int nt_n) {
    MqTile tl;
    if (!mq_tile_of(a, n_xt, tl)) return;  // (the launcher sizes the grid: not taken)
    const bool glu = GLU == 1;
    float acc[2][MQ_NT][4];
    if (FA == FB || a.seg[tl.seg].type == FA)
        mq_tile<FA>(a, tl, glu, xs, n_x, nt_n, acc);
    else
        mq_tile<FB>(a, tl, glu, xs, n_x, nt_n, acc);
    if (mq_reduce(acc)) mq_store(a, tl, glu, n_x, min(nt_n, (n_x + 7) / 8 - tl.x0 / 8), acc);
}

#define MMQ_ARGS const MvArgs a, const uint8_t* __restrict__ xs, int n_x, int n_xt, int nt_n
#define MMQ_ONE(name, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * MQ_WARPS, 2) mmq_##name(MMQ_ARGS) {        \
        mmq_body<T, T, 0>(a, xs, n_x, n_xt, nt_n);                                               \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * MQ_WARPS, 2) mmq_##name##_glu(MMQ_ARGS) {  \
        mmq_body<T, T, 1>(a, xs, n_x, n_xt, nt_n);                                               \
    }
MMQ_ONE(q4_1, T_Q4_1) MMQ_ONE(q5_0, T_Q5_0) MMQ_ONE(q8_0, T_Q8_0) MMQ_ONE(q4_k, T_Q4_K)
MMQ_ONE(q6_k, T_Q6_K)
#undef MMQ_ONE
#define MMQ_TWO(name, A, B)                                                                      \
    extern "C" __global__ void __launch_bounds__(32 * MQ_WARPS, 2) mmq_##name(MMQ_ARGS) {        \
        mmq_body<A, B, 0>(a, xs, n_x, n_xt, nt_n);                                               \
    }
MMQ_TWO(q5_0_q8_0, T_Q5_0, T_Q8_0) MMQ_TWO(q4_k_q6_k, T_Q4_K, T_Q6_K)
#undef MMQ_TWO
#undef MMQ_ARGS
