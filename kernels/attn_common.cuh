// Pieces shared by the attention kernels over the KV cache (attention.cu, attention_batch.cu,
// attention_tiled.cu, decode.cu): element access of either cache type, one warp's
// online-softmax scan over cached keys, the merge factors of a block's warps, and the whole
// attention of one query by one block.
//
// The cache's element type KV is a template parameter: __half (the default: half the memory
// and decode bandwidth) or float (sessions that ask for kv_type f32: the f16 rounding,
// 2^-11 relative on every key and value, cost the tiny models' logits up to 5.5e-3 against
// HF's f32 forward, measured on the CPU). Kernels that take the cache have a `_f32kv`
// instance beside the f16 one.
#pragma once
#include "common.cuh"

#define MAXD 8  // head_dim <= 32 * MAXD = 256; lane holds dims lane + 32 i

// The KV cache in pages (src/backend/cuda/kv_pages.rs): a session's cache is a table of page
// addresses in device memory (`pages`, one u64 a page), and a page holds KV_PAGE positions of
// every layer: per layer, the K rows then the V rows, each [n_kv][KV_PAGE][head_dim] of KV.
// Position p is row p % KV_PAGE of page pages[p / KV_PAGE]. A page is the prefix cache's
// block (src/backend/kvpool): sessions whose prompts start alike share pages.
#define KV_PAGE 16

// One KV head's keys (or values) of one layer, across the pages: row(p) is position p's
// head_dim values.
template <class KV>
struct KvHead {
    const unsigned long long* pages;
    long long off;  // values from a page's start to this head's first row
    int hd;
    __device__ __forceinline__ KV* row(int p) const {
        return reinterpret_cast<KV*>(pages[(unsigned)p / KV_PAGE]) + off +
               (long long)((unsigned)p % KV_PAGE) * hd;
    }
};
// Head h of layer `layer`'s keys (kv = 0) or values (kv = 1).
template <class KV>
__device__ __forceinline__ KvHead<KV> kv_head(const unsigned long long* pages, int layer, int kv,
                                              int n_kv, int h, int hd) {
    return KvHead<KV>{pages, ((long long)(2 * layer + kv) * n_kv + h) * KV_PAGE * hd, hd};
}

__device__ __forceinline__ float kv_get(const __half* p, long long i) { return __half2float(p[i]); }
__device__ __forceinline__ float kv_get(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ void kv_put(__half* p, long long i, float x) { p[i] = __float2half_rn(x); }
__device__ __forceinline__ void kv_put(float* p, long long i, float x) { p[i] = x; }

// Keys j = j0, j0 + step, ... < j1 of one KV head (kb, vb: its keys and values): the
// running max m, sum l and accumulator acc of an online softmax of qr·k (qr pre-scaled).
// N: registers a lane holds (MAXD, or head_dim / 32 exactly in a kernel for one head size).
template <int N, class KV>
__device__ __forceinline__ void attn_scan(const float (&qr)[N], KvHead<KV> kb, KvHead<KV> vb,
                                          int nd, int j0, int j1, int step, int lane, float& m,
                                          float& l, float (&acc)[N]) {
    // Each key's rows are looked up one key ahead: the page table's load is not in the
    // chain of the key's own loads.
    const KV* kn = j0 < j1 ? kb.row(j0) : nullptr;
    const KV* vn = j0 < j1 ? vb.row(j0) : nullptr;
    for (int j = j0; j < j1; j += step) {
        const KV* kr = kn;
        const KV* vr = vn;
        if (j + step < j1) {
            kn = kb.row(j + step);
            vn = vb.row(j + step);
        }
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++)
            if (i < nd) s += qr[i] * kv_get(kr, lane + 32 * i);
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // m = -inf at the first key: corr = 0
        const float p = expf(s - mn);
        l = l * corr + p;
#pragma unroll
        for (int i = 0; i < N; i++)
            if (i < nd) acc[i] = acc[i] * corr + p * kv_get(vr, lane + 32 * i);
        m = mn;
    }
}

// Weights f[w] of NW warps' partial results (max sm[w], sum sl[w]) relative to their common
// max M (written to *M); returns the merged sum. A warp that saw no keys gets weight 0.
template <int NW>
__device__ __forceinline__ float attn_merge_factors(const float* sm, const float* sl,
                                                    float (&f)[NW], float* M_out) {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; w++) M = fmaxf(M, sm[w]);
    float L = 0.f;
#pragma unroll
    for (int w = 0; w < NW; w++) {
        f[w] = sl[w] > 0.f ? expf(sm[w] - M) : 0.f;
        L += sl[w] * f[w];
    }
    if (M_out) *M_out = M;
    return L;
}

// The factor that turns a softmax's accumulator (max m, sum l of e^(s - m)) into its output
// when an attention sink (GPT-OSS: a learned logit per head, in the units of the scaled
// scores) joins the denominator with no value: 1 / (l + e^(sink - m)), computed against
// max(m, sink) so that a sink far above the scores cannot overflow.
__device__ __forceinline__ float attn_sink_factor(float m, float l, float sink) {
    const float mx = fmaxf(m, sink), a = expf(m - mx);
    return a / (l * a + expf(sink - mx));
}

// One query's attention by one block of NW warps (attention.cu's prompt kernel, the batched
// decode of attention_batch.cu): query qv (head_dim f32, multiplied by `scale`) over keys
// lo..qpos of one KV head (kb, vb), `sink` (or null) joining the denominator; the head_dim
// outputs to o. Each warp scans every NW-th key with an online softmax, then the warps'
// partial results merge through shared memory.
template <int NW, class KV>
__device__ __forceinline__ void attn_query(const float* __restrict__ qv, KvHead<KV> kb,
                                           KvHead<KV> vb, float* __restrict__ o, int head_dim,
                                           int lo, int qpos, float scale,
                                           const float* __restrict__ sink) {
    __shared__ float sm[NW], sl[NW];
    __shared__ float sacc[NW][32 * MAXD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nd = head_dim / 32;
    float qr[MAXD], acc[MAXD];
#pragma unroll
    for (int i = 0; i < MAXD; i++) {
        qr[i] = i < nd ? qv[lane + 32 * i] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    attn_scan(qr, kb, vb, nd, lo + warp, qpos + 1, NW, lane, m, l, acc);
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAXD; i++)
        if (i < nd) sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float f[NW], M;
        const float L = attn_merge_factors<NW>(sm, sl, f, &M);
        const float inv = sink ? attn_sink_factor(M, L, *sink) : 0.f;
        for (int i = 0; i < nd; i++) {
            float a = 0.f;
#pragma unroll
            for (int w = 0; w < NW; w++) a += sacc[w][lane + 32 * i] * f[w];
            o[lane + 32 * i] = sink ? a * inv : a / L;
        }
    }
}
