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
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) total += partial[i];
    const float inv = 1.0f / sqrtf(total / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}
