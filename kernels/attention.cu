// Causal attention with grouped-query heads over the KV cache in VRAM.
//
// The cache is paged (attn_common.cuh: a session's table of page addresses, each page
// KV_PAGE positions of every layer, per layer K then V as [n_kv][KV_PAGE][head_dim]) of KV
// (f16 by default, f32 for kv_type f32 sessions). f16 halves VRAM and decode bandwidth
// against f32; its rounding (2^-11 relative) is well under the noise of quantized weights,
// not of exact ones. `pages`: the session's page table; `layer`: the layer these kernels
// read or write.
//
// Queries q: [n_tok][n_heads][head_dim] f32 at positions pos0 .. pos0+n_tok-1; out has q's
// shape. Query t sees keys lo .. pos0+t, lo = 0 or (window > 0) pos0+t-window+1 (sliding
// window). Decode is n_tok = 1; prefill is n_tok > 1 after kv_store of those tokens.
// Each kernel has an f16-cache instance (its plain name) and an f32 one (`_f32kv`).
#include "attn_common.cuh"

// Store n_tok new tokens' K and V ([n_tok][n_kv][head_dim] f32) at positions pos0.. .
// Launch: block = head_dim threads, grid.x = n_tok * n_kv.
template <class KV>
__device__ __forceinline__ void kv_store_body(const float* __restrict__ k,
                                              const float* __restrict__ v,
                                              const unsigned long long* __restrict__ pages,
                                              int layer, int n_kv, int head_dim, int pos0) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x / n_kv, h = blockIdx.x % n_kv, d = threadIdx.x;
    if (d >= head_dim) return;
    const long long src = (long long)blockIdx.x * head_dim + d;
    kv_put(kv_head<KV>(pages, layer, 0, n_kv, h, head_dim).row(pos0 + t), d, k[src]);
    kv_put(kv_head<KV>(pages, layer, 1, n_kv, h, head_dim).row(pos0 + t), d, v[src]);
}
#define KV_STORE_ENTRY(name, KV)                                                                \
    extern "C" __global__ void name(const float* __restrict__ k, const float* __restrict__ v,   \
                                    const unsigned long long* __restrict__ pages, int layer,   \
                                    int n_kv, int head_dim, int pos0) {                         \
        kv_store_body<KV>(k, v, pages, layer, n_kv, head_dim, pos0);                            \
    }
KV_STORE_ENTRY(kv_store, __half)
KV_STORE_ENTRY(kv_store_f32kv, float)
#undef KV_STORE_ENTRY

#define AW 4        // warps per block

// `sinks` (n_heads f32, or null): GPT-OSS's learned logit per head, which joins each softmax's
// denominator with no value (attn_sink_factor).
// Launch: block = 32*AW threads, grid = (n_heads, n_tok); one query a block (attn_query).
template <class KV>
__device__ __forceinline__ void attention_body(const float* __restrict__ q,
                                               const unsigned long long* __restrict__ pages,
                                               int layer, float* __restrict__ out,
                                               int n_heads, int n_kv, int head_dim, int pos0,
                                               float scale, int window,
                                               const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y;
    const int kvh = h / (n_heads / n_kv);
    const int qpos = pos0 + t;
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const long long row = ((long long)t * n_heads + h) * head_dim;
    attn_query<AW>(q + row, kv_head<KV>(pages, layer, 0, n_kv, kvh, head_dim),
                   kv_head<KV>(pages, layer, 1, n_kv, kvh, head_dim), out + row, head_dim, lo,
                   qpos, scale, sinks ? sinks + h : nullptr);
}
#define ATTENTION_ENTRY(name, KV)                                                               \
    extern "C" __global__ void __launch_bounds__(32 * AW)                                      \
        name(const float* __restrict__ q, const unsigned long long* __restrict__ pages,        \
             int layer, float* __restrict__ out, int n_heads, int n_kv, int head_dim,          \
             int pos0, float scale, int window, const float* __restrict__ sinks) {             \
        attention_body<KV>(q, pages, layer, out, n_heads, n_kv, head_dim, pos0, scale, window, \
                           sinks);                                                              \
    }
ATTENTION_ENTRY(attention, __half)
ATTENTION_ENTRY(attention_f32kv, float)
#undef ATTENTION_ENTRY
