// Prompt products in two passes (the alternative to mma_matmul.cu's decode-in-the-loop kernel
// for big products): the weights are first dequantized into an f16 matrix and the activations
// rounded to f16, then a plain tensor-core GEMM multiplies the two.
//
//   dequant_f16_<fmt>: W (`rows` rows of k values in GGUF block layout, `row_bytes` apart) ->
//     f16 [rows][k]. One thread per 32-value chunk (Fmt<T>::chunk of common.cuh, the f32
//     formula, then one rounding to f16), blocks of 256 chunks staged through shared memory
//     both ways (coalesced 16-byte loads and stores).
//   f32_to_f16: X f32 [n][k] -> f16, 8 values a thread.
//   Exact products for F16 and F32 weights (dequant_split_*, f32_to_f16_split*): each value
//   x is split into f16 parts hi = f16(x) and lo = f16(x - hi) (x = hi + lo to ~2^-22
//   relative), and every 32-value chunk of a row becomes P chunks, so that one GEMM over
//   rows of P k values sums all the cross products in f32: P = 2 for F16 weights (w exact
//   in f16): activations [hi, lo], weights [w, w]; P = 3 for F32 weights: activations
//   [hi, lo, hi], weights [whi, whi, wlo] (the lo x lo term, ~2^-22 of the product, is left
//   out). The product is then as exact as the f32 accumulation, at P times the GEMM's work.
//   gemm_f16_*: Y[M][N] f32 = A[M][K] f16 . B[N][K]^T f16. Both operands K-major ("TN"), which
//     is mma.sync m16n8k16 .row.col with ldmatrix as is (A = activations, M = tokens; B =
//     weights, N = weight rows). A block computes a BM x BN tile of Y with WM x WN warps
//     (warp tile TM x TN), k in steps of BK halves through an S-stage ring of cp.async copies
//     (16 bytes each, zero-filled past M, N or K via the src-size operand), one barrier a step.
//     Shared tiles are [row][BK halves] with the 16-byte chunks XOR-swizzled (BK 32: by
//     (row >> 1) & 3; BK 64: by row & 7) so the copies and ldmatrix are free of bank
//     conflicts. grid.x runs over the token tiles, so the blocks that share a weight tile run
//     together and read it from L2. Deterministic: every output is one block's f32 sum in a
//     fixed order.
// K must be a multiple of 32 (every caller's row length is: GGUF chunks); M and N arbitrary.
#include "common.cuh"
#include "mma_prims.cuh"
#include "mv_args.cuh"
#include "prep_input.cuh"

namespace gemm {

// Half offset of (row, 16-byte chunk ch) in a swizzled [row][BK halves] tile.
template <int BK> __device__ __forceinline__ int at(int row, int ch) {
    static_assert(BK == 32 || BK == 64 || BK == 128, "BK");
    const int p = BK == 32 ? ch ^ ((row >> 1) & 3) : ch ^ (row & 7);
    return row * BK + (p << 3);
}

// Where a thread's C chunks of a tile of rows come from and go (chunk tid + i·NTH: tile row
// idx / CH, 16-byte chunk idx % CH of a BK-half step): `row(r)` gives tile row r's first
// half (null past the matrix), to which the thread's k offset is added; the destination is
// `base` plus the swizzled offset in a stage.
template <int C, int NTH, int BK, class Row>
__device__ __forceinline__ void chunk_addrs(int tid, Row row, int base, const __half* (&src)[C],
                                            int (&dst)[C]) {
    constexpr int CH = BK / 8;
    const int kc = (tid % CH) * 8;
#pragma unroll
    for (int i = 0; i < C; i++) {
        const int idx = tid + i * NTH, r = idx / CH;
        const __half* p = row(r);
        src[i] = p ? p + kc : nullptr;
        dst[i] = base + at<BK>(r, idx % CH);
    }
}

// One pipeline step's copies of a thread's C chunks of 8 halves: chunk i from src[i] + k0 to
// stage + dst[i], or zeros where its row is past the matrix (src[i] null) or k0 + the
// thread's k offset past K (`kin` false: nothing read, `any` a valid address).
template <int C>
__device__ __forceinline__ void copy_chunks(__half* stage, const __half* const (&src)[C],
                                            const int (&dst)[C], int k0, bool kin, const __half* any) {
#pragma unroll
    for (int i = 0; i < C; i++) {
        const bool ok = kin && src[i];
        cp16(stage + dst[i], ok ? src[i] + k0 : any, ok ? 16u : 0u);
    }
}

template <int BM, int BN, int BK, int WM, int WN, int S>
__device__ __forceinline__ void gemm(const __half* __restrict__ A, const __half* __restrict__ B,
                                     float* __restrict__ Y, int M, int N, int K) {
    constexpr int NTH = WM * WN * 32;          // threads
    constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
    constexpr int MT = TM / 16, NT = TN / 8;   // m16 and n8 tiles per warp
    constexpr int CH = BK / 8;                 // 16-byte chunks a tile row
    constexpr int AC = BM * CH / NTH, BC = BN * CH / NTH;  // chunks a thread copies a step
    constexpr int STAGE = (BM + BN) * BK;                  // halves of one stage
    static_assert(MT >= 1 && NT % 2 == 0 && AC >= 1 && BC >= 1, "tile shape");
    static_assert(AC * NTH == BM * CH && BC * NTH == BN * CH, "copies divide evenly");
    static_assert(S >= 2, "stages");

#ifdef MMA_EMULATE
    __half* smem = reinterpret_cast<__half*>(emu_dyn_smem);
#else
    extern __shared__ __align__(128) uint8_t smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int nk = (K + BK - 1) / BK;

    // This thread's copies: chunk idx = tid + i*NTH of a tile is row idx / CH, chunk idx % CH
    // (8 consecutive threads fill 128 contiguous bytes of shared memory: no bank conflicts).
    // Rows past M / N keep a valid address and copy nothing (zero-filled).
    const __half* asrc[AC];
    const __half* bsrc[BC];
    int adst[AC], bdst[BC];
    const int kc = (tid % CH) * 8;  // the same k offset for all of a thread's chunks
    chunk_addrs<AC, NTH, BK>(
        tid, [&](int r) { return m0 + r < M ? A + (long long)(m0 + r) * K : nullptr; }, 0, asrc, adst);
    chunk_addrs<BC, NTH, BK>(
        tid, [&](int r) { return n0 + r < N ? B + (long long)(n0 + r) * K : nullptr; }, BM * BK, bsrc, bdst);
    // Copies of k step kt into stage st (one commit group per call, even empty).
    auto load = [&](int st, int kt) {
        if (kt < nk) {
            __half* s = smem + st * STAGE;
            const int k0 = kt * BK;
            copy_chunks<AC>(s, asrc, adst, k0, k0 + kc < K, A);
            copy_chunks<BC>(s, bsrc, bdst, k0, k0 + kc < K, B);
        }
        cp_commit();
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int a = 0; a < MT; a++)
#pragma unroll
        for (int b = 0; b < NT; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;

#pragma unroll
    for (int s = 0; s < S - 1; s++) load(s, s);
    int st = 0;  // stage of step kt
#pragma unroll 1
    for (int kt = 0; kt < nk; kt++) {
        cp_wait<S - 2>();  // step kt landed (this thread's copies) ...
        __syncthreads();   // ... everyone's, and step kt-1's stage is free for reuse
        load(st == 0 ? S - 1 : st - 1, kt + S - 1);
        const __half* as = smem + st * STAGE;
        const __half* bs = as + BM * BK;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t af[MT][4], bf[NT][2];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                // Lane groups of 8 address the four 8x8 matrices: rows +0/+8, k +0/+8.
                const int r = wm * TM + mt * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                ldsm_x4(as + at<BK>(r, 2 * kk + (lane >> 4)), af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                // Matrices: (n-tile 2np, k lo), (2np, k hi), (2np+1, k lo), (2np+1, k hi).
                const int r = wn * TN + np * 16 + (lane & 7) + 8 * (lane >> 4);
                ldsm_x4(bs + at<BK>(r, 2 * kk + ((lane >> 3) & 1)), bf[2 * np][0], bf[2 * np][1],
                        bf[2 * np + 1][0], bf[2 * np + 1][1]);
            }
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mma16816(acc[mt][nt], af[mt], bf[nt]);
        }
        st = st == S - 1 ? 0 : st + 1;
    }

    store_acc<MT, NT>(acc, Y, m0 + wm * TM, n0 + wn * TN, M, N, lane);
}

// The products of a batched decode step on f16 weight copies (src/backend/cuda/model/
// f16_weights.rs): Y[M][N] f32 = A[M][K] f16 (M: a few sequences' inputs) . B[N][K]^T f16 (the
// weights), where the GEMM above, with tiles of 64+ tokens and each block walking all of k,
// gives a 3584-row product 56 blocks and reads the weights below bandwidth. Here the weights
// are the mma's A operand (m16: 16 weight rows) and the inputs its B operand (n8: 8 inputs):
// a block of 4 warps holds 32 weight rows x 8·NT inputs (NT = 2 or 4) and streams k in stages
// of SK_BK halves through a ring of SK_STAGES cp.async stages; the 4 warps split each
// stage's k16 steps (warp w takes steps w and w + 4) and their sums are added at the end in
// the order 0, 1, 2, 3. So every output is the same f32 sum in the same order whatever M and
// NT are: a sequence's products do not depend on the others in the batch. The first stages'
// weight copies are issued before pdl_wait (nothing earlier in the stream writes the weights).
// Grid: x over input tiles (fastest: the blocks sharing a weight tile run together and read
// it once from memory), y over weight tiles.
#define SK_WARPS 4
#define SK_ROWS 32
#define SK_BK 128
#ifndef SK_STAGES
#define SK_STAGES 6
#endif

// The core of a skinny product: block (blockIdx.x: inputs 8·NT·x.., blockIdx.y: the caller's
// weight tile) sums its 32 tile rows (`row(r)`: row r's f16 values, K of them, or null past
// the matrix) times its inputs; on return warp 0 holds the sums (true), the other warps are
// done (false). Accumulator (g = lane / 4, t = lane % 4): acc[mt][nt][0], [1] tile row
// 16 mt + g, inputs 8 nt + 2t, 2t + 1; [2], [3] tile row 16 mt + g + 8.
template <int NT, class Row>
__device__ __forceinline__ bool skinny_core(const __half* __restrict__ A, int M, int K, Row row,
                                            float (&acc)[2][NT][4]) {
    constexpr int NTH = SK_WARPS * 32, BK = SK_BK, CH = BK / 8;
    constexpr int TOK = 8 * NT;                                   // inputs a block
    constexpr int WC = SK_ROWS * CH / NTH, XC = TOK * CH / NTH;  // chunks a thread copies
    constexpr int STAGE = (SK_ROWS + TOK) * BK;                   // halves of a stage
    constexpr int S = SK_STAGES;
    static_assert(NT == 2 || NT == 4, "NT");
    static_assert(WC * NTH == SK_ROWS * CH && XC * NTH == TOK * CH, "copies divide evenly");
    static_assert(BK / 16 == 2 * SK_WARPS, "two k16 steps a warp a stage");
    constexpr int RED = (SK_WARPS - 1) * 32 * 2 * NT * 4;  // floats of warps 1..3's sums
    static_assert(RED * 4 <= S * STAGE * 2, "the sums fit in the ring");

#ifdef MMA_EMULATE
    __half* smem = reinterpret_cast<__half*>(emu_dyn_smem);
#else
    extern __shared__ __align__(128) uint8_t smem_raw[];
    __half* smem = reinterpret_cast<__half*>(smem_raw);
#endif
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int m0 = blockIdx.x * TOK;
    const int nk = (K + BK - 1) / BK;
    const int kc = (tid % CH) * 8;  // this thread's k offset in every chunk it copies

    const __half* wsrc[WC];
    const __half* xsrc[XC];
    int wdst[WC], xdst[XC];
    chunk_addrs<WC, NTH, BK>(tid, row, 0, wsrc, wdst);
    chunk_addrs<XC, NTH, BK>(
        tid, [&](int r) { return m0 + r < M ? A + (long long)(m0 + r) * K : nullptr; }, SK_ROWS * BK,
        xsrc, xdst);
    auto load_w = [&](int st, int kt) {
        if (kt < nk) copy_chunks<WC>(smem + st * STAGE, wsrc, wdst, kt * BK, kt * BK + kc < K, A);
    };
    auto load_x = [&](int st, int kt) {
        if (kt < nk) copy_chunks<XC>(smem + st * STAGE, xsrc, xdst, kt * BK, kt * BK + kc < K, A);
        cp_commit();
    };

#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < NT; b++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[a][b][e] = 0.f;

    // The weights of the first S - 1 stages before the wait (they land in the first commit
    // group, with stage 0's inputs), the inputs after it.
#pragma unroll
    for (int s = 0; s < S - 1; s++) load_w(s, s);
    pdl_wait();
    pdl_trigger();
#pragma unroll
    for (int s = 0; s < S - 1; s++) load_x(s, s);
    int st = 0;
#pragma unroll 1
    for (int kt = 0; kt < nk; kt++) {
        cp_wait<S - 2>();
        __syncthreads();
        const int ns = st == 0 ? S - 1 : st - 1;
        load_w(ns, kt + S - 1);
        load_x(ns, kt + S - 1);
        const __half* ws = smem + st * STAGE;
        const __half* xs = ws + SK_ROWS * BK;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int kk = warp + SK_WARPS * h;  // this warp's k16 step of the stage
            uint32_t af[2][4], bf[NT][2];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const int r = mt * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                ldsm_x4(ws + at<BK>(r, 2 * kk + (lane >> 4)), af[mt][0], af[mt][1], af[mt][2], af[mt][3]);
            }
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                const int r = np * 16 + (lane & 7) + 8 * (lane >> 4);
                ldsm_x4(xs + at<BK>(r, 2 * kk + ((lane >> 3) & 1)), bf[2 * np][0], bf[2 * np][1],
                        bf[2 * np + 1][0], bf[2 * np + 1][1]);
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mma16816(acc[mt][nt], af[mt], bf[nt]);
        }
        st = st == S - 1 ? 0 : st + 1;
    }
    // Every copy landed (the last groups are empty) and every warp is past its last ldmatrix:
    // the ring takes warps 1..3's sums; warp 0 adds them in order.
    cp_wait<0>();
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem);
    if (warp > 0) {
        float* dst = red + (warp - 1) * 32 * 2 * NT * 4;
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) dst[((mt * NT + nt) * 4 + e) * 32 + lane] = acc[mt][nt][e];
    }
    __syncthreads();
    if (warp != 0) return false;
#pragma unroll
    for (int w = 0; w < SK_WARPS - 1; w++) {
        const float* src = red + w * 32 * 2 * NT * 4;
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mt][nt][e] += src[((mt * NT + nt) * 4 + e) * 32 + lane];
    }
    return true;
}

// Y[M][N] = A . B^T (B: N rows of K), weight tile blockIdx.y: rows 32 y...
template <int NT>
__device__ __forceinline__ void skinny(const __half* __restrict__ A, const __half* __restrict__ B,
                                       float* __restrict__ Y, int M, int N, int K) {
    const int n0 = blockIdx.y * SK_ROWS;
    auto row = [&](int r) -> const __half* { return n0 + r < N ? B + (long long)(n0 + r) * K : nullptr; };
    float acc[2][NT][4];
    if (!skinny_core<NT>(A, M, K, row, acc)) return;
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, m0 = blockIdx.x * 8 * NT;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int n = n0 + mt * 16 + g + 8 * (e >> 1), m = m0 + nt * 8 + 2 * t + (e & 1);
                if (n < N && m < M) Y[(long long)m * N + n] = acc[mt][nt][e];
            }
}

// The fused form (mv_args.cuh, the mat-vecs' arguments with each segment's `w` an f16 copy:
// rows of k halves, row_bytes apart): up to three matrices sharing the input A, tiles of 32
// rows of one matrix after another (MODE_PLAIN: out + bias; MODE_ADD: one matrix, out and
// acc += out), or for MODE_GLU tiles of 16 gate rows (m-tile 0) and the same 16 up rows
// (m-tile 1): out0 = g, out1 = u, act = silu(g)·u. Output i of a matrix of R rows at out + i R.
template <int NT>
__device__ __forceinline__ void skinny_fused(const __half* __restrict__ A, const MvArgs& a, int M) {
    const bool glu = a.mode == MODE_GLU;
    int tile = blockIdx.y, seg = 0;
    if (!glu) {
        while (seg + 1 < a.n_seg && tile >= (a.seg[seg].rows + SK_ROWS - 1) / SK_ROWS) {
            tile -= (a.seg[seg].rows + SK_ROWS - 1) / SK_ROWS;
            seg++;
        }
    }
    const int per = glu ? SK_ROWS / 2 : SK_ROWS;  // rows of one matrix a tile
    const int r0 = tile * per;
    auto row = [&](int r) -> const __half* {
        const int s = glu ? r / per : seg, i = r0 + (glu ? r % per : r);
        if (i >= a.seg[s].rows) return nullptr;
        return reinterpret_cast<const __half*>(a.seg[s].w + (long long)i * a.seg[s].row_bytes);
    };
    float acc[2][NT][4];
    if (!skinny_core<NT>(A, M, a.k, row, acc)) return;
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3, m0 = blockIdx.x * 8 * NT;
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int m = m0 + nt * 8 + 2 * t + (e & 1);
            if (m >= M) continue;
            if (glu) {
                const int i = r0 + g + 8 * (e >> 1), R = a.seg[0].rows;
                if (i >= R) continue;
                const float gv = acc[0][nt][e], uv = acc[1][nt][e];
                const long long o = (long long)m * R + i;
                a.seg[0].out[o] = gv;
                a.seg[1].out[o] = uv;
                a.act[o] = gv / (1.0f + expf(-gv)) * uv;  // decode.cu's SwiGLU
                continue;
            }
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                const Seg& sg = a.seg[seg];
                const int i = r0 + mt * 16 + g + 8 * (e >> 1);
                if (i >= sg.rows) continue;
                const float v = acc[mt][nt][e] + (sg.bias ? sg.bias[i] : 0.f);
                const long long o = (long long)m * sg.rows + i;
                sg.out[o] = v;
                if (a.mode == MODE_ADD) a.acc[o] += v;
            }
        }
}

// Input y of x (k f32 a row; a grid row each) normalized with `norm` (eps) if given (also to
// `normed` if given), rounded to f16 into xh: the skinny products' input, prep_input.cuh's
// arithmetic (the same normalized values as the mat-vecs' records are made from).
__device__ __forceinline__ void prep_f16(const float* x, const float* norm, float eps, float* normed,
                                         __half* xh, int k) {
    __half* dst = xh + (long long)blockIdx.y * k;
    prep_body<8>(x, norm, eps, normed, k,
                 [&](float v, int c, int lane) { dst[c * 32 + lane] = __float2half_rn(v); });
}

// Bytes of 256 values of each format (rows hold whole 256-value superblocks for the K-quants,
// whole 32-value blocks for the others).
template <int T> struct Bytes256;
template <> struct Bytes256<T_F32> { static constexpr int v = 1024; };
template <> struct Bytes256<T_F16> { static constexpr int v = 512; };
template <> struct Bytes256<T_Q4_1> { static constexpr int v = 160; };
template <> struct Bytes256<T_Q5_0> { static constexpr int v = 176; };
template <> struct Bytes256<T_Q8_0> { static constexpr int v = 272; };
template <> struct Bytes256<T_Q4_K> { static constexpr int v = 144; };
template <> struct Bytes256<T_Q6_K> { static constexpr int v = 210; };
template <> struct Bytes256<T_MXFP4> { static constexpr int v = 136; };

// The rows are contiguous (`row_bytes` apart and that long), so the matrix is one run of
// 32-value chunks, and so is its f16 image: chunk i's values go to out + 32 i. A block of 256
// threads takes chunks [256 b, 256 b + 256): their bytes (32 * Bytes256, a multiple of 16, so
// every block's run starts 16-byte aligned) are copied to shared memory with coalesced 16-byte
// loads (the tensor's last partial word byte by byte: nothing past rows * row_bytes is read),
// each thread decodes one chunk there (Fmt<T>::chunk: the f32 formula, then one rounding to
// f16), the f16 values go back to shared memory (16-byte slots XOR-swizzled by (chunk >> 1) & 3:
// no bank conflicts) and out with coalesced 16-byte stores. The weights are no earlier
// kernel's output, so they are read before pdl_wait; the stores come after it (the previous
// product may still read `out`).
template <int T>
__device__ __forceinline__ void dequant(const uint8_t* __restrict__ W, __half* __restrict__ out, int rows,
                                        int k, long long row_bytes) {
    constexpr int IN = 32 * Bytes256<T>::v;                   // bytes of a block's 256 chunks
    constexpr int WORDS = (IN > 16384 ? IN : 16384) / 16;     // input, then the f16 output
    __shared__ __align__(16) uint4 buf[WORDS];
    const int t = threadIdx.x;
    const long long chunks = (long long)rows * (k >> 5);
    const long long c0 = (long long)blockIdx.x * 256;
    const int n = (int)min(256LL, chunks - c0);  // chunks of this block
    const long long total = (long long)rows * row_bytes, start = (long long)blockIdx.x * IN;
    const int len = (int)min((long long)IN, total - start);
    const uint8_t* src = W + start;
    for (int w = t; w * 16 < len; w += 256) {
        if (w * 16 + 16 <= len) {
            buf[w] = __ldg(reinterpret_cast<const uint4*>(src) + w);
        } else {
            uint8_t* d = reinterpret_cast<uint8_t*>(buf + w);
            for (int j = 0; j < 16; j++) d[j] = w * 16 + j < len ? src[w * 16 + j] : 0;
        }
    }
    __syncthreads();
    float o[32];
    if (t < n) Fmt<T>::chunk(reinterpret_cast<const uint8_t*>(buf), t, o);
    __syncthreads();  // every chunk decoded: the buffer takes the output
    if (t < n) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            buf[t * 4 + (j ^ ((t >> 1) & 3))] =
                make_uint4(pack_h2(o[8 * j], o[8 * j + 1]), pack_h2(o[8 * j + 2], o[8 * j + 3]),
                           pack_h2(o[8 * j + 4], o[8 * j + 5]), pack_h2(o[8 * j + 6], o[8 * j + 7]));
    }
    pdl_wait();
    pdl_trigger();
    __syncthreads();
    uint4* dst = reinterpret_cast<uint4*>(out) + c0 * 4;
    for (int w = t; w < n * 4; w += 256) {
        const int c = w >> 2;
        dst[w] = buf[c * 4 + ((w & 3) ^ ((c >> 1) & 3))];
    }
}

}  // namespace gemm

#define DEQUANT_ENTRY(name, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        dequant_f16_##name(const uint8_t* W, __half* out, int rows, int k, long long row_bytes) { \
        gemm::dequant<T>(W, out, rows, k, row_bytes);                                           \
    }
FOR_EACH_TYPE(DEQUANT_ENTRY)

// A split's part p (0: hi, 1: lo) of 8 values.
__device__ __forceinline__ uint4 split_part(const float (&v)[8], int p) {
    float o[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float hi = __half2float(__float2half_rn(v[j]));
        o[j] = p == 0 ? hi : v[j] - hi;
    }
    return make_uint4(pack_h2(o[0], o[1]), pack_h2(o[2], o[3]), pack_h2(o[4], o[5]),
                      pack_h2(o[6], o[7]));
}

// F16 (P = 2) or F32 (P = 3) weights, `rows` rows of k -> f16 [rows][P k] (see the top): a
// thread a 32-value chunk, its P parts written straight to their 64-byte slots.
template <int T, int P>
__device__ __forceinline__ void dequant_split(const uint8_t* __restrict__ W, __half* __restrict__ out,
                                              int rows, int k, long long row_bytes) {
    const long long c = (long long)blockIdx.x * 256 + threadIdx.x;
    const int per_row = k >> 5;
    pdl_wait();
    pdl_trigger();
    if (c >= (long long)rows * per_row) return;
    const long long r = c / per_row;
    const int ci = (int)(c % per_row);
    float v[32];
    Fmt<T>::chunk(W + r * row_bytes, ci, v);
    uint4* dst = reinterpret_cast<uint4*>(out + (r * per_row + ci) * 32 * P);
#pragma unroll
    for (int p = 0; p < P; p++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float e[8];
#pragma unroll
            for (int i = 0; i < 8; i++) e[i] = v[8 * j + i];
            // Parts: w (or whi) for the activations' hi and lo, wlo for hi (F32 only).
            dst[p * 4 + j] = split_part(e, p == 2 ? 1 : 0);
        }
}
extern "C" __global__ void __launch_bounds__(256)
    dequant_split_f16(const uint8_t* W, __half* out, int rows, int k, long long row_bytes) {
    dequant_split<T_F16, 2>(W, out, rows, k, row_bytes);
}
extern "C" __global__ void __launch_bounds__(256)
    dequant_split_f32(const uint8_t* W, __half* out, int rows, int k, long long row_bytes) {
    dequant_split<T_F32, 3>(W, out, rows, k, row_bytes);
}

// x (n f32 of rows of whole 32-value chunks) -> y (P n f16), the parts [hi, lo] (P = 2) or
// [hi, lo, hi] (P = 3) of each 32-value chunk; 8 values a thread, blocks of 256.
template <int P>
__device__ __forceinline__ void f32_to_f16_split(const float* __restrict__ x, __half* __restrict__ y,
                                                 long long n) {
    pdl_wait();
    pdl_trigger();
    const long long i = ((long long)blockIdx.x * 256 + threadIdx.x) * 8;
    if (i >= n) return;
    float v[8];
    const float4 a = *reinterpret_cast<const float4*>(x + i);
    const float4 b = *reinterpret_cast<const float4*>(x + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    const long long chunk = i >> 5;  // rows are whole chunks: chunk c of the flat input
    __half* dst = y + chunk * 32 * P + (i & 31);
#pragma unroll
    for (int p = 0; p < P; p++)
        *reinterpret_cast<uint4*>(dst + 32 * p) = split_part(v, p == 1 ? 1 : 0);
}
extern "C" __global__ void __launch_bounds__(256)
    f32_to_f16_split2(const float* x, __half* y, long long n) {
    f32_to_f16_split<2>(x, y, n);
}
extern "C" __global__ void __launch_bounds__(256)
    f32_to_f16_split3(const float* x, __half* y, long long n) {
    f32_to_f16_split<3>(x, y, n);
}

// x (n f32, n a multiple of 8) -> y f16, 8 values a thread; blocks of 256.
extern "C" __global__ void __launch_bounds__(256) f32_to_f16(const float* __restrict__ x,
                                                             __half* __restrict__ y, long long n) {
    pdl_wait();
    pdl_trigger();
    const long long i = ((long long)blockIdx.x * 256 + threadIdx.x) * 8;
    if (i >= n) return;
    const float4 a = *reinterpret_cast<const float4*>(x + i);
    const float4 b = *reinterpret_cast<const float4*>(x + i + 4);
    *reinterpret_cast<uint4*>(y + i) =
        make_uint4(pack_h2(a.x, a.y), pack_h2(a.z, a.w), pack_h2(b.x, b.y), pack_h2(b.z, b.w));
}

// GEMM tiles: BM x BN x BK, WM x WN warps, S stages, MINB blocks a multiprocessor (launch
// bounds: the register cap). Dynamic shared memory: S * (BM + BN) * BK * 2 bytes (96, 96 and
// 64 KiB: two, two and three blocks a multiprocessor). The launcher lists the same (GEMM_TILES in
// src/backend/cuda/launch.rs, which says how they were chosen; bench/gemm_tune.cu times
// these and other shapes).
#define GEMM_TILES(M)               \
    M(128, 128, 64, 2, 2, 3, 2)     \
    M(64, 128, 64, 2, 2, 4, 3)      \
    M(64, 64, 64, 2, 2, 4, 4)

#define GEMM_ENTRY(BM, BN, BK, WM, WN, S, MINB)                                                     \
    extern "C" __global__ void __launch_bounds__(WM * WN * 32, MINB)                                 \
        gemm_f16_##BM##x##BN##x##BK##_w##WM##x##WN##_s##S(const __half* A, const __half* B, float* Y, \
                                                          int M, int N, int K) {                     \
        pdl_wait();                                                                                  \
        gemm::gemm<BM, BN, BK, WM, WN, S>(A, B, Y, M, N, K);                                         \
    }
GEMM_TILES(GEMM_ENTRY)

// The skinny products (above): 16 or 32 inputs a block. Dynamic shared memory:
// SK_STAGES * (SK_ROWS + 8 NT) * SK_BK * 2 bytes (src/backend/cuda/launch.rs: SKINNY_*).
#define SKINNY_ENTRY(NT)                                                                           \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * 32)                                    \
        gemm_f16_skinny_n##NT(const __half* A, const __half* B, float* Y, int M, int N, int K) {   \
        gemm::skinny<NT>(A, B, Y, M, N, K);                                                           \
    }
SKINNY_ENTRY(2)
SKINNY_ENTRY(4)
#define SKINNY_FUSED_ENTRY(NT)                                                                     \
    extern "C" __global__ void __launch_bounds__(SK_WARPS * 32)                                    \
        skinny_fused_n##NT(MvArgs a, const __half* A, int M) {                                     \
        gemm::skinny_fused<NT>(A, a, M);                                                           \
    }
SKINNY_FUSED_ENTRY(2)
SKINNY_FUSED_ENTRY(4)
// prep_f16 (above): grid (ceil(k / 256), inputs), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    prep_f16(const float* x, const float* norm, float eps, float* normed, __half* xh, int k) {
    gemm::prep_f16(x, norm, eps, normed, xh, k);
}
