// Decoding attention for a batch of sequences, each over its own KV cache (continuous
// batching: the rows of one step belong to different sessions).
//
// Row r of the step has its position pos[r] and its session's page table tab[r] (the paged
// cache of attn_common.cuh; `layer`: the layer these kernels read or write). Bit 0 of the
// table's address (an allocation's, so 256-byte aligned) says the session's cache is f32
// (kv_type f32) rather than f16: sessions of both types share a step, each row taking its
// own branch (uniform over a block, whose row is one). Everything a kernel needs comes from
// device memory, so a step can be captured as a graph once per batch size and replayed with
// other sessions and positions.
#include "attn_common.cuh"

struct KvRef {
    const unsigned long long* pages;
    bool f32;
};

__device__ __forceinline__ KvRef kv_ref(const unsigned long long* tab, int r) {
    const unsigned long long t = tab[r];
    return KvRef{reinterpret_cast<const unsigned long long*>(t & ~1ull), (t & 1ull) != 0};
}

// Row r's k and v values of head h (head_dim f32 each) stored at position p of its cache.
template <class KV>
__device__ __forceinline__ void kv_store_row(const unsigned long long* pages, int layer, int n_kv,
                                             int h, int head_dim, int p, const float* kr,
                                             const float* vr, int d0, int step) {
    KV* kd = kv_head<KV>(pages, layer, 0, n_kv, h, head_dim).row(p);
    KV* vd = kv_head<KV>(pages, layer, 1, n_kv, h, head_dim).row(p);
    for (int d = d0; d < head_dim; d += step) {
        kv_put(kd, d, kr[d]);
        kv_put(vd, d, vr[d]);
    }
}

// Store each row's new K and V ([n_rows][n_kv][head_dim] f32) at its position.
// Launch: block = head_dim threads, grid.x = n_rows * n_kv.
extern "C" __global__ void kv_store_batch(const float* __restrict__ k,
                                          const float* __restrict__ v,
                                          const unsigned long long* __restrict__ tab, int layer,
                                          const int* __restrict__ pos, int n_kv, int head_dim) {
    pdl_wait();
    pdl_trigger();
    const int r = blockIdx.x / n_kv, h = blockIdx.x % n_kv;
    const KvRef c = kv_ref(tab, r);
    const long long src = (long long)blockIdx.x * head_dim;
    if (c.f32)
        kv_store_row<float>(c.pages, layer, n_kv, h, head_dim, pos[r], k + src, v + src,
                            threadIdx.x, blockDim.x);
    else
        kv_store_row<__half>(c.pages, layer, n_kv, h, head_dim, pos[r], k + src, v + src,
                             threadIdx.x, blockDim.x);
}

#define AW 4  // warps per block

// Launch: block = 32*AW threads, grid = (n_heads, n_rows). As attention.cu's kernel for one
// query row (attn_query; sinks: n_heads f32 or null), with the row's own cache and position.
extern "C" __global__ void __launch_bounds__(32 * AW)
attention_batch(const float* __restrict__ q, const unsigned long long* __restrict__ tab,
                int layer, const int* __restrict__ pos, float* __restrict__ out, int n_heads,
                int n_kv, int head_dim, float scale, int window, const float* __restrict__ sinks) {
    pdl_wait();
    pdl_trigger();
    const int h = blockIdx.x, t = blockIdx.y;
    const int kvh = h / (n_heads / n_kv);
    const int qpos = pos[t];
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const KvRef c = kv_ref(tab, t);
    const long long row = ((long long)t * n_heads + h) * head_dim;
    const float* sink = sinks ? sinks + h : nullptr;
    if (c.f32)
        attn_query<AW>(q + row, kv_head<float>(c.pages, layer, 0, n_kv, kvh, head_dim),
                       kv_head<float>(c.pages, layer, 1, n_kv, kvh, head_dim), out + row,
                       head_dim, lo, qpos, scale, sink);
    else
        attn_query<AW>(q + row, kv_head<__half>(c.pages, layer, 0, n_kv, kvh, head_dim),
                       kv_head<__half>(c.pages, layer, 1, n_kv, kvh, head_dim), out + row,
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
                                         const unsigned long long* __restrict__ tab, int layer,
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
    const float* vr = v + ((long long)r * n_kv + kh) * head_dim;
    if (c.f32)
        kv_store_row<float>(c.pages, layer, n_kv, kh, head_dim, pos[r], x, vr, i, blockDim.x);
    else
        kv_store_row<__half>(c.pages, layer, n_kv, kh, head_dim, pos[r], x, vr, i, blockDim.x);
}
