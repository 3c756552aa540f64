// Fused kernels for one decode step (a single token), written so that a whole step can be
// captured once as a CUDA graph and replayed: nothing here takes the position as a kernel
// argument; it is read from the step's device `pos` buffer.
//
// fused_matvec: y = W x for up to three weight matrices sharing one input x, with the input's
//   RMSNorm folded in (every block normalizes x into shared memory itself, so no separate norm
//   kernel and no grid-wide wait) and one of three epilogues: plain (+ bias), gated (SwiGLU of
//   a gate and an up row), or add (y also added into the residual stream).
// rope_kv: rotates q and k in place and stores the token's k and v in the f16 KV cache.
// attention_decode: split-K attention of one query over the cache (flash-decoding): blocks
//   take slices of the keys, the last block of a head to finish merges their partial softmax.
#include "common.cuh"

#define DW 8          // warps per block of fused_matvec
#define STAGE 2048    // bytes of a weight row a warp stages in shared memory per step

// One weight matrix of a fused mat-vec and where its rows go.
struct Seg {
    const uint8_t* w;   // rows of GGUF blocks, row_bytes apart (buffer padded by >= 16 bytes)
    const float* bias;  // rows f32, or null
    float* out;         // rows f32
    long long row_bytes;
    int type;           // T_* of common.cuh
    int rows;
};

#define MODE_PLAIN 0  // seg[i].out[r] = W_i x + bias_i
#define MODE_GLU 1    // g = W_0 x, u = W_1 x (same rows): out0 = g, out1 = u, act = silu(g) * u
#define MODE_ADD 2    // y = W_0 x: out0 = y, acc += y

struct MvArgs {
    const float* x;     // k f32
    const float* norm;  // RMSNorm weight (k f32), or null: x is used as it is
    float* normed;      // when norm is set and this is not null, block 0 writes the normed x
    float* acc;         // MODE_ADD
    float* act;         // MODE_GLU
    float eps;
    int k;
    int mode;
    int n_seg;
    Seg seg[3];
};

// Block geometry of each format: values and bytes per block.
template <int T> struct Geo;
template <> struct Geo<T_F32> { enum { V = 32, B = 128 }; };
template <> struct Geo<T_F16> { enum { V = 32, B = 64 }; };
template <> struct Geo<T_Q4_1> { enum { V = 32, B = 20 }; };
template <> struct Geo<T_Q5_0> { enum { V = 32, B = 22 }; };
template <> struct Geo<T_Q8_0> { enum { V = 32, B = 34 }; };
template <> struct Geo<T_Q4_K> { enum { V = 256, B = 144 }; };
template <> struct Geo<T_Q6_K> { enum { V = 256, B = 210 }; };

// One warp: the dot product of weight row `row` with xs (shared memory, k f32). The row is
// copied to the warp's stage in 16-byte loads from the 16-byte boundary at or below its start
// (coalesced, many loads in flight), then decoded from shared memory 32 values per lane.
template <int T>
__device__ float row_dot(const uint8_t* __restrict__ row, int k, const float* xs,
                         uint8_t* stage, int lane) {
    constexpr int PER = (STAGE - 16) / Geo<T>::B;  // whole blocks per stage step
    constexpr int LOADS = STAGE / (16 * 32);       // 16-byte loads per lane per step
    const int nblk = k / Geo<T>::V;
    float acc = 0.f;
    for (int b0 = 0; b0 < nblk; b0 += PER) {
        const int nb = min(PER, nblk - b0);
        const uint8_t* g = row + (long long)b0 * Geo<T>::B;
        const int off = (int)((uintptr_t)g & 15);
        const uint4* g4 = reinterpret_cast<const uint4*>(g - off);
        const int n16 = (off + nb * Geo<T>::B + 15) >> 4;
        uint4 r[LOADS];
#pragma unroll
        for (int i = 0; i < LOADS; i++)
            if (lane + 32 * i < n16) r[i] = __ldg(g4 + lane + 32 * i);
        uint4* s4 = reinterpret_cast<uint4*>(stage);
#pragma unroll
        for (int i = 0; i < LOADS; i++)
            if (lane + 32 * i < n16) s4[lane + 32 * i] = r[i];
        __syncwarp();
        const uint8_t* sb = stage + off;
        const float* xb = xs + (long long)b0 * Geo<T>::V;
        const int nc = nb * (Geo<T>::V / 32);
        for (int c = lane; c < nc; c += 32) {
            float w[32];
            Fmt<T>::chunk(sb, c, w);
            acc += dot32(w, xb + c * 32);
        }
        __syncwarp();
    }
    return warp_sum(acc);
}

__device__ float row_dot_any(int type, const uint8_t* row, int k, const float* xs,
                             uint8_t* stage, int lane) {
    switch (type) {
        case T_F32: return row_dot<T_F32>(row, k, xs, stage, lane);
        case T_F16: return row_dot<T_F16>(row, k, xs, stage, lane);
        case T_Q4_1: return row_dot<T_Q4_1>(row, k, xs, stage, lane);
        case T_Q5_0: return row_dot<T_Q5_0>(row, k, xs, stage, lane);
        case T_Q8_0: return row_dot<T_Q8_0>(row, k, xs, stage, lane);
        case T_Q4_K: return row_dot<T_Q4_K>(row, k, xs, stage, lane);
        default: return row_dot<T_Q6_K>(row, k, xs, stage, lane);
    }
}

// Launch: block = 32 * DW threads, any grid (warps stride over the rows), dynamic shared
// memory = round_up(4k, 16) + DW * STAGE bytes.
extern "C" __global__ void __launch_bounds__(32 * DW) fused_matvec(const MvArgs a) {
    extern __shared__ __align__(16) uint8_t smem[];
    float* xs = reinterpret_cast<float*>(smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    uint8_t* stage = smem + ((a.k * 4 + 15) & ~15) + warp * STAGE;
    const int k = a.k;

    if (a.norm) {
        __shared__ float partial[DW];
        float ss = 0.f;
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const float v = a.x[i];
            ss += v * v;
        }
        ss = warp_sum(ss);
        if (lane == 0) partial[warp] = ss;
        __syncthreads();
        float total = 0.f;
#pragma unroll
        for (int i = 0; i < DW; i++) total += partial[i];
        // The same expression as the `rmsnorm` kernel, so fused and plain paths agree.
        const float inv = 1.0f / sqrtf(total / (float)k + a.eps);
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            const float v = a.x[i] * inv * a.norm[i];
            xs[i] = v;
            if (blockIdx.x == 0 && a.normed) a.normed[i] = v;
        }
    } else {
        for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = a.x[i];
    }
    __syncthreads();

    int total = 0;
    if (a.mode == MODE_PLAIN) {
        for (int s = 0; s < a.n_seg; s++) total += a.seg[s].rows;
    } else {
        total = a.seg[0].rows;
    }
    for (int job = blockIdx.x * DW + warp; job < total; job += gridDim.x * DW) {
        if (a.mode == MODE_GLU) {
            const Seg& sg = a.seg[0];
            const Seg& su = a.seg[1];
            const float g = row_dot_any(sg.type, sg.w + job * sg.row_bytes, k, xs, stage, lane);
            const float u = row_dot_any(su.type, su.w + job * su.row_bytes, k, xs, stage, lane);
            if (lane == 0) {
                sg.out[job] = g;
                su.out[job] = u;
                a.act[job] = g / (1.0f + expf(-g)) * u;
            }
            continue;
        }
        int s = 0, r = job;
        while (s + 1 < a.n_seg && r >= a.seg[s].rows) r -= a.seg[s++].rows;
        const Seg& sg = a.seg[s];
        float y = row_dot_any(sg.type, sg.w + r * sg.row_bytes, k, xs, stage, lane);
        if (lane == 0) {
            if (sg.bias) y += sg.bias[r];
            sg.out[r] = y;
            if (a.mode == MODE_ADD) a.acc[r] += y;
        }
    }
}

// One token: rotate each head of q (n_heads) and k (n_kv) by position pos[0], write them back,
// and store k and v as f16 in the layer's cache at that position.
// Launch: block = head_dim threads, grid.x = n_heads + n_kv.
extern "C" __global__ void rope_kv(float* q, float* k, const float* __restrict__ v,
                                   __half* kc, __half* vc, const int* __restrict__ pos,
                                   int n_heads, int n_kv, int head_dim, int max_ctx,
                                   int rot_dim, float base, int neox) {
    const int h = blockIdx.x, d = threadIdx.x;
    const bool is_k = h >= n_heads;
    float* x = is_k ? k + (h - n_heads) * head_dim : q + h * head_dim;
    const int p = pos[0];
    const int half = rot_dim / 2;
    if (d < half) {
        // As the `rope` kernel: precise powf/sincosf, the angle reaches thousands of radians.
        const float inv_freq = powf(base, -2.0f * (float)d / (float)rot_dim);
        float s, c;
        sincosf((float)p * inv_freq, &s, &c);
        const int ia = neox ? d : 2 * d;
        const int ib = neox ? d + half : 2 * d + 1;
        const float xa = x[ia], xb = x[ib];
        x[ia] = xa * c - xb * s;
        x[ib] = xa * s + xb * c;
    }
    if (!is_k) return;
    __syncthreads();
    const int kh = h - n_heads;
    if (d < head_dim) {
        const long long dst = ((long long)kh * max_ctx + p) * head_dim + d;
        kc[dst] = __float2half_rn(x[d]);
        vc[dst] = __float2half_rn(v[kh * head_dim + d]);
    }
}

#define AW 4        // warps per block of attention_decode
#define MAXD 8      // head_dim <= 32 * MAXD = 256

// Launch: block = 32 * AW, grid = (n_heads, n_split); part: n_heads * n_split * (head_dim + 2)
// f32 scratch; count: n_heads ints, zero before the first launch (the merging block resets
// its head's count). The query at position pos[0] sees keys lo..pos[0], cut into n_split
// slices; each block runs an online softmax over its slice (AW warps, merged in shared
// memory), writes (max, sum, acc) to `part`, and the last block of the head merges all.
extern "C" __global__ void __launch_bounds__(32 * AW)
attention_decode(const float* __restrict__ q, const __half* __restrict__ kc,
                 const __half* __restrict__ vc, float* __restrict__ out, float* part,
                 int* count, const int* __restrict__ pos, int n_heads, int n_kv, int head_dim,
                 int max_ctx, float scale, int window) {
    __shared__ float sm[AW], sl[AW];
    __shared__ float sacc[AW][32 * MAXD];
    __shared__ bool last;
    const int h = blockIdx.x, split = blockIdx.y, n_split = gridDim.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kvh = h / (n_heads / n_kv);
    const int nd = head_dim / 32;
    const int qpos = pos[0];
    const int lo = window > 0 ? max(0, qpos - window + 1) : 0;
    const int len = qpos + 1 - lo;
    const int per = (len + n_split - 1) / n_split;
    const int j0 = lo + split * per, j1 = min(qpos + 1, j0 + per);

    const float* qv = q + (long long)h * head_dim;
    float qr[MAXD], acc[MAXD];
#pragma unroll
    for (int i = 0; i < MAXD; i++) {
        qr[i] = i < nd ? qv[lane + 32 * i] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    const __half* kb = kc + (long long)kvh * max_ctx * head_dim;
    const __half* vb = vc + (long long)kvh * max_ctx * head_dim;
    for (int j = j0 + warp; j < j1; j += AW) {
        const __half* kr = kb + (long long)j * head_dim;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < MAXD; i++)
            if (i < nd) s += qr[i] * __half2float(kr[lane + 32 * i]);
        s = warp_sum(s);
        const float mn = fmaxf(m, s);
        const float corr = expf(m - mn);
        const float p = expf(s - mn);
        l = l * corr + p;
        const __half* vr = vb + (long long)j * head_dim;
#pragma unroll
        for (int i = 0; i < MAXD; i++)
            if (i < nd) acc[i] = acc[i] * corr + p * __half2float(vr[lane + 32 * i]);
        m = mn;
    }
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
    for (int i = 0; i < MAXD; i++)
        if (i < nd) sacc[warp][lane + 32 * i] = acc[i];
    __syncthreads();
    const int stride = head_dim + 2;
    float* mine = part + ((long long)h * n_split + split) * stride;
    if (warp == 0) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < AW; w++) M = fmaxf(M, sm[w]);
        float L = 0.f, f[AW];
#pragma unroll
        for (int w = 0; w < AW; w++) {
            f[w] = sl[w] > 0.f ? expf(sm[w] - M) : 0.f;  // a warp with no keys adds nothing
            L += sl[w] * f[w];
        }
        for (int i = 0; i < nd; i++) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < AW; w++) s += sacc[w][lane + 32 * i] * f[w];
            mine[2 + lane + 32 * i] = s;
        }
        if (lane == 0) { mine[0] = M; mine[1] = L; }
        __threadfence();  // partials visible device-wide before the count says so
    }
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&count[h], 1) == n_split - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The last block of head h: merge the n_split partial results.
    const float* ph = part + (long long)h * n_split * stride;
    float M = -INFINITY;
    for (int s = 0; s < n_split; s++)
        if (((volatile const float*)ph)[s * stride + 1] > 0.f)
            M = fmaxf(M, ((volatile const float*)ph)[s * stride]);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float L = 0.f, o = 0.f;
        for (int s = 0; s < n_split; s++) {
            const volatile float* ps = ph + s * stride;
            const float ls = ps[1];
            if (ls > 0.f) {
                const float f = expf(ps[0] - M);
                L += ls * f;
                o += ps[2 + d] * f;
            }
        }
        out[(long long)h * head_dim + d] = o / L;
    }
    if (threadIdx.x == 0) count[h] = 0;
}
