// The arguments of a fused product (kernels/decode.cu's fused mat-vecs, kernels/mmq.cu's
// tensor-core products): up to three weight matrices sharing one input, and the epilogue
// (src/backend/cuda/fused.rs builds them: `MvArgs`, 152 bytes).
#pragma once
#include <stdint.h>

// One weight matrix of a fused mat-vec and where its rows go.
struct Seg {
    const uint8_t* w;   // rows of GGUF blocks, row_bytes apart (buffer padded by >= 16 bytes)
    const float* bias;  // rows f32, or null
    float* out;         // rows f32
    long long row_bytes;
    int type;           // T_* of common.cuh
    int rows;
};

#define MODE_PLAIN 0  // seg[i].out[r] = W_i x + bias_i
#define MODE_GLU 1    // g = W_0 x, u = W_1 x (same rows): out0 = g, out1 = u, act = silu(g) * u
#define MODE_ADD 2    // y = W_0 x: out0 = y, acc += y

struct MvArgs {
    float* acc;         // MODE_ADD
    float* act;         // MODE_GLU
    int k;
    int mode;
    int n_seg;
    int x_stride;       // bytes from one input to the next (the kernels of several inputs)
    Seg seg[3];
};
