// CPU emulation of kernels/mma_matmul.cu (tests/emu/emu_runtime.h): the kernel's tiling,
// swizzle, decoding, copy pipeline and bounds, without a GPU (build and run:
// scripts/mma-emu.sh, with AddressSanitizer for out-of-bounds reads and writes of the buffers
// and shared memory). Reference: the existing decoders (Fmt<T>::chunk of common.cuh), values
// rounded to f16, products summed in double. The emulated mma sums in double too, so the only
// differences are rare 1-ulp f16 flips of a weight (fma vs separate rounding in the f32
// decode).
#include "emu_runtime.h"

#include "../../kernels/mma_matmul.cu"
#include "emu_weights.h"

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
    {"mxfp4", T_MXFP4, 32, 17, K4(mxfp4), Fmt<T_MXFP4>::chunk, Unit<T_MXFP4>::N * Unit<T_MXFP4>::VEC},
};

static SplitMix64 rng{0x1234567};
static uint64_t rnd() { return rng.next(); }
static float rf() { return rng.unit(); }

// The grouped expert products (mma_moe_*: MMA_TILES 1 to 3) against the plain kernel of the
// same tile run on each expert's rows alone: bit for bit (the same blocks' arithmetic), every
// row written, nothing outside the experts' rows (AddressSanitizer: exactly sized buffers).
typedef void (*MoeKern)(const uint8_t* const*, const uint8_t* const*, const float*, float*, float*,
                        const int*, int, int, int, long long);
static int test_grouped(const TypeInfo& ty, MoeKern kern, int ti) {
    const Tile tl = TILES[ti];
    const int rows = 70, k = ty.block == 256 ? 256 : 96, n_exp = 3, n_tok = 150;
    const int counts[n_exp] = {5, 0, 137};
    const long long rb = (long long)k / ty.block * ty.bytes;
    int offsets[n_exp + 1] = {0};
    for (int e = 0; e < n_exp; e++) offsets[e + 1] = offsets[e] + counts[e];
    const int total = offsets[n_exp];
    std::vector<std::vector<uint8_t>> W0(n_exp, std::vector<uint8_t>(rows * rb)), W1 = W0;
    std::vector<const uint8_t*> t0, t1;
    for (int e = 0; e < n_exp; e++) {
        random_weights(W0[e], ty.id, ty.bytes, (long long)rows * k, rng);
        random_weights(W1[e], ty.id, ty.bytes, (long long)rows * k, rng);
        t0.push_back(W0[e].data());
        t1.push_back(W1[e].data());
    }
    std::vector<float> X((size_t)total * k);
    for (auto& v : X) v = rf();
    std::vector<float> Y0((size_t)total * rows, NAN), Y1 = Y0, R0 = Y0, R1 = Y0;
    const int smem = smem_for(tl, ty.words, false);
    std::vector<uint8_t> sm(smem);
    auto block = [&](unsigned bx, unsigned by, unsigned bz, const std::function<void()>& fn) {
        blockIdx = {bx, by, bz};
        for (auto& b : sm) b = (uint8_t)rnd();
        emu_dyn_smem = sm.data();
        emu_dyn_smem_size = smem;
        emu::run_block(tl.warps * 32 * tl.kg, fn);
    };
    const int gx = (n_tok + tl.bm - 1) / tl.bm, gy = (rows + tl.bn - 1) / tl.bn;
    for (int z = 0; z < 2 * n_exp; z++)
        for (int bx = 0; bx < gx; bx++)
            for (int by = 0; by < gy; by++)
                block(bx, by, z, [&] {
                    kern(t0.data(), t1.data(), X.data(), Y0.data(), Y1.data(), offsets, n_exp, rows, k, rb);
                });
    for (int m = 0; m < 2; m++)
        for (int e = 0; e < n_exp; e++) {
            if (!counts[e]) continue;
            float* out = (m ? R1 : R0).data() + (size_t)offsets[e] * rows;
            const uint8_t* w = (m ? t1 : t0)[e];
            for (int bx = 0; bx < (counts[e] + tl.bm - 1) / tl.bm; bx++)
                for (int by = 0; by < gy; by++)
                    block(bx, by, 0, [&] { ty.k[ti](w, X.data() + (size_t)offsets[e] * k, out, rows, k, counts[e], rb); });
        }
    const bool ok = !memcmp(Y0.data(), R0.data(), Y0.size() * 4) && !memcmp(Y1.data(), R1.data(), Y1.size() * 4);
    printf("%-5s grouped experts {5, 0, 137} x %d rows, tile %3dx%-3dk%d: %s\n", ty.name, rows, tl.bm, tl.bn,
           tl.kg, ok ? "as the plain kernel, bit for bit" : "DIFFERENT  FAIL");
    return !ok;
}

#define KMOE(name) {mma_moe_##name##_128x64k1, mma_moe_##name##_64x64k1, mma_moe_##name##_32x64k1}

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
            random_weights(W, ty.id, ty.bytes, (long long)rows * k, rng);
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
    const struct {
        const char* name;
        MoeKern k[3];
    } moe[] = {{"f16", KMOE(f16)}, {"q8_0", KMOE(q8_0)}, {"q4_k", KMOE(q4_k)}, {"mxfp4", KMOE(mxfp4)}};
    for (const auto& m : moe)
        for (const TypeInfo& ty : TYPES)
            if (!strcmp(ty.name, m.name) && (!only || !strcmp(only, ty.name)))
                for (int i = 0; i < 3; i++, runs++) bad += test_grouped(ty, m.k[i], i + 1);
    printf("%d runs, %d failed\n", runs, bad);
    return bad ? 1 : 0;
}
