// CPU emulation of the prompt attention kernels, kernels/attention_tiled.cu and
// kernels/attention.cu, and of the batched decode attention of kernels/attention_batch.cu
// (tests/emu/emu_runtime.h), over both cache types (f16, and f32 for kv_type f32 sessions:
// the `_f32kv` instances), against a double reference over the same cached keys and values:
// the paged cache (tests/emu/emu_pages.h: shuffled pages, a layer other than the first),
// masks (causal, window, tails of the 16-query blocks), tiles, shuffles and bounds, GPT-OSS's
// attention sinks (a logit per head in each softmax's denominator, no value: below, among and
// far above the scores), and a batch whose rows' caches are of either type, without a GPU.
// Run by scripts/mma-emu.sh.
#include "emu_runtime.h"

#include <cmath>
#include <cstring>

#include "../../kernels/attention_tiled.cu"
#include "../../kernels/attention.cu"
#include "../../kernels/attention_batch.cu"
#include "attn_ref.h"
#include "emu_pages.h"
#include "splitmix.h"

static SplitMix64 rng{0x5EED};
static float rf() { return rng.unit(); }

struct Case {
    int n_heads, n_kv, hd, pos0, n_tok, window;
};

// A cache of `n` random values of KV (f32 values not representable in f16: a kernel that
// rounded them would miss the reference by ~2^-11).
template <class KV> static std::vector<KV> random_cache(size_t n) {
    std::vector<KV> c(n);
    for (auto& x : c) x = KV(rf());
    return c;
}
template <> std::vector<__half> random_cache<__half>(size_t n) {
    std::vector<__half> c(n);
    for (auto& x : c) x = __float2half_rn(rf());
    return c;
}
static double as_double(__half h) { return __half2float(h); }
static double as_double(float f) { return f; }

// ‖out − reference‖ / ‖reference‖ over n_tok queries at positions pos0.. (query t's keys
// from the window's start to pos0 + t) of the caches kc, vc ([n_kv][max_ctx][hd]).
template <class KV>
static double rel_err(const Case& cs, int max_ctx, const std::vector<float>& q, const std::vector<KV>& kc,
                      const std::vector<KV>& vc, const float* sk, const std::vector<float>& out) {
    const int hd = cs.hd;
    double num = 0, den = 0;
    for (int t = 0; t < cs.n_tok; t++)
        for (int h = 0; h < cs.n_heads; h++) {
            const int kvh = h / (cs.n_heads / cs.n_kv), qp = cs.pos0 + t;
            const int lo = cs.window > 0 ? std::max(0, qp - cs.window + 1) : 0;
            const float* qv = &q[((size_t)t * cs.n_heads + h) * hd];
            auto cached = [&](const std::vector<KV>& c) {
                const KV* head = c.data() + (size_t)kvh * max_ctx * hd;
                return [head, hd](int j, int d) { return as_double(head[(size_t)j * hd + d]); };
            };
            const float scale = 1.0f / sqrtf((float)hd);
            const std::vector<double> o = attend_ref(qv, scale, lo, qp, hd, cached(kc), cached(vc), sk ? &sk[h] : nullptr);
            for (int d = 0; d < hd; d++) {
                const float g = out[((size_t)t * cs.n_heads + h) * hd + d];
                if (!std::isfinite(g)) num = INFINITY;
                num += (g - o[d]) * (g - o[d]);
                den += o[d] * o[d];
            }
        }
    return sqrt(num / den);
}

template <class KV> static int test_prompt(const Case& cs) {
    constexpr bool f32 = sizeof(KV) == 4;
    const int max_ctx = cs.pos0 + cs.n_tok + 3, hd = cs.hd;
    // Exactly sized buffers; the cache beyond `total` positions is garbage (never read).
    const std::vector<KV> kc = random_cache<KV>((size_t)cs.n_kv * max_ctx * hd);
    const std::vector<KV> vc = random_cache<KV>(kc.size());
    std::vector<float> q((size_t)cs.n_tok * cs.n_heads * hd);
    for (auto& v : q) v = 2 * rf();
    // Sinks below the scores, among them, above them, and 200 above (e^200 overflows f32).
    std::vector<float> sinks(cs.n_heads);
    for (int h = 0; h < cs.n_heads; h++) sinks[h] = h % 4 == 3 ? 200.f : (float)(h % 4) * 4.f - 4.f + rf();
    const float scale = 1.0f / sqrtf((float)hd);
    const Paged<KV> pg(kc, vc, cs.n_kv, max_ctx, hd, 3, 1, 0xBA6E5 + cs.pos0);
    int bad = 0;
    for (int kernel = 0; kernel < 2; kernel++)
        for (int with_sinks = 0; with_sinks < 2; with_sinks++) {
            const float* sk = with_sinks ? sinks.data() : nullptr;
            std::vector<float> out(q.size(), NAN);
            if (kernel == 0) {
                const int words = hd * (int)sizeof(KV) / 4;  // of a cache row
                const int smem = (16 * hd * 4) + 2 * (32 * (words + 1) * 4 + 32 * words * 4);
                auto fn = f32 ? (sk ? (void*)attention_tiled_sinks_f32kv : (void*)attention_tiled_f32kv)
                              : (sk ? (void*)attention_tiled_sinks : (void*)attention_tiled);
                auto kern = reinterpret_cast<void (*)(const float*, const unsigned long long*, int, float*,
                                                      int, int, int, int, int, float, int, const float*)>(fn);
                for (int bx = 0; bx < (cs.n_tok + 15) / 16; bx++)
                    for (int h = 0; h < cs.n_heads; h++) {
                        blockIdx = {(unsigned)bx, (unsigned)h, 0};
                        std::vector<uint8_t> sm(smem, 0xAB);
                        emu_dyn_smem = sm.data();
                        emu_dyn_smem_size = smem;
                        emu::run_block(128, [&] {
                            kern(q.data(), pg.table.data(), pg.layer, out.data(), cs.n_tok, cs.n_heads,
                                 cs.n_kv, hd, cs.pos0, scale, cs.window, sk);
                        });
                    }
            } else {
                auto kern = reinterpret_cast<void (*)(const float*, const unsigned long long*, int, float*,
                                                      int, int, int, int, float, int, const float*)>(
                    f32 ? (void*)attention_f32kv : (void*)attention);
                for (int t = 0; t < cs.n_tok; t++)
                    for (int h = 0; h < cs.n_heads; h++) {
                        blockIdx = {(unsigned)h, (unsigned)t, 0};
                        emu::run_block(128, [&] {
                            kern(q.data(), pg.table.data(), pg.layer, out.data(), cs.n_heads, cs.n_kv, hd,
                                 cs.pos0, scale, cs.window, sk);
                        });
                    }
            }
            // The sink of 200 leaves outputs ~e^-190: relative to the others' norm they
            // vanish, and a wrong one (a missing sink) would dominate.
            const double e = rel_err(cs, max_ctx, q, kc, vc, sk, out);
            const bool ok = e < 1e-6;
            bad += !ok;
            printf("%s %s h=%d kv=%d hd=%d pos0=%d n=%d win=%d%s: rel err %.2e%s\n",
                   kernel ? "attention      " : "attention_tiled", f32 ? "f32 KV" : "f16 KV", cs.n_heads, cs.n_kv,
                   hd, cs.pos0, cs.n_tok, cs.window, sk ? " sinks" : "", e, ok ? "" : "  FAIL");
        }
    return bad;
}

// One batched decode step (kv_store_batch, then attention_batch) over rows whose sessions
// alternate f16 and f32 caches of different lengths, each row checked as a one-query case.
static int test_batch(int n_heads, int n_kv, int hd, int window, bool with_sinks) {
    const int rows = 5;
    std::vector<std::vector<__half>> k16(rows), v16(rows);
    std::vector<std::vector<float>> k32(rows), v32(rows);
    std::vector<int> pos(rows), max_ctx(rows);
    std::vector<unsigned long long> tab(rows);
    // Each row's session: its cache as layer 2 of 4 in pages (emu_pages.h).
    const int layer = 2;
    std::vector<Paged<__half>> p16;
    std::vector<Paged<float>> p32;
    p16.reserve(rows), p32.reserve(rows);
    for (int r = 0; r < rows; r++) {
        pos[r] = 3 + 17 * r;
        max_ctx[r] = pos[r] + 1 + r;
        const size_t n = (size_t)n_kv * max_ctx[r] * hd;
        if (r % 2) {
            k32[r] = random_cache<float>(n), v32[r] = random_cache<float>(n);
            p32.emplace_back(k32[r], v32[r], n_kv, max_ctx[r], hd, 4, layer, 0x7AB1E + r);
            tab[r] = (unsigned long long)p32.back().table.data() | 1ull;  // bit 0: an f32 cache
        } else {
            k16[r] = random_cache<__half>(n), v16[r] = random_cache<__half>(n);
            p16.emplace_back(k16[r], v16[r], n_kv, max_ctx[r], hd, 4, layer, 0x7AB1E + r);
            tab[r] = (unsigned long long)p16.back().table.data();
        }
    }
    std::vector<float> q((size_t)rows * n_heads * hd), knew((size_t)rows * n_kv * hd), vnew(knew.size());
    for (auto& v : q) v = 2 * rf();
    for (auto& v : knew) v = rf();
    for (auto& v : vnew) v = rf();
    std::vector<float> sinks(n_heads);
    for (int h = 0; h < n_heads; h++) sinks[h] = (float)h - 1.f + rf();
    const float* sk = with_sinks ? sinks.data() : nullptr;
    const float scale = 1.0f / sqrtf((float)hd);
    blockDim = {(unsigned)hd, 1, 1};
    for (int b = 0; b < rows * n_kv; b++) {
        blockIdx = {(unsigned)b, 0, 0};
        emu::run_block(hd, [&] { kv_store_batch(knew.data(), vnew.data(), tab.data(), layer, pos.data(), n_kv, hd); });
    }
    std::vector<float> out(q.size(), NAN);
    blockDim = {128, 1, 1};
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < n_heads; h++) {
            blockIdx = {(unsigned)h, (unsigned)r, 0};
            emu::run_block(128, [&] {
                attention_batch(q.data(), tab.data(), layer, pos.data(), out.data(), n_heads, n_kv, hd, scale,
                                window, sk);
            });
        }
    // What the kernels stored, back in the contiguous caches the checks read.
    for (int r = 0; r < rows; r++) {
        if (r % 2)
            p32[r / 2].gather(k32[r], v32[r]);
        else
            p16[r / 2].gather(k16[r], v16[r]);
    }
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        const Case cs{n_heads, n_kv, hd, pos[r], 1, window};
        const std::vector<float> qr(q.begin() + (size_t)r * n_heads * hd, q.begin() + (size_t)(r + 1) * n_heads * hd);
        const std::vector<float> orow(out.begin() + (size_t)r * n_heads * hd,
                                      out.begin() + (size_t)(r + 1) * n_heads * hd);
        // The stored token must be the row's new k and v (exact in f32, rounded once in f16).
        bool stored = true;
        for (int h = 0; h < n_kv; h++)
            for (int d = 0; d < hd; d++) {
                const size_t at = ((size_t)h * max_ctx[r] + pos[r]) * hd + d, src = ((size_t)r * n_kv + h) * hd + d;
                const double want_k = r % 2 ? knew[src] : __half2float(__float2half_rn(knew[src]));
                const double got_k = r % 2 ? k32[r][at] : __half2float(k16[r][at]);
                const double want_v = r % 2 ? vnew[src] : __half2float(__float2half_rn(vnew[src]));
                const double got_v = r % 2 ? v32[r][at] : __half2float(v16[r][at]);
                stored &= got_k == want_k && got_v == want_v;
            }
        const double e = r % 2 ? rel_err(cs, max_ctx[r], qr, k32[r], v32[r], sk, orow)
                               : rel_err(cs, max_ctx[r], qr, k16[r], v16[r], sk, orow);
        const bool ok = stored && e < 1e-6;
        bad += !ok;
        printf("attention_batch row %d %s KV h=%d kv=%d hd=%d pos=%d win=%d%s: %s rel err %.2e%s\n", r,
               r % 2 ? "f32" : "f16", n_heads, n_kv, hd, pos[r], window, sk ? " sinks" : "",
               stored ? "stored," : "STORE WRONG,", e, ok ? "" : "  FAIL");
    }
    return bad;
}

// Usage: attn_emu [lazy|eager]  (when the tiled kernel's cp.async copies land: at the wait,
// the default, or when issued)
int main(int argc, char** argv) {
    emu::eager = argc > 1 && !strcmp(argv[1], "eager");
    printf("cp.async copies land %s\n", emu::eager ? "when issued" : "at the wait");
    const Case cases[] = {
        {8, 2, 64, 20, 37, 0},   {14, 2, 64, 0, 29, 0},  {4, 1, 256, 100, 5, 16}, {6, 6, 128, 513, 1, 0},
        {4, 2, 96, 7, 40, 0},    {2, 1, 32, 33, 70, 50}, {3, 3, 64, 0, 16, 0},    {4, 2, 64, 3, 40, 16},
    };
    int bad = 0;
    for (const Case& cs : cases) {
        bad += test_prompt<__half>(cs);
        bad += test_prompt<float>(cs);
    }
    bad += test_batch(4, 2, 64, 0, false);
    bad += test_batch(6, 3, 128, 20, true);
    bad += test_batch(2, 1, 256, 0, true);
    printf("%d failed\n", bad);
    return bad ? 1 : 0;
}
