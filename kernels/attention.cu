// Causal attention with grouped-query heads over an f16 KV cache in VRAM.
//
// KV cache of one layer: K and V each [n_kv_heads][max_ctx][head_dim] f16 (head-major, so one
// head's keys are contiguous for the decode scan). f16 halves VRAM and decode bandwidth against
// f32; its rounding (2^-11 relative) is well under the noise of the quantized weights.
//
// Queries q: [n_tok][n_heads][head_dim] f32 at positions pos0 .. pos0+n_tok-1; out has q's
// shape. Query t sees keys lo .. pos0+t, lo = 0 or (window > 0) pos0+t-window+1 (sliding
// window). Decode is n_tok = 1; prefill is n_tok > 1 after kv_store of those tokens.
#include "attn_common.cuh"

// Store n_tok new tokens' K and V ([n_tok][n_kv][head_dim] f32) at positions pos0.. .
// Launch: block = head_dim threads, grid.x = n_tok * n_kv.
extern "C" __global__ void kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                    __half* kc, __half* vc, int n_kv, int head_dim, int max_ctx,
                                    int pos0) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x / n_kv, h = blockIdx.x % n_kv, d = threadIdx.x;
    if (d >= head_dim) return;
    const long long src = (long long)blockIdx.x * head_dim + d;
    const long long dst = ((long long)h * max_ctx + pos0 + t) * head_dim + d;
    kc[dst] = __float2half_rn(k[src]);
    vc[dst] = __float2half_rn(v[src]);
}

#define AW 4        // warps per block

// `sinks` (n_heads f32, or null): GPT-OSS's learned logit per head, which joins each softmax's
// denominator with no value (attn_sink_factor).
// Launch: block = 32*AW threads, grid = (n_heads, n_tok). Each warp scans every AW-th key with
// an online softmax (running max m, sum l, accumulator acc over head_dim spread across lanes),
// then the warps' partial results are merged through shared memory.
extern "C" __global__ void __launch_bounds__(32 * AW)
attention(const float* __restrict__ q, const __half* __restrict__ kc,
          const __half* __restrict__ vc, float* __restrict__ out, int n_heads, int n_kv,
          int head_dim, int max_ctx, int pos0, float scale, int window,
          const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    __shared__ float sm[AW], sl[AW];
    __shared__ float sacc[AW][32 * MAXD];
    const int h = blockIdx.x, t = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv);
    const int nd = head_dim / 32;
    const int qpos = pos0 + t;
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;

    const float* qv = q + ((long long)t * n_heads + h) * head_dim;
    float qr[MAXD], acc[MAXD];
#pragma unroll
    for (int i = 0; i < MAXD; i++) {
        qr[i] = i < nd ? qv[lane + 32 * i] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const __half* kb = kc + (long long)kvh * max_ctx * head_dim;
    const __half* vb = vc + (long long)kvh * max_ctx * head_dim;
    attn_scan(qr, kb, vb, head_dim, nd, lo + warp, qpos + 1, AW, lane, m, l, acc);
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (int i = 0; i < MAXD; i++)
        if (i < nd) sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float f[AW], M;
        const float L = attn_merge_factors<AW>(sm, sl, f, &M);
        const float inv = sinks ? attn_sink_factor(M, L, sinks[h]) : 0.f;
        float* o = out + ((long long)t * n_heads + h) * head_dim;
        for (int i = 0; i < nd; i++) {
            float a = 0.f;
#pragma unroll
            for (int w = 0; w < AW; w++) a += sacc[w][lane + 32 * i] * f[w];
            o[lane + 32 * i] = sinks ? a * inv : a / L;
        }
    }
}
