// CPU emulation of kernels/gemm_f16.cu (tests/emu/emu_runtime.h): the dequantization kernels
// for every format and every GEMM tile, with odd M, N and a K that is not a multiple of BK,
// under AddressSanitizer (scripts/mma-emu.sh). References: the dequantized rows must equal
// Fmt<T>::chunk's values rounded to f16 bit for bit; the GEMM is compared with a double sum of
// the same f16 operands (the emulated mma sums in double too: only f32 rounding of the
// accumulators remains, far below the 2e-6 tolerance; a wrong swizzle, fragment or bound is
// orders of magnitude above it). The exact products of F16 and F32 weights (the split kernels)
// are compared with a double sum of the f32 activations and the weights' own values.
#include "emu_runtime.h"

#include "../../kernels/gemm_f16.cu"
#include "emu_weights.h"

typedef void (*Gemm)(const __half*, const __half*, float*, int, int, int);
struct Tile {
    const char* name;
    Gemm k;
    int bm, bn, bk, warps, stages;
};
#define GEMM_TILE_INFO(BM, BN, BK, WM, WN, S, MINB) \
    {#BM "x" #BN "x" #BK "_w" #WM "x" #WN "_s" #S, gemm_f16_##BM##x##BN##x##BK##_w##WM##x##WN##_s##S, BM, BN, BK, WM * WN, S},
static const Tile TILES[] = {GEMM_TILES(GEMM_TILE_INFO)};

typedef void (*Dequant)(const uint8_t*, __half*, int, int, long long);
struct TypeInfo {
    const char* name;
    int id, block, bytes;
    Dequant dq;
    void (*chunk)(const uint8_t*, int, float*);
};
static const TypeInfo TYPES[] = {
    {"f32", T_F32, 32, 128, dequant_f16_f32, Fmt<T_F32>::chunk},
    {"f16", T_F16, 32, 64, dequant_f16_f16, Fmt<T_F16>::chunk},
    {"q4_1", T_Q4_1, 32, 20, dequant_f16_q4_1, Fmt<T_Q4_1>::chunk},
    {"q5_0", T_Q5_0, 32, 22, dequant_f16_q5_0, Fmt<T_Q5_0>::chunk},
    {"q8_0", T_Q8_0, 32, 34, dequant_f16_q8_0, Fmt<T_Q8_0>::chunk},
    {"q4_k", T_Q4_K, 256, 144, dequant_f16_q4_k, Fmt<T_Q4_K>::chunk},
    {"q6_k", T_Q6_K, 256, 210, dequant_f16_q6_k, Fmt<T_Q6_K>::chunk},
    {"mxfp4", T_MXFP4, 32, 17, dequant_f16_mxfp4, Fmt<T_MXFP4>::chunk},
};

static SplitMix64 rng{0x51ED2701};
static uint64_t rnd() { return rng.next(); }
static float rf() { return rng.unit(); }
static __half h16(float v) { return __float2half_rn(v); }

// Blocks of 256 threads over n threads' worth of work.
static void run_grid1(long long n, const std::function<void()>& body) {
    for (long long b = 0; b < (n + 255) / 256; b++) {
        blockIdx = {(unsigned)b, 0, 0};
        emu::run_block(256, body);
    }
}

// A gx x gy grid of blocks of `threads`, each with `smem` bytes of dynamic shared memory
// holding garbage (exactly sized: a read past it is caught).
static void run_grid2(int gx, int gy, int threads, int smem, const std::function<void()>& body) {
    for (int bx = 0; bx < gx; bx++)
        for (int by = 0; by < gy; by++) {
            blockIdx = {(unsigned)bx, (unsigned)by, 0};
            std::vector<uint8_t> sm(smem);
            for (auto& b : sm) b = (uint8_t)rnd();
            emu_dyn_smem = sm.data();
            emu_dyn_smem_size = smem;
            emu::run_block(threads, body);
        }
}

static int test_dequant(const TypeInfo& ty, int rows, int k) {
    const long long rb = (long long)k / ty.block * ty.bytes;
    std::vector<uint8_t> W(rows * rb);
    random_weights(W, ty.id, ty.bytes, (long long)rows * k, rng);
    std::vector<__half> out((size_t)rows * k);
    for (auto& h : out) h.bits = 0x7e00;  // NaN
    run_grid1((long long)rows * k / 32, [&] { ty.dq(W.data(), out.data(), rows, k, rb); });
    int bad = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < k / 32; c++) {
            float o[32];
            ty.chunk(&W[r * rb], c, o);
            for (int i = 0; i < 32; i++)
                bad += out[(size_t)r * k + 32 * c + i].bits != h16(o[i]).bits;
        }
    printf("dequant %-5s %3dx%-4d: %s\n", ty.name, rows, k, bad ? "MISMATCH" : "bit-equal");
    return bad != 0;
}

// Y (M x N) against the double sums of the f16 operands A (M x K) . B (N x K)^T: the relative
// rms error over the written outputs; `unwritten` counts the outputs that are not finite.
static double product_error(const std::vector<__half>& A, const std::vector<__half>& B,
                            const std::vector<float>& Y, int M, int N, int K, int* unwritten) {
    double num = 0, den = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int i = 0; i < K; i++)
                s += (double)__half2float(A[(size_t)m * K + i]) * __half2float(B[(size_t)n * K + i]);
            const float y = Y[(size_t)m * N + n];
            if (!std::isfinite(y)) {
                (*unwritten)++;
                continue;
            }
            num += (y - s) * (y - s);
            den += s * s;
        }
    return sqrt(num / den);
}

static int test_gemm(const Tile& t, int M, int N, int K) {
    std::vector<__half> A((size_t)M * K), B((size_t)N * K);
    for (auto& v : A) v = h16(rf());
    for (auto& v : B) v = h16(rf());
    std::vector<float> Y((size_t)M * N, NAN);
    const int smem = t.stages * (t.bm + t.bn) * t.bk * 2;
    run_grid2((M + t.bm - 1) / t.bm, (N + t.bn - 1) / t.bn, t.warps * 32, smem,
              [&] { t.k(A.data(), B.data(), Y.data(), M, N, K); });
    int unwritten = 0;
    const double e = product_error(A, B, Y, M, N, K, &unwritten);
    const bool ok = !unwritten && e < 2e-6;
    printf("gemm %-22s M=%-3d N=%-3d K=%-3d: rel err %.2e%s%s\n", t.name, M, N, K, e,
           unwritten ? " UNWRITTEN" : "", ok ? "" : "  FAIL");
    return !ok;
}

// The skinny products (a batched step's few inputs on f16 weights), NT = 2 and 4, against a
// double sum of the same operands (2e-6, as the GEMM tiles); and every input's outputs must
// be bit-equal to those of the same input in a product of one input (M = 1, NT = 2): the sums
// do not depend on the rest of the batch. Returns the failures; `base` holds the M = 1 run.
static int test_skinny(int nt, int M, int N, int K, const std::vector<__half>& A,
                       const std::vector<__half>& B, std::vector<float>* out) {
    typedef void (*Sk)(const __half*, const __half*, float*, int, int, int);
    const Sk k = nt == 2 ? gemm_f16_skinny_n2 : gemm_f16_skinny_n4;
    const int tok = 8 * nt;
    const int smem = SK_STAGES * (SK_ROWS + tok) * SK_BK * 2;
    std::vector<float> Y((size_t)M * N, NAN);
    run_grid2((M + tok - 1) / tok, (N + SK_ROWS - 1) / SK_ROWS, SK_WARPS * 32, smem,
              [&] { k(A.data(), B.data(), Y.data(), M, N, K); });
    int unwritten = 0;
    const double e = product_error(A, B, Y, M, N, K, &unwritten);
    int differ = 0;
    if (out->empty()) {
        *out = Y;
    } else {
        for (int n = 0; n < N; n++) differ += memcmp(&Y[n], &(*out)[n], 4) != 0;
    }
    const bool ok = !unwritten && e < 2e-6 && !differ;
    printf("skinny n%d M=%-3d N=%-3d K=%-4d: rel err %.2e, input 0 %s%s%s\n", nt, M, N, K, e,
           differ ? "DIFFERS from M=1" : "as alone", unwritten ? " UNWRITTEN" : "", ok ? "" : "  FAIL");
    return !ok;
}

// The fused skinny products (mv_args.cuh's arguments, f16 segments): plain with three matrices
// (biases on two), the residual form and the SwiGLU form, against double sums of the same f16
// operands (2e-6 relative; act against silu(g)·u of the kernel's own g and u, 1e-6); rows past
// each output stay untouched (NaN guard).
static int test_skinny_fused(int nt, int mode, int M, int K) {
    const int rows[3] = {70, 16, 40};
    const int nseg = mode == MODE_PLAIN ? 3 : mode == MODE_GLU ? 2 : 1;
    const int R0 = mode == MODE_GLU ? 40 : rows[0];
    std::vector<__half> A((size_t)M * K);
    for (auto& v : A) v = h16(rf());
    std::vector<std::vector<__half>> W(nseg);
    std::vector<std::vector<float>> bias(nseg), out(nseg);
    MvArgs a{};
    a.k = K;
    a.mode = mode;
    a.n_seg = nseg;
    int tiles = 0;
    for (int s = 0; s < nseg; s++) {
        const int R = mode == MODE_PLAIN ? rows[s] : R0;
        W[s].resize((size_t)R * K);
        for (auto& v : W[s]) v = h16(rf());
        out[s].assign((size_t)M * R + 8, NAN);
        if (mode == MODE_PLAIN && s != 1) {
            bias[s].resize(R);
            for (auto& v : bias[s]) v = rf();
        }
        a.seg[s] = Seg{reinterpret_cast<const uint8_t*>(W[s].data()), bias[s].empty() ? nullptr : bias[s].data(),
                       out[s].data(), 2LL * K, T_F16, R};
        if (mode != MODE_GLU) tiles += (R + SK_ROWS - 1) / SK_ROWS;
    }
    if (mode == MODE_GLU) tiles = (R0 + SK_ROWS / 2 - 1) / (SK_ROWS / 2);
    std::vector<float> act((size_t)M * R0 + 8, NAN), acc((size_t)M * R0 + 8, NAN);
    std::vector<float> acc0((size_t)M * R0);
    for (auto& v : acc0) v = rf();
    for (size_t i = 0; i < acc0.size(); i++) acc[i] = acc0[i];
    a.act = act.data();
    a.acc = acc.data();
    const int tok = 8 * nt;
    const int smem = SK_STAGES * (SK_ROWS + tok) * SK_BK * 2;
    typedef void (*F)(MvArgs, const __half*, int);
    const F k = nt == 2 ? skinny_fused_n2 : skinny_fused_n4;
    run_grid2((M + tok - 1) / tok, tiles, SK_WARPS * 32, smem, [&] { k(a, A.data(), M); });
    double num = 0, den = 0, act_err = 0;
    int bad = 0;
    for (int s = 0; s < nseg; s++) {
        const int R = a.seg[s].rows;
        for (int m = 0; m < M; m++)
            for (int r = 0; r < R; r++) {
                double v = bias[s].empty() ? 0 : bias[s][r];
                for (int i = 0; i < K; i++)
                    v += (double)__half2float(A[(size_t)m * K + i]) * __half2float(W[s][(size_t)r * K + i]);
                const float y = out[s][(size_t)m * R + r];
                if (!std::isfinite(y)) bad++;
                num += (y - v) * (y - v);
                den += v * v;
                if (mode == MODE_ADD) {
                    const double want = (double)acc0[(size_t)m * R + r] + y;
                    if (fabs(acc[(size_t)m * R + r] - want) > 1e-6 * (1 + fabs(want))) bad++;
                }
            }
        for (int i = M * R; i < M * R + 8; i++) bad += !std::isnan(out[s][i]);
    }
    if (mode == MODE_GLU)
        for (int i = 0; i < M * R0; i++) {
            const double g = out[0][i], u = out[1][i], want = g / (1 + exp(-g)) * u;
            act_err = fmax(act_err, fabs(act[i] - want) / (1 + fabs(want)));
        }
    const double e = sqrt(num / den);
    const bool ok = !bad && e < 2e-6 && act_err < 1e-6;
    printf("skinny_fused n%d mode %d M=%-3d K=%-4d: rel err %.2e, act %.1e, %d bad%s\n", nt, mode, M, K, e, act_err,
           bad, ok ? "" : "  FAIL");
    return !ok;
}

// prep_f16: input rows normalized (or not) and rounded to f16, against the host's formula
// (inv = 1/sqrt(mean(x^2) + eps), v = x·inv·g, the sum of squares in double: the kernel's f32
// sum may move a value by an f16 ulp); normed f32 within 1e-6.
static int test_prep_f16(bool norm, int n, int k) {
    std::vector<float> x((size_t)n * k), g(k), normed((size_t)n * k, NAN);
    for (auto& v : x) v = rf();
    for (auto& v : g) v = 1 + rf();
    std::vector<__half> xh((size_t)n * k);
    const float eps = 1e-6f;
    blockDim = {256, 1, 1};  // prep_body strides by it
    for (int y = 0; y < n; y++)
        for (int bx = 0; bx < (k + 255) / 256; bx++) {
            blockIdx = {(unsigned)bx, (unsigned)y, 0};
            emu::run_block(256, [&] { prep_f16(x.data(), norm ? g.data() : nullptr, eps, norm ? normed.data() : nullptr, xh.data(), k); });
        }
    int bad = 0;
    double worst = 0;
    for (int y = 0; y < n; y++) {
        double ss = 0;
        for (int i = 0; i < k; i++) ss += (double)x[(size_t)y * k + i] * x[(size_t)y * k + i];
        const double inv = norm ? 1 / sqrt(ss / k + eps) : 1;
        for (int i = 0; i < k; i++) {
            const size_t j = (size_t)y * k + i;
            const double v = x[j] * inv * (norm ? g[i] : 1);
            const float h = __half2float(xh[j]);
            if (fabs(h - v) > fabs(v) * 1e-3 + 1e-7) bad++;
            if (norm) worst = fmax(worst, fabs(normed[j] - v) / (1 + fabs(v)));
        }
    }
    const bool ok = !bad && worst < 1e-6;
    printf("prep_f16 norm=%d %dx%d: %d off, normed err %.1e%s\n", norm, n, k, bad, worst, ok ? "" : "  FAIL");
    return !ok;
}

// The exact product of F16 (P = 2) or F32 (P = 3) weights: dequant_split_* and
// f32_to_f16_split* into rows of P k halves, then a GEMM over them, against the double sum of
// the unrounded f32 activations (magnitudes 2^-6 to 2^6, most not representable in f16) and
// the weights' values; beside it the plain path (dequant_f16_*, f32_to_f16), whose f16
// activations (and F32 weights) miss by ~2^-12 relative. The split must come within 2e-6
// (f32 accumulation over K and the dropped lo x lo term, ~2^-22) and 50 times under the plain.
static int test_split(const TypeInfo& ty, int M, int N, int K) {
    const int P = ty.id == T_F16 ? 2 : 3;
    const Tile& t = TILES[2];
    const long long rb = (long long)K * ty.bytes / 32;
    std::vector<uint8_t> W(N * rb);
    random_weights(W, ty.id, ty.bytes, (long long)N * K, rng);
    std::vector<float> X((size_t)M * K);
    for (auto& v : X) v = rf() * ldexpf(1.f, (int)(rnd() % 13) - 6);
    auto gemm = [&](const std::vector<__half>& A, const std::vector<__half>& B, int k) {
        std::vector<float> Y((size_t)M * N, NAN);
        const int smem = t.stages * (t.bm + t.bn) * t.bk * 2;
        run_grid2((M + t.bm - 1) / t.bm, (N + t.bn - 1) / t.bn, t.warps * 32, smem,
                  [&] { t.k(A.data(), B.data(), Y.data(), M, N, k); });
        return Y;
    };
    std::vector<__half> As((size_t)M * K * P), Bs((size_t)N * K * P), A((size_t)M * K), B((size_t)N * K);
    for (auto* v : {&As, &Bs, &A, &B})
        for (auto& h : *v) h.bits = 0x7e00;  // NaN
    const auto split_w = ty.id == T_F16 ? dequant_split_f16 : dequant_split_f32;
    const auto split_x = ty.id == T_F16 ? f32_to_f16_split2 : f32_to_f16_split3;
    run_grid1((long long)N * K / 32, [&] { split_w(W.data(), Bs.data(), N, K, rb); });
    run_grid1((long long)M * K / 8, [&] { split_x(X.data(), As.data(), (long long)M * K); });
    run_grid1((long long)N * K / 32, [&] { ty.dq(W.data(), B.data(), N, K, rb); });
    run_grid1((long long)M * K / 8, [&] { f32_to_f16(X.data(), A.data(), (long long)M * K); });
    const std::vector<float> Ys = gemm(As, Bs, K * P), Y = gemm(A, B, K);
    double num = 0, num_plain = 0, den = 0;
    for (int n = 0; n < N; n++) {
        std::vector<float> w(K);
        for (int c = 0; c < K / 32; c++) ty.chunk(&W[n * rb], c, &w[32 * c]);
        for (int m = 0; m < M; m++) {
            double s = 0;
            for (int i = 0; i < K; i++) s += (double)X[(size_t)m * K + i] * w[i];
            const double ys = Ys[(size_t)m * N + n], y = Y[(size_t)m * N + n];
            num += std::isfinite(ys) ? (ys - s) * (ys - s) : INFINITY;
            num_plain += (y - s) * (y - s);
            den += s * s;
        }
    }
    const double e = sqrt(num / den), ep = sqrt(num_plain / den);
    const bool ok = e < 2e-6 && e * 50 < ep;
    printf("exact product %-3s M=%-3d N=%-3d K=%-3d: rel err %.2e (plain f16 path %.2e)%s\n", ty.name, M, N, K,
           e, ep, ok ? "" : "  FAIL");
    return !ok;
}

int main(int argc, char** argv) {
    emu::eager = argc > 1 && !strcmp(argv[1], "eager");
    printf("cp.async copies land %s\n", emu::eager ? "when issued" : "at the wait");
    int bad = 0, runs = 0;
    for (const TypeInfo& ty : TYPES) {
        const bool kq = ty.block == 256;
        // 7 x 512 / 7 x 96: under one block of 256 chunks (and 21 chunks of Q*_0: a tensor
        // whose size is no multiple of 16 bytes); 33 x 256 / 33 x 160: a partial second
        // block; 300 x 1024 / 301 x 896: several blocks, the last partial.
        bad += test_dequant(ty, 7, kq ? 512 : 96);
        bad += test_dequant(ty, 33, kq ? 256 : 160);
        bad += test_dequant(ty, kq ? 300 : 301, kq ? 1024 : 896);
        runs += 3;
    }
    // Odd M and N (tails of every tile), K with a 32-value tail past the last whole BK = 64
    // step (and fewer steps than stages), and one K with more steps than stages.
    const int shapes[][3] = {{37, 70, 96}, {150, 133, 32}, {17, 260, 224}};
    for (const Tile& t : TILES)
        for (auto& s : shapes) {
            bad += test_gemm(t, s[0], s[1], s[2]);
            runs++;
        }
    // K: one step with a 32-value tail, fewer steps than stages; 9 steps (the ring wraps) and a
    // tail. M: 1 input, a partial tile, whole tiles, several tiles with a partial last.
    for (int K : {96, 1056}) {
        const int N = 70, Mmax = 37;
        std::vector<__half> A((size_t)Mmax * K), B((size_t)N * K);
        for (auto& v : A) v = h16(rf());
        for (auto& v : B) v = h16(rf());
        std::vector<float> base;
        for (int nt : {2, 4})
            for (int M : {1, 5, 16, 32, 37}) {
                if (nt == 4 && M == 1) continue;
                bad += test_skinny(nt, M, N, K, A, B, &base);
                runs++;
            }
    }
    for (int nt : {2, 4})
        for (int mode : {MODE_PLAIN, MODE_ADD, MODE_GLU}) {
            bad += test_skinny_fused(nt, mode, nt == 2 ? 5 : 37, 1056);
            runs++;
        }
    bad += test_prep_f16(true, 3, 896) + test_prep_f16(false, 2, 160);
    runs += 2;
    for (int i = 0; i < 2; i++) {
        bad += test_split(TYPES[i], 37, 70, 96) + test_split(TYPES[i], 65, 131, 256);
        runs += 2;
    }
    printf("%d runs, %d failed\n", runs, bad);
    return bad ? 1 : 0;
}
