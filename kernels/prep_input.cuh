// The input of a batched or single product, prepared once per product (kernels/decode.cu's
// prep_input, kernels/mmq.cu's mmq_prep): optionally RMS-normalized, then quantized to 16 bits
// per 32-value chunk in two int8 passes (x ≈ d·q1 + d/254·q2, |error| <= d/508, d =
// max|x|/127) with the chunk's exact f32 sum; the kernels differ only in where the records go.
#pragma once
#include "common.cuh"

// Bytes of decode.cu's chunk record: q1[32], q2[32] (int8), d (f32), exact sum of the
// chunk's x (f32), 8 bytes of padding (an 80-byte stride keeps 8 neighbouring lanes' 16-byte
// reads on distinct banks).
#define XREC 80

// One warp, lane i holding value i of a chunk: its two int8 planes, scale and sum.
__device__ __forceinline__ void chunk_quant(float v, int& q1, int& q2, float& d, float& sum) {
    float m = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    d = m / 127.0f;
    const float id = m > 0.f ? 127.0f / m : 0.f;
    q1 = __float2int_rn(v * id);
    q2 = max(-127, min(127, __float2int_rn((v - d * (float)q1) * id * 254.0f)));
    sum = warp_sum(v);
}

// One warp: the record of a 32-value chunk (lane i holds value i).
__device__ __forceinline__ void write_record(float v, uint8_t* r, int lane) {
    int q1, q2;
    float d, sum;
    chunk_quant(v, q1, q2, d, sum);
    r[lane] = (uint8_t)(int8_t)q1;
    r[32 + lane] = (uint8_t)(int8_t)q2;
    if (lane == 0) {
        reinterpret_cast<float*>(r + 64)[0] = d;
        reinterpret_cast<float*>(r + 64)[1] = sum;
    }
}

// Input blockIdx.y of x (k values a row), normalized with `norm` (eps) if given (the
// normalized values also to `normed`), handed chunk by chunk to `write(v, chunk, lane)`: a
// warp per 32-value chunk, NW warps a block (each block computes the norm's sum of squares
// itself). Launch: block 32 NW, grid (ceil(k / 32 / NW), inputs).
template <int NW, class Write>
__device__ __forceinline__ void prep_body(const float* __restrict__ x, const float* __restrict__ norm,
                                          float eps, float* __restrict__ normed, int k, Write write) {
    __shared__ float red[NW];
    {
        const long long y = blockIdx.y;
        x += y * k;
        if (normed) normed += y * k;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int c = blockIdx.x * NW + warp;
    const int i = c * 32 + lane;
    // The norm weight does not depend on the kernel before: fetched while it finishes.
    const float g = norm && c < k / 32 ? norm[i] : 0.f;
    pdl_wait();
    pdl_trigger();
    float inv = 1.f;
    if (norm) {
        float ss = 0.f;
        const float4* x4 = reinterpret_cast<const float4*>(x);
#pragma unroll 4
        for (int i = threadIdx.x; i < k / 4; i += blockDim.x) {
            const float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        ss = warp_sum(ss);
        if (lane == 0) red[warp] = ss;
        __syncthreads();
        float total = 0.f;
#pragma unroll
        for (int i = 0; i < NW; i++) total += red[i];
        inv = 1.0f / sqrtf(total / (float)k + eps);
    }
    if (c >= k / 32) return;
    float v = x[i];
    if (norm) {
        v = v * inv * g;  // the `rmsnorm` kernel's order: fused and plain paths agree
        if (normed) normed[i] = v;
    }
    write(v, c, lane);
}
