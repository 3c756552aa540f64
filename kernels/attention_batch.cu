// Decoding attention for a batch of sequences, each over its own f16 KV cache (continuous
// batching: the rows of one step belong to different sessions).
//
// Row r of the step has its position pos[r] and, per layer, a table entry tab[3r..3r+3] =
// {K cache, V cache, max_ctx} of its session (layout as in attention.cu: [n_kv][max_ctx]
// [head_dim] f16). Everything a kernel needs comes from device memory, so a step can be
// captured as a graph once per batch size and replayed with other sessions and positions.
#include "attn_common.cuh"

struct KvRef {
    __half* k;
    __half* v;
    long long max_ctx;
};

__device__ __forceinline__ KvRef kv_ref(const unsigned long long* tab, int r) {
    return KvRef{(__half*)tab[3 * r], (__half*)tab[3 * r + 1], (long long)tab[3 * r + 2]};
}

// Store each row's new K and V ([n_rows][n_kv][head_dim] f32) at its position.
// Launch: block = head_dim threads, grid.x = n_rows * n_kv.
extern "C" __global__ void kv_store_batch(const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const unsigned long long* __restrict__ tab,
                                          const int* __restrict__ pos, int n_kv, int head_dim) {
    pdl_wait();
    pdl_trigger();
    const int r = blockIdx.x / n_kv, h = blockIdx.x % n_kv, d = threadIdx.x;
    if (d >= head_dim) return;
    const KvRef c = kv_ref(tab, r);
    const long long src = (long long)blockIdx.x * head_dim + d;
    const long long dst = ((long long)h * c.max_ctx + pos[r]) * head_dim + d;
    c.k[dst] = __float2half_rn(k[src]);
    c.v[dst] = __float2half_rn(v[src]);
}

#define AW 4  // warps per block

// Launch: block = 32*AW threads, grid = (n_heads, n_rows). As attention.cu's kernel for one
// query row (sinks included: n_heads f32 or null), with the row's own cache and position: each warp scans every AW-th key with an
// online softmax, then the warps' partial results merge through shared memory.
extern "C" __global__ void __launch_bounds__(32 * AW)
attention_batch(const float* __restrict__ q, const unsigned long long* __restrict__ tab,
                const int* __restrict__ pos, float* __restrict__ out, int n_heads, int n_kv,
                int head_dim, float scale, int window, const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    __shared__ float sm[AW], sl[AW];
    __shared__ float sacc[AW][32 * MAXD];
    const int h = blockIdx.x, t = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv);
    const int nd = head_dim / 32;
    const int qpos = pos[t];
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const KvRef c = kv_ref(tab, t);

    const float* qv = q + ((long long)t * n_heads + h) * head_dim;
    float qr[MAXD], acc[MAXD];
#pragma unroll
    for (int i = 0; i < MAXD; i++) {
        qr[i] = i < nd ? qv[lane + 32 * i] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const __half* kb = c.k + (long long)kvh * c.max_ctx * head_dim;
    const __half* vb = c.v + (long long)kvh * c.max_ctx * head_dim;
    attn_scan(qr, kb, vb, head_dim, nd, lo + warp, qpos + 1, AW, lane, m, l, acc);
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAXD; i++)
        if (i < nd) sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    if (warp == 0) {
        float f[AW], M;
        const float L = attn_merge_factors<AW>(sm, sl, f, &M);
        // A sink joins the denominator with no value (attn_common.cuh).
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
