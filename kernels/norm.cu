// RMSNorm: y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for n_rows rows of n f32 values.
// Launch: block = 256 threads, grid.x = n_rows. y may equal x (in place).
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
rmsnorm(const float* x, const float* __restrict__ w, float* y, int n, float eps) {
    pdl_wait();
    pdl_trigger();
    __shared__ float partial[8];
    const float* xr = x + (long long)blockIdx.x * n;
    float* yr = y + (long long)blockIdx.x * n;
    // Loads in batches of 4 a thread: one memory latency per batch, not per value (a single
    // row of 2880, the decode step's: 11.5 us a launch before, H100 ncu).
    float ss = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) total += partial[i];
    const float inv = 1.0f / sqrtf(total / (float)n + eps);
    // (y may be x: each batch's loads before its stores, which touch only its own values.)
    const int step = blockDim.x;
    int i = threadIdx.x;
    for (; i + 3 * step < n; i += 4 * step) {
        float v[4], g[4];
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = xr[i + j * step], g[j] = w[i + j * step];
#pragma unroll
        for (int j = 0; j < 4; j++) yr[i + j * step] = v[j] * inv * g[j];
    }
    for (; i < n; i += step) yr[i] = xr[i] * inv * w[i];
}
