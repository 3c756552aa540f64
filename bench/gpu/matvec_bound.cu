// What bounds a decode mat-vec: the real fused_matvec kernels of kernels/decode.cu against
// variants built from the same template that take work out, on the 7B's and 0.5B's shapes.
// Build and run on the device (from the repository root):
//   nvcc -O3 -std=c++17 -arch=sm_90 -I kernels -o matvec_bound bench/gpu/matvec_bound.cu && ./matvec_bound
// Variants (each a block format of its own, run through the same staging pipeline):
//   real      the kernel the engine launches for that format and epilogue
//   copy      the same staging (cp.async rounds, stages, the next round's first stage
//             early), each lane reading one byte of a staged block: the pipeline's ceiling
//   1plane    Q4_K with the input's first int8 plane only (half the dp4a and record loads):
//             what the 16-bit input costs (results differ: timing only)
//   nosc      Q4_K with the sub-block scale taken from one byte (no 6-bit unpacking)
//   branch    Q4_K with the 6-bit scales unpacked behind a branch on the sub-block (before
//             session 21; the real kernel's values)
//   old       Q6_K's lane with each word from two 16-bit loads (main's as of session 21; branch
//             q6kwords loads aligned words instead: there `real` is that one; same values)
//   stream    a plain read of the same bytes (16-byte loads, 4 a thread in flight): the
//             device's rate for this size
// Each case: 3 copies of the weights used in turn (more than L2 holds; one for the 447 MB head),
// 5 launches to warm, 30 timed by events (plain launches, no graph); prints us a launch and
// GB/s of weight bytes.
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <algorithm>
#include <vector>
#include <cuda_runtime.h>

#include "decode.cu"
#include "check.cuh"


// Variant formats (ids no GGUF type uses).
#define T_COPY_Q4K 100
#define T_COPY_Q6K 101
#define T_COPY_Q50 102
#define T_Q4K_1P 103
#define T_Q4K_NOSC 104
#define T_Q4K_BR 105
#define T_Q6K_OLD 106
template <> struct Geo<T_COPY_Q4K> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_COPY_Q6K> { enum { V = 256, B = 210 }; };
template <> struct Geo<T_COPY_Q50> { enum { V = 32, B = 22 }; };
template <> struct Geo<T_Q4K_1P> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_Q4K_NOSC> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_Q4K_BR> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_Q6K_OLD> { enum { V = 256, B = 210 }; };

template <int LPB_> struct CopyLane {
    enum { LPB = LPB_ };
    LANE_BLK {
#pragma unroll
        for (int i = 0; i < NR; i++) acc[i] += (float)b[j];
    }
};
template <> struct Lane<T_COPY_Q4K> : CopyLane<8> {};
template <> struct Lane<T_COPY_Q6K> : CopyLane<8> {};
template <> struct Lane<T_COPY_Q50> : CopyLane<4> {};

// Q4_K's lane (decode.cu) with a one-plane dot product.
__device__ __forceinline__ float dot_rec_1p(const int (&w)[8], const uint8_t* r) {
    const int4* p = reinterpret_cast<const int4*>(r);
    const int4 a0 = __ldg(p), a1 = __ldg(p + 1);
    int s1 = __dp4a(w[0], a0.x, 0);
    s1 = __dp4a(w[1], a0.y, s1);
    s1 = __dp4a(w[2], a0.z, s1);
    s1 = __dp4a(w[3], a0.w, s1);
    s1 = __dp4a(w[4], a1.x, s1);
    s1 = __dp4a(w[5], a1.y, s1);
    s1 = __dp4a(w[6], a1.z, s1);
    s1 = __dp4a(w[7], a1.w, s1);
    return xrec_d(r) * (float)s1;
}
// SCALES: 0 one byte (nosc), 1 a branch on s < 4 (the kernel before session 21), 2
// common.cuh's q4k_scale_min (the same values, no branch: decode.cu's now).
template <bool ONE_PLANE, int SCALES> struct Q4kLane {
    enum { LPB = 8 };
    LANE_BLK {
        const int s = j;
        const uint32_t* bw = reinterpret_cast<const uint32_t*>(b);
        const uint32_t dd = bw[0];
        uint32_t sc, mn;
        if (SCALES == 2) {
            q4k_scale_min(bw[1], bw[2], bw[3], s, sc, mn);
        } else if (SCALES == 1) {  // session 20's kernel: a branch on s < 4
            auto byte = [&](int i) -> uint32_t { return (bw[1 + (i >> 2)] >> (8 * (i & 3))) & 255; };
            if (s < 4) {
                sc = byte(s) & 63;
                mn = byte(s + 4) & 63;
            } else {
                sc = (byte(s + 4) & 15) | ((byte(s - 4) >> 6) << 4);
                mn = (byte(s + 4) >> 4) | ((byte(s) >> 6) << 4);
            }
        } else {
            sc = bw[1] & 63;
            mn = (bw[1] >> 8) & 63;
        }
        const uint4* qp = reinterpret_cast<const uint4*>(b + 16 + 32 * (s >> 1));
        const uint4 u0 = qp[0], u1 = qp[1];
        const int sh = 4 * (s & 1);
        const int w[8] = {(int)((u0.x >> sh) & 0x0F0F0F0Fu), (int)((u0.y >> sh) & 0x0F0F0F0Fu),
                          (int)((u0.z >> sh) & 0x0F0F0F0Fu), (int)((u0.w >> sh) & 0x0F0F0F0Fu),
                          (int)((u1.x >> sh) & 0x0F0F0F0Fu), (int)((u1.y >> sh) & 0x0F0F0F0Fu),
                          (int)((u1.z >> sh) & 0x0F0F0F0Fu), (int)((u1.w >> sh) & 0x0F0F0F0Fu)};
        const float dsc = h16(dd) * (float)sc, dmn = h16(dd >> 16) * (float)mn;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const uint8_t* r = xrec(xrow(x, xst, i), c + s);
            acc[i] += dsc * (ONE_PLANE ? dot_rec_1p(w, r) : dot_rec(w, r)) - dmn * xrec_sum(r);
        }
    }
};
template <> struct Lane<T_Q4K_1P> : Q4kLane<true, 2> {};
template <> struct Lane<T_Q4K_NOSC> : Q4kLane<false, 0> {};
template <> struct Lane<T_Q4K_BR> : Q4kLane<false, 1> {};

// Q6_K's lane with each 4-byte word from two 16-bit loads: main's own lane, here under a name
// of its own so that a branch changing decode.cu's lane (q6kwords) can keep it for the A/B.
template <> struct Lane<T_Q6K_OLD> : Lane<T_Q6_K> {};

#define VARIANT(name, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                               \
    mv_##name(const MvArgs a, const void* __restrict__ xs, int wpr) {                       \
        fused_matvec_body<T, T, 0, 1>(a, xs, wpr);                                         \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(32 * DW, 3)                               \
    mv_##name##_glu(const MvArgs a, const void* __restrict__ xs, int wpr) {                 \
        fused_matvec_body<T, T, 1, 1>(a, xs, wpr);                                         \
    }
VARIANT(copy_q4k, T_COPY_Q4K)
VARIANT(copy_q6k, T_COPY_Q6K)
VARIANT(copy_q50, T_COPY_Q50)
VARIANT(q4k_1p, T_Q4K_1P)
VARIANT(q4k_nosc, T_Q4K_NOSC)
VARIANT(q4k_br, T_Q4K_BR)
VARIANT(q6k_old, T_Q6K_OLD)

// A plain read of n16 16-byte words: 4 loads a thread in flight, summed into one word.
__global__ void stream_read(const uint4* __restrict__ p, long long n16, unsigned* out) {
    unsigned s = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        const uint4 a = __ldg(p + i), b = __ldg(p + i + stride), c = __ldg(p + i + 2 * stride),
                    d = __ldg(p + i + 3 * stride);
        s ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    for (; i < n16; i += stride) s ^= __ldg(p + i).x;
    if (s == 0x12345678u) *out = s;
}

// Blocks of a launch of `tasks` warp tasks: one resident wave at most (the engine's
// MATVEC_BLOCKS_PER_SM = 3, the kernels' launch bounds).
static long long grid_blocks(long long tasks, int sms) {
    return std::clamp<long long>((tasks + DW - 1) / DW, 1, 3ll * sms);
}

// The engine's split (src/backend/cuda/fused.rs matvec_split, full_steps).
static void split(int jobs, int min_steps, int sms, int& wpr, int& blocks) {
    double best = 1e30;
    for (int w = 1; w <= DW && (w == 1 || min_steps >= w); w *= 2) {
        const long long tasks = (long long)jobs * w;
        const long long b = grid_blocks(tasks, sms);
        const long long rounds = (tasks + b * DW - 1) / (b * DW);
        const double cost = (double)rounds / w;
        if (cost < best) {
            best = cost;
            wpr = w;
            blocks = (int)b;
        }
    }
}

struct Format {
    int type, V, B, lpb;
};
static const Format Q4K{T_Q4_K, 256, 144, 8}, Q6K{T_Q6_K, 256, 210, 8}, Q50{T_Q5_0, 32, 22, 4};

// Random blocks with sane f16 scales (d, dmin of Q4_K; d of Q6_K and Q5_0).
static std::vector<uint8_t> random_rows(const Format& f, int rows, int k, unsigned seed) {
    const long long nb = (long long)rows * (k / f.V);
    std::vector<uint8_t> v((nb * f.B + 16 + 7) / 8 * 8);
    uint64_t z = 0x9E3779B97F4A7C15ull * (seed + 1);  // xorshift64: a 447 MB head in seconds
    auto next = [&] {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        return z;
    };
    for (size_t i = 0; i < v.size(); i += 8) {
        const uint64_t r = next();
        memcpy(v.data() + i, &r, 8);
    }
    for (long long i = 0; i < nb; i++) {
        uint8_t* b = v.data() + i * f.B;
        const uint16_t h = 0x1c00 + (next() & 0x3ff);  // ~0.004-0.008
        if (f.type == T_Q4_K) {
            memcpy(b, &h, 2);
            memcpy(b + 2, &h, 2);
        } else if (f.type == T_Q6_K) {
            memcpy(b + 208, &h, 2);
        } else {
            memcpy(b, &h, 2);
        }
    }
    return v;
}

static int sms = 0;

int main() {
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, sms);
    const int smem = 2 * DW * STAGE, smem_glu = 4 * DW * STAGE;
    struct K {
        const char* name;
        const void* fn;
        bool glu;
    };
    const K kernels[] = {
        {"fused_matvec_q4_k", (const void*)fused_matvec_q4_k, false},
        {"fused_matvec_q4_k_glu", (const void*)fused_matvec_q4_k_glu, true},
        {"fused_matvec_q6_k", (const void*)fused_matvec_q6_k, false},
        {"fused_matvec_q5_0_glu", (const void*)fused_matvec_q5_0_glu, true},
        {"mv_copy_q4k", (const void*)mv_copy_q4k, false},
        {"mv_copy_q4k_glu", (const void*)mv_copy_q4k_glu, true},
        {"mv_copy_q6k", (const void*)mv_copy_q6k, false},
        {"mv_copy_q50_glu", (const void*)mv_copy_q50_glu, true},
        {"mv_q4k_1p", (const void*)mv_q4k_1p, false},
        {"mv_q4k_1p_glu", (const void*)mv_q4k_1p_glu, true},
        {"mv_q4k_nosc", (const void*)mv_q4k_nosc, false},
        {"mv_q4k_nosc_glu", (const void*)mv_q4k_nosc_glu, true},
        {"mv_q4k_br", (const void*)mv_q4k_br, false},
        {"mv_q4k_br_glu", (const void*)mv_q4k_br_glu, true},
        {"mv_q6k_old", (const void*)mv_q6k_old, false},
    };
    for (const K& k : kernels)
        CK(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                k.glu ? smem_glu : smem));
    auto find = [&](const char* n) -> const void* {
        for (const K& k : kernels)
            if (!strcmp(k.name, n)) return k.fn;
        printf("no kernel %s\n", n);
        exit(1);
    };

    struct Run {
        const char* shape;
        Format f;
        int rows, k;
        bool glu;
        const char* variants[5][2];  // label, kernel
    };
    const Run runs[] = {
        {"7B gate/up (2 x 18944 x 3584, Q4_K)", Q4K, 18944, 3584, true,
         {{"real", "fused_matvec_q4_k_glu"}, {"copy", "mv_copy_q4k_glu"}, {"1plane", "mv_q4k_1p_glu"},
          {"nosc", "mv_q4k_nosc_glu"}, {"branch", "mv_q4k_br_glu"}}},
        {"7B down (3584 x 18944, Q6_K)", Q6K, 3584, 18944, false,
         {{"real", "fused_matvec_q6_k"}, {"copy", "mv_copy_q6k"}, {"old", "mv_q6k_old"}}},
        {"7B down (3584 x 18944, Q4_K)", Q4K, 3584, 18944, false,
         {{"real", "fused_matvec_q4_k"}, {"copy", "mv_copy_q4k"}, {"1plane", "mv_q4k_1p"},
          {"nosc", "mv_q4k_nosc"}, {"branch", "mv_q4k_br"}}},
        {"7B o (3584 x 3584, Q4_K)", Q4K, 3584, 3584, false,
         {{"real", "fused_matvec_q4_k"}, {"copy", "mv_copy_q4k"}, {"1plane", "mv_q4k_1p"},
          {"nosc", "mv_q4k_nosc"}, {"branch", "mv_q4k_br"}}},
        {"7B head (152064 x 3584, Q6_K)", Q6K, 152064, 3584, false,
         {{"real", "fused_matvec_q6_k"}, {"copy", "mv_copy_q6k"}, {"old", "mv_q6k_old"}}},
        {"0.5B gate/up (2 x 4864 x 896, Q5_0)", Q50, 4864, 896, true,
         {{"real", "fused_matvec_q5_0_glu"}, {"copy", "mv_copy_q50_glu"}, {nullptr, nullptr},
          {nullptr, nullptr}}},
    };
    const int WARM = 5, REPS = 30;
    for (const Run& r : runs) {
        const int nmat = r.glu ? 2 : 1;
        const long long row_bytes = (long long)(r.k / r.f.V) * r.f.B;
        const long long mat_bytes = row_bytes * r.rows;
        const int COPIES = mat_bytes > (256ll << 20) ? 1 : 3;  // one copy of a head is 9 L2s
        std::vector<uint8_t*> w(COPIES * nmat);
        for (int i = 0; i < COPIES * nmat; i++) {
            auto h = random_rows(r.f, r.rows, r.k, 1 + i);
            CK(cudaMalloc(&w[i], h.size()));
            CK(cudaMemcpy(w[i], h.data(), h.size(), cudaMemcpyHostToDevice));
        }
        // The input: random values through the engine's prep_input.
        std::vector<float> xh(r.k);
        for (int i = 0; i < r.k; i++) xh[i] = (float)((rand() % 2001) - 1000) / 1000.f;
        float* x;
        uint8_t* rec;
        CK(cudaMalloc(&x, r.k * 4));
        CK(cudaMalloc(&rec, (r.k / 32) * XREC + 16));
        CK(cudaMemcpy(x, xh.data(), r.k * 4, cudaMemcpyHostToDevice));
        prep_input<<<(r.k / 32 + DW - 1) / DW, 32 * DW>>>(x, nullptr, 0.f, nullptr, rec, r.k);
        CK(cudaGetLastError());
        float *out0, *out1, *act, *acc;
        CK(cudaMalloc(&out0, r.rows * 4));
        CK(cudaMalloc(&out1, r.rows * 4));
        CK(cudaMalloc(&act, r.rows * 4));
        CK(cudaMalloc(&acc, r.rows * 4));
        CK(cudaMemset(acc, 0, r.rows * 4));
        int wpr = 1, blocks = 1;
        const int min_steps = r.k / r.f.V / (32 / r.f.lpb);
        split(r.rows, min_steps, sms, wpr, blocks);
        printf("\n%s: %.1f MB a launch, wpr %d, %d blocks\n", r.shape, nmat * mat_bytes / 1e6, wpr,
               blocks);
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        // Microseconds a launch: WARM launches, then REPS timed by events.
        auto time_us = [&](auto launch) {
            for (int i = 0; i < WARM; i++) launch(i);
            CK(cudaEventRecord(e0));
            for (int i = 0; i < REPS; i++) launch(i);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            return ms * 1000.0 / REPS;
        };
        std::vector<float> real_out;
        // Times `fn` at wpr warps a row on `nb` blocks; v == 0: the real kernel at the engine's
        // split, whose outputs the others are compared with.
        auto run_case = [&](int v, const char* label, const char* kname, int wpr, int nb) {
            const void* fn = find(kname);
            auto launch = [&](int i) {
                MvArgs a;
                memset(&a, 0, sizeof a);
                a.k = r.k;
                a.mode = r.glu ? MODE_GLU : MODE_ADD;
                a.n_seg = nmat;
                a.acc = acc;
                a.act = act;
                for (int s = 0; s < nmat; s++) {
                    a.seg[s].w = w[(i % COPIES) * nmat + s];
                    a.seg[s].out = s ? out1 : out0;
                    a.seg[s].row_bytes = row_bytes;
                    a.seg[s].type = r.f.type;
                    a.seg[s].rows = r.rows;
                }
                const void* xs = rec;
                void* args[] = {&a, &xs, &wpr};
                CK(cudaLaunchKernel(fn, dim3(nb), dim3(32 * DW), args, r.glu ? smem_glu : smem, 0));
            };
            const double us = time_us(launch);
            // Outputs of the last launch (the same weight copy for every variant) against the
            // real kernel's: the variants that keep its arithmetic must match it bit for bit.
            std::vector<float> o(2 * r.rows);
            CK(cudaMemcpy(o.data(), out0, r.rows * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(o.data() + r.rows, out1, r.rows * 4, cudaMemcpyDeviceToHost));
            if (v == 0) real_out = o;
            double diff = 0;
            for (int i = 0; i < nmat * r.rows; i++) diff = fmax(diff, fabs((double)o[i] - real_out[i]));
            printf("  %-7s %-24s wpr %d %8.2f us  %7.0f GB/s  max|out - real| %.3g\n", label, kname,
                   wpr, us, nmat * mat_bytes / us / 1e3, diff);
        };
        for (int v = 0; v < 5; v++)
            if (r.variants[v][0]) run_case(v, r.variants[v][0], r.variants[v][1], wpr, blocks);
        // The real kernel at the other splits (blocks as matvec_split gives them for that wpr).
        for (int w2 = 1; w2 <= DW; w2 *= 2) {
            if (w2 == wpr || r.k / r.f.V < w2) continue;
            run_case(1, "split", r.variants[0][1], w2, (int)grid_blocks((long long)r.rows * w2, sms));
        }
        // The plain read of the same bytes (all matrices of a copy in one pass each).
        {
            unsigned* sink;
            CK(cudaMalloc(&sink, 4));
            auto launch = [&](int i) {
                for (int s = 0; s < nmat; s++)
                    stream_read<<<sms * 4, 512>>>((const uint4*)w[(i % COPIES) * nmat + s],
                                                  mat_bytes / 16, sink);
            };
            const double us = time_us(launch);
            printf("  %-7s %-24s %8.2f us  %7.0f GB/s\n", "stream", "stream_read", us,
                   nmat * mat_bytes / us / 1e3);
            CK(cudaFree(sink));
        }
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        for (auto p : w) CK(cudaFree(p));
        for (void* p : {(void*)x, (void*)rec, (void*)out0, (void*)out1, (void*)act, (void*)acc})
            CK(cudaFree(p));
        CK(cudaEventDestroy(e0));
        CK(cudaEventDestroy(e1));
    }
    return 0;
}
