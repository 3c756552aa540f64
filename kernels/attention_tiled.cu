// Causal attention for a prompt (many queries at once), flash-attention style: the same
// function as `attention` in attention.cu (same paged cache, masks, f32 scores over the KV cache
// of f16 or, `_f32kv` instances, f32, precise expf), but key/value tiles are staged in shared memory once and reused by 16
// queries, instead of every query streaming every key from memory.
//
// Launch: grid = (ceil(n_tok / 16), n_heads), block = 128 (4 warps, 4 queries each), dynamic
// shared memory = 16 * head_dim * 4 + 2 * (32 * (W + 1) * 4 + 32 * W * 4) bytes, W = the
// 4-byte words of a cache row (head_dim / 2 for f16, head_dim for f32): the block's 16 queries
// (f32, pre-scaled), then two stages, each a tile of 32 keys ([32][W + 1] words: rows padded by
// one word so that the 32 lanes, one key each, read different banks) and its 32 values
// ([32][W] words). The next tile is copied into the other stage with cp.async while this one
// is scored, its rows looked up in the page table a tile earlier still, so that neither the
// lookups nor the copies wait in line before a tile's arithmetic.
// Per tile, lane j scores key j against the warp's 4 queries, the warp updates each query's
// running max m, sum l and accumulator (lane owns value dims 2(lane + 32i), +1) with an online
// softmax, broadcasting the probabilities by shuffles. head_dim: a multiple of 32, <= 256.
// `sinks` (n_heads f32, or null): GPT-OSS's logit per head in each softmax's denominator.
#include "attn_common.cuh"
#include "mma_prims.cuh"  // cp4, cp_commit, cp_wait

#define AQ 16  // queries per block
#define AK 32  // keys per tile

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Values 2p and 2p + 1 of a cache row staged as 4-byte words.
__device__ __forceinline__ float2 kv_pair(const __half*, const uint32_t* row, int p) {
    const uint32_t w = row[p];
    return make_float2(__half2float(__ushort_as_half((unsigned short)(w & 0xffff))),
                       __half2float(__ushort_as_half((unsigned short)(w >> 16))));
}
__device__ __forceinline__ float2 kv_pair(const float*, const uint32_t* row, int p) {
    return make_float2(__uint_as_float(row[2 * p]), __uint_as_float(row[2 * p + 1]));
}

// SINKS: the kernel with attention sinks (its own instance: the sink's use costs the kernel
// registers, 24 bytes spilled, which the models without sinks need not pay).
template <bool SINKS, class KV>
__device__ __forceinline__ void
attention_tiled_body(const float* __restrict__ q, const unsigned long long* __restrict__ pages,
                     int layer, float* __restrict__ out, int n_tok, int n_heads, int n_kv, int hd,
                     int pos0, float scale, int window, const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
#ifdef MMA_EMULATE
    uint8_t* smem = emu_dyn_smem;
#else
    extern __shared__ __align__(16) uint8_t smem[];
#endif
    const int vs = sizeof(KV) == 4 ? hd : hd / 2, ks = vs + 1;  // words a value row, a key row
    const int np = hd / 2;                                 // value pairs a row
    float* Qs = reinterpret_cast<float*>(smem);                   // [AQ][hd]
    uint32_t* const stage0 = reinterpret_cast<uint32_t*>(Qs + AQ * hd);  // [2][AK][ks + vs]
    const int stage_words = AK * (ks + vs);
    const KV* tag = nullptr;                                   // picks kv_pair's overload
    const int h = blockIdx.y, kvh = h / (n_heads / n_kv);
    const int t0 = blockIdx.x * AQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int i = threadIdx.x; i < AQ * hd; i += 128) {
        const int r = i / hd, d = i % hd, t = t0 + r;
        Qs[i] = t < n_tok ? q[((long long)t * n_heads + h) * hd + d] * scale : 0.f;
    }
    // Keys the block needs: from the first query's window start to the last query.
    const int t_last = min(t0 + AQ, n_tok) - 1;
    const int kend = pos0 + t_last;  // inclusive
    const int kbeg = window > 0 ? max(0, pos0 + t0 - window + 1) : 0;

    // This warp's queries (qi = 0..3): token t0 + 4 warp + qi.
    int qpos[4], lo[4];
    bool live[4];
    float m[4], l[4], acc[4][4][2];
#pragma unroll
    for (int qi = 0; qi < 4; qi++) {
        const int t = t0 + 4 * warp + qi;
        live[qi] = t < n_tok;
        qpos[qi] = pos0 + t;
        lo[qi] = window > 0 ? max(0, qpos[qi] - window + 1) : 0;
        // A sink starts the online softmax as a key of its own with no value: the max is
        // the sink's logit and the sum e^0 (an end-of-kernel correction instead spilled
        // registers in this kernel).
        m[qi] = SINKS ? sinks[h] : -INFINITY;
        l[qi] = SINKS ? 1.f : 0.f;
#pragma unroll
        for (int i = 0; i < 4; i++) acc[qi][i][0] = acc[qi][i][1] = 0.f;
    }
    const KvHead<KV> kb = kv_head<KV>(pages, layer, 0, n_kv, kvh, hd);
    const KvHead<KV> vb = kv_head<KV>(pages, layer, 1, n_kv, kvh, hd);

    // Tile rows are looked up in the page table two tiles ahead (thread j < AK: key j's row,
    // AK <= j < 2 AK: value j - AK's; a register), published in `rows` one tile ahead, where
    // every thread finds the rows of the words it copies. Keys past kend: no row (zeros).
    __shared__ const uint32_t* rows[2][2][AK];
    const int rj = threadIdx.x % AK, rwhich = threadIdx.x / AK;
    auto lookup = [&](int k0) -> const uint32_t* {
        if (threadIdx.x >= 2 * AK || k0 + rj > kend) return nullptr;
        return reinterpret_cast<const uint32_t*>((rwhich ? vb : kb).row(k0 + rj));
    };
    // The tile at k0 into stage st (rows[st]): a committed cp.async group.
    auto copy_tile = [&](int k0, int st) {
        uint32_t* Ks = stage0 + st * stage_words;
        uint32_t* Vs = Ks + AK * ks;
        for (int i = threadIdx.x; i < AK * vs; i += 128) {
            const int j = i / vs, w = i % vs;
            const uint32_t* kr = rows[st][0][j];
            const uint32_t* vr = rows[st][1][j];
            // Zero-filled past kend (nothing read: the page table is only a valid address).
            const uint32_t* none = reinterpret_cast<const uint32_t*>(pages);
            cp4(Ks + j * ks + w, kr ? kr + w : none, kr ? 4u : 0u);
            cp4(Vs + j * vs + w, vr ? vr + w : none, vr ? 4u : 0u);
        }
        cp_commit();
    };
    const uint32_t* ahead = lookup(kbeg);
    if (threadIdx.x < 2 * AK) rows[0][rwhich][rj] = ahead;
    ahead = lookup(kbeg + AK);
    __syncthreads();  // rows[0] (and Qs) written
    copy_tile(kbeg, 0);
    for (int k0 = kbeg, st = 0; k0 <= kend; k0 += AK, st ^= 1) {
        // The next tile's rows (looked up during the last tile), then the one after's lookup.
        if (threadIdx.x < 2 * AK) rows[st ^ 1][rwhich][rj] = ahead;
        ahead = lookup(k0 + 2 * AK);
        __syncthreads();  // rows[st ^ 1] written; the last tile's reads of stage st ^ 1 done
        if (k0 + AK <= kend) copy_tile(k0 + AK, st ^ 1);
        else cp_commit();  // an empty group: the wait below counts the same
        cp_wait<1>();      // this thread's copies of tile k0 have landed
        __syncthreads();   // everyone's
        const uint32_t* Ks = stage0 + st * stage_words;
        const uint32_t* Vs = Ks + AK * ks;

        // Scores: lane j against key k0 + j.
        const int kp = k0 + lane;
        float s[4] = {0.f, 0.f, 0.f, 0.f};
        const float* qw = Qs + 4 * warp * hd;
        for (int w = 0; w < np; w++) {
            const float2 kk = kv_pair(tag, Ks + lane * ks, w);
#pragma unroll
            for (int qi = 0; qi < 4; qi++) {
                const float2 qq = *reinterpret_cast<const float2*>(qw + qi * hd + 2 * w);
                s[qi] += qq.x * kk.x + qq.y * kk.y;
            }
        }
#pragma unroll
        for (int qi = 0; qi < 4; qi++) {
            const bool ok = live[qi] && kp <= qpos[qi] && kp >= lo[qi];
            const float sv = ok ? s[qi] : -INFINITY;
            const float tmax = warp_max(sv);
            if (tmax == -INFINITY) {  // no key of this tile for this query (warp-uniform)
                s[qi] = 0.f;
                continue;
            }
            const float mn = fmaxf(m[qi], tmax);
            const float corr = expf(m[qi] - mn);  // m = -inf before the first key (no sink): 0
            const float p = ok ? expf(sv - mn) : 0.f;
            l[qi] = l[qi] * corr + warp_sum(p);
            m[qi] = mn;
#pragma unroll
            for (int i = 0; i < 4; i++) acc[qi][i][0] *= corr, acc[qi][i][1] *= corr;
            s[qi] = p;  // keep the probability for the value pass
        }
        // Values: acc += sum_j p_j v_j, p_j broadcast from lane j.
        for (int j = 0; j < AK; j++) {
            float pj[4];
#pragma unroll
            for (int qi = 0; qi < 4; qi++) pj[qi] = __shfl_sync(0xffffffffu, s[qi], j);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int w = lane + 32 * i;
                if (w < np) {
                    const float2 vv = kv_pair(tag, Vs + j * vs, w);
#pragma unroll
                    for (int qi = 0; qi < 4; qi++) {
                        acc[qi][i][0] += pj[qi] * vv.x;
                        acc[qi][i][1] += pj[qi] * vv.y;
                    }
                }
            }
        }
    }
    cp_wait<0>();  // the last (empty) group

#pragma unroll
    for (int qi = 0; qi < 4; qi++) {
        if (!live[qi]) continue;
        const int t = t0 + 4 * warp + qi;
        float* o = out + ((long long)t * n_heads + h) * hd;
        const float inv = 1.f / l[qi];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int w = lane + 32 * i;
            if (w < np) *reinterpret_cast<float2*>(o + 2 * w) = make_float2(acc[qi][i][0] * inv, acc[qi][i][1] * inv);
        }
    }
}
#define ATTN_TILED_ARGS(KV)                                                                      \
    const float *__restrict__ q, const unsigned long long *__restrict__ pages, int layer,          \
        float *__restrict__ out, int n_tok, int n_heads, int n_kv, int hd, int pos0, float scale, \
        int window, const float *__restrict__ sinks
#define ATTN_TILED_PASS q, pages, layer, out, n_tok, n_heads, n_kv, hd, pos0, scale, window, sinks
#define ATTN_TILED_ENTRY(name, SINKS, KV)                                                        \
    extern "C" __global__ void __launch_bounds__(128) name(ATTN_TILED_ARGS(KV)) {                \
        attention_tiled_body<SINKS, KV>(ATTN_TILED_PASS);                                        \
    }
ATTN_TILED_ENTRY(attention_tiled, false, __half)
ATTN_TILED_ENTRY(attention_tiled_sinks, true, __half)
ATTN_TILED_ENTRY(attention_tiled_f32kv, false, float)
ATTN_TILED_ENTRY(attention_tiled_sinks_f32kv, true, float)
#undef ATTN_TILED_ARGS
#undef ATTN_TILED_PASS
#undef ATTN_TILED_ENTRY
