// Pieces shared by the attention kernels over the f16 KV cache (attention.cu, decode.cu):
// one warp's online-softmax scan over cached keys, and the merge factors of a block's warps.
#pragma once
#include "common.cuh"

#define MAXD 8  // head_dim <= 32 * MAXD = 256; lane holds dims lane + 32 i

// Keys j = j0, j0 + step, ... < j1 of one KV head (kb, vb: rows of head_dim f16): the
// running max m, sum l and accumulator acc of an online softmax of qr·k (qr pre-scaled).
// N: registers a lane holds (MAXD, or head_dim / 32 exactly in a kernel for one head size).
template <int N>
__device__ __forceinline__ void attn_scan(const float (&qr)[N], const __half* kb,
                                          const __half* vb, int head_dim, int nd, int j0,
                                          int j1, int step, int lane, float& m, float& l,
                                          float (&acc)[N]) {
    for (int j = j0; j < j1; j += step) {
        const __half* kr = kb + (long long)j * head_dim;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++)
            if (i < nd) s += qr[i] * __half2float(kr[lane + 32 * i]);
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);  // m = -inf at the first key: corr = 0
        const float p = expf(s - mn);
        l = l * corr + p;
        const __half* vr = vb + (long long)j * head_dim;
#pragma unroll
        for (int i = 0; i < N; i++)
            if (i < nd) acc[i] = acc[i] * corr + p * __half2float(vr[lane + 32 * i]);
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
