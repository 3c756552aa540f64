// out[t] = dequantize(table row tokens[t]), f32, k values per row.
// Launch: block = 128 threads, grid.x = n_tok; thread i decodes chunks i, i+128, ...
// Token ids are checked against the table on the host before launch.
#include "common.cuh"

template <int T>
__device__ void embed(const uint8_t* __restrict__ table, const int* __restrict__ tokens,
                      float* __restrict__ out, int k, long long row_bytes) {
    const int t = blockIdx.x;
    const uint8_t* row = table + (long long)tokens[t] * row_bytes;
    float* o = out + (long long)t * k;
    float w[32];
    for (int c = threadIdx.x; c < k / 32; c += blockDim.x) {
        Fmt<T>::chunk(row, c, w);
        float4* o4 = reinterpret_cast<float4*>(o + c * 32);
#pragma unroll
        for (int i = 0; i < 8; i++)
            o4[i] = make_float4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
    }
}

#define EMBED(name, T)                                                                        \
    extern "C" __global__ void __launch_bounds__(128) embed_##name(                           \
        const uint8_t* table, const int* tokens, float* out, int k, long long row_bytes) {    \
        pdl_wait();                                                                           \
        pdl_trigger();                                                                        \
        embed<T>(table, tokens, out, k, row_bytes);                                           \
    }
FOR_EACH_TYPE(EMBED)
