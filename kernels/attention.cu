// Causal attention with grouped-query heads over the KV cache in VRAM.
//
// KV cache of one layer: K and V each [n_kv_heads][max_ctx][head_dim] of KV (f16 by default,
// f32 for kv_type f32 sessions: attn_common.cuh), head-major, so one head's keys are
// contiguous for the decode scan. f16 halves VRAM and decode bandwidth against f32; its
// rounding (2^-11 relative) is well under the noise of quantized weights, not of exact ones.
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
                                              const float* __restrict__ v, KV* kc, KV* vc,
                                              int n_kv, int head_dim, int max_ctx, int pos0) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x / n_kv, h = blockIdx.x % n_kv, d = threadIdx.x;
    if (d >= head_dim) return;
    const long long src = (long long)blockIdx.x * head_dim + d;
    const long long dst = ((long long)h * max_ctx + pos0 + t) * head_dim + d;
    kv_put(kc, dst, k[src]);
    kv_put(vc, dst, v[src]);
}
#define KV_STORE_ENTRY(name, KV)                                                                \
    extern "C" __global__ void name(const float* __restrict__ k, const float* __restrict__ v,   \
                                    KV* kc, KV* vc, int n_kv, int head_dim, int max_ctx,       \
                                    int pos0) {                                                 \
        kv_store_body(k, v, kc, vc, n_kv, head_dim, max_ctx, pos0);                             \
    }
KV_STORE_ENTRY(kv_store, __half)
KV_STORE_ENTRY(kv_store_f32kv, float)
#undef KV_STORE_ENTRY

#define AW 4        // warps per block

// `sinks` (n_heads f32, or null): GPT-OSS's learned logit per head, which joins each softmax's
// denominator with no value (attn_sink_factor).
// Launch: block = 32*AW threads, grid = (n_heads, n_tok); one query a block (attn_query).
template <class KV>
__device__ __forceinline__ void attention_body(const float* __restrict__ q, const KV* kc,
                                               const KV* vc, float* __restrict__ out,
                                               int n_heads, int n_kv, int head_dim,
                                               int max_ctx, int pos0, float scale, int window,
                                               const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y;
    const int kvh = h / (n_heads / n_kv);
    const int qpos = pos0 + t;
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const long long row = ((long long)t * n_heads + h) * head_dim;
    const long long head = (long long)kvh * max_ctx * head_dim;
    attn_query<AW>(q + row, kc + head, vc + head, out + row, head_dim, lo, qpos, scale,
                   sinks ? sinks + h : nullptr);
}
#define ATTENTION_ENTRY(name, KV)                                                               \
    extern "C" __global__ void __launch_bounds__(32 * AW)                                      \
        name(const float* __restrict__ q, const KV* __restrict__ kc,                           \
             const KV* __restrict__ vc, float* __restrict__ out, int n_heads, int n_kv,        \
             int head_dim, int max_ctx, int pos0, float scale, int window,                     \
             const float* __restrict__ sinks) {                                                \
        attention_body(q, kc, vc, out, n_heads, n_kv, head_dim, max_ctx, pos0, scale, window,  \
                       sinks);                                                                 \
    }
ATTENTION_ENTRY(attention, __half)
ATTENTION_ENTRY(attention_f32kv, float)
#undef ATTENTION_ENTRY

// The prefix cache on a GPU (src/backend/cuda/model/prefix_blocks.rs): copy whole blocks of
// `block` positions between a session's cache and prefix-cache blocks. A block holds, per
// layer, K then V, each [n_kv][block][head_dim]: one head's rows of a block are as contiguous
// there as in the cache's [n_kv][max_ctx][head_dim], so each is one run of bytes. blocks:
// n_blocks device addresses, block i holding positions pos0 + i*block ..; caches: per layer
// the K then the V cache's address. to_cache: blocks -> cache, else cache -> blocks.
// row_bytes (head_dim x the value's bytes) is a multiple of 16 (head_dim of 32s).
// Launch: block = 256 threads, grid = (n_blocks, n_layer, 2: K or V).
extern "C" __global__ void kv_blocks_copy(const unsigned long long* __restrict__ blocks,
                                          const unsigned long long* __restrict__ caches,
                                          int n_kv, int block, int row_bytes, int max_ctx,
                                          int pos0, int to_cache) {
    pdl_wait();
    pdl_trigger();
    const int b = blockIdx.x, layer = blockIdx.y, kv = blockIdx.z;
    const long long run = (long long)block * row_bytes;  // one head's rows of a block
    char* blk = (char*)blocks[b] + (long long)(2 * layer + kv) * n_kv * run;
    char* cache = (char*)caches[2 * layer + kv];
    const long long first = (long long)pos0 + (long long)b * block;
    const int words = (int)(run / 16);
    for (int i = threadIdx.x; i < n_kv * words; i += blockDim.x) {
        const int h = i / words, w = i % words;
        uint4* pb = (uint4*)(blk + h * run) + w;
        uint4* pc = (uint4*)(cache + ((long long)h * max_ctx + first) * row_bytes) + w;
        if (to_cache)
            *pc = *pb;
        else
            *pb = *pc;
    }
}
