// CPU emulation of kernels/mmq.cu (tests/emu/emu_runtime.h: the int8 mma.sync by the PTX
// ISA's fragment layouts) under AddressSanitizer: every format and the two pairs of a Q4_K_M
// file, 1..128 inputs (odd counts, one and two input tiles), each epilogue (plain + bias over
// three matrices whose tiles end mid-way, SwiGLU, residual add).
//
// Checks, per output:
//   1. Against f64 of the same quantized input (the records' d·(q1 + q2/254), and for the
//      formats with a min term the records' exact chunk sums, as the kernels use them):
//      |y - ref| <= 2e-6 · mag, mag = Σ|w·x| + Σ|m·sum| over the row. The integers are exact
//      (the emulator checks each s32 sum); what differs is the f32 arithmetic: per chunk a
//      term formed with <= 5 roundings of 2^-24, then one f32 addition per chunk into the
//      running sum (k <= 512: <= 16 chunks): (5 + 16) · 2^-24 < 1.3e-6 of mag.
//   2. Against f64 of the exact f32 input: the 16-bit records are off by at most
//      max|x_chunk|/64516 a value (d/508, d = max|x|/127), so |y - Σ w·x| <= Σ_chunks
//      max|x_c|/64516 · Σ_v |w_v - m_c| + 2e-6 · mag (the min term multiplies the exact sum).
//   3. Against decode.cu's one-input fused mat-vec on the same row (the same integers, its
//      lanes summing quarter-chunks in another f32 order): within 2e-6 · mag (both are within
//      1.3e-6 of the same exact value).
//   4. Batch invariance: an input's outputs are bit for bit the same whatever the other
//      inputs and their count (each output is one thread's chunk-ordered sum; the tile shape
//      changes nothing in its arithmetic).
// A wrongly decoded weight or a misplaced fragment moves an output by ~1/k of mag: 500 times
// tolerance 1.
#include "emu_runtime.h"

#include <cmath>

#include "../../kernels/decode.cu"
#include "../../kernels/mmq.cu"
#include "emu_buf.h"
#include "emu_weights.h"

static SplitMix64 rng{0x1A7E5};

using MqKernel = void (*)(const MvArgs, const uint8_t*, int, int, int);
using MvKernel = void (*)(const MvArgs, const void*, int);
struct MqType {
    const char* name;
    int id, block, bytes, slot;
    void (*chunk)(const uint8_t*, int, float*);
    MqKernel plain, glu;
    MvKernel one, one_glu;
};
#define MT(name, T)                                                                                 \
    MqType {                                                                                        \
        #name, T, Mq<T>::V, Mq<T>::B, MqGeo<T>::SLOT, Fmt<T>::chunk, mmq_##name, mmq_##name##_glu,  \
            fused_matvec_##name, fused_matvec_##name##_glu                                          \
    }
static const MqType TYPES[] = {MT(q8_0, T_Q8_0), MT(q5_0, T_Q5_0), MT(q4_1, T_Q4_1), MT(q4_k, T_Q4_K),
                               MT(q6_k, T_Q6_K)};
#undef MT
static const MqType& type_of(int id) {
    for (const MqType& t : TYPES)
        if (t.id == id) return t;
    abort();
}

// A random matrix (padded by 16 bytes as the model uploads weights), its values in double,
// and each chunk's min coefficient m (w = d·q + m; the values with every quant zeroed).
struct Matrix {
    int rows, k, type;
    long long rb;
    Buf w;
    std::vector<double> v, m;
    Matrix(const MqType& t, int rows_, int k_)
        : rows(rows_), k(k_), type(t.id), rb((long long)(k_ / t.block) * t.bytes), w((size_t)rows_ * rb + 16) {
        std::vector<uint8_t> tmp((size_t)rows * rb);
        random_weights(tmp, t.id, t.bytes, (long long)rows * k, rng);
        memcpy(w.p, tmp.data(), tmp.size());
        v.resize((size_t)rows * k);
        m.assign((size_t)rows * (k / 32), 0.0);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < k / 32; c++) {
                float o[32];
                t.chunk(w.p + r * rb, c, o);
                for (int i = 0; i < 32; i++) v[(size_t)r * k + 32 * c + i] = o[i];
                if (t.id == T_Q4_1 || t.id == T_Q4_K) {
                    const int cpb = t.block / 32;
                    std::vector<uint8_t> blk(w.p + r * rb + (c / cpb) * t.bytes,
                                             w.p + r * rb + (c / cpb + 1) * t.bytes);
                    if (t.id == T_Q4_1) memset(&blk[4], 0, 16);
                    else memset(&blk[16], 0, 128);
                    t.chunk(blk.data(), c % cpb, o);
                    m[(size_t)r * (k / 32) + c] = o[0];
                }
            }
    }
};

static void run_grid(int threads, int blocks, int smem, const std::function<void()>& body, int blocks_y = 1) {
    std::vector<uint8_t> sm(smem);  // exactly sized, garbage
    for (auto& b : sm) b = (uint8_t)rng.next();
    emu_dyn_smem = sm.data();
    emu_dyn_smem_size = smem;
    gridDim = {(unsigned)blocks, (unsigned)blocks_y, 1};
    blockDim = {(unsigned)threads, 1, 1};
    for (int y = 0; y < blocks_y; y++)
        for (int b = 0; b < blocks; b++) {
            blockIdx = {(unsigned)b, (unsigned)y, 0};
            emu::run_block(threads, body);
        }
}

// n inputs of k values (a few large ones), their records by the emulated prep_input of n
// rows, and what the records stand for.
struct Inputs {
    int n, k;
    long long per;
    std::vector<float> x;
    Buf xd, rec;
    std::vector<double> xq, sum;  // [n][k], [n][k/32]
    Inputs(int n_, int k_)
        : n(n_), k(k_), per((long long)k_ / 32 * XREC), x((size_t)n_ * k_), xd(x.size() * 4), rec((size_t)n_ * per) {
        for (auto& v : x) v = rng.unit() * (rng.next() % 7 == 0 ? 8.f : 1.f);
        memcpy(xd.p, x.data(), x.size() * 4);
        run_grid(32 * DW, (k / 32 + DW - 1) / DW, 0, [&] { prep_input(xd.f(), nullptr, 0.f, nullptr, rec.p, k); }, n);
        xq.resize((size_t)n * k);
        sum.resize((size_t)n * (k / 32));
        for (int i = 0; i < n; i++)
            for (int c = 0; c < k / 32; c++) {
                const uint8_t* r = rec.p + i * per + c * XREC;
                float d, s;
                memcpy(&d, r + 64, 4);
                memcpy(&s, r + 68, 4);
                sum[(size_t)i * (k / 32) + c] = s;
                for (int v = 0; v < 32; v++)
                    xq[(size_t)i * k + 32 * c + v] = (double)d * ((int8_t)r[v] + (int8_t)r[32 + v] / 254.0);
            }
    }
};

// The first n inputs in fragment order by the emulated mmq_prep (exactly sized): each byte
// must be prep_input's record byte it stands for (the same quantization, another layout).
static int packing_bad = 0;
static Buf pack(Inputs& in, int n) {
    const int k = in.k, nc = k / 32, n8 = (n + 7) / 8;
    Buf pk((size_t)nc * n8 * 576);
    run_grid(256, (k + 255) / 256, 0, [&] { mmq_prep(in.xd.f(), nullptr, 0.f, nullptr, pk.p, k, n8); }, n);
    const float* ds = reinterpret_cast<const float*>(pk.p + (size_t)nc * n8 * 512);
    for (int y = 0; y < n; y++)
        for (int c = 0; c < nc; c++) {
            const uint8_t* r = in.rec.p + y * in.per + c * XREC;
            for (int v = 0; v < 32; v++) {
                const uint8_t* o = pk.p + ((size_t)c * n8 + y / 8) * 512 + (4 * (y % 8) + v / 8) * 16 + v % 8;
                packing_bad += o[0] != r[v] || o[8] != r[32 + v];
            }
            packing_bad += memcmp(ds + ((size_t)c * 8 * n8 + y) * 2, r + 64, 8) != 0;
        }
    return pk;
}

// The mmq launch as src/backend/cuda/mmq.rs makes it: mmq_prep, then input tiles of 64, n8
// tiles a tile.
static void launch_mmq(MqKernel kern, const MvArgs& a, Inputs& in, int n, int slot) {
    const int n_xt = (n + 63) / 64, nt_n = (std::min(n, 64) + 7) / 8;
    int weight_tiles = 0;
    if (a.mode == MODE_GLU)
        weight_tiles = (a.seg[0].rows + MQ_SLOTS / 2 - 1) / (MQ_SLOTS / 2);
    else
        for (int s = 0; s < (a.mode == MODE_PLAIN ? a.n_seg : 1); s++)
            weight_tiles += (a.seg[s].rows + MQ_SLOTS - 1) / MQ_SLOTS;
    Buf pk = pack(in, n);
    run_grid(128, weight_tiles * n_xt, std::max(MQ_STAGES * MQ_SLOTS * slot, MQ_RED_BYTES),
             [&] { kern(a, pk.p, n, n_xt, nt_n); });
}

struct Worst {
    double q = 0, x = 0, one = 0;
};
// Output y (rows of matrix mt) for input i against checks 1-3 (`one`: the one-input kernel's
// outputs for that input, or null); `add`: what the output had added (the residual).
static int check_row(const Matrix& mt, Inputs& in, int i, const float* y, const float* one, const float* bias,
                     const double* add, Worst& w) {
    int bad = 0;
    const int k = mt.k, nc = k / 32;
    for (int r = 0; r < mt.rows; r++) {
        double ref = (bias ? bias[r] : 0) + (add ? add[r] : 0), exact = ref;
        double mag = fabs(ref), bound = 0;
        for (int c = 0; c < nc; c++) {
            const double m = mt.m[(size_t)r * nc + c], s = in.sum[(size_t)i * nc + c];
            double xmax = 0, wsum = 0, qsum = 0;
            for (int v = 32 * c; v < 32 * c + 32; v++) {
                const double wv = mt.v[(size_t)r * k + v], xq = in.xq[(size_t)i * k + v];
                ref += wv * xq, exact += wv * in.x[(size_t)i * k + v], qsum += xq;
                mag += fabs(wv * xq);
                xmax = std::max(xmax, (double)fabsf(in.x[(size_t)i * k + v]));
                wsum += fabs(wv - m);
            }
            ref += m * (s - qsum);
            mag += fabs(m * s);
            bound += xmax / 64516.0 * wsum;
        }
        const double e1 = fabs(y[r] - ref), e2 = fabs(y[r] - exact), e3 = one ? fabs((double)y[r] - one[r]) : 0;
        const double tol = 2e-6 * mag + 1e-30;
        if (!(e1 <= tol) || !(e2 <= bound + tol) || !(e3 <= tol)) bad++;
        if (mag > 0) w.q = std::max(w.q, e1 / mag), w.one = std::max(w.one, e3 / mag);
        if (bound + tol > 0) w.x = std::max(w.x, e2 / (bound + tol));
    }
    return bad;
}

// Three matrices of formats ta, ta, tb (a Q4_K_M q/k/v: a pair kernel when they differ) with
// biases on the first and last, whose tiles of 32 rows end mid-way.
struct Plain {
    int ta, tb, k;
    Matrix m0, m1, m2;
    Buf b0, b2;
    Plain(int ta_, int tb_, int k_)
        : ta(ta_), tb(tb_), k(k_), m0(type_of(ta_), 150, k_), m1(type_of(ta_), 40, k_), m2(type_of(tb_), 20, k_),
          b0(150 * 4), b2(20 * 4) {
        for (int r = 0; r < 150; r++) b0.f()[r] = rng.unit();
        for (int r = 0; r < 20; r++) b2.f()[r] = rng.unit();
    }
};

// The plain epilogue (+ bias) over the three matrices, n inputs; batch invariance against
// `first` (input 0's outputs of an earlier run, if any).
static int test_plain(MqKernel kern, MvKernel one, Plain& pl, Inputs& in, int n, std::vector<float>* first) {
    const int ta = pl.ta, tb = pl.tb, k = pl.k;
    const MqType &A = type_of(ta), &B = type_of(tb);
    const int rows[3] = {150, 40, 20};
    Matrix &m0 = pl.m0, &m1 = pl.m1, &m2 = pl.m2;
    const Matrix* ms[3] = {&m0, &m1, &m2};
    Buf &b0 = pl.b0, &b2 = pl.b2;
    Buf o0((size_t)n * rows[0] * 4), o1((size_t)n * rows[1] * 4), o2((size_t)n * rows[2] * 4);
    MvArgs a{};
    a.k = k, a.mode = MODE_PLAIN, a.n_seg = 3, a.x_stride = (int)in.per;
    a.seg[0] = Seg{m0.w.p, b0.f(), o0.f(), m0.rb, ta, rows[0]};
    a.seg[1] = Seg{m1.w.p, nullptr, o1.f(), m1.rb, ta, rows[1]};
    a.seg[2] = Seg{m2.w.p, b2.f(), o2.f(), m2.rb, tb, rows[2]};
    launch_mmq(kern, a, in, n, std::max(A.slot, B.slot));
    int bad = 0;
    Worst w;
    float* outs[3] = {o0.f(), o1.f(), o2.f()};
    const float* biases[3] = {b0.f(), nullptr, b2.f()};
    Buf s0(rows[0] * 4), s1(rows[1] * 4), s2(rows[2] * 4);
    float* singles[3] = {s0.f(), s1.f(), s2.f()};
    for (int i = 0; i < n; i++) {
        // The one-input kernel on inputs 0, n/2 and n-1.
        const bool single = i == 0 || i == n / 2 || i == n - 1;
        if (single) {
            MvArgs a1 = a;
            a1.x_stride = 0;
            for (int s = 0; s < 3; s++) a1.seg[s].out = singles[s];
            run_grid(32 * DW, 4, 2 * DW * STAGE, [&] { one(a1, in.rec.p + i * in.per, 1); });
        }
        for (int s = 0; s < 3; s++)
            bad += check_row(*ms[s], in, i, outs[s] + (size_t)i * rows[s], single ? singles[s] : nullptr, biases[s],
                             nullptr, w);
    }
    // Input 0's outputs: bit-equal across runs of any input count.
    std::vector<float> mine;
    for (int s = 0; s < 3; s++) mine.insert(mine.end(), outs[s], outs[s] + rows[s]);
    int variant = 0;
    if (first) {
        if (first->empty()) *first = mine;
        else variant = memcmp(first->data(), mine.data(), mine.size() * 4) != 0;
    }
    printf("  %-10s plain+bias %3d inputs k %4d: |y-ref|/mag %.1e, |y-exact|/bound %.2f, |y-one|/mag %.1e%s%s\n",
           ta == tb ? A.name : (std::string(A.name) + "+" + B.name).c_str(), n, k, w.q, w.x, w.one,
           variant ? "  input 0 differs from other runs" : "", bad || variant ? "  FAIL" : "");
    return bad + variant;
}

// SwiGLU and the residual add, n inputs.
static int test_glu_add(const MqType& t, int k, Inputs& in, int n) {
    const int rows = 100;  // 7 tiles of 16 row pairs, the last partial
    Matrix g(t, rows, k), u(t, rows, k);
    const size_t ob = (size_t)n * rows * 4;
    Buf o0(ob), o1(ob), act(ob), acc(ob);
    MvArgs a{};
    a.k = k, a.mode = MODE_GLU, a.n_seg = 2, a.act = act.f(), a.x_stride = (int)in.per;
    a.seg[0] = Seg{g.w.p, nullptr, o0.f(), g.rb, t.id, rows};
    a.seg[1] = Seg{u.w.p, nullptr, o1.f(), u.rb, t.id, rows};
    launch_mmq(t.glu, a, in, n, t.slot);
    int bad = 0, act_bad = 0;
    Worst w;
    Buf s0(rows * 4), s1(rows * 4), sact(rows * 4);
    for (int i = 0; i < n; i++) {
        const bool single = i == 0 || i == n - 1;
        if (single) {
            MvArgs a1 = a;
            a1.x_stride = 0, a1.seg[0].out = s0.f(), a1.seg[1].out = s1.f(), a1.act = sact.f();
            run_grid(32 * DW, 4, 4 * DW * STAGE, [&] { t.one_glu(a1, in.rec.p + i * in.per, 1); });
        }
        bad += check_row(g, in, i, o0.f() + (size_t)i * rows, single ? s0.f() : nullptr, nullptr, nullptr, w);
        bad += check_row(u, in, i, o1.f() + (size_t)i * rows, single ? s1.f() : nullptr, nullptr, nullptr, w);
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)i * rows + r;
            const float gv = o0.f()[o];
            act_bad += act.f()[o] != gv / (1.0f + expf(-gv)) * o1.f()[o];
        }
    }
    printf("  %-10s glu        %3d inputs k %4d: |y-ref|/mag %.1e, |y-exact|/bound %.2f, |y-one|/mag %.1e%s%s\n",
           t.name, n, k, w.q, w.x, w.one, act_bad ? "  act != silu(g)*u" : "", bad || act_bad ? "  FAIL" : "");
    bad += act_bad;
    // Add into each input's residual.
    Worst wa;
    a = MvArgs{};
    a.k = k, a.mode = MODE_ADD, a.n_seg = 1, a.acc = acc.f(), a.x_stride = (int)in.per;
    a.seg[0] = Seg{g.w.p, nullptr, o0.f(), g.rb, t.id, rows};
    std::vector<double> acc0((size_t)n * rows);
    for (size_t o = 0; o < acc0.size(); o++) acc.f()[o] = (float)(acc0[o] = rng.unit());
    launch_mmq(t.plain, a, in, n, t.slot);
    int add_bad = 0;
    for (int i = 0; i < n; i++) {
        add_bad += check_row(g, in, i, acc.f() + (size_t)i * rows, nullptr, nullptr, acc0.data() + (size_t)i * rows, wa);
        for (int r = 0; r < rows; r++) {
            const size_t o = (size_t)i * rows + r;
            add_bad += acc.f()[o] != (float)acc0[o] + o0.f()[o];  // acc += the output stored
        }
    }
    printf("  %-10s add        %3d inputs k %4d: |y-ref|/mag %.1e, |y-exact|/bound %.2f%s\n", t.name, n, k, wa.q,
           wa.x, add_bad ? "  FAIL" : "");
    return bad + add_bad;
}

int main(int argc, char** argv) {
    emu::eager = argc > 1 && !strcmp(argv[1], "eager");
    const char* only = argc > 2 ? argv[2] : nullptr;
    printf("cp.async copies land %s\n", emu::eager ? "when issued" : "at the wait");
    int bad = 0, runs = 0;
    for (const MqType& t : TYPES) {
        if (only && strcmp(only, t.name)) continue;
        // K-quants: two super-blocks; else 13 chunks (Q8_0: stages of 4, the last of 1;
        // the others: stages of 8, the last of 5), more stages than the ring for Q8_0.
        const int k = t.block == 256 ? 512 : 416;
        Inputs in(128, k);
        Plain pl(t.id, t.id, k);
        std::vector<float> first;
        for (int n : {1, 3, 8, 9, 64, 65, 128}) bad += test_plain(t.plain, t.one, pl, in, n, &first), runs++;
        for (int n : {9, 128}) bad += test_glu_add(t, k, in, n), runs++;
    }
    // The pairs of a Q4_K_M file's q/k/v (a Q8_0 or Q6_K v), through their kernels.
    struct Pair {
        MqKernel kern;
        MvKernel one;
        int a, b, k;
    };
    const Pair pairs[] = {{mmq_q5_0_q8_0, fused_matvec_q5_0_q8_0, T_Q5_0, T_Q8_0, 416},
                          {mmq_q4_k_q6_k, fused_matvec_q4_k_q6_k, T_Q4_K, T_Q6_K, 512}};
    for (const Pair& p : pairs) {
        if (only && strcmp(only, type_of(p.a).name) && strcmp(only, type_of(p.b).name)) continue;
        Inputs in(65, p.k);
        Plain pl(p.a, p.b, p.k);
        for (int n : {8, 65}) bad += test_plain(p.kern, p.one, pl, in, n, nullptr), runs++;
    }
    if (packing_bad) printf("mmq_prep: %d bytes differ from prep_input's records  FAIL\n", packing_bad);
    bad += packing_bad != 0;
    printf("%d runs, %d failed\n", runs, bad);
    return bad ? 1 : 0;
}
