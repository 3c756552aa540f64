// Rotary position embedding, in place on x: n_tok x n_heads x head_dim f32.
// Pair i (0 <= i < rot_dim/2) rotates by pos[t] * pos_scale * base^(-2i/rot_dim):
//   neox != 0: elements (i, i + rot_dim/2)      (NeoX / Qwen2 / Gemma layout)
//   neox == 0: elements (2i, 2i + 1)             (original LLaMA layout)
// Elements rot_dim..head_dim are left as they are.
// Launch: block = rot_dim/2 threads, grid.x = n_tok * n_heads.
#include "common.cuh"

extern "C" __global__ void rope(float* x, const int* __restrict__ pos, int n_heads, int head_dim,
                                int rot_dim, float base, float pos_scale, int neox) {
    pdl_wait();
    pdl_trigger();
    const int i = threadIdx.x;
    if (i >= rot_dim / 2) return;
    const int t = blockIdx.x / n_heads;
    rope_rotate(x + (long long)blockIdx.x * head_dim, i, pos[t], pos_scale, rot_dim, base, neox);
}

// RoPE with per-pair frequency divisors and an attention factor (Llama 3's rope_freqs,
// LongRoPE, YaRN): pair i turns by pos[t] * pos_scale * base^(-2i/rot_dim) / div.d[i], and
// the rotated pair is multiplied by mscale. The divisors travel by value (no device buffer,
// so a captured graph holds them). Launch as `rope`.
#define ROPE_DIV_MAX 256
struct RopeDiv {
    float d[ROPE_DIV_MAX];
};

extern "C" __global__ void rope_scaled(float* x, const int* __restrict__ pos, int n_heads,
                                       int head_dim, int rot_dim, float base, float pos_scale,
                                       int neox, float mscale, const RopeDiv div) {
    pdl_wait();
    pdl_trigger();
    const int i = threadIdx.x;
    const int half = rot_dim / 2;
    if (i >= half) return;
    const int t = blockIdx.x / n_heads;
    float* v = x + (long long)blockIdx.x * head_dim;
    const float inv_freq = powf(base, -2.0f * (float)i / (float)rot_dim) / div.d[i];
    const float theta = (float)pos[t] * pos_scale * inv_freq;
    float s, c;
    sincosf(theta, &s, &c);
    s *= mscale;
    c *= mscale;
    const int ia = neox ? i : 2 * i;
    const int ib = neox ? i + half : 2 * i + 1;
    const float a = v[ia], b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = a * s + b * c;
}
