// Deterministic random test data (splitmix64) for the emulator tests (tests/emu) and
// bench/gemm_tune.cu: one generator, each program with its own seed.
#pragma once
#include <stdint.h>

struct SplitMix64 {
    uint64_t s;
    uint64_t next() {
        s += 0x9E3779B97F4A7C15ull;
        uint64_t z = s;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    // Uniform in [-1, 1), 24 bits.
    float unit() { return ((next() >> 40) / (float)(1 << 24)) * 2 - 1; }
};
