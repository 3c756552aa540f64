// Greedy pick: out[r] = index of the largest of row r (n_cols f32 values); ties go to the
// smallest index; NaNs are skipped; a row of only NaNs gives -1.
//
// A row is split into gridDim.x slices, one block each (one block alone read a 152k-entry
// vocabulary at ~10 GB/s: 62 us a token under ncu). Each block writes its slice's best
// (value, index) to part[r][slice] and counts itself done in count[r]; the last block of
// the row merges the slices in order and resets count[r] to 0 for the next launch (the
// counters start zeroed when the buffer is made), so one launch needs no second pass.
// Launch: block = 256 threads, grid = (slices <= ARGMAX_SLICES, n_rows).
#include "common.cuh"

#define ARGMAX_SLICES 32

// (value, index) pairs: larger value wins, equal values -> smaller index; index < 0: none.
__device__ __forceinline__ void am_take(float& best, int& bi, float ov, int oi) {
    if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) { best = ov; bi = oi; }
}

__device__ __forceinline__ void am_warp(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        am_take(best, bi, ov, oi);
    }
}

extern "C" __global__ void __launch_bounds__(256)
argmax_rows(const float* __restrict__ x, int* __restrict__ out, unsigned* __restrict__ count,
            float2* __restrict__ part, int n_cols) {
    pdl_wait();
    pdl_trigger();
    __shared__ float sv[8];
    __shared__ int si[8];
    __shared__ bool last;
    const int r = blockIdx.y, s = blockIdx.x, ns = gridDim.x;
    const float* row = x + (long long)r * n_cols;
    const int per = (n_cols + ns - 1) / ns;
    const int lo = s * per, hi = min(n_cols, lo + per);
    float best = -INFINITY;
    int bi = -1;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float v = row[i];
        // Strictly greater keeps the first (smallest) index within a thread; -inf logits count.
        if (!isnan(v) && (bi < 0 || v > best)) { best = v; bi = i; }
    }
    am_warp(best, bi);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; w++) am_take(best, bi, sv[w], si[w]);
        part[(long long)r * ARGMAX_SLICES + s] = make_float2(best, __int_as_float(bi));
        __threadfence();
        last = atomicAdd(&count[r], 1u) == (unsigned)ns - 1;
    }
    __syncthreads();
    if (!last || warp != 0) return;
    // The last block of the row: every slice's pair is written and visible (fenced before
    // its count).
    __threadfence();
    const volatile float2* pr = part + (long long)r * ARGMAX_SLICES;
    best = -INFINITY;
    bi = -1;
    if (lane < ns) {
        best = pr[lane].x;
        bi = __float_as_int(pr[lane].y);
    }
    am_warp(best, bi);
    if (lane == 0) {
        out[r] = bi;
        count[r] = 0;
    }
}
