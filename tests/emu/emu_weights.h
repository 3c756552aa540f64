// Random weight matrices in GGUF block layout for the emulator tests of the prompt products
// (mma_emu.cpp, gemm_emu.cpp): random bytes, then values or block scales small enough that
// every format decodes to finite, moderate values. Include after emu_runtime.h and the kernels.
#pragma once
#include <cmath>
#include <cstring>
#include <vector>

#include "splitmix.h"

static void put16(uint8_t* p, float v) {
    __half h = __float2half_rn(v);
    memcpy(p, &h.bits, 2);
}

// `values` weights of type `id` (T_* of common.cuh), `bytes` a block, in W (already sized).
static void random_weights(std::vector<uint8_t>& W, int id, int bytes, long long values,
                           SplitMix64& rng) {
    for (auto& b : W) b = (uint8_t)rng.next();
    if (id == T_F32) {
        for (long long i = 0; i < values; i++) {
            float v = rng.unit();
            memcpy(&W[4 * i], &v, 4);
        }
        return;
    }
    if (id == T_F16) {
        for (long long i = 0; i < values; i++) put16(&W[2 * i], rng.unit());
        return;
    }
    for (size_t o = 0; o < W.size(); o += bytes) {
        const float d = 0.01f + 0.05f * fabsf(rng.unit());
        switch (id) {
        case T_Q8_0: case T_Q5_0: put16(&W[o], rng.unit() < 0 ? -d : d); break;
        case T_Q4_1: put16(&W[o], d); put16(&W[o + 2], 0.1f * rng.unit()); break;
        case T_Q4_K: put16(&W[o], d * 0.05f); put16(&W[o + 2], d * 0.05f); break;
        case T_Q6_K: put16(&W[o + 208], d * 0.05f); break;
        case T_MXFP4: W[o] = (uint8_t)(118 + rng.next() % 8); break;  // scales 2^-9 .. 2^-2
        }
    }
}
