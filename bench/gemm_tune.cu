// Tuning harness for kernels/gemm_f16.cu on a GPU, without Rust (the device machine has none):
// built here with nvcc (static CUDA runtime), run there. Every GEMM tile on the Qwen2.5 0.5B and
// 7B product shapes at 512, 256 and 128 tokens, TFLOP/s = 2·M·N·K / median of CUDA-event
// timings of single launches, L2 flushed (192 MiB memset) before each; sampled outputs checked
// against double sums of the same f16 operands (FAIL above 5e-5: the tensor cores' f32 sums
// over k = 18944 alone give 2.5e-5, as much for mma_matmul.cu, whose output is bit-identical
// where both sum k in the same order). Then the dequantization kernels (GB/s of
// blocks read + f16 written) and dequant + convert + GEMM against the decode-in-the-loop kernel
// (mma_matmul.cu) on the same Q4_K / Q6_K / Q5_0 weights: both times, and the two outputs'
// relative difference.
//   nvcc -arch=sm_90 -O3 -std=c++17 -Ikernels bench/gemm_tune.cu -o gemm_tune
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../kernels/gemm_f16.cu"
#include "../kernels/mma_matmul.cu"
#include "../tests/emu/splitmix.h"

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

typedef void (*Dequant)(const uint8_t*, __half*, int, int, long long);
typedef void (*GemmK)(const __half*, const __half*, float*, int, int, int);
struct Tile {
    const char* name;
    GemmK k;
    int bm, bn, bk, warps, stages;
};
#define TILE_INFO(BM, BN, BK, WM, WN, S, MINB) \
    {#BM "x" #BN "x" #BK "w" #WM "x" #WN "s" #S, gemm_f16_##BM##x##BN##x##BK##_w##WM##x##WN##_s##S, BM, BN, BK, WM * WN, S},
// Candidates beyond the launcher's three (kernels/gemm_f16.cu's GEMM_TILES).
#define TUNE_TILES(M)           \
    M(128, 256, 64, 2, 4, 3, 1) \
    M(128, 128, 32, 2, 2, 4, 2) \
    M(128, 128, 64, 2, 4, 3, 2) \
    M(128, 64, 64, 2, 2, 4, 3)
TUNE_TILES(GEMM_ENTRY)
static const Tile TILES[] = {GEMM_TILES(TILE_INFO) TUNE_TILES(TILE_INFO)};
static const int NT = sizeof(TILES) / sizeof(TILES[0]);

static SplitMix64 rng{12345};
static uint64_t rnd() { return rng.next(); }
static float rf() { return rng.unit(); }
static uint16_t hb(float v) {
    __half h = __float2half_rn(v);
    return *reinterpret_cast<uint16_t*>(&h);
}
static float hf(uint16_t b) {
    __half h = *reinterpret_cast<__half*>(&b);
    return __half2float(h);
}

static void* flushbuf;
static cudaEvent_t e0, e1;
template <class F> static float time_ms(F f) {
    CK(cudaMemsetAsync(flushbuf, rnd() & 0xff, 192 << 20));
    CK(cudaEventRecord(e0));
    f();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    CK(cudaGetLastError());
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
}
template <class F> static float median_ms(F f, int reps) {
    std::vector<float> t;
    time_ms(f);
    for (int i = 0; i < reps; i++) t.push_back(time_ms(f));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

static void gemm_launch(const Tile& t, const __half* A, const __half* B, float* Y, int M, int N, int K) {
    dim3 grid((M + t.bm - 1) / t.bm, (N + t.bn - 1) / t.bn);
    const int smem = t.stages * (t.bm + t.bn) * t.bk * 2;
    t.k<<<grid, t.warps * 32, smem>>>(A, B, Y, M, N, K);
}

// Old kernel (mma_matmul.cu) tiles and shared memory, as launch.rs's MmaTile::smem_bytes.
struct OldTile {
    int bm, bn, warps, kg, per_sm;
};
static const OldTile OLD[6] = {{128, 128, 8, 1, 2}, {128, 64, 8, 1, 2}, {64, 64, 4, 1, 4},
                               {32, 64, 4, 1, 6},   {64, 64, 4, 2, 2},  {32, 64, 4, 4, 2}};
static int old_smem(const OldTile& t, int words) {
    const int nth = t.warps * 32, xv = t.bm * 8 / nth, wu = (2 * t.bn + nth - 1) / nth;
    const int tiles = (t.bm + t.bn) * 128, stage = nth * 16 * xv + nth * 4 * words * wu;
    const int fit = ((228 << 10) / t.per_sm - 1024) / t.kg / 128 * 128;
    int share = std::max(std::min(tiles + 8 * stage, fit), tiles + 2 * stage);
    share = (share + 127) / 128 * 128;
    return share * t.kg;
}
static int old_pick(int n, int rows, int nc) {  // launch.rs mma_tile
    auto blocks = [&](int i) { return ((n + OLD[i].bm - 1) / OLD[i].bm) * ((rows + OLD[i].bn - 1) / OLD[i].bn); };
    if (blocks(0) >= 264) return 0;
    if (blocks(1) >= 132) return 1;
    if (4 * blocks(4) >= 3 * 132) return 4;
    return nc >= 8 ? 5 : 3;
}
typedef void (*OldK)(const uint8_t*, const float*, float*, int, int, int, long long);
#define OLDK(name) {mma_##name##_128x128k1, mma_##name##_128x64k1, mma_##name##_64x64k1, mma_##name##_32x64k1, mma_##name##_64x64k2, mma_##name##_32x64k4}

int main() {
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("%s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaMalloc(&flushbuf, 192 << 20));
    for (const Tile& t : TILES) {
        const int smem = t.stages * (t.bm + t.bn) * t.bk * 2;
        CK(cudaFuncSetAttribute(t.k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CK(cudaFuncSetAttribute(t.k, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    }
    const int MAXM = 512, MAXK = 18944;
    const size_t bn = 18944ull * 3584;
    std::vector<uint16_t> hA((size_t)MAXM * MAXK), hB(bn);
    for (auto& v : hA) v = hb(rf());
    for (auto& v : hB) v = hb(rf() * 0.05f);
    __half *A, *B;
    float* Y;
    CK(cudaMalloc(&A, hA.size() * 2));
    CK(cudaMalloc(&B, hB.size() * 2));
    CK(cudaMalloc(&Y, (size_t)MAXM * 18944 * 4));
    CK(cudaMemcpy(A, hA.data(), hA.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(B, hB.data(), hB.size() * 2, cudaMemcpyHostToDevice));

    struct Shape {
        const char* name;
        int n, k;
    };
    const Shape shapes[] = {{"7B gate/up", 18944, 3584}, {"7B down", 3584, 18944}, {"7B q/o", 3584, 3584},
                            {"7B k/v", 512, 3584},       {"0.5B gate", 4864, 896}, {"0.5B down", 896, 4864},
                            {"0.5B q/o", 896, 896},      {"0.5B k/v", 128, 896}};
    printf("\nGEMM alone, TFLOP/s (L2 flushed before each launch; median of 7); err = sampled rel err\n");
    printf("%-11s %4s %11s", "product", "M", "N x K");
    for (const Tile& t : TILES) printf(" %14s", t.name);
    printf("\n");
    std::vector<float> hY((size_t)MAXM * 18944);
    for (const Shape& s : shapes)
        for (int M : {512, 256, 128}) {
            printf("%-11s %4d %5dx%-5d", s.name, M, s.n, s.k);
            double worst = 0;
            for (const Tile& t : TILES) {
                CK(cudaMemset(Y, 0xff, (size_t)M * s.n * 4));
                const float ms = median_ms([&] { gemm_launch(t, A, B, Y, M, s.n, s.k); }, 7);
                printf(" %14.1f", 2.0 * M * s.n * s.k / (ms * 1e-3) / 1e12);
                CK(cudaMemcpy(hY.data(), Y, (size_t)M * s.n * 4, cudaMemcpyDeviceToHost));
                double num = 0, den = 0;
                for (int i = 0; i < 200; i++) {
                    const int m = rnd() % M, n = rnd() % s.n;
                    double r = 0;
                    for (int j = 0; j < s.k; j++) r += (double)hf(hA[(size_t)m * s.k + j]) * hf(hB[(size_t)n * s.k + j]);
                    const double y = hY[(size_t)m * s.n + n];
                    num += (y - r) * (y - r);
                    den += r * r;
                }
                bool allfin = true;
                for (size_t i = 0; i < (size_t)M * s.n; i++) allfin &= std::isfinite(hY[i]);
                worst = std::max(worst, allfin ? sqrt(num / den) : 1.0);
            }
            printf("  err %.1e%s\n", worst, worst > 5e-5 ? " FAIL" : "");
        }

    // Dequantization and the whole new path against the old kernel, on real block formats.
    printf("\nDequant (GB/s = block bytes read + f16 written) and the two-pass path vs mma_matmul.cu\n");
    struct Q {
        const char* name;
        int id, block, bytes, words, rows, k;
        Dequant dq;
        OldK old[6];
    };
    const Q qs[] = {
        {"q4_k", T_Q4_K, 256, 144, 8, 18944, 3584, dequant_f16_q4_k, OLDK(q4_k)},
        {"q4_k", T_Q4_K, 256, 144, 8, 3584, 18944, dequant_f16_q4_k, OLDK(q4_k)},
        {"q4_k", T_Q4_K, 256, 144, 8, 3584, 3584, dequant_f16_q4_k, OLDK(q4_k)},
        {"q6_k", T_Q6_K, 256, 210, 12, 3584, 18944, dequant_f16_q6_k, OLDK(q6_k)},
        {"q6_k", T_Q6_K, 256, 210, 12, 512, 3584, dequant_f16_q6_k, OLDK(q6_k)},
        {"q5_0", T_Q5_0, 32, 22, 7, 4864, 896, dequant_f16_q5_0, OLDK(q5_0)},
        {"q5_0", T_Q5_0, 32, 22, 7, 896, 896, dequant_f16_q5_0, OLDK(q5_0)},
        {"q4_k", T_Q4_K, 256, 144, 8, 896, 4864, dequant_f16_q4_k, OLDK(q4_k)},
        {"q8_0", T_Q8_0, 32, 34, 6, 18944, 3584, dequant_f16_q8_0, OLDK(q8_0)},
    };
    float *X, *Y2;
    __half* Xh;
    std::vector<float> hX((size_t)MAXM * MAXK);
    for (auto& v : hX) v = rf();
    CK(cudaMalloc(&X, hX.size() * 4));
    CK(cudaMalloc(&Xh, hX.size() * 2));
    CK(cudaMalloc(&Y2, (size_t)MAXM * 18944 * 4));
    CK(cudaMemcpy(X, hX.data(), hX.size() * 4, cudaMemcpyHostToDevice));
    uint8_t* W;
    CK(cudaMalloc(&W, 18944ull * 3584 + (64 << 20)));
    std::vector<uint16_t> hWh;
    for (const Q& q : qs) {
        const long long rb = (long long)q.k / q.block * q.bytes;
        std::vector<uint8_t> hw((size_t)q.rows * rb);
        for (auto& b : hw) b = (uint8_t)rnd();
        for (size_t o = 0; o < hw.size(); o += q.bytes) {
            const float d = 0.01f + 0.05f * fabsf(rf());
            uint16_t v;
            switch (q.id) {
            case T_Q8_0: case T_Q5_0: v = hb(rf() < 0 ? -d : d); memcpy(&hw[o], &v, 2); break;
            case T_Q4_K: v = hb(d * 0.05f); memcpy(&hw[o], &v, 2); memcpy(&hw[o + 2], &v, 2); break;
            case T_Q6_K: v = hb(d * 0.05f); memcpy(&hw[o + 208], &v, 2); break;
            }
        }
        CK(cudaMemcpy(W, hw.data(), hw.size(), cudaMemcpyHostToDevice));
        const long long n = (long long)q.rows * q.k;
        const int grid = (int)((n / 32 + 255) / 256);
        const float dq = median_ms([&] { q.dq<<<grid, 256>>>(W, B, q.rows, q.k, rb); }, 7);
        for (int M : {512, 256, 64}) {
            // The old kernel, its own tile pick.
            const int oi = old_pick(M, q.rows, q.k / 32);
            const int osm = old_smem(OLD[oi], q.words);
            CK(cudaFuncSetAttribute(q.old[oi], cudaFuncAttributeMaxDynamicSharedMemorySize, osm));
            CK(cudaFuncSetAttribute(q.old[oi], cudaFuncAttributePreferredSharedMemoryCarveout, 100));
            dim3 og((M + OLD[oi].bm - 1) / OLD[oi].bm, (q.rows + OLD[oi].bn - 1) / OLD[oi].bn);
            const float old = median_ms([&] { q.old[oi]<<<og, OLD[oi].warps * 32 * OLD[oi].kg, osm>>>(W, X, Y2, q.rows, q.k, M, rb); }, 7);
            // New: every tile, best reported (its time includes dequant and convert).
            float best = 1e9;
            int bi = 0;
            for (int ti = 0; ti < NT; ti++) {
                const float ms = median_ms([&] {
                    q.dq<<<grid, 256>>>(W, B, q.rows, q.k, rb);
                    f32_to_f16<<<(int)(((long long)M * q.k / 8 + 255) / 256), 256>>>(X, Xh, (long long)M * q.k);
                    gemm_launch(TILES[ti], Xh, B, Y, M, q.rows, q.k);
                }, 5);
                if (ms < best) best = ms, bi = ti;
            }
            std::vector<float> a((size_t)M * q.rows), b((size_t)M * q.rows);
            CK(cudaMemcpy(a.data(), Y, a.size() * 4, cudaMemcpyDeviceToHost));
            q.dq<<<grid, 256>>>(W, B, q.rows, q.k, rb);
            f32_to_f16<<<(int)(((long long)M * q.k / 8 + 255) / 256), 256>>>(X, Xh, (long long)M * q.k);
            gemm_launch(TILES[bi], Xh, B, Y, M, q.rows, q.k);
            CK(cudaMemcpy(a.data(), Y, a.size() * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(b.data(), Y2, b.size() * 4, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (size_t i = 0; i < a.size(); i++) num += (a[i] - b[i]) * (double)(a[i] - b[i]), den += (double)b[i] * b[i];
            const double fl = 2.0 * M * q.rows * q.k;
            printf("%-5s %5dx%-5d M=%3d: dequant %.3f ms (%.0f GB/s) | old %.3f ms (%.1f TF, tile %d) | new %.3f ms (%.1f TF, %s) | diff %.1e\n",
                   q.name, q.rows, q.k, M, dq, (n / q.block * q.bytes + n * 2) / (dq * 1e-3) / 1e9, old,
                   fl / (old * 1e-3) / 1e12, oi, best, fl / (best * 1e-3) / 1e12, TILES[bi].name, sqrt(num / den));
        }
    }
    printf("done\n");
    return 0;
}
