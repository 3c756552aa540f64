// CPU emulation of kernels/decode.cu's mat-vec kernels (tests/emu/emu_runtime.h): prep_input,
// fused_matvec (the generic kernel, those of one format and those of a q/k/v pair of formats
// over three segments; each epilogue, 1-8 warps a row, odd rows, several rounds) and the
// mixture-of-experts expert_matvec / expert_combine (whose unselected experts are poisoned
// memory: only the selected ones may be read; the experts named through pointer tables as a
// model's are), for every quantized format and MXFP4 in particular; and
// attention_decode (one block a head and the split/merge, windows, GPT-OSS's sinks, RoPE folded
// or the token stored by kv_store_decode first), under AddressSanitizer (scripts/mma-emu.sh).
//
// References, in double:
//   - MXFP4 values from the format's definition (OCP MX v1.0: E2M1 magnitudes 0, 0.5, 1, 1.5,
//     2, 3, 4, 6 times 2^(e-127), ldexp), which Fmt<T_MXFP4>::chunk and the byte-permute decode
//     of the fused kernels must match bit for bit over every exponent and code (exhaustive);
//     llorch::quant::dequantize matches the same definition and the reference reader's golden
//     values (tests/quant_dequant.rs, tests/quant_quantize.rs);
//   - other formats through Fmt<T>::chunk (checked against the CPU in tests/cuda_kernels.rs);
//   - the input as the kernels multiply it: the emulated prep_input's chunk records
//     (d·(q1 + q2/254)), so that only the kernels' f32 arithmetic differs from the reference.
// Tolerance: |y - ref| <= 2e-6 · Σ|w·x| per output (f32 sums of exact dp4a integers over at
// most 152 blocks: each step a rounding of 2^-24 relative to the running magnitude, and the
// f32 1/254 of the second plane); one wrongly decoded weight of a 1280-value row moves an
// output by about 1/1280 of Σ|w·x|, 400 times the tolerance.
#include "emu_runtime.h"

#include <cmath>

#include "../../kernels/decode.cu"
#include "emu_pages.h"
#include "attn_ref.h"
#include "emu_buf.h"
#include "emu_weights.h"

static SplitMix64 rng{0xDEC0DE};

// ---------- MXFP4 against its definition ----------

static int check_mxfp4_definition() {
    static const double E2M1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    int bad = 0;
    uint8_t blk[17];
    for (int e = 0; e < 256; e++) {
        for (int q = 0; q < 16; q++) {
            blk[0] = (uint8_t)e;
            for (int i = 0; i < 16; i++) blk[1 + i] = (uint8_t)(((i + q) & 15) | (((q + 3 * i) & 15) << 4));
            float o[32];
            Fmt<T_MXFP4>::chunk(blk, 0, o);
            for (int i = 0; i < 32; i++) {
                const int code = i < 16 ? blk[1 + i] & 15 : blk[1 + i - 16] >> 4;
                const float want = (float)ldexp((code & 8 ? -1 : 1) * E2M1[code & 7], e - 127);
                uint32_t a, b;
                memcpy(&a, &o[i], 4);
                memcpy(&b, &want, 4);
                // (+0 and -0 alike: code 8 is a negative zero by the definition.)
                if (a != b && !(o[i] == 0 && want == 0)) bad++;
            }
        }
    }
    // The fused kernels' decode: every 4 codes -> 4 signed bytes (the doubled values).
    for (uint32_t v = 0; v < 65536; v++) {
        const uint32_t q = (v & 15) | ((v >> 4) & 15) << 8 | ((v >> 8) & 15) << 16 | (v >> 12) << 24;
        const uint32_t noise = (uint32_t)rng.next() & 0xF0F0F0F0u;  // high nibbles ignored
        const uint32_t w = (uint32_t)mxfp4_bytes(q | noise);
        for (int n = 0; n < 4; n++)
            if ((int8_t)(w >> (8 * n)) != mxfp4_doubled((q >> (8 * n)) & 15)) bad++;
    }
    printf("mxfp4 decode vs definition (256 exponents x 16 codes; 65536 code quads): %s\n",
           bad ? "MISMATCH" : "bit-equal");
    return bad != 0;
}

// ---------- buffers ----------

struct TypeInfo {
    const char* name;
    int id, block, bytes;
    void (*chunk)(const uint8_t*, int, float*);
    void (*one)(const MvArgs, const void*, int);       // fused_matvec_<fmt>
    void (*one_glu)(const MvArgs, const void*, int);   // fused_matvec_<fmt>_glu
    void (*expert)(const ExpertArgs, const uint8_t*, int);
};
static const TypeInfo TYPES[] = {
    {"mxfp4", T_MXFP4, 32, 17, Fmt<T_MXFP4>::chunk, fused_matvec_mxfp4, fused_matvec_mxfp4_glu, expert_matvec_mxfp4},
    {"q8_0", T_Q8_0, 32, 34, Fmt<T_Q8_0>::chunk, fused_matvec_q8_0, fused_matvec_q8_0_glu, expert_matvec_q8_0},
    {"q5_0", T_Q5_0, 32, 22, Fmt<T_Q5_0>::chunk, fused_matvec_q5_0, fused_matvec_q5_0_glu, expert_matvec_q5_0},
    {"q4_1", T_Q4_1, 32, 20, Fmt<T_Q4_1>::chunk, fused_matvec_q4_1, fused_matvec_q4_1_glu, expert_matvec_q4_1},
    {"q4_k", T_Q4_K, 256, 144, Fmt<T_Q4_K>::chunk, fused_matvec_q4_k, fused_matvec_q4_k_glu, expert_matvec_q4_k},
    {"q6_k", T_Q6_K, 256, 210, Fmt<T_Q6_K>::chunk, fused_matvec_q6_k, fused_matvec_q6_k_glu, expert_matvec_q6_k},
};

// A random matrix of `rows` x `k` (padded by 16 bytes as the model uploads weights) and its
// rows decoded in double.
struct Matrix {
    Buf w;
    std::vector<double> v;
    Matrix(const TypeInfo& t, int rows, int k) : w((size_t)rows * (k / t.block) * t.bytes + 16) {
        std::vector<uint8_t> tmp(w.n - 16);
        random_weights(tmp, t.id, t.bytes, (long long)rows * k, rng);
        memcpy(w.p, tmp.data(), tmp.size());
        const long long rb = (long long)(k / t.block) * t.bytes;
        v.resize((size_t)rows * k);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < k / 32; c++) {
                float o[32];
                t.chunk(w.p + r * rb, c, o);
                for (int i = 0; i < 32; i++) v[(size_t)r * k + 32 * c + i] = o[i];
            }
    }
};

// Dynamic shared memory of a fused_matvec launch, as the launcher gives it: two rows' stage
// units a warp for a SwiGLU, one row's for the plain and add products.
static int mv_smem(bool glu) { return (glu ? 4 : 2) * DW * STAGE; }
static void run_grid(int blocks, int smem, const std::function<void()>& body, int blocks_y = 1) {
    std::vector<uint8_t> sm(smem);  // exactly sized, garbage
    for (auto& b : sm) b = (uint8_t)rng.next();
    emu_dyn_smem = sm.data();
    emu_dyn_smem_size = smem;
    gridDim = {(unsigned)blocks, (unsigned)blocks_y, 1};
    blockDim = {32 * DW, 1, 1};
    for (int y = 0; y < blocks_y; y++)
        for (int b = 0; b < blocks; b++) {
            blockIdx = {(unsigned)b, (unsigned)y, 0};
            emu::run_block(32 * DW, body);
        }
}

// Chunk records of x (k values, `n` vectors back to back) by the emulated prep_input, and the
// values they stand for.
static std::vector<double> prepare(const std::vector<float>& x, Buf& rec) {
    const int k = (int)x.size();
    Buf xd(x.size() * 4);
    memcpy(xd.p, x.data(), x.size() * 4);
    run_grid((k / 32 + DW - 1) / DW, 0, [&] { prep_input(xd.f(), nullptr, 0.f, nullptr, rec.p, k); });
    std::vector<double> xr(k);
    for (int c = 0; c < k / 32; c++) {
        const uint8_t* r = rec.p + c * XREC;
        float d;
        memcpy(&d, r + 64, 4);
        for (int i = 0; i < 32; i++) xr[32 * c + i] = (double)d * ((int8_t)r[i] + (int8_t)r[32 + i] / 254.0);
    }
    return xr;
}

// y against Σ w·x with the tolerance above; `what` names the case.
static int compare(const char* what, const float* y, const double* w, const double* x, int rows, int k,
                   const double* add = nullptr) {
    double worst = 0;
    int bad = 0;
    for (int r = 0; r < rows; r++) {
        double s = add ? add[r] : 0, mag = add ? fabs(add[r]) : 0;
        for (int i = 0; i < k; i++) s += w[(size_t)r * k + i] * x[i], mag += fabs(w[(size_t)r * k + i] * x[i]);
        const double err = fabs(y[r] - s);
        if (!(err <= 2e-6 * mag + 1e-30)) bad++;
        if (mag > 0) worst = std::max(worst, err / mag);
    }
    printf("  %-44s rows %4d k %5d: worst |err|/sum|w x| %.2e%s\n", what, rows, k, worst, bad ? "  FAIL" : "");
    return bad != 0;
}

// fused_matvec over one matrix: plain (+bias), GLU (gate, up), add; generic and one-format
// kernels; `blocks` and `wpr` as the launcher could pick them (few blocks: several rounds).
static int test_fused(const TypeInfo& t, int rows, int k, int blocks, int wpr) {
    int bad = 0;
    Matrix g(t, rows, k), u(t, rows, k);
    std::vector<float> x(k);
    for (auto& v : x) v = rng.unit() * (rng.next() % 7 == 0 ? 8.f : 1.f);
    Buf rec((size_t)k / 32 * XREC);
    const std::vector<double> xr = prepare(x, rec);
    const long long rb = (long long)(k / t.block) * t.bytes;
    std::vector<float> bias(rows);
    for (auto& v : bias) v = rng.unit();
    Buf bd(rows * 4), o0(rows * 4), o1(rows * 4), act(rows * 4), acc(rows * 4);
    memcpy(bd.p, bias.data(), rows * 4);
    char what[96];
    for (int generic = 0; generic < 2; generic++) {
        // Plain, with a bias.
        MvArgs a{};
        a.k = k, a.mode = MODE_PLAIN, a.n_seg = 1;
        a.seg[0] = Seg{g.w.p, bd.f(), o0.f(), rb, t.id, rows};
        memset(o0.p, 0xFF, o0.n);
        run_grid(blocks, mv_smem(false), [&] {
            generic ? fused_matvec(a, rec.p, wpr) : t.one(a, rec.p, wpr);
        });
        std::vector<double> b64(bias.begin(), bias.end());
        snprintf(what, sizeof what, "%s %s plain+bias wpr %d blocks %d", t.name, generic ? "generic" : "one-fmt", wpr, blocks);
        bad += compare(what, o0.f(), g.v.data(), xr.data(), rows, k, b64.data());
        // GLU: gate and up rows together; act = silu(g) * u from the kernel's own g and u.
        a = MvArgs{};
        a.k = k, a.mode = MODE_GLU, a.n_seg = 2, a.act = act.f();
        a.seg[0] = Seg{g.w.p, nullptr, o0.f(), rb, t.id, rows};
        a.seg[1] = Seg{u.w.p, nullptr, o1.f(), rb, t.id, rows};
        memset(o0.p, 0xFF, o0.n), memset(o1.p, 0xFF, o1.n), memset(act.p, 0xFF, act.n);
        run_grid(blocks, mv_smem(true), [&] {
            generic ? fused_matvec(a, rec.p, wpr) : t.one_glu(a, rec.p, wpr);
        });
        snprintf(what, sizeof what, "%s %s glu gate", t.name, generic ? "generic" : "one-fmt");
        bad += compare(what, o0.f(), g.v.data(), xr.data(), rows, k);
        snprintf(what, sizeof what, "%s %s glu up", t.name, generic ? "generic" : "one-fmt");
        bad += compare(what, o1.f(), u.v.data(), xr.data(), rows, k);
        int act_bad = 0;
        for (int r = 0; r < rows; r++) {
            const float gv = o0.f()[r], want = gv / (1.0f + expf(-gv)) * o1.f()[r];
            act_bad += act.f()[r] != want;
        }
        if (act_bad) printf("  %s glu act: %d outputs differ from silu(g)*u  FAIL\n", t.name, act_bad);
        bad += act_bad != 0;
        // Add into a residual.
        a = MvArgs{};
        a.k = k, a.mode = MODE_ADD, a.n_seg = 1, a.acc = acc.f();
        a.seg[0] = Seg{g.w.p, nullptr, o0.f(), rb, t.id, rows};
        std::vector<double> acc0(rows);
        for (int r = 0; r < rows; r++) acc.f()[r] = (float)(acc0[r] = rng.unit());
        run_grid(blocks, mv_smem(false), [&] {
            generic ? fused_matvec(a, rec.p, wpr) : t.one(a, rec.p, wpr);
        });
        snprintf(what, sizeof what, "%s %s add", t.name, generic ? "generic" : "one-fmt");
        bad += compare(what, acc.f(), g.v.data(), xr.data(), rows, k, acc0.data());
    }
    return bad;
}

// ---------- several inputs at once (a batched step's sequences) ----------

using MvKernel = void (*)(const MvArgs, const void*, int);
// Each format's kernels of 1, 2, 4 and 8 inputs: plain/add, then SwiGLU.
struct MultiKernels {
    const char* name;
    int id, block, bytes;
    void (*chunk)(const uint8_t*, int, float*);
    MvKernel plain[4], glu[4];
};
#define MK(name, T, block, bytes)                                                                   \
    MultiKernels {                                                                                  \
        #name, T, block, bytes, Fmt<T>::chunk,                                                      \
            {fused_matvec_##name, fused_matvec_##name##_r2, fused_matvec_##name##_r4,               \
             fused_matvec_##name##_r8},                                                             \
            {fused_matvec_##name##_glu, fused_matvec_##name##_r2_glu, fused_matvec_##name##_r4_glu, \
             fused_matvec_##name##_r8_glu},                                                         \
    }
static const MultiKernels MULTI[] = {
    MK(f32, T_F32, 32, 128), MK(f16, T_F16, 32, 64),    MK(q4_1, T_Q4_1, 32, 20),
    MK(q5_0, T_Q5_0, 32, 22), MK(q8_0, T_Q8_0, 32, 34), MK(q4_k, T_Q4_K, 256, 144),
    MK(q6_k, T_Q6_K, 256, 210), MK(mxfp4, T_MXFP4, 32, 17),
};
#undef MK

// nr inputs through the kernels of nr inputs, for the plain (+bias), SwiGLU and add epilogues:
// with `single`, each output within the tolerance above of nr runs of the one-input kernel
// (the same f32 sums, the compiler free to order them; test_fused checks that kernel against
// the reference), and each within it of the double reference. Not for the formats with a
// min term (Q4_1, Q4_K), whose kernels add m·Σx with the exact sum of the unquantized input
// (prep_input's record) where the reference has the quantized values: a difference of the
// input's quantization, up to |m|·32·d/508 a chunk, not of the f32 sums; for those the
// one-input comparison is the check (always made). The inputs are RMS-normalized and prepared
// by one prep_input of nr rows, whose first and last rows must equal one-row runs byte for
// byte (the same code per row). (The emulator runs a few grids a second under
// AddressSanitizer: the one-input runs only where asked.)
static int test_multirow(const MultiKernels& t, int ri, int rows, int k, int blocks, int wpr, bool single) {
    const int nr = 1 << ri;
    const bool fl = t.id == T_F32 || t.id == T_F16;
    const bool has_min = t.id == T_Q4_1 || t.id == T_Q4_K;
    single = single || has_min;
    int bad = 0;
    char what[112];
    Matrix g({t.name, t.id, t.block, t.bytes, t.chunk, nullptr, nullptr, nullptr}, rows, k);
    Matrix u({t.name, t.id, t.block, t.bytes, t.chunk, nullptr, nullptr, nullptr}, rows, k);
    const long long rb = (long long)(k / t.block) * t.bytes, per = (long long)k / 32 * XREC;
    // Inputs, a norm weight; prep_input of all rows at once and of each alone.
    Buf x((size_t)nr * k * 4), nw((size_t)k * 4), normed((size_t)nr * k * 4), rec((size_t)nr * per);
    for (int i = 0; i < nr * k; i++) x.f()[i] = rng.unit() * (rng.next() % 7 == 0 ? 8.f : 1.f);
    for (int i = 0; i < k; i++) nw.f()[i] = 0.5f + rng.unit();
    const int pblocks = (k / 32 + DW - 1) / DW;
    run_grid(pblocks, 0, [&] { prep_input(x.f(), nw.f(), 1e-6f, normed.f(), rec.p, k); }, nr);
    std::vector<std::vector<double>> xr(nr, std::vector<double>(k));
    int prep_bad = 0;
    for (int i = 0; i < nr; i++) {
        if (i == 0 || i == nr - 1) {
            Buf n1((size_t)k * 4), r1((size_t)per);
            run_grid(pblocks, 0, [&] { prep_input(x.f() + (size_t)i * k, nw.f(), 1e-6f, n1.f(), r1.p, k); });
            prep_bad += memcmp(n1.p, normed.p + (size_t)i * k * 4, k * 4) != 0;
            prep_bad += memcmp(r1.p, rec.p + i * per, per) != 0;
        }
        for (int c = 0; c < k / 32; c++) {
            const uint8_t* r = rec.p + i * per + c * XREC;
            float d;
            memcpy(&d, r + 64, 4);
            for (int v = 0; v < 32; v++)
                xr[i][32 * c + v] = fl ? (double)normed.f()[(size_t)i * k + 32 * c + v]
                                       : (double)d * ((int8_t)r[v] + (int8_t)r[32 + v] / 254.0);
        }
    }
    if (prep_bad) printf("  %s prep_input of %d rows differs from one-row runs  FAIL\n", t.name, nr);
    bad += prep_bad != 0;
    const void* in = fl ? (const void*)normed.p : (const void*)rec.p;
    const int xst = fl ? k * 4 : (int)per;
    std::vector<float> bias(rows);
    for (auto& v : bias) v = rng.unit();
    std::vector<double> b64(bias.begin(), bias.end());
    Buf bd(rows * 4);
    memcpy(bd.p, bias.data(), rows * 4);
    const size_t ob = (size_t)nr * rows * 4;
    Buf o0(ob), o1(ob), act(ob), acc(ob), s0(rows * 4);
    // Output i of the nr kernel against the one-input kernel's on input i (y1, if given) and
    // against the double reference; one line per epilogue (`worst`: over its rows so far).
    double worst[2] = {0, 0};
    auto against_single = [&](const char* epi, const float* y, const float* y1, const double* w, int i,
                              const double* add) {
        int b = 0;
        for (int r = 0; r < rows; r++) {
            double ref = add ? add[r] : 0, mag = add ? fabs(add[r]) : 0;
            for (int v = 0; v < k; v++) {
                ref += w[(size_t)r * k + v] * xr[i][v];
                mag += fabs(w[(size_t)r * k + v] * xr[i][v]);
            }
            const double diff = y1 ? fabs((double)y[r] - (double)y1[r]) : 0, err = fabs((double)y[r] - ref);
            if (!(diff <= 2e-6 * mag + 1e-30) || (!has_min && !(err <= 2e-6 * mag + 1e-30))) b++;
            if (mag > 0) worst[0] = std::max(worst[0], diff / mag), worst[1] = std::max(worst[1], err / mag);
        }
        if (b || i == nr - 1) {
            snprintf(what, sizeof what, "%s r%d %s (%d inputs)", t.name, nr, epi, i + 1);
            if (y1)
                printf("  %-36s rows %4d k %5d: worst |y - one-input|, |y - ref| / sum|w x| %.1e, %.1e%s%s\n",
                       what, rows, k, worst[0], worst[1], has_min ? " (min term)" : "", b ? "  FAIL" : "");
            else
                printf("  %-36s rows %4d k %5d: worst |y - ref| / sum|w x| %.1e%s\n", what, rows, k, worst[1],
                       b ? "  FAIL" : "");
            worst[0] = worst[1] = 0;
        }
        return b != 0;
    };
    // Plain, with a bias.
    MvArgs a{};
    a.k = k, a.mode = MODE_PLAIN, a.n_seg = 1, a.x_stride = xst;
    a.seg[0] = Seg{g.w.p, bd.f(), o0.f(), rb, t.id, rows};
    memset(o0.p, 0xFF, o0.n);
    run_grid(blocks, mv_smem(false), [&] { t.plain[ri](a, in, wpr); });
    for (int i = 0; i < nr; i++) {
        MvArgs a1 = a;
        a1.x_stride = 0, a1.seg[0].out = s0.f();
        if (single)
            run_grid(blocks, mv_smem(false), [&] { t.plain[0](a1, (const uint8_t*)in + (size_t)i * xst, wpr); });
        bad += against_single("plain+bias", o0.f() + (size_t)i * rows, single ? s0.f() : nullptr, g.v.data(), i,
                              b64.data());
    }
    // SwiGLU: gate, up and act per row.
    a = MvArgs{};
    a.k = k, a.mode = MODE_GLU, a.n_seg = 2, a.act = act.f(), a.x_stride = xst;
    a.seg[0] = Seg{g.w.p, nullptr, o0.f(), rb, t.id, rows};
    a.seg[1] = Seg{u.w.p, nullptr, o1.f(), rb, t.id, rows};
    memset(o0.p, 0xFF, ob), memset(o1.p, 0xFF, ob), memset(act.p, 0xFF, ob);
    run_grid(blocks, mv_smem(true), [&] { t.glu[ri](a, in, wpr); });
    Buf s1(rows * 4), sact(rows * 4);
    for (int i = 0; i < nr; i++) {
        MvArgs a1 = a;
        a1.x_stride = 0, a1.seg[0].out = s0.f(), a1.seg[1].out = s1.f(), a1.act = sact.f();
        if (single)
            run_grid(blocks, mv_smem(true), [&] { t.glu[0](a1, (const uint8_t*)in + (size_t)i * xst, wpr); });
        bad += against_single("glu gate", o0.f() + (size_t)i * rows, single ? s0.f() : nullptr, g.v.data(), i,
                              nullptr);
        bad += against_single("glu up", o1.f() + (size_t)i * rows, single ? s1.f() : nullptr, u.v.data(), i,
                              nullptr);
        int act_bad = 0;
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)i * rows + r;
            const float gv = o0.f()[o], want = gv / (1.0f + expf(-gv)) * o1.f()[o];
            act_bad += act.f()[o] != want;
        }
        if (act_bad) printf("  %s r%d glu act row %d: %d outputs differ from silu(g)*u  FAIL\n", t.name, nr, i, act_bad);
        bad += act_bad != 0;
    }
    // Add into each row's residual.
    a = MvArgs{};
    a.k = k, a.mode = MODE_ADD, a.n_seg = 1, a.acc = acc.f(), a.x_stride = xst;
    a.seg[0] = Seg{g.w.p, nullptr, o0.f(), rb, t.id, rows};
    std::vector<double> acc0((size_t)nr * rows);
    for (size_t o = 0; o < acc0.size(); o++) acc.f()[o] = (float)(acc0[o] = rng.unit());
    run_grid(blocks, mv_smem(false), [&] { t.plain[ri](a, in, wpr); });
    Buf sacc(rows * 4);
    for (int i = 0; i < nr; i++) {
        MvArgs a1 = a;
        a1.x_stride = 0, a1.acc = sacc.f(), a1.seg[0].out = s0.f();
        for (int r = 0; r < rows; r++) sacc.f()[r] = (float)acc0[(size_t)i * rows + r];
        if (single)
            run_grid(blocks, mv_smem(false), [&] { t.plain[0](a1, (const uint8_t*)in + (size_t)i * xst, wpr); });
        bad += against_single("add", acc.f() + (size_t)i * rows, single ? sacc.f() : nullptr, g.v.data(), i,
                              acc0.data() + (size_t)i * rows);
    }
    return bad;
}

// Under AddressSanitizer, the experts no id selects are poisoned while the kernels run (all
// but 16 bytes at each end, which a neighbour's 16-byte aligned copies may touch): reading
// any of their rows is an error.
struct PoisonUnselected {
    std::vector<std::pair<uint8_t*, size_t>> regions;
    PoisonUnselected(uint8_t* base, long long eb, int n_expert, const std::vector<int>& ids) {
        for (int e = 0; e < n_expert; e++) {
            if (std::find(ids.begin(), ids.end(), e) != ids.end()) continue;
            const uintptr_t lo = ((uintptr_t)(base + e * eb) + 16 + 7) & ~(uintptr_t)7;
            const uintptr_t hi = ((uintptr_t)(base + (e + 1) * eb) - 16) & ~(uintptr_t)7;
            if (hi > lo) regions.push_back({(uint8_t*)lo, hi - lo});
        }
#ifdef __SANITIZE_ADDRESS__
        for (auto& r : regions) ASAN_POISON_MEMORY_REGION(r.first, r.second);
#endif
    }
    ~PoisonUnselected() {
#ifdef __SANITIZE_ADDRESS__
        for (auto& r : regions) ASAN_UNPOISON_MEMORY_REGION(r.first, r.second);
#endif
    }
};

// expert_matvec: n_expert stacked matrices, n_sel ids (a repeat; with `bad_id` one out of
// range), gate and up with biases on one shared input, then down on per-expert inputs; and
// expert_combine of the down outputs into a residual. Unselected experts are poisoned.
static int test_experts(const TypeInfo& t, int n_expert, int rows, int k, int n_sel, int blocks, int wpr,
                        bool bad_id) {
    int bad = 0;
    char what[96];
    const long long rb = (long long)(k / t.block) * t.bytes, eb = rb * rows;
    Matrix gate(t, n_expert * rows, k), up(t, n_expert * rows, k);
    std::vector<int> ids(n_sel);
    for (int s = 0; s < n_sel; s++) ids[s] = (int)(rng.next() % n_expert);
    if (n_sel > 2) ids[2] = ids[0];  // the same expert twice
    const int bad_slot = bad_id ? n_sel - 1 : -1;
    if (bad_id) ids[bad_slot] = (rng.next() & 1) ? n_expert : -1;
    Buf idd(n_sel * 4);
    memcpy(idd.p, ids.data(), n_sel * 4);
    std::vector<float> bg(n_expert * rows), bu(n_expert * rows);
    for (auto& v : bg) v = rng.unit();
    for (auto& v : bu) v = rng.unit();
    Buf bgd(bg.size() * 4), bud(bu.size() * 4);
    memcpy(bgd.p, bg.data(), bg.size() * 4), memcpy(bud.p, bu.data(), bu.size() * 4);
    // Shared input.
    std::vector<float> x(k);
    for (auto& v : x) v = rng.unit();
    Buf rec((size_t)k / 32 * XREC);
    const std::vector<double> xr = prepare(x, rec);
    Buf og((size_t)n_sel * rows * 4), ou((size_t)n_sel * rows * 4);
    // The pointer tables of the experts and their bias rows (the model's: a buffer each).
    std::vector<const uint8_t*> tg(n_expert), tu(n_expert);
    std::vector<const float*> tbg(n_expert), tbu(n_expert);
    for (int e = 0; e < n_expert; e++) {
        tg[e] = gate.w.p + e * eb, tu[e] = up.w.p + e * eb;
        tbg[e] = bgd.f() + (size_t)e * rows, tbu[e] = bud.f() + (size_t)e * rows;
    }
    ExpertArgs a{};
    a.w[0] = tg.data(), a.w[1] = tu.data(), a.bias[0] = tbg.data(), a.bias[1] = tbu.data();
    a.out[0] = og.f(), a.out[1] = ou.f(), a.ids = reinterpret_cast<const int*>(idd.p);
    a.row_bytes = rb, a.x_stride = 0;
    a.n_mat = 2, a.n_sel = n_sel, a.n_expert = n_expert, a.rows = rows, a.k = k;
    {
        PoisonUnselected pg(gate.w.p, eb, n_expert, ids), pu(up.w.p, eb, n_expert, ids);
        run_grid(blocks, 2 * DW * STAGE, [&] { t.expert(a, rec.p, wpr); });
    }
    for (int s = 0; s < n_sel; s++)
        for (int m = 0; m < 2; m++) {
            const float* y = (m ? ou : og).f() + (size_t)s * rows;
            if (s == bad_slot) {
                int finite = 0;
                for (int r = 0; r < rows; r++) finite += !std::isnan(y[r]);
                if (finite) printf("  %s id %d out of range: %d rows not NaN  FAIL\n", t.name, ids[s], finite);
                bad += finite != 0;
                continue;
            }
            const Matrix& mat = m ? up : gate;
            const std::vector<float>& b = m ? bu : bg;
            std::vector<double> b64(b.begin() + (size_t)ids[s] * rows, b.begin() + (size_t)(ids[s] + 1) * rows);
            snprintf(what, sizeof what, "%s experts %s slot %d (expert %d) wpr %d", t.name, m ? "up" : "gate", s,
                     ids[s], wpr);
            bad += compare(what, y, mat.v.data() + (size_t)ids[s] * rows * k, xr.data(), rows, k, b64.data());
        }
    // Per-expert inputs (the down product), one tensor, no bias; then the weighted sum.
    std::vector<float> xs((size_t)n_sel * k);
    for (auto& v : xs) v = rng.unit();
    Buf recs((size_t)n_sel * k / 32 * XREC);
    const std::vector<double> xsr = prepare(xs, recs);
    Buf od((size_t)n_sel * rows * 4);
    a = ExpertArgs{};
    a.w[0] = tg.data(), a.out[0] = od.f(), a.ids = reinterpret_cast<const int*>(idd.p);
    a.row_bytes = rb, a.x_stride = (long long)k / 32 * XREC;
    a.n_mat = 1, a.n_sel = n_sel, a.n_expert = n_expert, a.rows = rows, a.k = k;
    {
        PoisonUnselected pg(gate.w.p, eb, n_expert, ids);
        run_grid(blocks, 2 * DW * STAGE, [&] { t.expert(a, recs.p, wpr); });
    }
    for (int s = 0; s < n_sel; s++) {
        if (s == bad_slot) continue;
        snprintf(what, sizeof what, "%s experts down slot %d (own input)", t.name, s);
        bad += compare(what, od.f() + (size_t)s * rows, gate.v.data() + (size_t)ids[s] * rows * k,
                       xsr.data() + (size_t)s * k, rows, k);
    }
    if (!bad_id) {
        std::vector<float> wts(n_sel);
        for (auto& v : wts) v = rng.unit();
        Buf wd(n_sel * 4), y(rows * 4), acc(rows * 4);
        memcpy(wd.p, wts.data(), n_sel * 4);
        std::vector<float> acc0(rows);
        for (int r = 0; r < rows; r++) acc.f()[r] = acc0[r] = rng.unit();
        gridDim = {(unsigned)((rows + 255) / 256), 1, 1};
        blockDim = {256, 1, 1};
        for (unsigned b = 0; b < gridDim.x; b++) {
            blockIdx = {b, 0, 0};
            emu::run_block(256, [&] { expert_combine(od.f(), wd.f(), y.f(), acc.f(), n_sel, rows); });
        }
        int cb = 0;
        for (int r = 0; r < rows; r++) {
            float v = 0.f;  // the kernel's order and f32 arithmetic
            for (int s = 0; s < n_sel; s++) v += wts[s] * od.f()[(size_t)s * rows + r];
            cb += y.f()[r] != v || acc.f()[r] != acc0[r] + v;
        }
        printf("  %s expert_combine of %d: %s\n", t.name, n_sel, cb ? "MISMATCH  FAIL" : "exact");
        bad += cb != 0;
    }
    return bad;
}

// A q/k/v product through a kernel of two formats (fused_matvec_q4_k_q6_k, _q5_0_q8_0): three
// segments (odd and even row counts, biases on the first two; the third of the second format),
// `wpr` warps a job, few blocks (several rounds): each segment's outputs against its reference.
static int test_segments(const TypeInfo& ta, const TypeInfo& tb,
                         void (*kern)(const MvArgs, const void*, int), int k, int blocks, int wpr) {
    const int rows[3] = {37, 9, 20};
    const TypeInfo* ts[3] = {&ta, &ta, &tb};
    std::vector<float> x(k);
    for (auto& v : x) v = rng.unit() * (rng.next() % 7 == 0 ? 8.f : 1.f);
    Buf rec((size_t)k / 32 * XREC);
    const std::vector<double> xr = prepare(x, rec);
    std::vector<Matrix> m;
    std::vector<Buf> bias, out;
    std::vector<std::vector<double>> b64(3);
    MvArgs a{};
    a.k = k, a.mode = MODE_PLAIN, a.n_seg = 3;
    for (int s = 0; s < 3; s++) {
        m.emplace_back(*ts[s], rows[s], k);
        bias.emplace_back(rows[s] * 4);
        out.emplace_back(rows[s] * 4);
        for (int r = 0; r < rows[s]; r++) bias[s].f()[r] = (float)(b64[s].emplace_back(s < 2 ? rng.unit() : 0.0));
        memset(out[s].p, 0xFF, out[s].n);
    }
    for (int s = 0; s < 3; s++)
        a.seg[s] = Seg{m[s].w.p, s < 2 ? bias[s].f() : nullptr, out[s].f(),
                       (long long)(k / ts[s]->block) * ts[s]->bytes, ts[s]->id, rows[s]};
    run_grid(blocks, mv_smem(false), [&] { kern(a, rec.p, wpr); });
    int bad = 0;
    char what[96];
    for (int s = 0; s < 3; s++) {
        snprintf(what, sizeof what, "%s_%s seg %d (%s) wpr %d blocks %d", ta.name, tb.name, s, ts[s]->name, wpr,
                 blocks);
        bad += compare(what, out[s].f(), m[s].v.data(), xr.data(), rows[s], k, s < 2 ? b64[s].data() : nullptr);
    }
    return bad;
}

// A value as a cache of KV holds it.
static double kv_round(__half*, float x) { return __half2float(__float2half_rn(x)); }
static double kv_round(float*, float x) { return x; }
static __half kv_make(__half*, float x) { return __float2half_rn(x); }
static float kv_make(float*, float x) { return x; }
static double kv_value(__half h) { return __half2float(h); }
static double kv_value(float f) { return f; }

// attention_decode (a head size's kernel or the generic one) of one query at position `pos`
// over an f16 (KV = __half) or f32 (KV = float: the `_f32kv` kernels) cache, with or without
// sinks, against a double reference on the same cached keys and values. The token's k and v go into the cache either inside the kernel (`fold`: RoPE too,
// checked against the reference's own rotation) or by kv_store_decode before it (k taken as
// already rotated). Short contexts take one block a head, long ones the split and merge.
template <class KV>
static int test_attention_decode(int hd, int n_heads, int n_kv, int pos, int window, bool sinks, bool generic,
                                 bool fold) {
    constexpr bool f32 = sizeof(KV) == 4;
    KV* tag = nullptr;  // picks kv_round's and kv_make's overloads
    const int max_ctx = pos + 3;
    std::vector<KV> kc((size_t)n_kv * max_ctx * hd), vc(kc.size());
    for (auto& h : kc) h = kv_make(tag, rng.unit());
    for (auto& h : vc) h = kv_make(tag, rng.unit());
    // The cache as the kernels take it: layer 1 of 2, in shuffled pages (emu_pages.h).
    Paged<KV> pg(kc, vc, n_kv, max_ctx, hd, 2, 1, 0xDEC0DE + pos);
    std::vector<float> q((size_t)n_heads * hd), knew((size_t)n_kv * hd), vnew(knew.size());
    for (auto& v : q) v = 2 * rng.unit();
    for (auto& v : knew) v = rng.unit();
    for (auto& v : vnew) v = rng.unit();
    std::vector<float> sk(n_heads);
    for (int h = 0; h < n_heads; h++) sk[h] = h % 4 == 3 ? 200.f : (float)(h % 4) * 3.f - 3.f + rng.unit();
    const int rot = hd, neox = 1;
    const float base = 10000.f, scale = 1.0f / sqrtf((float)hd);
    // The reference's query and new key: rotated as rope_rotate does, when the kernel folds it.
    std::vector<float> qr = q, kr = knew;
    if (fold) {
        for (int h = 0; h < n_heads; h++)
            for (int d = 0; d < rot / 2; d++) rope_rotate(&qr[(size_t)h * hd], d, pos, 1.0f, rot, base, neox);
        for (int h = 0; h < n_kv; h++)
            for (int d = 0; d < rot / 2; d++) rope_rotate(&kr[(size_t)h * hd], d, pos, 1.0f, rot, base, neox);
    }
    Buf posb(4);
    memcpy(posb.p, &pos, 4);
    const int* pp = reinterpret_cast<const int*>(posb.p);
    if (!fold) {
        gridDim = {(unsigned)n_kv, 1, 1};
        blockDim = {(unsigned)hd, 1, 1};
        for (int h = 0; h < n_kv; h++) {
            blockIdx = {(unsigned)h, 0, 0};
            emu::run_block(hd, [&] {
                if constexpr (f32)
                    kv_store_decode_f32kv(knew.data(), vnew.data(), pg.table.data(), pg.layer, pp, hd);
                else
                    kv_store_decode(knew.data(), vnew.data(), pg.table.data(), pg.layer, pp, hd);
            });
        }
    }
    const int splits = 32;
    std::vector<float> part((size_t)n_heads * splits * (hd + 2)), out((size_t)n_heads * hd, NAN);
    std::vector<int> count(n_heads, 0);
    const int smem = generic ? 0 : 4 * 2 * 32 * hd * (int)sizeof(KV);
    std::vector<uint8_t> sm(smem ? smem : 1);
    for (auto& b : sm) b = (uint8_t)rng.next();
    emu_dyn_smem = sm.data();
    emu_dyn_smem_size = smem;
    gridDim = {(unsigned)n_heads, (unsigned)splits, 1};
    blockDim = {128, 1, 1};
    decltype(&attention_decode_body<MAXD, KV>) kernel;  // the instances' signature
    if constexpr (f32)
        kernel = generic ? attention_decode_f32kv : hd == 64 ? attention_decode_d64_f32kv : attention_decode_d128_f32kv;
    else
        kernel = generic ? attention_decode : hd == 64 ? attention_decode_d64 : attention_decode_d128;
    for (int h = 0; h < n_heads; h++)
        for (int sp = 0; sp < splits; sp++) {
            blockIdx = {(unsigned)h, (unsigned)sp, 0};
            emu::run_block(128, [&] {
                kernel(q.data(), pg.table.data(), pg.layer, out.data(), part.data(), count.data(), pp, n_heads,
                       n_kv, hd, scale, window, nullptr, fold ? knew.data() : nullptr,
                       fold ? vnew.data() : nullptr, rot, base, neox, sinks ? sk.data() : nullptr);
            });
        }
    double num = 0, den = 0;
    int counts_left = 0;
    for (int h = 0; h < n_heads; h++) {
        counts_left += count[h] != 0;
        const int kvh = h / (n_heads / n_kv);
        const int lo = window > 0 ? std::max(0, pos - window + 1) : 0;
        auto key = [&](int j, int d) -> double {
            return j == pos ? kv_round(tag, kr[(size_t)kvh * hd + d])
                            : kv_value(kc[((size_t)kvh * max_ctx + j) * hd + d]);
        };
        auto val = [&](int j, int d) -> double {
            return j == pos ? kv_round(tag, vnew[(size_t)kvh * hd + d])
                            : kv_value(vc[((size_t)kvh * max_ctx + j) * hd + d]);
        };
        const std::vector<double> o =
            attend_ref(&qr[(size_t)h * hd], scale, lo, pos, hd, key, val, sinks ? &sk[h] : nullptr);
        for (int d = 0; d < hd; d++) {
            const float g = out[(size_t)h * hd + d];
            if (!std::isfinite(g)) num = INFINITY;
            num += (g - o[d]) * (g - o[d]);
            den += o[d] * o[d];
        }
    }
    // f32 scores and sums against double; the rotation is the same code on both sides.
    const double e = sqrt(num / den);
    const bool ok = e < 2e-6 && counts_left == 0;
    printf("  attention_decode%s%s hd %d heads %d/%d pos %d win %d%s%s: rel err %.2e%s\n", f32 ? "_f32kv" : "", generic ? " (generic)" : "",
           hd, n_heads, n_kv, pos, window, sinks ? " sinks" : "", fold ? " rope folded" : " kv_store_decode", e,
           ok ? "" : "  FAIL");
    return !ok;
}

// Usage: decode_emu lazy|eager [type]  (a type limits the runs to it)
int main(int argc, char** argv) {
    emu::eager = argc > 1 && !strcmp(argv[1], "eager");
    const char* only = argc > 2 ? argv[2] : nullptr;
    printf("cp.async copies land %s\n", emu::eager ? "when issued" : "at the wait");
    int bad = check_mxfp4_definition(), runs = 1;
    for (const TypeInfo& t : TYPES) {
        if (only && strcmp(only, t.name)) continue;
        const bool kq = t.block == 256;
        const bool mx = t.id == T_MXFP4;
        // Rows that no wave divides, several rounds a warp; 1, 2, 4 and 8 warps a row; for
        // MXFP4, k spanning two 2 KiB stages (4864 values: 152 blocks, stages of 119) and
        // GPT-OSS's 2880. The other formats once each (the GPU tests cover them further).
        bad += test_fused(t, 37, 1280, 3, 1), runs++;
        if (mx) {
            bad += test_fused(t, 20, 4864, 2, 4), runs++;
            bad += test_fused(t, 9, 2880, 1, 8), runs++;
            bad += test_fused(t, 64, 96, 5, 2), runs++;
        }
        bad += test_experts(t, 6, 24, kq ? 512 : (mx ? 2880 : 640), 4, 3, 2, false), runs++;
        if (mx) {
            bad += test_experts(t, 32, 40, 2880, 4, 2, 1, false), runs++;
            bad += test_experts(t, 5, 16, 320, 8, 4, 4, true), runs++;
        }
    }
    // The q/k/v kernels of two formats; and each format's kernels with 2 and 4 warps a row over
    // odd rows, several rounds.
    const TypeInfo& q4k = TYPES[4];
    const TypeInfo& q6k = TYPES[5];
    const TypeInfo& q50 = TYPES[2];
    const TypeInfo& q80 = TYPES[1];
    if (!only || !strcmp(only, "q4_k") || !strcmp(only, "q6_k")) {
        bad += test_segments(q4k, q6k, fused_matvec_q4_k_q6_k, 1280, 2, 1), runs++;
        bad += test_segments(q4k, q6k, fused_matvec_q4_k_q6_k, 1280, 3, 2), runs++;
    }
    if (!only || !strcmp(only, "q5_0") || !strcmp(only, "q8_0")) {
        bad += test_segments(q50, q80, fused_matvec_q5_0_q8_0, 640, 2, 1), runs++;
        bad += test_segments(q50, q80, fused_matvec_q5_0_q8_0, 640, 1, 4), runs++;
    }
    for (const TypeInfo& t : TYPES) {
        if (only && strcmp(only, t.name)) continue;
        bad += test_fused(t, 21, t.block == 256 ? 1280 : 640, 2, 2), runs++;
        bad += test_fused(t, 15, t.block == 256 ? 1024 : 640, 1, 4), runs++;
    }
    // Several inputs: every format, 2, 4 and 8 inputs; rows that no wave divides, 1-8 warps a
    // row, several rounds.
    for (const MultiKernels& t : MULTI) {
        if (only && strcmp(only, t.name)) continue;
        const int k = t.block == 256 ? 1024 : 640;
        for (int ri = 1; ri < 4; ri++) bad += test_multirow(t, ri, 19, k, 2, 1 << (ri - 1), ri == 3), runs++;
        // Rows over two stages (a Q4_K down projection of the 0.5B: 19 blocks), 8 warps a row.
        if (t.id == T_Q6_K || t.id == T_F16) bad += test_multirow(t, 3, 5, 4864, 1, 8, false), runs++;
    }
    if (!only || !strcmp(only, "attention")) {  // "attention": these alone
        struct A {
            int hd, heads, kv, pos, window;
            bool generic;
        };
        // One block a head (<= 128 keys), the split and merge (up to 32 slices), windows.
        const A cases[] = {{64, 4, 2, 40, 0, false},  {64, 8, 2, 700, 0, false}, {128, 4, 4, 300, 128, false},
                           {64, 4, 1, 2100, 0, false}, {96, 6, 3, 200, 16, true}, {64, 4, 2, 90, 16, true}};
        // The f32 cache's kernels on every case, with sinks and the folded RoPE once each.
        for (const A& c : cases)
            for (int sinks = 0; sinks < 2; sinks++)
                for (int fold = 0; fold < 2; fold++) {
                    bad += test_attention_decode<__half>(c.hd, c.heads, c.kv, c.pos, c.window, sinks, c.generic, fold);
                    runs++;
                    if (sinks != fold)
                        bad += test_attention_decode<float>(c.hd, c.heads, c.kv, c.pos, c.window, sinks, c.generic, fold),
                            runs++;
                }
    }
    printf("%d runs, %d failed\n", runs, bad);
    return bad ? 1 : 0;
}
