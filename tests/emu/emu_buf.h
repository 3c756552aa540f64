// Device-like buffers for the emulator tests (tests/emu/*_emu.cpp).
#pragma once
#include <cstdlib>
#include <cstring>

// Device-like memory: 256-byte aligned, exactly `n` bytes (AddressSanitizer sees past it).
struct Buf {
    uint8_t* p = nullptr;
    size_t n = 0;
    explicit Buf(size_t bytes) : n(bytes) {
        if (posix_memalign(reinterpret_cast<void**>(&p), 256, bytes ? bytes : 1)) abort();
        memset(p, 0xFF, n);  // NaN as f32: an output left unwritten shows
    }
    ~Buf() { free(p); }
    Buf(const Buf&) = delete;
    Buf(Buf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr, o.n = 0; }
    float* f() { return reinterpret_cast<float*>(p); }
};
