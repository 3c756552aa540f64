// CPU emulation of the prompt attention kernels, kernels/attention_tiled.cu and
// kernels/attention.cu (tests/emu/emu_runtime.h), against a double reference over the same
// f16-rounded keys and values: masks (causal, window, tails of the 16-query blocks), tiles,
// shuffles and bounds, and GPT-OSS's attention sinks (a logit per head in each softmax's
// denominator, no value: below, among and far above the scores), without a GPU. Run by
// scripts/mma-emu.sh.
#include "emu_runtime.h"

#include <cmath>

#include "../../kernels/attention_tiled.cu"
#include "../../kernels/attention.cu"
#include "attn_ref.h"
#include "splitmix.h"

static SplitMix64 rng{0x5EED};
static float rf() { return rng.unit(); }

int main() {
    struct Case {
        int n_heads, n_kv, hd, pos0, n_tok, window;
    };
    const Case cases[] = {
        {8, 2, 64, 20, 37, 0},   {14, 2, 64, 0, 29, 0},  {4, 1, 256, 100, 5, 16}, {6, 6, 128, 513, 1, 0},
        {4, 2, 96, 7, 40, 0},    {2, 1, 32, 33, 70, 50}, {3, 3, 64, 0, 16, 0},    {4, 2, 64, 3, 40, 16},
    };
    int bad = 0;
    for (const Case& cs : cases) {
        const int max_ctx = cs.pos0 + cs.n_tok + 3, hd = cs.hd;
        // Exactly sized buffers; the cache beyond `total` positions is garbage (never read).
        std::vector<__half> kc((size_t)cs.n_kv * max_ctx * hd), vc(kc.size());
        for (auto& h : kc) h = __float2half_rn(rf());
        for (auto& h : vc) h = __float2half_rn(rf());
        std::vector<float> q((size_t)cs.n_tok * cs.n_heads * hd);
        for (auto& v : q) v = 2 * rf();
        // Sinks below the scores, among them, above them, and 200 above (e^200 overflows f32).
        std::vector<float> sinks(cs.n_heads);
        for (int h = 0; h < cs.n_heads; h++) sinks[h] = h % 4 == 3 ? 200.f : (float)(h % 4) * 4.f - 4.f + rf();
        const float scale = 1.0f / sqrtf((float)hd);
        for (int kernel = 0; kernel < 2; kernel++)
            for (int with_sinks = 0; with_sinks < 2; with_sinks++) {
                const float* sk = with_sinks ? sinks.data() : nullptr;
                std::vector<float> out(q.size(), NAN);
                if (kernel == 0) {
                    const int smem = (16 * hd * 4) + 32 * (hd / 2 + 1) * 4 + 32 * (hd / 2) * 4;
                    for (int bx = 0; bx < (cs.n_tok + 15) / 16; bx++)
                        for (int h = 0; h < cs.n_heads; h++) {
                            blockIdx = {(unsigned)bx, (unsigned)h, 0};
                            std::vector<uint8_t> sm(smem, 0xAB);
                            emu_dyn_smem = sm.data();
                            emu_dyn_smem_size = smem;
                            emu::run_block(128, [&] {
                                (sk ? attention_tiled_sinks : attention_tiled)(q.data(), kc.data(), vc.data(),
                                                                               out.data(), cs.n_tok, cs.n_heads,
                                                                               cs.n_kv, hd, max_ctx, cs.pos0, scale,
                                                                               cs.window, sk);
                            });
                        }
                } else {
                    for (int t = 0; t < cs.n_tok; t++)
                        for (int h = 0; h < cs.n_heads; h++) {
                            blockIdx = {(unsigned)h, (unsigned)t, 0};
                            emu::run_block(128, [&] {
                                attention(q.data(), kc.data(), vc.data(), out.data(), cs.n_heads, cs.n_kv, hd,
                                          max_ctx, cs.pos0, scale, cs.window, sk);
                            });
                        }
                }
                double num = 0, den = 0;
                for (int t = 0; t < cs.n_tok; t++)
                    for (int h = 0; h < cs.n_heads; h++) {
                        const int kvh = h / (cs.n_heads / cs.n_kv), qp = cs.pos0 + t;
                        const int lo = cs.window > 0 ? std::max(0, qp - cs.window + 1) : 0;
                        const float* qv = &q[((size_t)t * cs.n_heads + h) * hd];
                        auto cached = [&](const std::vector<__half>& c) {
                            const __half* head = c.data() + (size_t)kvh * max_ctx * hd;
                            return [head, hd](int j, int d) { return (double)__half2float(head[(size_t)j * hd + d]); };
                        };
                        const std::vector<double> o =
                            attend_ref(qv, scale, lo, qp, hd, cached(kc), cached(vc), sk ? &sk[h] : nullptr);
                        for (int d = 0; d < hd; d++) {
                            const float g = out[((size_t)t * cs.n_heads + h) * hd + d];
                            if (!std::isfinite(g)) num = INFINITY;
                            num += (g - o[d]) * (g - o[d]);
                            den += o[d] * o[d];
                        }
                    }
                // The sink of 200 leaves outputs ~e^-190: relative to the others' norm they
                // vanish, and a wrong one (a missing sink) would dominate.
                const double e = sqrt(num / den);
                const bool ok = e < 1e-6;
                bad += !ok;
                printf("%s h=%d kv=%d hd=%d pos0=%d n=%d win=%d%s: rel err %.2e%s\n",
                       kernel ? "attention      " : "attention_tiled", cs.n_heads, cs.n_kv, hd, cs.pos0, cs.n_tok,
                       cs.window, sk ? " sinks" : "", e, ok ? "" : "  FAIL");
            }
    }
    printf("%d failed\n", bad);
    return bad ? 1 : 0;
}
