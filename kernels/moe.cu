// Mixture of experts (GPT-OSS): the router's top-k on the GPU; a step's picks grouped by
// expert, their biases and weighted sum, all on the device (the grouped products are
// mma_matmul.cu's mma_moe_*); the gather / scatter of token rows (also for experts without
// device tables, grouped on the host); one token's MXFP4 expert mat-vecs (moe_matvec_mxfp4;
// the other formats' go through decode.cu's expert_matvec).
#include "common.cuh"

#define MOE_PER_LANE 8  // experts a lane holds: at most 32 * 8 = 256 experts
#define MOE_MAX_K 8     // experts a token may pick

// A float's place in IEEE total order as an int (what Rust's f32::total_cmp compares).
__device__ __forceinline__ int total_order_key(float x) {
    const int b = __float_as_int(x);
    return b ^ ((b >> 31) & 0x7fffffff);
}

// Whether pick (ka, ea) ranks before (kb, eb): the larger key, the lower expert on ties; an
// expert < 0 is no pick.
__device__ __forceinline__ bool ranks_first(int ka, int ea, int kb, int eb) {
    return eb < 0 || (ea >= 0 && (ka > kb || (ka == kb && ea < eb)));
}

// Per token t (a warp each): logits[t] += bias (written back: the biased logits are the
// router's output), then its k largest (NaN as -inf, ties to the lower expert: the CPU's
// stable sort under total order), largest first, into ids[t * k + j], and the softmax of the
// picked logits into weights[t * k + j] (relative to the first pick, summed in pick order as
// the CPU does).
// Launch: block = 128 (4 tokens), grid = ceil(n_tok / 4). n_exp <= 256, k <= min(8, n_exp).
extern "C" __global__ void __launch_bounds__(128)
moe_route(float* logits, const float* __restrict__ bias, int n_tok, int n_exp, int k,
          int* __restrict__ ids, float* __restrict__ weights) {
    pdl_wait();
    pdl_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * 4 + warp;
    if (t >= n_tok) return;
    float* row = logits + (long long)t * n_exp;
    float val[MOE_PER_LANE];
    int key[MOE_PER_LANE];
#pragma unroll
    for (int i = 0; i < MOE_PER_LANE; i++) {
        const int e = lane + 32 * i;
        val[i] = 0.f;
        key[i] = 0;
        if (e < n_exp) {
            float v = row[e];
            if (bias) {
                v += bias[e];
                row[e] = v;
            }
            val[i] = v;
            key[i] = total_order_key(v != v ? -INFINITY : v);
        }
    }
    unsigned taken = 0;
    float pv[MOE_MAX_K];
    int pe[MOE_MAX_K];
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        // This lane's best untaken expert, then the warp's.
        int bk = 0, be = -1;
        float bv = 0.f;
#pragma unroll
        for (int i = 0; i < MOE_PER_LANE; i++) {
            const int e = lane + 32 * i;
            if (e < n_exp && !((taken >> i) & 1) && ranks_first(key[i], e, bk, be)) {
                bk = key[i];
                be = e;
                bv = val[i];
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const int ok = __shfl_xor_sync(0xffffffffu, bk, o);
            const int oe = __shfl_xor_sync(0xffffffffu, be, o);
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            if (ranks_first(ok, oe, bk, be)) {
                bk = ok;
                be = oe;
                bv = ov;
            }
        }
        if (be >= 0 && (be & 31) == lane) taken |= 1u << (be >> 5);
        pv[j < MOE_MAX_K ? j : 0] = bv;
        pe[j < MOE_MAX_K ? j : 0] = be;
    }
    if (lane != 0) return;
    const float mx = pv[0];
    float e[MOE_MAX_K], sum = 0.f;
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        e[j] = expf(pv[j] - mx);
        sum += e[j];
    }
#pragma unroll 1
    for (int j = 0; j < k; j++) {
        ids[(long long)t * k + j] = pe[j];
        weights[(long long)t * k + j] = e[j] / sum;
    }
}

// xg[j] = x[picks[j] / k] for j < count: the token rows (`width` f32) of an expert's picks
// (`picks`: indices t * k + slot), gathered for its products.
// Launch: block = 256, grid = count.
extern "C" __global__ void moe_gather(const float* __restrict__ x, const int* __restrict__ picks,
                                      float* __restrict__ xg, int k, int width) {
    pdl_wait();
    pdl_trigger();
    const int j = blockIdx.x;
    const float* src = x + (long long)(picks[j] / k) * width;
    float* dst = xg + (long long)j * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] = src[c];
}

// out[picks[j] / k] += weights[picks[j]] * y[j] for j < count: an expert's outputs (`width`
// f32 rows, in the order of its picks) weighed into their tokens' rows. One expert's picks
// name distinct tokens, so no two blocks of a launch write the same row.
// Launch: block = 256, grid = count.
extern "C" __global__ void moe_scatter(const float* __restrict__ y, const int* __restrict__ picks,
                                       const float* __restrict__ weights, float* out, int k,
                                       int width) {
    pdl_wait();
    pdl_trigger();
    const int j = blockIdx.x, i = picks[j];
    const float w = weights[i];
    const float* src = y + (long long)j * width;
    float* dst = out + (long long)(i / k) * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) dst[c] += w * src[c];
}

// ---------- a step's tokens grouped by expert on the device (no host round trip) ----------

#define MOE_GROUP_CHUNK 1024  // picks staged in shared memory at a time

// The n_picks picks `ids` (indices t * k + j) grouped by expert: offsets[e] = expert e's first
// grouped row (offsets[n_exp] = the rows grouped), src[r] = the pick of grouped row r and
// pos[i] = the grouped row of pick i, each expert's picks in token order (as the CPU groups
// them). A pick of an id outside 0..n_exp is left out: its pos is -1, and the rows past
// offsets[n_exp] get src 0 (a harmless row to read).
// Launch: block = 256 (a thread an expert), grid = 1. n_exp <= 256.
extern "C" __global__ void __launch_bounds__(256)
moe_group(const int* __restrict__ ids, int n_picks, int n_exp, int* __restrict__ offsets,
          int* __restrict__ src, int* __restrict__ pos) {
    __shared__ int stage[MOE_GROUP_CHUNK];
    __shared__ int first[257];
    pdl_wait();
    pdl_trigger();
    const int e = threadIdx.x;
    // Each expert counts its picks, over the ids staged a chunk at a time.
    int count = 0;
    for (int c0 = 0; c0 < n_picks; c0 += MOE_GROUP_CHUNK) {
        const int n = min(MOE_GROUP_CHUNK, n_picks - c0);
        __syncthreads();
        for (int i = e; i < n; i += blockDim.x) stage[i] = ids[c0 + i];
        __syncthreads();
        for (int i = 0; i < n; i++) count += stage[i] == e;
    }
    first[e] = e < n_exp ? count : 0;
    __syncthreads();
    if (e == 0) {
        int s = 0;
        for (int i = 0; i < n_exp; i++) {
            const int c = first[i];
            first[i] = s;
            s += c;
        }
        first[n_exp] = s;
    }
    __syncthreads();
    if (e < n_exp) offsets[e] = first[e];
    if (e == 0) offsets[n_exp] = first[n_exp];
    // Then places them, in pick order (token order within an expert).
    int r = first[min(e, n_exp)];
    for (int c0 = 0; c0 < n_picks; c0 += MOE_GROUP_CHUNK) {
        const int n = min(MOE_GROUP_CHUNK, n_picks - c0);
        __syncthreads();
        for (int i = e; i < n; i += blockDim.x) stage[i] = ids[c0 + i];
        __syncthreads();
        for (int i = e; i < n; i += blockDim.x) {
            const int id = stage[i];
            if (id < 0 || id >= n_exp) pos[c0 + i] = -1;
        }
        if (e < n_exp)
            for (int i = 0; i < n; i++)
                if (stage[i] == e) {
                    src[r] = c0 + i;
                    pos[c0 + i] = r++;
                }
    }
    for (int i = first[n_exp] + e; i < n_picks; i += blockDim.x) src[i] = 0;
}

// y_m[r][c] += bias_m[e][c] for the grouped rows r < offsets[n_exp] of the products m
// (blockIdx.y), e the expert of row r's pick (ids[src[r]]); `bias_m` a table of n_exp rows of
// `width` f32.
// Launch: block = 256, grid = (rows, products: 1 or 2).
extern "C" __global__ void moe_bias(float* y0, float* y1, const float* const* __restrict__ b0,
                                    const float* const* __restrict__ b1,
                                    const int* __restrict__ ids, const int* __restrict__ src,
                                    const int* __restrict__ offsets, int n_exp, int width) {
    pdl_wait();
    pdl_trigger();
    const int r = blockIdx.x;
    if (r >= offsets[n_exp]) return;
    const int e = ids[src[r]];
    if (e < 0 || e >= n_exp) return;
    const float* b = (blockIdx.y ? b1 : b0)[e];
    float* y = (blockIdx.y ? y1 : y0) + (long long)r * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) y[c] += b[c];
}

// out[t] = the sum over token t's k picks, in ascending expert order (the CPU's), of
// weights[i] * y[pos[i]] (y: the grouped expert outputs, rows of `width` f32); a pick left
// out of the grouping (pos -1) makes the row NaN.
// Launch: block = 256, grid = n_tok. k <= MOE_MAX_K.
extern "C" __global__ void moe_combine(const float* __restrict__ y, const int* __restrict__ ids,
                                       const int* __restrict__ pos,
                                       const float* __restrict__ weights,
                                       float* __restrict__ out, int k, int width) {
    pdl_wait();
    pdl_trigger();
    const int t = blockIdx.x;
    // The picks by expert (k is small: an insertion sort, each thread the same).
    int order[MOE_MAX_K];
    for (int j = 0; j < k; j++) {
        int s = j;
        while (s > 0 && ids[(long long)t * k + order[s - 1]] > ids[(long long)t * k + j]) {
            order[s] = order[s - 1];
            s--;
        }
        order[s] = j;
    }
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < k; s++) {
            const long long i = (long long)t * k + order[s];
            const int p = pos[i];
            v += p < 0 ? __int_as_float(0x7fc00000) : weights[i] * y[(long long)p * width + c];
        }
        out[(long long)t * width + c] = v;
    }
}

// ---------- one token: the selected experts' mat-vecs, MXFP4 ----------
// decode.cu's expert_matvec reads the input's chunk records from global memory, four loads
// of 4 bytes a lane per 17-byte block, eight records a warp instruction; and with several
// warps a row, a round of the grid moves ~190 bytes a warp (gpt-oss-20b: 281 GB/s, H100).
// Here a block takes one selected expert's matrix (blockIdx.z) for one slot (blockIdx.y):
// the slot's records are staged in shared memory once, each warp streams whole rows (the
// next row's bytes in registers while one is multiplied), each lane a block of 32 values.

#define MOE_XREC 80        // prep_input's chunk records (decode.cu's XREC): q1[32], q2[32], d, sum
#define MOE_MV_PIECES 4    // 16-byte pieces a lane holds of a row: rows of up to 127 pieces

// decode.cu's ExpertArgs (the same layout: fused.rs's ExpertArgs).
struct MoeMvArgs {
    const uint8_t* const* w[2];
    const float* const* bias[2];
    float* out[2];
    const int* ids;
    long long row_bytes;
    long long x_stride;
    int n_mat, n_sel, n_expert, rows, k, unused;
};

// The dot product of the MXFP4 block at byte o of a staged row with chunk record r: its codes
// as doubled values in signed bytes, 4-way int8 products with the record's two passes, the
// E8M0 scale (halved) last (decode.cu's Lane<T_MXFP4>, a whole block a lane).
__device__ __forceinline__ float mxfp4_block_dot(const uint8_t* row, int o, const uint8_t* r) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(row + ((o + 1) & ~3));
    const uint32_t sh = 8 * ((o + 1) & 3);
    uint32_t v[5];
#pragma unroll
    for (int i = 0; i < 5; i++) v[i] = w[i];
    const int4* p = reinterpret_cast<const int4*>(r);
    const int4 a0 = p[0], a1 = p[1], b0 = p[2], b1 = p[3];
    const int qa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    const int qb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
    int s1 = 0, s2 = 0;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const uint32_t q = __funnelshift_r(v[j], v[j + 1], sh);  // codes 4j..4j+3, 16+4j..
        const int lo = mxfp4_bytes(q), hi = mxfp4_bytes(q >> 4);
        s1 = __dp4a(hi, qa[4 + j], __dp4a(lo, qa[j], s1));
        s2 = __dp4a(hi, qb[4 + j], __dp4a(lo, qb[j], s2));
    }
    const float d = reinterpret_cast<const float*>(r + 64)[0];
    return e8m0_half(row[o]) * (d * ((float)s1 + (float)s2 * (1.0f / 254.0f)));
}

// out[m][s][r] = row r of expert ids[s] of table m · input s (+ bias[m][ids[s]][r]) for the
// rows [blockIdx.x * rows_per_block, + rows_per_block) of m = blockIdx.z, s = blockIdx.y;
// input s: prep_input's records at xs + s * x_stride. An id out of range gives NaN rows and
// reads nothing. Launch: block = 256, grid = (ceil(rows / rows_per_block), n_sel, n_mat),
// dynamic shared memory = k / 32 * MOE_XREC + 8 * moe_mv_buf(row_bytes); row_bytes <=
// 16 * (32 * MOE_MV_PIECES - 1).
__host__ __device__ __forceinline__ int moe_mv_buf(long long row_bytes) {
    return (int)((row_bytes + 15) / 16 + 1) * 16 + 16;  // a row at any 16-byte offset, + slack
}
extern "C" __global__ void __launch_bounds__(256)
moe_matvec_mxfp4(const MoeMvArgs a, const uint8_t* __restrict__ xs, int rows_per_block) {
#ifdef MMA_EMULATE
    uint8_t* smem = emu_dyn_smem;
#else
    extern __shared__ __align__(16) uint8_t smem[];
#endif
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int s = blockIdx.y, m = blockIdx.z, nc = a.k / 32;
    const long long rb = a.row_bytes;
    uint8_t* rec = smem;
    uint8_t* buf = smem + nc * MOE_XREC + warp * moe_mv_buf(rb);
    pdl_wait();  // the ids and the records come from the kernels before
    pdl_trigger();
    const int e = a.ids[s];
    const int r_begin = blockIdx.x * rows_per_block;
    const int r_end = min(a.rows, r_begin + rows_per_block);
    float* out = (m ? a.out[1] : a.out[0]) + (long long)s * a.rows;
    if (e < 0 || e >= a.n_expert) {
        for (int r = r_begin + threadIdx.x; r < r_end; r += blockDim.x)
            out[r] = __int_as_float(0x7fc00000);  // NaN: a bad id shows
        return;
    }
    const uint4* src = reinterpret_cast<const uint4*>(xs + s * a.x_stride);
    for (int i = threadIdx.x; i < nc * MOE_XREC / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(rec)[i] = src[i];
    const uint8_t* W = (m ? a.w[1] : a.w[0])[e];
    const float* const* bt = m ? a.bias[1] : a.bias[0];
    const float* bias = bt ? bt[e] : nullptr;
    __syncthreads();
    // Row r's 16-byte pieces from the boundary at or below its start (its buffer ends at
    // least 16 bytes past the row: every weight buffer is padded so).
    uint4 nxt[MOE_MV_PIECES];
    auto load = [&](int r) {
        const uint8_t* g = W + (long long)r * rb;
        const int off = (int)((uintptr_t)g & 15);
        const uint4* g0 = reinterpret_cast<const uint4*>(g - off);
        const int n16 = (int)((off + rb + 15) >> 4);
#pragma unroll
        for (int p = 0; p < MOE_MV_PIECES; p++)
            if (lane + 32 * p < n16) nxt[p] = g0[lane + 32 * p];
    };
    int r = r_begin + warp;
    if (r < r_end) load(r);
    for (; r < r_end; r += 8) {
        const int off = (int)((uintptr_t)(W + (long long)r * rb) & 15);
        const int n16 = (int)((off + rb + 15) >> 4);
        __syncwarp();
#pragma unroll
        for (int p = 0; p < MOE_MV_PIECES; p++)
            if (lane + 32 * p < n16) reinterpret_cast<uint4*>(buf)[lane + 32 * p] = nxt[p];
        __syncwarp();
        if (r + 8 < r_end) load(r + 8);
        float acc = 0.f;
        for (int b = lane; b < nc; b += 32) acc += mxfp4_block_dot(buf, off + 17 * b, rec + b * MOE_XREC);
        acc = warp_sum(acc);
        if (lane == 0) out[r] = bias ? acc + bias[r] : acc;
    }
}
