// Mixture of experts (GPT-OSS): the router's top-k on the GPU, and the gather / scatter of a
// prompt's token rows around each expert's products (the products themselves are the
// ordinary mat-mul kernels; one token's go through decode.cu's expert_matvec).
#include "common.cuh"

#define MOE_PER_LANE 8  // experts a lane holds: at most 32 * 8 = 256 experts
#define MOE_MAX_K 8     // experts a token may pick

// A float's place in IEEE total order as an int (what Rust's f32::total_cmp compares).
__device__ __forceinline__ int total_order_key(float x) {
    const int b = __float_as_int(x);
    return b ^ ((b >> 31) & 0x7fffffff);
}

// Whether pick (ka, ea) ranks before (kb, eb): the larger key, the lower expert on ties; an
// expert < 0 is no pick.
__device__ __forceinline__ bool ranks_first(int ka, int ea, int kb, int eb) {
    return eb < 0 || (ea >= 0 && (ka > kb || (ka == kb && ea < eb)));
}

// Per token t (a warp each): logits[t] += bias (written back: the biased logits are the
// router's output), then its k largest (NaN as -inf, ties to the lower expert: the CPU's
// stable sort under total order), largest first, into ids[t * k + j], and the softmax of the
// picked logits into weights[t * k + j] (relative to the first pick, summed in pick order as
// the CPU does).
// Launch: block = 128 (4 tokens), grid = ceil(n_tok / 4). n_exp <= 256, k <= min(8, n_exp).
extern "C" __global__ void __launch_bounds__(128)
moe_route(float* logits, const float* __restrict__ bias, int n_tok, int n_exp, int k,
          int* __restrict__ ids, float* __restrict__ weights) {
    pdl_wait();
    pdl_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * 4 + warp;
    if (t >= n_tok) return;
    float* row = logits + (long long)t * n_exp;
    float val[MOE_PER_LANE];
    int key[MOE_PER_LANE];
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; i++) {
        const int e = lane + 32 * i;
        val[i] = 0.f;
        key[i] = 0;
        if (e < n_exp) {
            float v = row[e];
            if (bias) {
                v += bias[e];
                row[e] = v;
            }
            val[i] = v;
            key[i] = total_order_key(v != v ? -INFINITY : v);
        }
    }
    unsigned taken = 0;
    float pv[MOE_MAX_K];
    int pe[MOE_MAX_K];
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        // This lane's best untaken expert, then the warp's.
        int bk = 0, be = -1;
        float bv = 0.f;
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++) {
            const int e = lane + 32 * i;
            if (e < n_exp && !((taken >> i) & 1) && ranks_first(key[i], e, bk, be)) {
                bk = key[i];
                be = e;
                bv = val[i];
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const int ok = __shfl_xor_sync(0xffffffffu, bk, o);
            const int oe = __shfl_xor_sync(0xffffffffu, be, o);
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            if (ranks_first(ok, oe, bk, be)) {
                bk = ok;
                be = oe;
                bv = ov;
            }
        }
        if (be >= 0 && (be & 31) == lane) taken |= 1u << (be >> 5);
        pv[j < MOE_MAX_K ? j : 0] = bv;
        pe[j < MOE_MAX_K ? j : 0] = be;
    }
    if (lane != 0) return;
    const float mx = pv[0];
    float e[MOE_MAX_K], sum = 0.f;
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        e[j] = expf(pv[j] - mx);
        sum += e[j];
    }
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        ids[(long long)t * k + j] = pe[j];
        weights[(long long)t * k + j] = e[j] / sum;
    }
}

// xg[j] = x[picks[j] / k] for j < count: the token rows (`width` f32) of an expert's picks
// (`picks`: indices t * k + slot), gathered for its products.
// Launch: block = 256, grid = count.
extern "C" __global__ void moe_gather(const float* __restrict__ x, const int* __restrict__ picks,
                                      float* __restrict__ xg, int k, int width) {
    pdl_wait();
    pdl_trigger();
    const int j = blockIdx.x;
    const float* src = x + (long long)(picks[j] / k) * width;
    float* dst = xg + (long long)j * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

// out[picks[j] / k] += weights[picks[j]] * y[j] for j < count: an expert's outputs (`width`
// f32 rows, in the order of its picks) weighed into their tokens' rows. One expert's picks
// name distinct tokens, so no two blocks of a launch write the same row.
// Launch: block = 256, grid = count.
extern "C" __global__ void moe_scatter(const float* __restrict__ y, const int* __restrict__ picks,
                                       const float* __restrict__ weights, float* out, int k,
                                       int width) {
    pdl_wait();
    pdl_trigger();
    const int j = blockIdx.x, i = picks[j];
    const float w = weights[i];
    const float* src = y + (long long)j * width;
    float* dst = out + (long long)(i / k) * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] += w * src[c];
}
