// y = W x for one activation vector (decode). W: `rows` rows of `k` values in GGUF block
// layout, `row_bytes` apart; x, y: f32.
// Launch: block = 128 threads (4 warps), grid.x = ceil(rows / 4); one warp per row, each lane
// takes 32-value chunks lane, lane+32, ... and the warp sums its partials.
// x stays f32 (not pre-quantized to 8 bits): the kernel is bound by reading W, x is small and
// cache-resident, and f32 activations add no quantization error on top of the weights'.
#include "common.cuh"

template <int T>
__device__ void matvec(const uint8_t* __restrict__ W, const float* __restrict__ x,
                       float* __restrict__ y, int rows, int k, long long row_bytes) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * 4 + warp;
    if (row >= rows) return;
    const uint8_t* wr = W + (long long)row * row_bytes;
    float acc = 0.f;
    float w[32];
    for (int c = lane; c < k / 32; c += 32) {
        Fmt<T>::chunk(wr, c, w);
        acc += dot32(w, x + c * 32);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

#define MATVEC(name, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) matvec_##name(                          \
        const uint8_t* W, const float* x, float* y, int rows, int k, long long row_bytes) {   \
        pdl_wait();                                                                           \
        pdl_trigger();                                                                        \
        matvec<T>(W, x, y, rows, k, row_bytes);                                               \
    }
FOR_EACH_TYPE(MATVEC)
