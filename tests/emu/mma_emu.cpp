// CPU emulation of kernels/mma_matmul.cu: every thread of a block runs as a fiber (ucontext);
// __syncthreads and the warp-wide ldmatrix / mma.sync are rendezvous points where the
// scheduler waits for all participants, then carries out the operation by the PTX ISA's
// fragment layouts. Blocks run one after another. It checks the kernel's tiling, swizzle,
// decoding and bounds without a GPU (build and run: scripts/mma-emu.sh, with
// AddressSanitizer for out-of-bounds reads and writes of the buffers and shared tiles).
// Reference: the existing decoders (Fmt<T>::chunk of common.cuh), values rounded to f16,
// products summed in double. The emulated mma sums in double too, so the only differences
// are rare 1-ulp f16 flips of a weight (fma vs separate rounding in the f32 decode).
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

dim3u threadIdx, blockIdx;
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
enum Kind { LDSM, MMA };
struct Warp {
    Kind kind[32];
    const __half* p[32];
    uint32_t a[32][4], b[32][2], ru[32][4];
    float c[32][4];
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
            if (w.kind[0] == MMA) do_mma(w); else do_ldsm(w);
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

#include "../../kernels/mma_matmul.cu"

// ---------- the test driver ----------

typedef void (*Kern)(const uint8_t*, const float*, float*, int, int, int, long long);
// Tiles and shared memory as the launcher gives them (MMA_TILES and MmaTile::smem_bytes in
// src/backend/cuda/launch.rs, the same formula); a second pass gives each k-group just 2
// stages' worth (the fewest the kernel takes).
struct Tile {
    int bm, bn, warps, kg, per_sm;
};
static const int NTILES = 6;
static const Tile TILES[NTILES] = {{128, 128, 8, 1, 2}, {128, 64, 8, 1, 2}, {64, 64, 4, 1, 4},
                                   {32, 64, 4, 1, 6},   {64, 64, 4, 2, 2},  {32, 64, 4, 4, 2}};
static int smem_for(const Tile& t, int words, bool fewest) {
    const int nth = t.warps * 32, xv = t.bm * 8 / nth, wu = (2 * t.bn + nth - 1) / nth;
    const int tiles = (t.bm + t.bn) * 128, stage = nth * 16 * xv + nth * 4 * words * wu;
    const int fit = ((228 << 10) / t.per_sm - 1024) / t.kg / 128 * 128;
    int share = fewest ? tiles + 2 * stage : std::max(std::min(tiles + 8 * stage, fit), tiles + 2 * stage);
    share = (share + 127) / 128 * 128;
    return share * t.kg;
}

#define K4(name)                                                                              \
    {mma_##name##_128x128k1, mma_##name##_128x64k1, mma_##name##_64x64k1, mma_##name##_32x64k1, \
     mma_##name##_64x64k2, mma_##name##_32x64k4}
struct TypeInfo {
    const char* name;
    int id, block, bytes;
    Kern k[NTILES];
    void (*chunk)(const uint8_t*, int, float*);
    int words;
};
static const TypeInfo TYPES[] = {
    {"f32", T_F32, 32, 128, K4(f32), Fmt<T_F32>::chunk, Unit<T_F32>::N * Unit<T_F32>::VEC},
    {"f16", T_F16, 32, 64, K4(f16), Fmt<T_F16>::chunk, Unit<T_F16>::N * Unit<T_F16>::VEC},
    {"q4_1", T_Q4_1, 32, 20, K4(q4_1), Fmt<T_Q4_1>::chunk, Unit<T_Q4_1>::N * Unit<T_Q4_1>::VEC},
    {"q5_0", T_Q5_0, 32, 22, K4(q5_0), Fmt<T_Q5_0>::chunk, Unit<T_Q5_0>::N * Unit<T_Q5_0>::VEC},
    {"q8_0", T_Q8_0, 32, 34, K4(q8_0), Fmt<T_Q8_0>::chunk, Unit<T_Q8_0>::N * Unit<T_Q8_0>::VEC},
    {"q4_k", T_Q4_K, 256, 144, K4(q4_k), Fmt<T_Q4_K>::chunk, Unit<T_Q4_K>::N * Unit<T_Q4_K>::VEC},
    {"q6_k", T_Q6_K, 256, 210, K4(q6_k), Fmt<T_Q6_K>::chunk, Unit<T_Q6_K>::N * Unit<T_Q6_K>::VEC},
};

static uint64_t rs = 0x1234567;
static uint64_t rnd() {
    rs += 0x9E3779B97F4A7C15ull;
    uint64_t z = rs;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rf() { return ((rnd() >> 40) / (float)(1 << 24)) * 2 - 1; }
static void put16(uint8_t* p, float v) {
    __half h = __float2half_rn(v);
    memcpy(p, &h.bits, 2);
}

int main(int argc, char** argv) {
    const char* only = argc > 1 && strcmp(argv[1], "all") ? argv[1] : nullptr;
    emu::eager = argc > 2 && !strcmp(argv[2], "eager");
    printf("cp.async copies land %s\n", emu::eager ? "when issued" : "at the wait");
    int bad = 0, runs = 0;
    for (const TypeInfo& ty : TYPES) {
        if (only && strcmp(only, ty.name)) continue;
        const bool kq = ty.block == 256;
        const int shapes[3][3] = {{70, kq ? 256 : 96, 17}, {133, kq ? 512 : 352, 2}, {200, kq ? 256 : 64, 150}};
        for (auto& sh : shapes) {
            const int rows = sh[0], k = sh[1], n = sh[2];
            const long long rb = (long long)k / ty.block * ty.bytes;
            // Exactly sized buffers (AddressSanitizer sees any byte past them).
            std::vector<uint8_t> W(rows * rb);
            for (auto& b : W) b = (uint8_t)rnd();
            if (ty.id == T_F32)
                for (long long i = 0; i < rows * k; i++) { float v = rf(); memcpy(&W[4 * i], &v, 4); }
            else if (ty.id == T_F16)
                for (long long i = 0; i < rows * k; i++) put16(&W[2 * i], rf());
            else
                for (size_t o = 0; o < W.size(); o += ty.bytes) {
                    const float d = 0.01f + 0.05f * fabsf(rf());
                    switch (ty.id) {
                    case T_Q8_0: case T_Q5_0: put16(&W[o], rf() < 0 ? -d : d); break;
                    case T_Q4_1: put16(&W[o], d); put16(&W[o + 2], 0.1f * rf()); break;
                    case T_Q4_K: put16(&W[o], d * 0.05f); put16(&W[o + 2], d * 0.05f); break;
                    case T_Q6_K: put16(&W[o + 208], d * 0.05f); break;
                    }
                }
            std::vector<float> X((size_t)n * k);
            for (auto& v : X) v = rf();
            // Reference: Fmt decode, both operands rounded to f16, double sums.
            std::vector<double> wd((size_t)rows * k), xd((size_t)n * k), ref((size_t)n * rows);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < k / 32; c++) {
                    float o[32];
                    ty.chunk(&W[r * rb], c, o);
                    for (int i = 0; i < 32; i++) wd[(size_t)r * k + 32 * c + i] = __half2float(__float2half_rn(o[i]));
                }
            for (size_t i = 0; i < X.size(); i++) xd[i] = __half2float(__float2half_rn(X[i]));
            for (int t = 0; t < n; t++)
                for (int r = 0; r < rows; r++) {
                    double s = 0;
                    for (int i = 0; i < k; i++) s += xd[(size_t)t * k + i] * wd[(size_t)r * k + i];
                    ref[(size_t)t * rows + r] = s;
                }
            for (int pass = 0; pass < 2 * NTILES; pass++) {
                const int ti = pass % NTILES;
                const Tile tl = TILES[ti];
                const int smem = smem_for(tl, ty.words, pass >= NTILES);
                std::vector<float> Y((size_t)n * rows, NAN);
                for (int bx = 0; bx < (n + tl.bm - 1) / tl.bm; bx++)
                    for (int by = 0; by < (rows + tl.bn - 1) / tl.bn; by++) {
                        blockIdx = {(unsigned)bx, (unsigned)by, 0};
                        // Garbage in shared memory, exactly sized (AddressSanitizer bounds).
                        std::vector<uint8_t> sm(smem);
                        for (auto& b : sm) b = (uint8_t)rnd();
                        emu_dyn_smem = sm.data();
                        emu_dyn_smem_size = smem;
                        emu::run_block(tl.warps * 32 * tl.kg, [&] { ty.k[ti](W.data(), X.data(), Y.data(), rows, k, n, rb); });
                    }
                double num = 0, den = 0;
                int unwritten = 0;
                for (size_t i = 0; i < Y.size(); i++) {
                    if (!std::isfinite(Y[i])) { unwritten++; continue; }
                    num += (Y[i] - ref[i]) * (Y[i] - ref[i]);
                    den += ref[i] * ref[i];
                }
                const double e = sqrt(num / den);
                const bool ok = unwritten == 0 && e < 2e-5;
                bad += !ok;
                runs++;
                printf("%-5s %3dx%-4d n=%-3d tile %3dx%-3dk%d smem %6d: rel err %.2e%s%s\n", ty.name, rows, k, n, tl.bm,
                       tl.bn, tl.kg, smem, e,
                       unwritten ? " UNWRITTEN" : "", ok ? "" : "  FAIL");
            }
        }
    }
    printf("%d runs, %d failed\n", runs, bad);
    return bad ? 1 : 0;
}
