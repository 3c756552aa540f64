// Y = X W^T for a batch of activation rows (prompt processing). W: `rows` rows of `k` values
// in GGUF block layout, `row_bytes` apart; X: n_tok x k f32; Y: n_tok x rows f32.
// Launch: block = 128 threads (4 warps), grid = (ceil(rows / 4), ceil(n_tok / 8)). One warp
// per weight row and 8 tokens: each decoded 32-value chunk is used for 8 dot products, so W is
// read n_tok/8 times instead of n_tok times.
#include "common.cuh"

#define TOK 8

template <int T>
__device__ void matmul(const uint8_t* __restrict__ W, const float* __restrict__ X,
                       float* __restrict__ Y, int rows, int k, int n_tok, long long row_bytes) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 4 + warp;
    const int t0 = blockIdx.y * TOK;
    if (row >= rows) return;
    const int nt = min(TOK, n_tok - t0);
    const uint8_t* wr = W + (long long)row * row_bytes;
    float acc[TOK];
#pragma unroll
    for (int t = 0; t < TOK; t++) acc[t] = 0.f;
    float w[32];
    for (int c = lane; c < k / 32; c += 32) {
        Fmt<T>::chunk(wr, c, w);
#pragma unroll
        for (int t = 0; t < TOK; t++)
            if (t < nt) acc[t] += dot32(w, X + (long long)(t0 + t) * k + c * 32);
    }
#pragma unroll
    for (int t = 0; t < TOK; t++) {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt) Y[(long long)(t0 + t) * rows + row] = s;
    }
}

#define MATMUL(name, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) matmul_##name(                          \
        const uint8_t* W, const float* X, float* Y, int rows, int k, int n_tok,               \
        long long row_bytes) {                                                                \
        pdl_wait();                                                                           \
        pdl_trigger();                                                                        \
        matmul<T>(W, X, Y, rows, k, n_tok, row_bytes);                                        \
    }
FOR_EACH_TYPE(MATMUL)
