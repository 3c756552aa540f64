// CPU emulation of kernels/moe.cu (the router's top-k and softmax; the gather and scatter of
// an expert's token rows; the device grouping, biases and weighted sum of a step's picks; the
// selected experts' MXFP4 mat-vecs of a decode step) and elementwise.cu's clamped_swiglu (tests/emu/emu_runtime.h),
// against references written from the CPU backend's definitions (src/backend/cpu/moe.rs
// `route`: a stable sort under f32 total order with NaN as -inf, the softmax of the picked
// logits relative to the first; attn.rs `clamped_swiglu`). Run by scripts/mma-emu.sh.
#include "emu_runtime.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "../../kernels/moe.cu"
#include "../../kernels/elementwise.cu"
#include "splitmix.h"

static SplitMix64 rng{0x0E5};

// Rust's f32::total_cmp as a key.
static int64_t total_key(float x) {
    int32_t b;
    memcpy(&b, &x, 4);
    return b ^ ((b >> 31) & 0x7fffffff);
}

static int test_route(int n_tok, int n_exp, int k, bool with_bias) {
    std::vector<float> logits((size_t)n_tok * n_exp), bias(n_exp);
    for (auto& v : logits) v = 4 * rng.unit();
    for (auto& v : bias) v = rng.unit();
    // Ties (within a row and after the bias), NaN, infinities and signed zeros.
    for (int t = 0; t < n_tok; t++) {
        float* r = &logits[(size_t)t * n_exp];
        if (n_exp > 3) r[3] = r[1];
        if (t % 3 == 1) r[rng.next() % n_exp] = NAN;
        if (t % 4 == 2) r[rng.next() % n_exp] = -INFINITY;
        if (t % 5 == 3) r[rng.next() % n_exp] = INFINITY;
        if (t % 2 == 0 && n_exp > 5) r[4] = 0.f, r[5] = -0.f;
    }
    if (with_bias && n_exp > 3) bias[3] = bias[1];
    if (with_bias && n_exp > 5) bias[4] = bias[5] = 0.f;
    std::vector<float> want_logits = logits;
    if (with_bias)
        for (int t = 0; t < n_tok; t++)
            for (int e = 0; e < n_exp; e++) want_logits[(size_t)t * n_exp + e] += bias[e];
    std::vector<int> ids((size_t)n_tok * k, -7);
    std::vector<float> w((size_t)n_tok * k, NAN);
    gridDim = {(unsigned)((n_tok + 3) / 4), 1, 1};
    blockDim = {128, 1, 1};
    for (unsigned b = 0; b < gridDim.x; b++) {
        blockIdx = {b, 0, 0};
        emu::run_block(128, [&] {
            moe_route(logits.data(), with_bias ? bias.data() : nullptr, n_tok, n_exp, k, ids.data(), w.data());
        });
    }
    int bad = 0;
    for (int t = 0; t < n_tok; t++) {
        const float* r = &want_logits[(size_t)t * n_exp];
        for (int e = 0; e < n_exp; e++)
            bad += memcmp(&r[e], &logits[(size_t)t * n_exp + e], 4) != 0;  // biased logits, bit for bit
        std::vector<int> order(n_exp);
        std::iota(order.begin(), order.end(), 0);
        auto key = [&](int i) { return total_key(std::isnan(r[i]) ? -INFINITY : r[i]); };
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
        double sum = 0;
        std::vector<double> ex(k);
        for (int j = 0; j < k; j++) sum += ex[j] = exp((double)r[order[j]] - (double)r[order[0]]);
        for (int j = 0; j < k; j++) {
            bad += ids[(size_t)t * k + j] != order[j];
            const double want = ex[j] / sum, got = w[(size_t)t * k + j];
            // expf against exp in double: a few ulps; NaN rows (a NaN picked first) stay NaN.
            if (std::isnan(want) ? !std::isnan(got) : fabs(got - want) > 1e-6 * fmax(1.0, fabs(want))) bad++;
        }
    }
    printf("  moe_route %d tokens, top-%d of %d%s: %s\n", n_tok, k, n_exp, with_bias ? " +bias" : "",
           bad ? "MISMATCH  FAIL" : "as the CPU");
    return bad != 0;
}

// Each token's k distinct experts, at random.
static std::vector<int> random_picks(int n_tok, int n_exp, int k) {
    std::vector<int> ids((size_t)n_tok * k);
    for (int t = 0; t < n_tok; t++) {
        std::vector<int> e(n_exp);
        std::iota(e.begin(), e.end(), 0);
        for (int j = 0; j < k; j++) {
            std::swap(e[j], e[j + rng.next() % (n_exp - j)]);
            ids[(size_t)t * k + j] = e[j];
        }
    }
    return ids;
}

// The picks of n_tok tokens grouped by expert, then gather, a stand-in product (y = 2 x + e),
// and scatter, against the same done on the host.
static int test_gather_scatter(int n_tok, int n_exp, int k, int width) {
    const std::vector<int> ids = random_picks(n_tok, n_exp, k);
    std::vector<float> x((size_t)n_tok * width), wts(ids.size());
    for (auto& v : x) v = rng.unit();
    for (auto& v : wts) v = rng.unit();
    std::vector<int> order;
    std::vector<int> first(n_exp + 1, 0);
    for (int e = 0; e < n_exp; e++) {
        first[e] = (int)order.size();
        for (size_t i = 0; i < ids.size(); i++)
            if (ids[i] == e) order.push_back((int)i);
    }
    first[n_exp] = (int)order.size();
    std::vector<float> out((size_t)n_tok * width, 0.f), want(out.size(), 0.f);
    int bad = 0;
    for (int e = 0; e < n_exp; e++) {
        const int c = first[e + 1] - first[e];
        if (!c) continue;
        std::vector<float> xg((size_t)c * width, NAN);
        gridDim = {(unsigned)c, 1, 1};
        blockDim = {256, 1, 1};
        for (int b = 0; b < c; b++) {
            blockIdx = {(unsigned)b, 0, 0};
            emu::run_block(256, [&] { moe_gather(x.data(), order.data() + first[e], xg.data(), k, width); });
        }
        for (int j = 0; j < c; j++)
            for (int i = 0; i < width; i++)
                bad += xg[(size_t)j * width + i] != x[(size_t)(order[first[e] + j] / k) * width + i];
        std::vector<float> y(xg.size());
        for (size_t i = 0; i < y.size(); i++) y[i] = 2 * xg[i] + (float)e;
        for (int b = 0; b < c; b++) {
            blockIdx = {(unsigned)b, 0, 0};
            emu::run_block(256, [&] {
                moe_scatter(y.data(), order.data() + first[e], wts.data(), out.data(), k, width);
            });
        }
        for (int j = 0; j < c; j++) {
            const int p = order[first[e] + j];
            for (int i = 0; i < width; i++)
                want[(size_t)(p / k) * width + i] += wts[p] * y[(size_t)j * width + i];
        }
    }
    // The same f32 operations in the same order (one expert after another): equal up to FMA
    // contraction of w * y + acc, a rounding or two.
    double worst = 0;
    for (size_t i = 0; i < out.size(); i++) worst = fmax(worst, fabs(out[i] - want[i]) / fmax(1.0, fabs(want[i])));
    bad += worst > 1e-6;
    printf("  moe_gather/scatter %d tokens, top-%d of %d, rows of %d: worst %.1e%s\n", n_tok, k, n_exp, width, worst,
           bad ? "  FAIL" : "");
    return bad != 0;
}

// The device grouping of a step's picks (moe_group), the experts' biases on the grouped rows
// (moe_bias) and the weighted sum back into the tokens (moe_combine), against the CPU's
// grouping (each expert's picks in token order) and its sum (experts in ascending order).
// `bad_id`: one pick names no expert (left out; its token's row is NaN).
static int test_grouped(int n_tok, int n_exp, int k, int width, bool bad_id) {
    const int n = n_tok * k;
    std::vector<int> ids = random_picks(n_tok, n_exp, k);
    const int bad_pick = bad_id ? n / 2 : -1;
    if (bad_id) ids[bad_pick] = n_exp;
    std::vector<int> offsets(n_exp + 1, -7), src(n, -7), pos(n, -7);
    gridDim = {1, 1, 1};
    blockDim = {256, 1, 1};
    blockIdx = {0, 0, 0};
    emu::run_block(256, [&] { moe_group(ids.data(), n, n_exp, offsets.data(), src.data(), pos.data()); });
    // The CPU's grouping.
    std::vector<int> want_off(n_exp + 1, 0), want_src;
    for (int e = 0; e < n_exp; e++) {
        want_off[e] = (int)want_src.size();
        for (int i = 0; i < n; i++)
            if (ids[i] == e) want_src.push_back(i);
    }
    want_off[n_exp] = (int)want_src.size();
    int bad = offsets != want_off;
    for (int r = 0; r < n; r++) bad += src[r] != (r < want_off[n_exp] ? want_src[r] : 0);
    for (int i = 0; i < n; i++) bad += i == bad_pick ? pos[i] != -1 : src[pos[i]] != i;
    // Biases: y = r (grouped row) + bias of the row's expert.
    std::vector<std::vector<float>> bias(n_exp, std::vector<float>(width));
    std::vector<const float*> table;
    for (auto& b : bias) {
        for (auto& v : b) v = rng.unit();
        table.push_back(b.data());
    }
    std::vector<float> y((size_t)n * width), y2;
    for (size_t i = 0; i < y.size(); i++) y[i] = rng.unit();
    y2 = y;
    std::vector<float> want = y;
    for (int r = 0; r < want_off[n_exp]; r++)
        for (int c = 0; c < width; c++) want[(size_t)r * width + c] += bias[ids[want_src[r]]][c];
    gridDim = {(unsigned)n, 2, 1};
    for (unsigned r = 0; r < (unsigned)n; r++)
        for (unsigned m = 0; m < 2; m++) {
            blockIdx = {r, m, 0};
            emu::run_block(256, [&] {
                moe_bias(y.data(), y2.data(), table.data(), table.data(), ids.data(), src.data(), offsets.data(), n_exp,
                         width);
            });
        }
    bad += memcmp(y.data(), want.data(), y.size() * 4) != 0 || memcmp(y2.data(), want.data(), y.size() * 4) != 0;
    // The weighted sum, experts in ascending order.
    std::vector<float> w(n), out((size_t)n_tok * width, -7.f), sum(out.size(), 0.f);
    for (auto& v : w) v = rng.unit();
    for (int t = 0; t < n_tok; t++)
        for (int e = 0; e < n_exp; e++)
            for (int j = 0; j < k; j++) {
                const int i = t * k + j;
                if (ids[i] != e) continue;
                for (int c = 0; c < width; c++) sum[(size_t)t * width + c] += w[i] * y[(size_t)pos[i] * width + c];
            }
    gridDim = {(unsigned)n_tok, 1, 1};
    for (unsigned t = 0; t < (unsigned)n_tok; t++) {
        blockIdx = {t, 0, 0};
        emu::run_block(256, [&] { moe_combine(y.data(), ids.data(), pos.data(), w.data(), out.data(), k, width); });
    }
    // The same f32 operations in the same order: equal up to FMA contraction.
    double worst = 0;
    for (int t = 0; t < n_tok; t++)
        for (int c = 0; c < width; c++) {
            const float g = out[(size_t)t * width + c], r = sum[(size_t)t * width + c];
            if (bad_id && t == bad_pick / k) {
                bad += !std::isnan(g);
                continue;
            }
            worst = fmax(worst, fabs(g - r) / fmax(1.0, fabs(r)));
        }
    bad += worst > 1e-6;
    printf("  moe_group/bias/combine %d tokens, top-%d of %d, rows of %d%s: worst %.1e%s\n", n_tok, k, n_exp, width,
           bad_id ? ", a bad id" : "", worst, bad ? "  FAIL" : "");
    return bad != 0;
}

// moe_matvec_mxfp4: the selected experts' rows times chunk records (random, as prep_input
// lays them out), against the decoded weights (Fmt<T_MXFP4>) times the records' values in
// double. Odd row sizes put blocks at every byte offset; one id out of range (NaN rows, nothing
// read); gate/up (two tables, one input) and down (per-slot inputs) forms.
static int test_matvec_mxfp4(int rows, int nc, int n_exp, int n_sel, int n_mat, bool per_slot, bool with_bias,
                             int rows_per_block) {
    const int k = 32 * nc;
    const long long rb = 17LL * nc;
    // Each expert's matrix its own buffer with the 16 bytes of padding every weight has.
    std::vector<std::vector<uint8_t>> W((size_t)n_mat * n_exp, std::vector<uint8_t>(rows * rb + 16));
    std::vector<std::vector<const uint8_t*>> tab(2, std::vector<const uint8_t*>(n_exp));
    for (int m = 0; m < n_mat; m++)
        for (int e = 0; e < n_exp; e++) {
            auto& w = W[(size_t)m * n_exp + e];
            for (auto& b : w) b = (uint8_t)rng.next();
            for (long long i = 0; i < rows * rb; i += 17) w[i] = (uint8_t)(120 + rng.next() % 12);  // scales
            tab[m][e] = w.data();
        }
    std::vector<std::vector<float>> bias((size_t)n_mat * n_exp, std::vector<float>(rows));
    std::vector<std::vector<const float*>> btab(2, std::vector<const float*>(n_exp));
    for (int m = 0; m < n_mat; m++)
        for (int e = 0; e < n_exp; e++) {
            for (auto& v : bias[(size_t)m * n_exp + e]) v = rng.unit();
            btab[m][e] = bias[(size_t)m * n_exp + e].data();
        }
    std::vector<int> ids(n_sel);
    for (int s = 0; s < n_sel; s++) ids[s] = (int)(rng.next() % n_exp);
    if (n_sel > 1) ids[1] = n_exp;  // out of range
    const int n_in = per_slot ? n_sel : 1;
    std::vector<uint8_t> rec((size_t)n_in * nc * MOE_XREC);
    for (size_t c = 0; c < rec.size() / MOE_XREC; c++) {
        uint8_t* r = &rec[c * MOE_XREC];
        for (int i = 0; i < 64; i++) r[i] = (uint8_t)(int8_t)((int)(rng.next() % 255) - 127);
        const float d = 0.01f + rng.unit() * rng.unit();
        memcpy(r + 64, &d, 4);
    }
    std::vector<std::vector<float>> out(2, std::vector<float>((size_t)n_sel * rows, -7.f));
    MoeMvArgs a{};
    for (int m = 0; m < n_mat; m++) {
        a.w[m] = tab[m].data();
        a.bias[m] = with_bias ? btab[m].data() : nullptr;
        a.out[m] = out[m].data();
    }
    a.ids = ids.data();
    a.row_bytes = rb;
    a.x_stride = per_slot ? (long long)nc * MOE_XREC : 0;
    a.n_mat = n_mat, a.n_sel = n_sel, a.n_expert = n_exp, a.rows = rows, a.k = k;
    const int smem = nc * MOE_XREC + 8 * moe_mv_buf(rb);
    std::vector<uint8_t> sm(smem);
    gridDim = {(unsigned)((rows + rows_per_block - 1) / rows_per_block), (unsigned)n_sel, (unsigned)n_mat};
    blockDim = {256, 1, 1};
    for (unsigned z = 0; z < gridDim.z; z++)
        for (unsigned y = 0; y < gridDim.y; y++)
            for (unsigned x = 0; x < gridDim.x; x++) {
                blockIdx = {x, y, z};
                for (auto& b : sm) b = (uint8_t)rng.next();
                emu_dyn_smem = sm.data();
                emu_dyn_smem_size = smem;
                emu::run_block(256, [&] { moe_matvec_mxfp4(a, rec.data(), rows_per_block); });
            }
    int bad = 0;
    double worst = 0;
    for (int m = 0; m < n_mat; m++)
        for (int s = 0; s < n_sel; s++)
            for (int r = 0; r < rows; r++) {
                const float got = out[m][(size_t)s * rows + r];
                const int e = ids[s];
                if (e >= n_exp) {
                    bad += !std::isnan(got);
                    continue;
                }
                const uint8_t* row = tab[m][e] + r * rb;
                const uint8_t* x = &rec[(per_slot ? (size_t)s * nc : 0) * MOE_XREC];
                double want = with_bias ? bias[(size_t)m * n_exp + e][r] : 0, mag = fabs(want);
                for (int c = 0; c < nc; c++) {
                    float w[32];
                    Fmt<T_MXFP4>::chunk(row, c, w);
                    const uint8_t* xr = x + c * MOE_XREC;
                    float d;
                    memcpy(&d, xr + 64, 4);
                    for (int i = 0; i < 32; i++) {
                        const double xv = d * ((int8_t)xr[i] + (int8_t)xr[32 + i] / 254.0);
                        want += (double)w[i] * xv;
                        mag += fabs((double)w[i] * xv);
                    }
                }
                const double err = fabs(got - want) / fmax(mag, 1e-30);
                worst = std::isnan(err) ? INFINITY : fmax(worst, err);
            }
    // Exact integer block sums, then a few f32 roundings per block and the f32 row sum.
    bad += worst > 1e-5;
    printf("  moe_matvec_mxfp4 %d experts, %d of them x %d products, %dx%d%s%s, %d rows a block: worst %.1e%s\n",
           n_exp, n_sel, n_mat, rows, k, per_slot ? ", an input a slot" : "", with_bias ? " +bias" : "", rows_per_block,
           worst, bad ? "  FAIL" : "");
    return bad != 0;
}

static int test_clamped_swiglu() {
    const int n = 1000;
    std::vector<float> g(n), u(n), out(n, NAN);
    for (int i = 0; i < n; i++) g[i] = 12 * rng.unit(), u[i] = 12 * rng.unit();  // past the limit
    g[0] = 7.f, u[0] = -7.f, g[1] = -30.f, u[1] = INFINITY;  // the limits, a saturated sigmoid
    const float alpha = 1.702f, limit = 7.f;
    gridDim = {4, 1, 1};
    blockDim = {256, 1, 1};
    for (unsigned b = 0; b < 4; b++) {
        blockIdx = {b, 0, 0};
        emu::run_block(256, [&] { clamped_swiglu(g.data(), u.data(), out.data(), n, alpha, limit); });
    }
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const double x = std::min((double)g[i], (double)limit);
        const double y = std::max(-(double)limit, std::min((double)u[i], (double)limit));
        const double want = x / (1 + exp(-(double)alpha * x)) * (y + 1);
        const double err = fabs(out[i] - want) / fmax(1.0, fabs(want));
        worst = std::isnan(err) ? INFINITY : fmax(worst, err);
    }
    // f32 expf and three roundings against double.
    const bool ok = worst < 1e-6;
    printf("  clamped_swiglu (alpha 1.702, limit 7): worst %.1e%s\n", worst, ok ? "" : "  FAIL");
    return !ok;
}

int main() {
    int bad = 0;
    for (int n_exp : {4, 32, 33, 128, 256})
        for (int k : {1, 2, 4, 8})
            if (k <= n_exp)
                for (int b = 0; b < 2; b++) bad += test_route(7, n_exp, k, b);
    bad += test_gather_scatter(9, 4, 2, 256);
    bad += test_gather_scatter(37, 32, 4, 300);
    bad += test_grouped(9, 4, 2, 256, false);
    bad += test_grouped(300, 32, 4, 40, false);  // 1200 picks: two staged chunks
    bad += test_grouped(37, 256, 8, 33, true);
    bad += test_matvec_mxfp4(70, 11, 5, 4, 2, false, true, 24);  // 187-byte rows: odd offsets
    bad += test_matvec_mxfp4(45, 40, 3, 2, 1, true, false, 16);  // 40 blocks a row: lanes take two
    bad += test_matvec_mxfp4(33, 90, 4, 1, 1, false, true, 8);   // gpt-oss-20b's row of 1,530 bytes
    bad += test_clamped_swiglu();
    printf("%d failed\n", bad);
    return bad ? 1 : 0;
}
