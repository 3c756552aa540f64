// Greedy pick: out[r] = index of the largest of row r (n_cols f32 values); ties go to the
// smallest index; NaNs are skipped; a row of only NaNs gives -1.
// Launch: block = 1024 threads, grid.x = n_rows.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024)
argmax_rows(const float* __restrict__ x, int* __restrict__ out, int n_cols) {
    pdl_wait();
    pdl_trigger();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* row = x + (long long)blockIdx.x * n_cols;
    float best = -INFINITY;
    int bi = -1;
    for (int i = threadIdx.x; i < n_cols; i += blockDim.x) {
        const float v = row[i];
        // Strictly greater keeps the first (smallest) index within a thread; -inf logits count.
        if (!isnan(v) && (bi < 0 || v > best)) { best = v; bi = i; }
    }
    // Combine (value, index) pairs: larger value wins, equal values -> smaller index.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) { best = ov; bi = oi; }
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        best = lane < nw ? sv[lane] : -INFINITY;
        bi = lane < nw ? si[lane] : -1;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || ov > best || (ov == best && oi < bi))) { best = ov; bi = oi; }
        }
        if (lane == 0) out[blockIdx.x] = bi;
    }
}
