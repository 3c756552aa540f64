// Decoding attention for a batch of sequences, each over its own KV cache (continuous
// batching: the rows of one step belong to different sessions).
//
// Row r of the step has its position pos[r] and, per layer, a table entry tab[3r..3r+3] =
// {K cache, V cache, max_ctx} of its session (layout as in attention.cu: [n_kv][max_ctx]
// [head_dim]). Bit 0 of the K address (an allocation, so 256-byte aligned) says the session's
// cache is f32 (kv_type f32) rather than f16: sessions of both types share a step, each row
// taking its own branch (uniform over a block, whose row is one). Everything a kernel needs
// comes from device memory, so a step can be captured as a graph once per batch size and
// replayed with other sessions and positions.
#include "attn_common.cuh"

struct KvRef {
    void* k;
    void* v;
    long long max_ctx;
    bool f32;
};

__device__ __forceinline__ KvRef kv_ref(const unsigned long long* tab, int r) {
    const unsigned long long k = tab[3 * r];
    return KvRef{(void*)(k & ~1ull), (void*)tab[3 * r + 1], (long long)tab[3 * r + 2],
                 (k & 1ull) != 0};
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
    if (c.f32) {
        kv_put((float*)c.k, dst, k[src]);
        kv_put((float*)c.v, dst, v[src]);
    } else {
        kv_put((__half*)c.k, dst, k[src]);
        kv_put((__half*)c.v, dst, v[src]);
    }
}

#define AW 4  // warps per block

// Launch: block = 32*AW threads, grid = (n_heads, n_rows). As attention.cu's kernel for one
// query row (attn_query; sinks: n_heads f32 or null), with the row's own cache and position.
extern "C" __global__ void __launch_bounds__(32 * AW)
attention_batch(const float* __restrict__ q, const unsigned long long* __restrict__ tab,
                const int* __restrict__ pos, float* __restrict__ out, int n_heads, int n_kv,
                int head_dim, float scale, int window, const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y;
    const int kvh = h / (n_heads / n_kv);
    const int qpos = pos[t];
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const KvRef c = kv_ref(tab, t);
    const long long row = ((long long)t * n_heads + h) * head_dim;
    const long long head = (long long)kvh * c.max_ctx * head_dim;
    const float* sink = sinks ? sinks + h : nullptr;
    if (c.f32)
        attn_query<AW>(q + row, (const float*)c.k + head, (const float*)c.v + head, out + row,
                       head_dim, lo, qpos, scale, sink);
    else
        attn_query<AW>(q + row, (const __half*)c.k + head, (const __half*)c.v + head, out + row,
                       head_dim, lo, qpos, scale, sink);
}

// RoPE of a batched step's q and k (in place) and the store of each row's rotated k and its
// v in its session's cache at its position: one launch where rope (q), rope (k) and
// kv_store_batch were three. The plain RoPE of rope.cu's `rope`, the same arithmetic, so the
// cache holds the same values. Launch: block = head_dim / 2 threads (>= rot_dim / 2),
// grid = (n_heads + n_kv, n_rows): blocks below n_heads rotate a q head, the rest a k head,
// then store it and the v head.
extern "C" __global__ void rope_kv_batch(float* __restrict__ q, float* __restrict__ k,
                                         const float* __restrict__ v,
                                         const unsigned long long* __restrict__ tab,
                                         const int* __restrict__ pos, int n_heads, int n_kv,
                                         int head_dim, int rot_dim, float base, float pos_scale,
                                         int neox) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, r = blockIdx.y, i = threadIdx.x, half = rot_dim / 2;
    const bool is_q = h < n_heads;
    const int kh = h - n_heads;
    float* x = is_q ? q + ((long long)r * n_heads + h) * head_dim
                    : k + ((long long)r * n_kv + kh) * head_dim;
    if (i < half) rope_rotate(x, i, pos[r], pos_scale, rot_dim, base, neox);
    if (is_q) return;
    // The block's rotated k is in memory and visible to the whole block after the barrier.
    __syncthreads();
    const KvRef c = kv_ref(tab, r);
    const long long dst = ((long long)kh * c.max_ctx + pos[r]) * head_dim;
    const float* vr = v + ((long long)r * n_kv + kh) * head_dim;
    for (int d = i; d < head_dim; d += blockDim.x) {
        if (c.f32) {
            kv_put((float*)c.k, dst + d, x[d]);
            kv_put((float*)c.v, dst + d, vr[d]);
        } else {
            kv_put((__half*)c.k, dst + d, x[d]);
            kv_put((__half*)c.v, dst + d, vr[d]);
        }
    }
}
