// Elementwise f32 kernels. Launch: block = 256 threads, grid.x = ceil(n / 256) (grid-stride).
#include "common.cuh"

// out = silu(g) * u, silu(g) = g / (1 + e^-g).
extern "C" __global__ void swiglu(const float* g, const float* u, float* out, long long n) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = g[i];
        out[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

// out = gelu_tanh(g) * u (Gemma's GeGLU): 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))).
extern "C" __global__ void geglu(const float* g, const float* u, float* out, long long n) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = g[i];
        const float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(inner)) * u[i];
    }
}

// GPT-OSS's expert activation: g = min(gate, limit), u = clamp(up, -limit, limit),
// out = g * sigmoid(alpha * g) * (u + 1).
extern "C" __global__ void clamped_swiglu(const float* g, const float* u, float* out, long long n,
                                          float alpha, float limit) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = fminf(g[i], limit);
        const float y = fminf(fmaxf(u[i], -limit), limit);
        out[i] = x / (1.0f + expf(-alpha * x)) * (y + 1.0f);
    }
}

// y[t][j] += b[j] for n_tok rows of n values (n_total = n_tok * n).
extern "C" __global__ void add_bias(float* y, const float* b, int n, long long n_total) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n_total;
         i += (long long)gridDim.x * blockDim.x)
        y[i] += b[i % n];
}

// y += x (residual).
extern "C" __global__ void add(float* y, const float* x, long long n) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] += x[i];
}

// y *= s.
extern "C" __global__ void scale(float* y, float s, long long n) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] *= s;
}

// y = cap * tanh(y / cap) (logit soft-capping).
extern "C" __global__ void softcap(float* y, float cap, long long n) {
    pdl_wait();
    pdl_trigger();
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = cap * tanhf(y[i] / cap);
}
