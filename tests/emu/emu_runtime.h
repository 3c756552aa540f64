// A CPU stand-in for running CUDA kernels (tests/emu/*_emu.cpp): every thread of a block runs
// as a fiber (ucontext); __syncthreads and the warp-wide operations (ldmatrix, mma.sync,
// shuffles) are rendezvous points where the scheduler waits for all participants, then
// carries out the operation by the PTX ISA's definitions (fragment layouts). cp.async copies
// land either when issued or at the latest wait that needs them. Blocks run one after
// another; divergent barriers and exited threads at a barrier are reported as errors.
#pragma once
#define MMA_EMULATE 1
#include <ucontext.h>
#include <unistd.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define FINISH_SWITCH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define START_SWITCH(save, bottom, size) (void)0
#define FINISH_SWITCH(save, bottom, size) (void)0
#endif

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "cuda_fp16.h"

dim3u threadIdx, blockIdx, blockDim, gridDim;
extern uint8_t* emu_dyn_smem;
extern uint32_t emu_dyn_smem_size;
inline uint32_t dyn_smem_bytes() { return emu_dyn_smem_size; }
void cp16(void* dst, const void* src, uint32_t bytes);
void cp4(void* dst, const void* src, uint32_t bytes);
void cp_commit();
template <int N> void cp_wait();

namespace emu {
enum State { RUN, AT_BAR, AT_WARP, DONE };
// A cp.async: `bytes` from src, zeros up to `size`.
struct Copy {
    void* dst;
    const void* src;
    uint32_t size, bytes;
};
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    State st = RUN;
    void* fake_stack = nullptr;
    std::vector<std::vector<Copy>> groups;  // committed, oldest first
    std::vector<Copy> open;                 // not yet committed
};
// Eager: copies land when issued (finds a copy that overwrites a slot still to be read).
// Lazy: they land at the latest, in the wait that requires them (finds reads before a wait).
static bool eager = false;
static void land(const Copy& c) {
    memcpy(c.dst, c.src, c.bytes);
    memset((char*)c.dst + c.bytes, 0, c.size - c.bytes);
}
enum Kind { LDSM, MMA, IMMA, SHFL_XOR, SHFL_IDX, SYNCWARP };
struct Warp {
    Kind kind[32];
    const __half* p[32];
    uint32_t a[32][4], b[32][2], ru[32][4];
    float c[32][4];
    int ci[32][4];  // the integer products' accumulators
    float fv[32], fr[32];
    int arg[32];
};
static std::vector<Fiber> fibers;
static std::vector<Warp> warps;
static ucontext_t sched;
static int cur;
static std::function<void()> body;
static const void* sched_stack_bottom;
static size_t sched_stack_size;

static void fail(const std::string& m) {
    fprintf(stderr, "EMU ERROR: %s\n", m.c_str());
    fflush(nullptr);
    _exit(2);  // no destructors: this may run on a fiber's stack
}

static void to_sched(State s) {
    Fiber& f = fibers[cur];
    f.st = s;
    START_SWITCH(&f.fake_stack, sched_stack_bottom, sched_stack_size);
    swapcontext(&f.ctx, &sched);
    FINISH_SWITCH(f.fake_stack, nullptr, nullptr);
}

static void entry() {
    FINISH_SWITCH(nullptr, &sched_stack_bottom, &sched_stack_size);
    body();
    to_sched(DONE);
}

static float h2f(uint32_t bits) { return __half2float(__ushort_as_half((unsigned short)(bits & 0xffff))); }

// A[16][16], B[16 k][8 n], C[16][8] from the fragments (PTX ISA, mma.m16n8k16 f16/f32).
static void do_mma(Warp& w) {
    double A[16][16], B[16][8], C[16][8];
    for (int L = 0; L < 32; L++) {
        const int g = L >> 2, t = L & 3;
        const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; i++) {
            A[ar[i]][ac[i]] = h2f(w.a[L][i]);
            A[ar[i]][ac[i] + 1] = h2f(w.a[L][i] >> 16);
        }
        for (int i = 0; i < 2; i++) {
            B[2 * t + 8 * i][g] = h2f(w.b[L][i]);
            B[2 * t + 8 * i + 1][g] = h2f(w.b[L][i] >> 16);
        }
        C[g][2 * t] = w.c[L][0];
        C[g][2 * t + 1] = w.c[L][1];
        C[g + 8][2 * t] = w.c[L][2];
        C[g + 8][2 * t + 1] = w.c[L][3];
    }
    for (int L = 0; L < 32; L++) {
        const int g = L >> 2, t = L & 3;
        const int rr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int i = 0; i < 4; i++) {
            double s = C[rr[i]][cc[i]];
            for (int k = 0; k < 16; k++) s += A[rr[i]][k] * B[k][cc[i]];
            w.c[L][i] = (float)s;
        }
    }
}

// The s8 product (PTX ISA, mma.m16n8k32 with .s8 operands, .s32 accumulators), g = lane/4,
// t = lane%4, byte j of a register the element after byte j-1: A 16x32: a0..a3 row g, k 4t+j;
// a4..a7 row g+8; a8..a11 row g, k 16+4t+j; a12..a15 row g+8. B 32x8: b0..b3 k 4t+j, column
// g; b4..b7 k 16+4t+j. C 16x8: c0, c1 row g, columns 2t, 2t+1; c2, c3 row g+8.
// Sums in 64-bit, then checked to fit s32 (the kernels' ranges never overflow).
static void do_imma(Warp& w) {
    const int K = 32;
    int A[16][32], B[32][8];
    long long C[16][8];
    auto byte = [](uint32_t r, int j) { return (int)(int8_t)(r >> (8 * j)); };
    for (int L = 0; L < 32; L++) {
        const int g = L >> 2, t = L & 3;
        for (int j = 0; j < 4; j++) {
            A[g][4 * t + j] = byte(w.a[L][0], j);
            A[g + 8][4 * t + j] = byte(w.a[L][1], j);
            B[4 * t + j][g] = byte(w.b[L][0], j);
            A[g][16 + 4 * t + j] = byte(w.a[L][2], j);
            A[g + 8][16 + 4 * t + j] = byte(w.a[L][3], j);
            B[16 + 4 * t + j][g] = byte(w.b[L][1], j);
        }
        C[g][2 * t] = w.ci[L][0];
        C[g][2 * t + 1] = w.ci[L][1];
        C[g + 8][2 * t] = w.ci[L][2];
        C[g + 8][2 * t + 1] = w.ci[L][3];
    }
    for (int L = 0; L < 32; L++) {
        const int g = L >> 2, t = L & 3;
        const int rr[4] = {g, g, g + 8, g + 8}, cc[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
        for (int i = 0; i < 4; i++) {
            long long s = C[rr[i]][cc[i]];
            for (int k = 0; k < K; k++) s += (long long)A[rr[i]][k] * B[k][cc[i]];
            if (s != (long long)(int)s) fail("integer mma sum overflows s32");
            w.ci[L][i] = (int)s;
        }
    }
}

static void do_ldsm(Warp& w) {
    for (int L = 0; L < 32; L++)
        if (reinterpret_cast<uintptr_t>(w.p[L]) % 16) fail("ldmatrix row address not 16-byte aligned");
    for (int L = 0; L < 32; L++)
        for (int i = 0; i < 4; i++) {
            const __half* row = w.p[8 * i + L / 4];
            uint32_t v;
            memcpy(&v, row + 2 * (L % 4), 4);
            w.ru[L][i] = v;
        }
}

// Run one block of `nth` threads.
static void run_block(int nth, const std::function<void()>& fn) {
    body = fn;
    fibers.assign(nth, Fiber{});
    warps.assign((nth + 31) / 32, Warp{});
    if (nth % 32) fail("block size not a multiple of 32");
    for (int i = 0; i < nth; i++) {
        Fiber& f = fibers[i];
        f.stack.resize(512 << 10);
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, entry, 0);
    }
    for (;;) {
        bool ran = false;
        for (int i = 0; i < nth; i++) {
            if (fibers[i].st != RUN) continue;
            cur = i;
            threadIdx = {(unsigned)i, 0, 0};
            void* fake = nullptr;
            START_SWITCH(&fake, fibers[i].stack.data(), fibers[i].stack.size());
            swapcontext(&sched, &fibers[i].ctx);
            FINISH_SWITCH(fake, nullptr, nullptr);
            ran = true;
        }
        int done = 0, bar = 0;
        for (auto& f : fibers) done += f.st == DONE, bar += f.st == AT_BAR;
        if (done == nth) break;
        bool released = false;
        for (int wi = 0; wi < (int)warps.size(); wi++) {
            int at = 0;
            for (int L = 0; L < 32; L++) at += fibers[32 * wi + L].st == AT_WARP;
            if (at == 0) continue;
            if (at != 32) continue;
            Warp& w = warps[wi];
            for (int L = 1; L < 32; L++)
                if (w.kind[L] != w.kind[0]) fail("lanes of a warp in different warp-wide operations");
            if (w.kind[0] == MMA) do_mma(w);
            else if (w.kind[0] == IMMA) do_imma(w);
            else if (w.kind[0] == LDSM) do_ldsm(w);
            else if (w.kind[0] == SYNCWARP) {}
            else
                for (int L = 0; L < 32; L++)
                    w.fr[L] = w.fv[w.kind[0] == SHFL_XOR ? (L ^ w.arg[L]) & 31 : w.arg[L] & 31];
            for (int L = 0; L < 32; L++) fibers[32 * wi + L].st = RUN;
            released = true;
        }
        if (!released && bar > 0 && bar + done == nth) {
            if (done) fail("__syncthreads with exited threads");
            for (auto& f : fibers) f.st = RUN;
            released = true;
        }
        if (!released && !ran) fail("deadlock: threads wait at different barriers (divergence)");
    }
}
}  // namespace emu

void __syncthreads() { emu::to_sched(emu::AT_BAR); }
// All 32 lanes of the warp meet (a warp-wide operation without data).
void __syncwarp() {
    emu::warps[emu::cur >> 5].kind[emu::cur & 31] = emu::SYNCWARP;
    emu::to_sched(emu::AT_WARP);
}

uint8_t* emu_dyn_smem;
uint32_t emu_dyn_smem_size;

static void cp_any(void* dst, const void* src, uint32_t size, uint32_t bytes) {
    if (bytes > size) emu::fail("cp.async src-size > cp-size");
#ifdef __SANITIZE_ADDRESS__
    // compute-sanitizer counts the whole cp-size as read, even with a smaller src-size.
    if (bytes && __asan_region_is_poisoned(const_cast<void*>(src), size))
        emu::fail("cp.async source word runs past its buffer");
#endif
    if (reinterpret_cast<uintptr_t>(dst) % size || (bytes && reinterpret_cast<uintptr_t>(src) % size))
        emu::fail("cp.async address not aligned to its size");
    emu::Copy c{dst, src, size, bytes};
    if (emu::eager) emu::land(c); else emu::fibers[emu::cur].open.push_back(c);
}
void cp16(void* dst, const void* src, uint32_t bytes) { cp_any(dst, src, 16, bytes); }
void cp4(void* dst, const void* src, uint32_t bytes) { cp_any(dst, src, 4, bytes); }
void cp_commit() {
    auto& f = emu::fibers[emu::cur];
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}
template <int N> void cp_wait() {
    auto& g = emu::fibers[emu::cur].groups;
    while ((int)g.size() > N) {
        for (auto& c : g.front()) emu::land(c);
        g.erase(g.begin());
    }
}

void ldsm_x4(const __half* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    const int L = emu::cur & 31;
    emu::Warp& w = emu::warps[emu::cur >> 5];
    w.kind[L] = emu::LDSM;
    w.p[L] = p;
    emu::to_sched(emu::AT_WARP);
    r0 = w.ru[L][0], r1 = w.ru[L][1], r2 = w.ru[L][2], r3 = w.ru[L][3];
}

void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    const int L = emu::cur & 31;
    emu::Warp& w = emu::warps[emu::cur >> 5];
    w.kind[L] = emu::MMA;
    memcpy(w.a[L], a, 16);
    memcpy(w.b[L], b, 8);
    memcpy(w.c[L], c, 16);
    emu::to_sched(emu::AT_WARP);
    memcpy(c, w.c[L], 16);
}

void imma16832(int c[4], const uint32_t a[4], const uint32_t b[2]) {
    const int L = emu::cur & 31;
    emu::Warp& w = emu::warps[emu::cur >> 5];
    w.kind[L] = emu::IMMA;
    memcpy(w.a[L], a, 16);
    memcpy(w.b[L], b, 8);
    memcpy(w.ci[L], c, 16);
    emu::to_sched(emu::AT_WARP);
    memcpy(c, w.ci[L], 16);
}

static float shfl(emu::Kind kind, unsigned mask, float v, int arg) {
    if (mask != 0xffffffffu) emu::fail("shuffle with a partial mask");
    const int L = emu::cur & 31;
    emu::Warp& w = emu::warps[emu::cur >> 5];
    w.kind[L] = kind;
    w.fv[L] = v;
    w.arg[L] = arg;
    emu::to_sched(emu::AT_WARP);
    return w.fr[L];
}
float __shfl_xor_sync(unsigned mask, float v, int o) { return shfl(emu::SHFL_XOR, mask, v, o); }
float __shfl_sync(unsigned mask, float v, int lane) { return shfl(emu::SHFL_IDX, mask, v, lane); }
// A 64-bit value as two 32-bit halves through the float shuffle (bits moved, not converted).
unsigned long long __shfl_sync(unsigned mask, unsigned long long v, int lane) {
    uint32_t h[2];
    memcpy(h, &v, 8);
    for (uint32_t& x : h) {
        float f;
        memcpy(&f, &x, 4);
        f = shfl(emu::SHFL_IDX, mask, f, lane);
        memcpy(&x, &f, 4);
    }
    memcpy(&v, h, 8);
    return v;
}
