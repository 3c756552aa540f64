//! Safe, size-checked launches of every kernel in kernels/*.cu.

use super::device::CudaDevice;
use super::drv;
use super::kv_pages::{KvCache, KvLayer};
use super::memory::{DeviceBuffer, MemKind};
use crate::quant::GgmlType;
use crate::{Error, Result};
use cudarc::driver::{result, sys};
use std::ffi::c_void;

/// The extern "C" kernels each kernels/NAME.cu defines (looked up when the device opens).
pub(super) fn kernel_names(file: &str) -> &'static [&'static str] {
    match file {
        "quant_matvec" => &[
            "matvec_f32",
            "matvec_f16",
            "matvec_q4_1",
            "matvec_q5_0",
            "matvec_q8_0",
            "matvec_q4_k",
            "matvec_q6_k",
            "matvec_mxfp4",
        ],
        "quant_matmul" => &[
            "matmul_f32",
            "matmul_f16",
            "matmul_q4_1",
            "matmul_q5_0",
            "matmul_q8_0",
            "matmul_q4_k",
            "matmul_q6_k",
            "matmul_mxfp4",
        ],
        "embed" => &[
            "embed_f32",
            "embed_f16",
            "embed_q4_1",
            "embed_q5_0",
            "embed_q8_0",
            "embed_q4_k",
            "embed_q6_k",
            "embed_mxfp4",
        ],
        "norm" => &["rmsnorm"],
        "rope" => &["rope", "rope_scaled"],
        "attention" => &["kv_store", "attention", "kv_store_f32kv", "attention_f32kv"],
        "attention_batch" => &["kv_store_batch", "attention_batch", "rope_kv_batch"],
        "elementwise" => &[
            "swiglu",
            "geglu",
            "clamped_swiglu",
            "add_bias",
            "add",
            "scale",
            "softcap",
        ],
        "moe" => &[
            "moe_route",
            "moe_gather",
            "moe_scatter",
            "moe_group",
            "moe_bias",
            "moe_combine",
            "moe_matvec_mxfp4",
        ],
        "argmax" => &["argmax_rows"],
        "decode" => &[
            "prep_input",
            "fused_matvec",
            "fused_matvec_f32",
            "fused_matvec_f16",
            "fused_matvec_q4_1",
            "fused_matvec_q5_0",
            "fused_matvec_q8_0",
            "fused_matvec_q4_k",
            "fused_matvec_q6_k",
            "fused_matvec_mxfp4",
            "fused_matvec_f32_glu",
            "fused_matvec_f16_glu",
            "fused_matvec_q4_1_glu",
            "fused_matvec_q5_0_glu",
            "fused_matvec_q8_0_glu",
            "fused_matvec_q4_k_glu",
            "fused_matvec_q6_k_glu",
            "fused_matvec_mxfp4_glu",
            "fused_matvec_q5_0_q8_0",
            "fused_matvec_q4_k_q6_k",
            "expert_matvec_q4_1",
            "expert_matvec_q5_0",
            "expert_matvec_q8_0",
            "expert_matvec_q4_k",
            "expert_matvec_q6_k",
            "expert_matvec_mxfp4",
            "expert_combine",
            "rope_kv",
            "kv_store_decode",
            "attention_decode",
            "attention_decode_d64",
            "attention_decode_d128",
            "rope_kv_f32kv",
            "kv_store_decode_f32kv",
            "attention_decode_f32kv",
            "attention_decode_d64_f32kv",
            "attention_decode_d128_f32kv",
        ],
        "mmq" => &super::mmq::KERNELS,
        "mma_matmul" => mma_kernels(),
        "gemm_f16" => gemm_kernels(),
        "attention_tiled" => &[
            "attention_tiled",
            "attention_tiled_sinks",
            "attention_tiled_f32kv",
            "attention_tiled_sinks_f32kv",
        ],
        _ => &[],
    }
}

/// A tile shape of kernels/mma_matmul.cu (its `MMA_TILES` list, same order).
#[derive(Debug, Clone, Copy)]
pub struct MmaTile {
    /// Tokens (rows of Y) per block.
    pub tokens: usize,
    /// Weight rows (columns of Y) per block.
    pub rows: usize,
    /// Warps of one k-group.
    pub warps: usize,
    /// k-groups: warp groups of a block that split the row length and add up at the end.
    pub kgroups: usize,
    /// Blocks per multiprocessor that the shared memory is sized for (where the weight
    /// type's copy stages allow).
    pub per_sm: usize,
}

impl MmaTile {
    pub const fn threads(&self) -> usize {
        self.warps * 32 * self.kgroups
    }

    /// Name of the kernel for weight-type suffix `ty`.
    pub fn kernel(&self, ty: &str) -> String {
        format!("mma_{ty}_{}x{}k{}", self.tokens, self.rows, self.kgroups)
    }

    /// Name of the grouped expert product's kernel (`mma_moe_*`) for suffix `ty`.
    pub fn moe_kernel(&self, ty: &str) -> String {
        format!(
            "mma_moe_{ty}_{}x{}k{}",
            self.tokens, self.rows, self.kgroups
        )
    }

    /// Dynamic shared memory for weight type `ty`, as kernels/mma_matmul.cu's `Layout` per
    /// k-group: f16 tiles of 32 values a row for the tokens and rows (two buffers), then copy
    /// stages of the group's threads' slots (X float4s, weight units). As many stages (2 to
    /// 8) as fit `per_sm` blocks in a multiprocessor's 228 KB (1 KB of it reserved per block);
    /// the kernel derives the stage count from the size it is given.
    pub fn smem_bytes(&self, ty: GgmlType) -> usize {
        let nth = self.warps * 32;
        let xv = self.tokens * 8 / nth;
        let wu = (2 * self.rows).div_ceil(nth);
        let tiles = (self.tokens + self.rows) * 128;
        let stage = nth * 16 * xv + nth * 4 * unit_words(ty) * wu;
        let fit = ((228 << 10) / self.per_sm - 1024) / self.kgroups / 128 * 128;
        let share = (tiles + 8 * stage)
            .min(fit)
            .max(tiles + 2 * stage)
            .div_ceil(128)
            * 128;
        share * self.kgroups
    }
}

/// Words a thread copies for one 16-value weight unit (kernels/mma_matmul.cu: `Unit<T>::N *
/// Unit<T>::VEC`).
fn unit_words(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 => 16,
        GgmlType::F16 | GgmlType::Q4_K => 8,
        GgmlType::Q4_1 => 5,
        GgmlType::Q5_0 => 7,
        GgmlType::Q8_0 => 6,
        GgmlType::MXFP4 => 5,
        _ => 12, // Q6_K (the largest quantized unit)
    }
}

const fn tile(tokens: usize, rows: usize, warps: usize, kgroups: usize, per_sm: usize) -> MmaTile {
    MmaTile {
        tokens,
        rows,
        warps,
        kgroups,
        per_sm,
    }
}

/// The tile shapes of kernels/mma_matmul.cu (its `MMA_TILES`, same order).
pub const MMA_TILES: [MmaTile; 6] = [
    tile(128, 128, 8, 1, 2),
    tile(128, 64, 8, 1, 2),
    tile(64, 64, 4, 1, 4),
    tile(32, 64, 4, 1, 6),
    tile(64, 64, 4, 2, 2),
    tile(32, 64, 4, 4, 2),
];

/// Prompts of at least this many tokens take the tiled attention kernel (`attention_tiled`).
pub const ATTN_TILED_MIN_TOKENS: usize = 16;

/// Prompt products of at least this many tokens run on the tensor cores (`matmul_mma`); shorter
/// ones keep the f32 kernel.
pub const MMA_MIN_TOKENS: usize = 16;

const TYPE_SUFFIXES: [&str; 8] = [
    "f32", "f16", "q4_1", "q5_0", "q8_0", "q4_k", "q6_k", "mxfp4",
];

/// The tiles (indexes of [`MMA_TILES`]) of kernels/mma_matmul.cu's grouped expert products
/// (its `MMA_MOE_TILES`, same order).
pub const MOE_MMA_TILES: [usize; 3] = [1, 2, 3];

/// `mma_{type}_{tokens}x{rows}k{groups}` for every type and tile of kernels/mma_matmul.cu, and
/// the grouped expert products' `mma_moe_*`.
fn mma_kernels() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        TYPE_SUFFIXES
            .iter()
            .flat_map(|ty| MMA_TILES.iter().map(move |t| t.kernel(ty)))
            .chain(TYPE_SUFFIXES.iter().flat_map(|ty| {
                MOE_MMA_TILES
                    .iter()
                    .map(move |&t| MMA_TILES[t].moe_kernel(ty))
            }))
            .map(|n| &*Box::leak(n.into_boxed_str()))
            .collect()
    })
}

/// The tile for an n_tok x rows product with `nc` 32-value chunks a row on `sms`
/// multiprocessors, from the per-tile timings of the Qwen2.5 0.5B and 7B products at 256 and
/// 512 tokens on an H200 (bench/RESULTS.md): the biggest tile while it fills two blocks a
/// multiprocessor, then 128x64 while it fills one, then 64x64 with two k-groups (more warps
/// on each tile) while it nearly fills one, else 32x64 with four k-groups (small products:
/// the row length split four ways is what keeps the multiprocessors busy).
fn mma_tile(n_tok: usize, rows: usize, nc: usize, sms: usize) -> usize {
    let blocks = |i: usize| n_tok.div_ceil(MMA_TILES[i].tokens) * rows.div_ceil(MMA_TILES[i].rows);
    if blocks(0) >= 2 * sms {
        0
    } else if blocks(1) >= sms {
        1
    } else if 4 * blocks(4) >= 3 * sms {
        4
    } else if nc >= 8 {
        5
    } else {
        3
    }
}

/// Whether [`CudaDevice::matmul`] takes the tensor cores for an n_tok x rows x k product: from
/// MMA_MIN_TOKENS tokens always; below, from the token count where the f32 kernel (time ∝
/// tokens) and the tensor-core kernel (nearly flat) cross in the H200 small-batch timings:
/// 16 for 896x896, 3.5 for 3584x3584, 1.5 for 18944x3584, i.e. 16 (0.8M / weights)^0.55.
pub fn matmul_uses_mma(n_tok: usize, rows: usize, k: usize) -> bool {
    let weights = (rows * k) as f64;
    n_tok >= MMA_MIN_TOKENS || (n_tok >= 2 && n_tok as f64 >= 16.0 * (0.8e6 / weights).powf(0.55))
}

/// A tile shape of kernels/gemm_f16.cu (its `GEMM_TILES`, same order).
#[derive(Debug, Clone, Copy)]
pub struct GemmTile {
    /// Tokens (rows of Y) per block.
    pub tokens: usize,
    /// Weight rows (columns of Y) per block.
    pub rows: usize,
    /// k values a pipeline step copies (halves of a shared tile row).
    pub bk: usize,
    /// Warps along the tokens and along the rows.
    pub wm: usize,
    pub wn: usize,
    /// Pipeline stages (cp.async ring depth).
    pub stages: usize,
}

impl GemmTile {
    pub const fn threads(&self) -> usize {
        self.wm * self.wn * 32
    }

    /// Name of the kernel.
    pub fn kernel(&self) -> String {
        format!(
            "gemm_f16_{}x{}x{}_w{}x{}_s{}",
            self.tokens, self.rows, self.bk, self.wm, self.wn, self.stages
        )
    }

    /// Dynamic shared memory: `stages` f16 tiles of (tokens + rows) x bk.
    pub const fn smem_bytes(&self) -> usize {
        self.stages * (self.tokens + self.rows) * self.bk * 2
    }
}

const fn gtile(tokens: usize, rows: usize, bk: usize, stages: usize) -> GemmTile {
    GemmTile {
        tokens,
        rows,
        bk,
        wm: 2,
        wn: 2,
        stages,
    }
}

/// The tile shapes of kernels/gemm_f16.cu (its `GEMM_TILES`, same order): 4 warps of 64x64,
/// 32x32 or 32x64 outputs, k steps of 64. Chosen from ten shapes timed on an H200
/// (bench/gemm_tune.cu, bench/RESULTS.md): with 8 warps or 64 x 64 warp tiles in 256-thread
/// blocks, or k steps of 32, the products ran 5-30% slower.
pub const GEMM_TILES: [GemmTile; 3] = [
    gtile(128, 128, 64, 3),
    gtile(64, 128, 64, 4),
    gtile(64, 64, 64, 4),
];

/// The GEMM tile for an n_tok x rows product on `sms` multiprocessors: the biggest that
/// still makes 3/4 of a block a multiprocessor (H200, 512 tokens: 128x128 ran the 7B
/// gate/up 358, down 323, q/o 281 TFLOP/s; 64x64 ran the 7B k/v 83 and the 0.5B down 153,
/// where 128x128 gave 40 and 74 with 16 and 28 blocks).
fn gemm_tile(n_tok: usize, rows: usize, sms: usize) -> usize {
    let blocks =
        |i: usize| n_tok.div_ceil(GEMM_TILES[i].tokens) * rows.div_ceil(GEMM_TILES[i].rows);
    (0..GEMM_TILES.len() - 1)
        .find(|&i| 4 * blocks(i) >= 3 * sms)
        .unwrap_or(GEMM_TILES.len() - 1)
}

/// The skinny products' input tiles (kernels/gemm_f16.cu `gemm_f16_skinny_n<NT>`: 8·NT inputs
/// a block), with their constants: weight rows a block, k a stage, ring stages.
const SKINNY_NT: [usize; 2] = [2, 4];
pub(super) const SKINNY_ROWS: usize = 32;
const SKINNY_BK: usize = 128;
const SKINNY_STAGES: usize = 6;

/// The launch shape of a skinny kernel over `m` inputs and `tiles` weight tiles: its input
/// tiles (NT), its dynamic shared memory (the ring of stages) and its grid (input tiles along
/// x, weight tiles along y, at most 65535).
pub(super) fn skinny_launch(m: usize, tiles: usize) -> Result<(usize, u32, (u32, u32, u32))> {
    if tiles == 0 || tiles > 65535 {
        return Err(Error::InvalidArgument(format!(
            "skinny product: {tiles} weight tiles (1 to 65535)"
        )));
    }
    let nt = if m <= 16 { SKINNY_NT[0] } else { SKINNY_NT[1] };
    let smem = SKINNY_STAGES * (SKINNY_ROWS + 8 * nt) * SKINNY_BK * 2;
    let grid_x = dim(m.div_ceil(8 * nt), "skinny input tiles")?;
    Ok((nt, smem as u32, (grid_x as u32, tiles as u32, 1)))
}

/// Most inputs of a product on f16 weight copies that take the skinny kernel rather than
/// the GEMM tiles (`LLORCH_CUDA_SKINNY_MAX`, default 128; 0: never). Up to there every
/// input's outputs are the same sums in the same order whatever the batch holds.
pub fn skinny_max() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("LLORCH_CUDA_SKINNY_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128)
    })
}

/// Most rows of a step whose skinny products run fused by default.
pub const SKINNY_FUSED_MAX_ROWS: usize = 8;

/// Whether a step of `n` rows runs its skinny products fused (`skinny_fused_n*`: q/k/v,
/// gate/up and the residual products in one launch each, an input converted to f16 once for
/// the products that share it): up to [`SKINNY_FUSED_MAX_ROWS`] rows, where it was measured
/// faster; more rows take the unfused products, one launch per matrix, which were faster
/// there. H100, synthetic shapes, `--parallel` aggregate tok/s fused / unfused (session 15):
/// 0.5B 4,323 / 3,662 at 8, 10,177 / 11,072 at 32, 18,838 / 20,557 at 128; 7B 1,221 / 1,087
/// at 8, 3,689 / 3,685 at 32, 5,709 / 6,442 at 128. `LLORCH_CUDA_SKINNY_FUSED=1`: fused at
/// every size; `0`: never.
pub fn skinny_fused(n: usize) -> bool {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let mode = MODE.get_or_init(
        || match std::env::var("LLORCH_CUDA_SKINNY_FUSED").as_deref() {
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            _ => None,
        },
    );
    mode.unwrap_or(n <= SKINNY_FUSED_MAX_ROWS)
}

/// `dequant_f16_<type>`, `f32_to_f16` and every tile of kernels/gemm_f16.cu.
fn gemm_kernels() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        TYPE_SUFFIXES
            .iter()
            .map(|ty| format!("dequant_f16_{ty}"))
            .chain(
                [
                    "f32_to_f16",
                    "dequant_split_f16",
                    "dequant_split_f32",
                    "f32_to_f16_split2",
                    "f32_to_f16_split3",
                ]
                .map(String::from),
            )
            .chain(GEMM_TILES.iter().map(|t| t.kernel()))
            .chain(SKINNY_NT.iter().map(|nt| format!("gemm_f16_skinny_n{nt}")))
            .chain(SKINNY_NT.iter().map(|nt| format!("skinny_fused_n{nt}")))
            .chain(["prep_f16".to_string()])
            .map(|n| &*Box::leak(n.into_boxed_str()))
            .collect()
    })
}

/// Whether an n_tok x rows x k product takes the two-pass path (dequantize to f16, round the
/// activations, f16 GEMM: [`CudaDevice::matmul_gemm`]) rather than [`CudaDevice::matmul`]:
/// wherever `matmul` would take the tensor cores ([`matmul_uses_mma`]), since the two-pass
/// path was the faster of the two in every case measured. H200, 2026-11-29 (tests/cuda_bench.rs,
/// bench/RESULTS.md), dequant + convert + GEMM against the decode-in-the-loop kernel, ms:
/// 512 tokens, 7B gate/up 0.261 vs 0.544, down (Q6_K) 0.300 vs 1.016, q/o 0.067 vs 0.142, k/v
/// 0.035 vs 0.060; 0.5B gate/up 0.040 vs 0.082, down 0.044 vs 0.085, q/o 0.022 vs 0.028. From
/// 2 to 128 tokens on 7 shapes (128x896 to 18944x3584): 896x896 0.019-0.023 vs 0.023-0.025,
/// 18944x3584 0.133-0.140 vs 0.246, never slower. Against the f32 kernel the crossover stays
/// about where `matmul_uses_mma` puts it (3584x3584 at 2 tokens: f32 0.040, two-pass 0.038;
/// 896x896 at 12: 0.022 / 0.023, at 16: 0.025 / 0.022).
pub fn matmul_uses_gemm(n_tok: usize, rows: usize, k: usize) -> bool {
    gemm_enabled() && matmul_uses_mma(n_tok, rows, k)
}

/// The f16 parts the two-pass product splits each value of a weight of type `ty` and of its
/// activations into (kernels/gemm_f16.cu): 2 for F16 weights, 3 for F32 ones, so that their
/// products are exact to the f32 sums (exact weights get exact products, and HF's f32 forward
/// on the same weights is matched within 1e-3, tests/engine_tiny.rs), at 2 or 3 times the
/// GEMM's work; 1 (f16 activations, ~2^-12 relative) for the quantized formats, whose own
/// rounding is far coarser, and for every type under `LLORCH_CUDA_EXACT=0`.
/// Always on for F16/F32 weights, not only for `kv_type` f32 sessions: the f16 inputs alone
/// moved the tiny models' logits up to 8.8e-3 (CPU emulation), more than the f16 cache (5.5e-3),
/// and a file of F16/F32 weights is the user's choice of precision over size. Cost, H100, an
/// all-F16 0.5B (`synth --mix f16`): pp512 42,700 tok/s against 60,800 unsplit (the GEMMs'
/// share of the prompt doubles); decode unchanged (its mat-vecs take f32 inputs already);
/// quantized files unaffected (bench/RESULTS.md).
pub fn gemm_parts(ty: GgmlType) -> usize {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("LLORCH_CUDA_EXACT").map_or(true, |v| v != "0"));
    match ty {
        GgmlType::F16 if on => 2,
        GgmlType::F32 if on => 3,
        _ => 1,
    }
}

/// Whether the two-pass prompt products are used (`LLORCH_CUDA_GEMM=0` turns them off, and
/// sessions then allocate no scratch for them).
pub fn gemm_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LLORCH_CUDA_GEMM").map_or(true, |v| v != "0"))
}

/// A product's tile: the one asked for (an index below `count`, else an error naming `what`),
/// or `pick`'s.
fn tile_index(
    tile: Option<usize>,
    count: usize,
    what: &str,
    pick: impl FnOnce() -> usize,
) -> Result<usize> {
    match tile {
        Some(t) if t < count => Ok(t),
        Some(t) => Err(Error::InvalidArgument(format!(
            "{what}: tile {t} of {count}"
        ))),
        None => Ok(pick()),
    }
}

/// Kernel-name suffix of a weight type the quantized kernels support.
pub(super) fn type_suffix(ty: GgmlType) -> Result<&'static str> {
    Ok(match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q6_K => "q6_k",
        GgmlType::MXFP4 => "mxfp4",
        other => {
            return Err(Error::Unsupported(format!(
                "CUDA kernels for {} weights are not implemented",
                other.name()
            )))
        }
    })
}

/// A dimension as the kernels' `int`.
pub(super) fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::InvalidArgument(format!("{what} = {v} exceeds i32")))
}

pub(super) fn positive(v: usize, what: &str) -> Result<i32> {
    if v == 0 {
        return Err(Error::InvalidArgument(format!("{what} must be > 0")));
    }
    dim(v, what)
}

/// Bytes of `n` f32 values.
pub(super) fn f32s(n: usize) -> u64 {
    n as u64 * 4
}

/// Bytes of one weight row of `k` values; k must be a positive multiple of 32.
pub(super) fn row_bytes(ty: GgmlType, k: usize, what: &str) -> Result<u64> {
    if k == 0 || k % 32 != 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: row length {k} is not a positive multiple of 32"
        )));
    }
    ty.bytes_for(k as u64).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{what}: row length {k} is not a whole number of {} blocks ({})",
            ty.name(),
            ty.block_size()
        ))
    })
}

/// Launch `$name` with the listed arguments (each a plain value: device pointers as u64,
/// dimensions as i32/i64/f32). The argument list must match the kernel's signature.
macro_rules! launch {
    ($dev:expr, $name:expr, $grid:expr, $block:expr; $($arg:expr),* $(,)?) => {
        launch!($dev, $name, $grid, $block, shared = 0u32; $($arg),*)
    };
    // With `shared` bytes of dynamic shared memory, the kernel's limit first raised to it
    // (needed above 48 KiB) and all of L1 preferred as shared memory.
    // These kernels (the prompt's tensor-core products and tiled attention) are launched
    // without programmatic dependent launch: with it, a 0.5B pp512 measured 35.2k tok/s
    // against 39.4k without (H200, 2026-11-28).
    ($dev:expr, $name:expr, $grid:expr, $block:expr, raise_shared = $smem:expr; $($arg:expr),* $(,)?) => {{
        let name: &str = $name;
        $dev.raise_shared_limit(name, $smem)?;
        launch!(@go $dev, name, $grid, $block, $smem, false; $($arg),*)
    }};
    // The same, with programmatic dependent launch as `shared` below (the skinny products:
    // their first weight stages are fetched before they wait for the kernel before them).
    ($dev:expr, $name:expr, $grid:expr, $block:expr, raise_shared_pdl = $smem:expr; $($arg:expr),* $(,)?) => {{
        let name: &str = $name;
        $dev.raise_shared_limit(name, $smem)?;
        launch!(@go $dev, name, $grid, $block, $smem, $crate::backend::cuda::launch::pdl_enabled(); $($arg),*)
    }};
    // With `shared` bytes of dynamic shared memory. Every launch allows programmatic
    // dependent launch when it is on (`pdl_enabled`): the kernel may start while the kernel
    // before it in the stream finishes, so every kernel begins with `pdl_wait()`
    // (common.cuh), before it touches anything earlier kernels write.
    ($dev:expr, $name:expr, $grid:expr, $block:expr, shared = $smem:expr; $($arg:expr),* $(,)?) => {
        launch!(@go $dev, $name, $grid, $block, $smem, $crate::backend::cuda::launch::pdl_enabled(); $($arg),*)
    };
    (@go $dev:expr, $name:expr, $grid:expr, $block:expr, $smem:expr, $pdl:expr; $($arg:expr),*) => {{
        let name: &str = $name;
        let f = *$dev.inner.funcs.get(name).ok_or_else(|| {
            Error::Internal(format!("kernel {name} was not loaded"))
        })?;
        let mut params: Vec<*mut c_void> = Vec::new();
        // Each argument in a local of its own (a shadowed binding lives to the end of the
        // block), its address handed to the driver, which copies the values at launch.
        $(
            let mut arg = $arg;
            params.push(&mut arg as *mut _ as *mut c_void);
        )*
        // SAFETY: `params` holds one pointer per kernel parameter, in order, each alive here.
        unsafe { $dev.launch_raw(name, f, $grid, $block, $smem, $pdl, &mut params) }
    }};
}

/// Let kernel `f` (`name`, for the message) take up to `bytes` of dynamic shared memory: above
/// 48 KiB a kernel must ask for it.
pub(super) fn allow_shared(f: sys::CUfunction, name: &str, bytes: usize) -> Result<()> {
    use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
    unsafe {
        result::function::set_function_attribute(
            f,
            Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
    }
    .map_err(|e| drv(&format!("shared memory limit of {name}"), e))
}

/// Whether kernels are launched with programmatic dependent launch (`LLORCH_CUDA_PDL=0`
/// turns it off).
pub(crate) fn pdl_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LLORCH_CUDA_PDL").map_or(true, |v| v != "0"))
}

impl CudaDevice {
    /// Launch `f` on this handle's stream. With `pdl`, the launch allows programmatic stream
    /// serialization: its blocks may be scheduled once the previous kernel's blocks have all
    /// run `griddepcontrol.launch_dependents` (or exited), and the kernel's
    /// `griddepcontrol.wait` then waits for that kernel's completion and memory.
    ///
    /// # Safety
    /// `params` must match the kernel's parameters (one pointer to each value, in order).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn launch_raw(
        &self,
        name: &str,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        pdl: bool,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        self.inner.bind()?;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: smem,
            hStream: self.stream.raw,
            attrs: &mut attr,
            numAttrs: u32::from(pdl),
        };
        sys::cuLaunchKernelEx(&cfg, f, params.as_mut_ptr(), std::ptr::null_mut())
            .result()
            .map_err(|e| drv(&format!("launch of {name}"), e))
    }
}

/// Grid size for the grid-stride elementwise kernels (256 threads a block).
fn ew_grid(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65535) as u32
}

/// Rotary embedding parameters.
#[derive(Debug, Clone, Copy)]
pub struct RopeParams {
    /// Leading dimensions of each head that rotate (even, <= head_dim).
    pub rot_dim: usize,
    /// Frequency base (rope_theta), e.g. 10000 or 1000000.
    pub base: f32,
    /// Positions are multiplied by this (1.0, or 1/factor for linear scaling).
    pub pos_scale: f32,
    /// true: pairs (i, i + rot_dim/2) (NeoX, Qwen2, Gemma); false: pairs (2i, 2i+1) (LLaMA).
    pub neox: bool,
}

/// Most rotated pairs `rope_scaled` takes divisors for (kernels/rope.cu's `RopeDiv`).
pub const ROPE_DIV_MAX: usize = 256;

/// The divisors as the kernel's by-value parameter.
#[repr(C)]
struct RopeDiv([f32; ROPE_DIV_MAX]);

impl CudaDevice {
    /// y = W x. `w`: `rows` rows of `k` values of type `ty`, GGUF layout; `x`: k f32; `y`: rows f32.
    pub fn matvec(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, "matvec")?;
        let name = format!("matvec_{}", type_suffix(ty)?);
        let rows_i = positive(rows, "matvec rows")?;
        let k_i = dim(k, "matvec k")?;
        w.check(self, rb * rows as u64, "matvec weights")?;
        x.check(self, f32s(k), "matvec x")?;
        y.check(self, f32s(rows), "matvec y")?;
        launch!(self, &name, (rows.div_ceil(4) as u32, 1, 1), (128, 1, 1);
            w.ptr(), x.ptr(), y.ptr(), rows_i, k_i, rb as i64)
    }

    /// Y = X W^T for `n_tok` activation rows. `x`: n_tok x k f32; `y`: n_tok x rows f32.
    /// On the tensor cores ([`matmul_mma`](Self::matmul_mma)) where [`matmul_uses_mma`] says
    /// so (from [`MMA_MIN_TOKENS`] tokens, fewer for big matrices), else in f32
    /// ([`matmul_f32`](Self::matmul_f32)); always in f32 for the weights whose products are
    /// kept exact ([`gemm_parts`] > 1: the one-pass kernel rounds activations to f16).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        if matmul_uses_mma(n_tok, rows, k) && gemm_parts(ty) == 1 {
            self.matmul_mma(ty, w, rows, k, x, n_tok, y, None)
        } else {
            self.matmul_f32(ty, w, rows, k, x, n_tok, y)
        }
    }

    /// [`matmul`](Self::matmul) with f32 arithmetic throughout (kernels/quant_matmul.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_f32(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, "matmul")?;
        let name = format!("matmul_{}", type_suffix(ty)?);
        let rows_i = positive(rows, "matmul rows")?;
        let n_i = positive(n_tok, "matmul n_tok")?;
        let k_i = dim(k, "matmul k")?;
        if n_tok.div_ceil(8) > 65535 {
            return Err(Error::InvalidArgument(format!(
                "matmul: {n_tok} tokens is too many for one launch"
            )));
        }
        w.check(self, rb * rows as u64, "matmul weights")?;
        x.check(self, f32s(n_tok * k), "matmul x")?;
        y.check(self, f32s(n_tok * rows), "matmul y")?;
        launch!(self, &name, (rows.div_ceil(4) as u32, n_tok.div_ceil(8) as u32, 1), (128, 1, 1);
            w.ptr(), x.ptr(), y.ptr(), rows_i, k_i, n_i, rb as i64)
    }

    /// [`matmul`](Self::matmul) on the tensor cores (kernels/mma_matmul.cu): f16 operands
    /// (weights decoded and activations rounded to f16, relative error ~2^-11 each), f32
    /// accumulation. `tile` indexes [`MMA_TILES`]; `None` picks one for the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_mma(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &mut DeviceBuffer,
        tile: Option<usize>,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, "matmul")?;
        let rows_i = positive(rows, "matmul rows")?;
        let n_i = positive(n_tok, "matmul n_tok")?;
        let k_i = dim(k, "matmul k")?;
        w.check(self, rb * rows as u64, "matmul weights")?;
        x.check(self, f32s(n_tok * k), "matmul x")?;
        y.check(self, f32s(n_tok * rows), "matmul y")?;
        let t = tile_index(tile, MMA_TILES.len(), "matmul_mma", || {
            mma_tile(n_tok, rows, k / 32, self.sm_count() as usize)
        })?;
        let tl = MMA_TILES[t];
        if rows.div_ceil(tl.rows) > 65535 {
            return Err(Error::InvalidArgument(format!(
                "matmul: {rows} rows is too many for one launch"
            )));
        }
        let name = tl.kernel(type_suffix(ty)?);
        let grid = (
            n_tok.div_ceil(tl.tokens) as u32,
            rows.div_ceil(tl.rows) as u32,
            1,
        );
        let smem = tl.smem_bytes(ty) as u32;
        launch!(self, &name, grid, (tl.threads() as u32, 1, 1), raise_shared = smem;
            w.ptr(), x.ptr(), y.ptr(), rows_i, k_i, n_i, rb as i64)
    }

    /// [`matmul`](Self::matmul) in two passes (kernels/gemm_f16.cu): the weights are
    /// dequantized into `wh` (f16, rows x k: at least 2·rows·k bytes) and the activations
    /// rounded into `xh` (f16, at least 2·n_tok·k bytes), then the f16 GEMM multiplies them
    /// with f32 sums. The same rounding as [`matmul_mma`](Self::matmul_mma) (each weight's f32
    /// value and each activation rounded to f16 once), except for F16 and F32 weights, whose
    /// values and activations are split into [`gemm_parts`] f16 parts each (`wh` and `xh` that
    /// many times larger): exact to the f32 sums. `tile` indexes [`GEMM_TILES`]; `None` picks
    /// one for the shape.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_gemm(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &mut DeviceBuffer,
        wh: &mut DeviceBuffer,
        xh: &mut DeviceBuffer,
        tile: Option<usize>,
    ) -> Result<()> {
        self.check_product_io(x, n_tok, y, rows, k)?;
        let parts = gemm_parts(ty);
        if parts == 1 {
            self.dequant_f16(ty, w, rows, k, wh)?;
            return self.matmul_f16_weights(wh, rows, k, x, n_tok, y, xh, false, tile);
        }
        self.dequant_split(ty, w, rows, k, wh)?;
        self.f32_to_f16_split(x, n_tok * k, parts, xh)?;
        self.gemm_f16(xh, wh, y, n_tok, rows, k * parts, tile)
    }

    /// A product's input (`n_tok` rows of `k` f32) and output (`n_tok` rows of `rows`).
    fn check_product_io(
        &self,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &DeviceBuffer,
        rows: usize,
        k: usize,
    ) -> Result<()> {
        positive(n_tok, "matmul n_tok")?;
        x.check(self, f32s(n_tok * k), "matmul x")?;
        y.check(self, f32s(n_tok * rows), "matmul y")
    }

    /// The second pass alone: `y` = `x` (`n_tok` rows of `k` f32, rounded to f16 in `xh`;
    /// `xh_ready`: `xh` holds them already) times weights already in f16 (`wh`: `rows` rows
    /// of `k`, [`dequant_f16`]'s layout).
    ///
    /// [`dequant_f16`]: Self::dequant_f16
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_f16_weights(
        &self,
        wh: &DeviceBuffer,
        rows: usize,
        k: usize,
        x: &DeviceBuffer,
        n_tok: usize,
        y: &mut DeviceBuffer,
        xh: &mut DeviceBuffer,
        xh_ready: bool,
        tile: Option<usize>,
    ) -> Result<()> {
        self.check_product_io(x, n_tok, y, rows, k)?;
        if !xh_ready {
            self.f32_to_f16(x, n_tok * k, xh)?;
        }
        if tile.is_none() && n_tok <= skinny_max() {
            return self.gemm_f16_skinny(xh, wh, y, n_tok, rows, k);
        }
        self.gemm_f16(xh, wh, y, n_tok, rows, k, tile)
    }

    /// Y = A·Bᵀ as [`gemm_f16`](Self::gemm_f16), for few rows of `a` (a batched step's
    /// inputs) and many of `b` (weights): kernels/gemm_f16.cu's skinny product, 32 rows of `b`
    /// by 16 or 32 rows of `a` a block, k split over its warps.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16_skinny(
        &self,
        a: &DeviceBuffer,
        b: &DeviceBuffer,
        y: &mut DeviceBuffer,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let (m_i, n_i, k_i) = self.check_gemm_operands("gemm_f16_skinny", a, b, y, m, n, k)?;
        let (nt, smem, grid) = skinny_launch(m, n.div_ceil(SKINNY_ROWS))?;
        launch!(self, &format!("gemm_f16_skinny_n{nt}"), grid, (128, 1, 1), raise_shared_pdl = smem;
            a.ptr(), b.ptr(), y.ptr(), m_i, n_i, k_i)
    }

    /// F16 or F32 weights (`rows` rows of `k`) into `out` as f16 [rows][P·k], each 32-value
    /// chunk as its P = [`gemm_parts`] parts (kernels/gemm_f16.cu's dequant_split_*).
    pub fn dequant_split(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let (name, parts) = match ty {
            GgmlType::F16 => ("dequant_split_f16", 2),
            GgmlType::F32 => ("dequant_split_f32", 3),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "dequant_split: {} weights (F16 or F32 only)",
                    ty.name()
                )))
            }
        };
        self.dequant_launch(name, ty, w, rows, k, parts, out)
    }

    /// Dequantize `rows` rows of `k` values of type `ty` (GGUF layout) into `out` as f16
    /// [rows][k] (each value's f32 formula of kernels/common.cuh, rounded once).
    pub fn dequant_f16(
        &self,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let name = format!("dequant_f16_{}", type_suffix(ty)?);
        self.dequant_launch(&name, ty, w, rows, k, 1, out)
    }

    /// The launch of a dequantizing kernel `name` (a thread a 32-value chunk, blocks of 256)
    /// writing `parts` f16 values per weight value.
    #[allow(clippy::too_many_arguments)]
    fn dequant_launch(
        &self,
        name: &str,
        ty: GgmlType,
        w: &DeviceBuffer,
        rows: usize,
        k: usize,
        parts: u64,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, name)?;
        let rows_i = positive(rows, "dequant rows")?;
        let k_i = dim(k, "dequant k")?;
        let blocks = (rows as u64 * (k / 32) as u64).div_ceil(256);
        if blocks > i32::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "{name}: {rows}x{k} is too large for one launch"
            )));
        }
        w.check(self, rb * rows as u64, &format!("{name} weights"))?;
        let bytes = parts * rows as u64 * k as u64 * 2;
        out.check(self, bytes, &format!("{name} out"))?;
        launch!(self, name, (blocks as u32, 1, 1), (256, 1, 1);
            w.ptr(), out.ptr(), rows_i, k_i, rb as i64)
    }

    /// `n` f32 values (rows of whole 32-value chunks) into `parts` (2 or 3) f16 parts a chunk
    /// (kernels/gemm_f16.cu's f32_to_f16_split*): `out` holds parts·n f16.
    pub fn f32_to_f16_split(
        &self,
        x: &DeviceBuffer,
        n: usize,
        parts: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let name = match parts {
            2 => "f32_to_f16_split2",
            3 => "f32_to_f16_split3",
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "f32_to_f16_split: {parts} parts (2 or 3)"
                )))
            }
        };
        self.to_f16_launch(name, x, n, 32, parts, out)
    }

    /// Round `n` f32 values (a multiple of 8) to f16.
    pub fn f32_to_f16(&self, x: &DeviceBuffer, n: usize, out: &mut DeviceBuffer) -> Result<()> {
        self.to_f16_launch("f32_to_f16", x, n, 8, 1, out)
    }

    /// The launch of a conversion kernel `name` (8 values a thread, blocks of 256) of `n` f32
    /// values (a multiple of `multiple`) into `parts` f16 values each.
    fn to_f16_launch(
        &self,
        name: &str,
        x: &DeviceBuffer,
        n: usize,
        multiple: usize,
        parts: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        if n == 0 || n % multiple != 0 {
            return Err(Error::InvalidArgument(format!(
                "{name}: {n} values is not a positive multiple of {multiple}"
            )));
        }
        let blocks = (n as u64 / 8).div_ceil(256);
        if blocks > i32::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "{name}: {n} values is too many for one launch"
            )));
        }
        x.check(self, f32s(n), &format!("{name} x"))?;
        out.check(self, (parts * n) as u64 * 2, &format!("{name} out"))?;
        launch!(self, name, (blocks as u32, 1, 1), (256, 1, 1);
            x.ptr(), out.ptr(), n as i64)
    }

    /// The operands of a product `name` Y = A·Bᵀ (`a` f16 [m][k], `b` f16 [n][k], `y` f32
    /// [m][n], k a multiple of 32), and the dimensions as the kernels take them.
    #[allow(clippy::too_many_arguments)]
    fn check_gemm_operands(
        &self,
        name: &str,
        a: &DeviceBuffer,
        b: &DeviceBuffer,
        y: &DeviceBuffer,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(i32, i32, i32)> {
        let m_i = positive(m, &format!("{name} m"))?;
        let n_i = positive(n, &format!("{name} n"))?;
        let k_i = positive(k, &format!("{name} k"))?;
        if k % 32 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{name}: k = {k} is not a multiple of 32"
            )));
        }
        a.check(self, m as u64 * k as u64 * 2, &format!("{name} a"))?;
        b.check(self, n as u64 * k as u64 * 2, &format!("{name} b"))?;
        y.check(self, f32s(m * n), &format!("{name} y"))?;
        Ok((m_i, n_i, k_i))
    }

    /// Y = A·Bᵀ: `a` f16 [m][k], `b` f16 [n][k], `y` f32 [m][n]; k a multiple of 32 (tensor
    /// cores, f32 sums, kernels/gemm_f16.cu). `tile` indexes [`GEMM_TILES`]; `None` picks one.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_f16(
        &self,
        a: &DeviceBuffer,
        b: &DeviceBuffer,
        y: &mut DeviceBuffer,
        m: usize,
        n: usize,
        k: usize,
        tile: Option<usize>,
    ) -> Result<()> {
        let (m_i, n_i, k_i) = self.check_gemm_operands("gemm_f16", a, b, y, m, n, k)?;
        let t = tile_index(tile, GEMM_TILES.len(), "gemm_f16", || {
            gemm_tile(m, n, self.sm_count() as usize)
        })?;
        let tl = GEMM_TILES[t];
        if n.div_ceil(tl.rows) > 65535 || m.div_ceil(tl.tokens) > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "gemm_f16: {m}x{n} is too large for one launch"
            )));
        }
        let grid = (m.div_ceil(tl.tokens) as u32, n.div_ceil(tl.rows) as u32, 1);
        launch!(self, &tl.kernel(), grid, (tl.threads() as u32, 1, 1),
            raise_shared = tl.smem_bytes() as u32;
            a.ptr(), b.ptr(), y.ptr(), m_i, n_i, k_i)
    }

    /// The index in [`GEMM_TILES`] that [`gemm_f16`](Self::gemm_f16) picks for a product.
    pub fn gemm_tile_for(&self, m: usize, n: usize) -> usize {
        gemm_tile(m, n, self.sm_count() as usize)
    }

    /// Let kernel `name` take `smem` bytes of dynamic shared memory (above 48 KB a kernel must
    /// ask for it) and prefer all of L1 as shared memory (see `launch!`'s `raise_shared`).
    pub(super) fn raise_shared_limit(&self, name: &str, smem: u32) -> Result<()> {
        use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
        let f = *self
            .inner
            .funcs
            .get(name)
            .ok_or_else(|| Error::Internal(format!("kernel {name} was not loaded")))?;
        self.inner.bind()?;
        allow_shared(f, name, smem as usize)?;
        // All of the unified L1/shared memory as shared, so that the blocks per multiprocessor
        // the size was chosen for fit.
        unsafe {
            result::function::set_function_attribute(
                f,
                Attr::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
        }
        .map_err(|e| drv(&format!("shared memory carveout of {name}"), e))
    }

    /// The index in [`MMA_TILES`] that [`matmul_mma`](Self::matmul_mma) picks for a product.
    pub fn mma_tile_for(&self, n_tok: usize, rows: usize, k: usize) -> Result<usize> {
        Ok(mma_tile(n_tok, rows, k / 32, self.sm_count() as usize))
    }

    /// Milliseconds of GPU time that the work `f` issues takes (CUDA events around it on the
    /// launch stream; waits for it). For benchmarks.
    pub fn time_ms(&self, mut f: impl FnMut() -> Result<()>) -> Result<f32> {
        use cudarc::driver::sys::CUevent_flags;
        self.inner.bind()?;
        let e0 =
            result::event::create(CUevent_flags::CU_EVENT_DEFAULT).map_err(|e| drv("event", e))?;
        let e1 =
            result::event::create(CUevent_flags::CU_EVENT_DEFAULT).map_err(|e| drv("event", e))?;
        let timed = (|| {
            unsafe { result::event::record(e0, self.stream.raw) }
                .map_err(|e| drv("event record", e))?;
            f()?;
            unsafe { result::event::record(e1, self.stream.raw) }
                .map_err(|e| drv("event record", e))?;
            unsafe { result::event::synchronize(e1) }.map_err(|e| drv("event wait", e))?;
            unsafe { result::event::elapsed(e0, e1) }.map_err(|e| drv("event time", e))
        })();
        unsafe {
            let _ = result::event::destroy(e0);
            let _ = result::event::destroy(e1);
        }
        timed
    }

    /// out[t] = row `tokens[t]` of the table (n_vocab rows of k values of type `ty`), as f32.
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        ty: GgmlType,
        table: &DeviceBuffer,
        n_vocab: usize,
        k: usize,
        tokens: &[u32],
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, "embed")?;
        let name = format!("embed_{}", type_suffix(ty)?);
        let k_i = dim(k, "embed k")?;
        positive(tokens.len(), "embed token count")?;
        if tokens.len() > i32::MAX as usize {
            return Err(Error::InvalidArgument("embed: too many tokens".into()));
        }
        let ids: Vec<i32> = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if (t as usize) < n_vocab {
                    Ok(t as i32)
                } else {
                    Err(Error::InvalidArgument(format!(
                        "embed: token {t} at index {i} is outside the vocabulary of {n_vocab}"
                    )))
                }
            })
            .collect::<Result<_>>()?;
        table.check(self, rb * n_vocab as u64, "embed table")?;
        out.check(self, f32s(tokens.len() * k), "embed out")?;
        let ids_buf = self.upload_i32(&ids, MemKind::Scratch)?;
        launch!(self, &name, (tokens.len() as u32, 1, 1), (128, 1, 1);
            table.ptr(), ids_buf.ptr(), out.ptr(), k_i, rb as i64)?;
        // The ids buffer must outlive the kernel: freeing it synchronizes (cuMemFree waits).
        drop(ids_buf);
        Ok(())
    }

    /// As [`embed`](Self::embed), with the `n_tok` token ids (i32) already on the device in
    /// `ids` (no allocation per step). The caller has checked every id is below `n_vocab`:
    /// the kernel does not.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_ids(
        &self,
        ty: GgmlType,
        table: &DeviceBuffer,
        n_vocab: usize,
        k: usize,
        ids: &DeviceBuffer,
        n_tok: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let rb = row_bytes(ty, k, "embed")?;
        let name = format!("embed_{}", type_suffix(ty)?);
        let k_i = dim(k, "embed k")?;
        positive(n_tok, "embed token count")?;
        if n_tok > i32::MAX as usize {
            return Err(Error::InvalidArgument("embed: too many tokens".into()));
        }
        table.check(self, rb * n_vocab as u64, "embed table")?;
        ids.check(self, n_tok as u64 * 4, "embed ids")?;
        out.check(self, f32s(n_tok * k), "embed out")?;
        launch!(self, &name, (n_tok as u32, 1, 1), (128, 1, 1);
            table.ptr(), ids.ptr(), out.ptr(), k_i, rb as i64)
    }

    /// Copy `bytes` inside `buf` from byte offset `src` to `dst` (regions must not overlap),
    /// in stream order with the kernels (no host wait).
    pub fn copy_within(
        &self,
        buf: &mut DeviceBuffer,
        src: usize,
        dst: usize,
        bytes: usize,
    ) -> Result<()> {
        let end = src.max(dst).saturating_add(bytes);
        if end > buf.len_bytes() || (src < dst + bytes && dst < src + bytes && bytes > 0) {
            return Err(Error::InvalidArgument(format!(
                "copy_within: {bytes} bytes from {src} to {dst} in a buffer of {} bytes \
                 (out of range or overlapping)",
                buf.len_bytes()
            )));
        }
        buf.check(self, 0, "copy_within")?;
        let p = buf.ptr();
        self.raw_copy(p + dst as u64, p + src as u64, bytes)
    }

    /// Copy `bytes` from byte offset `src_at` of `src` to `dst_at` of `dst` (two buffers), in
    /// stream order with the kernels (no host wait).
    pub fn copy_between(
        &self,
        src: &DeviceBuffer,
        src_at: usize,
        dst: &mut DeviceBuffer,
        dst_at: usize,
        bytes: usize,
    ) -> Result<()> {
        let fits = |buf: &DeviceBuffer, at: usize| {
            at.checked_add(bytes).is_some_and(|e| e <= buf.len_bytes())
        };
        if !fits(src, src_at) || !fits(dst, dst_at) {
            return Err(Error::InvalidArgument(format!(
                "copy_between: {bytes} bytes from {src_at} of {} to {dst_at} of {} bytes",
                src.len_bytes(),
                dst.len_bytes()
            )));
        }
        src.check(self, 0, "copy_between")?;
        dst.check(self, 0, "copy_between")?;
        self.raw_copy(dst.ptr() + dst_at as u64, src.ptr() + src_at as u64, bytes)
    }

    /// y = rmsnorm(x) * w, row by row: `n_rows` rows of `n` f32.
    pub fn rmsnorm(
        &self,
        x: &DeviceBuffer,
        w: &DeviceBuffer,
        n_rows: usize,
        n: usize,
        eps: f32,
        y: &mut DeviceBuffer,
    ) -> Result<()> {
        self.rmsnorm_check(x, w, n_rows, n)?;
        y.check(self, f32s(n_rows * n), "rmsnorm y")?;
        launch!(self, "rmsnorm", (n_rows as u32, 1, 1), (256, 1, 1);
            x.ptr(), w.ptr(), y.ptr(), n as i32, eps)
    }

    /// rmsnorm in place on `x`.
    pub fn rmsnorm_inplace(
        &self,
        x: &mut DeviceBuffer,
        w: &DeviceBuffer,
        n_rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        self.rmsnorm_check(x, w, n_rows, n)?;
        launch!(self, "rmsnorm", (n_rows as u32, 1, 1), (256, 1, 1);
            x.ptr(), w.ptr(), x.ptr(), n as i32, eps)
    }

    fn rmsnorm_check(
        &self,
        x: &DeviceBuffer,
        w: &DeviceBuffer,
        n_rows: usize,
        n: usize,
    ) -> Result<()> {
        positive(n, "rmsnorm n")?;
        if n_rows == 0 || n_rows > i32::MAX as usize {
            return Err(Error::InvalidArgument(format!("rmsnorm: {n_rows} rows")));
        }
        x.check(self, f32s(n_rows * n), "rmsnorm x")?;
        w.check(self, f32s(n), "rmsnorm weight")
    }

    /// Rotary embedding in place: `x` is n_tok x n_heads x head_dim f32, `positions` n_tok i32.
    pub fn rope(
        &self,
        x: &mut DeviceBuffer,
        positions: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        head_dim: usize,
        p: RopeParams,
    ) -> Result<()> {
        let blocks = self.rope_check(x, positions, n_tok, n_heads, head_dim, p, 2048)?;
        launch!(self, "rope", (blocks as u32, 1, 1), ((p.rot_dim / 2) as u32, 1, 1);
            x.ptr(), positions.ptr(), n_heads as i32, head_dim as i32, p.rot_dim as i32,
            p.base, p.pos_scale, p.neox as i32)
    }

    /// The checks of a RoPE launch (rotary dim even, > 0, <= head_dim and `max_rot`; buffer
    /// sizes): the number of blocks (one per token and head).
    #[allow(clippy::too_many_arguments)]
    fn rope_check(
        &self,
        x: &DeviceBuffer,
        positions: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        head_dim: usize,
        p: RopeParams,
        max_rot: usize,
    ) -> Result<usize> {
        positive(n_tok, "rope n_tok")?;
        positive(n_heads, "rope n_heads")?;
        if p.rot_dim == 0 || p.rot_dim % 2 != 0 || p.rot_dim > head_dim || p.rot_dim > max_rot {
            return Err(Error::InvalidArgument(format!(
                "rope: rotary dim {} must be even, > 0 and <= head_dim {head_dim} (<= {max_rot})",
                p.rot_dim
            )));
        }
        let blocks = n_tok
            .checked_mul(n_heads)
            .filter(|&b| b <= i32::MAX as usize);
        let blocks = blocks.ok_or_else(|| Error::InvalidArgument("rope: too many heads".into()))?;
        x.check(self, f32s(blocks * head_dim), "rope x")?;
        positions.check(self, n_tok as u64 * 4, "rope positions")?;
        Ok(blocks)
    }

    /// [`rope`](Self::rope) with per-pair frequency divisors `div` (`rot_dim / 2` values, at
    /// most [`ROPE_DIV_MAX`]) and the rotation multiplied by `mscale` (kernels/rope.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_scaled(
        &self,
        x: &mut DeviceBuffer,
        positions: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        head_dim: usize,
        p: RopeParams,
        mscale: f32,
        div: &[f32],
    ) -> Result<()> {
        let blocks =
            self.rope_check(x, positions, n_tok, n_heads, head_dim, p, 2 * ROPE_DIV_MAX)?;
        let half = p.rot_dim / 2;
        if div.len() != half {
            return Err(Error::InvalidArgument(format!(
                "rope: {} frequency divisors for {half} pairs",
                div.len()
            )));
        }
        let mut d = RopeDiv([1.0; ROPE_DIV_MAX]);
        d.0[..half].copy_from_slice(div);
        launch!(self, "rope_scaled", (blocks as u32, 1, 1), (half as u32, 1, 1);
            x.ptr(), positions.ptr(), n_heads as i32, head_dim as i32, p.rot_dim as i32,
            p.base, p.pos_scale, p.neox as i32, mscale, d)
    }

    /// A one-layer paged KV cache holding `positions` positions of f16 (`f32`: of f32), its
    /// pages from an arena of its own (tests and benchmarks of single kernels; sessions take
    /// theirs from the model's, see kv_pages.rs).
    pub fn alloc_kv_layer(
        &self,
        n_kv_heads: usize,
        head_dim: usize,
        positions: usize,
        f32: bool,
    ) -> Result<KvCache> {
        positive(n_kv_heads, "n_kv_heads")?;
        positive(positions, "positions")?;
        KvCache::standalone(self, 1, n_kv_heads, head_dim, positions, f32)
    }

    /// Store `n_tok` tokens' K and V (each n_tok x n_kv_heads x head_dim f32) at positions
    /// pos0.. of the cache (converted to its type).
    pub fn kv_store(
        &self,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        n_tok: usize,
        cache: &KvLayer,
        pos0: usize,
    ) -> Result<()> {
        positive(n_tok, "kv_store n_tok")?;
        let end = pos0.saturating_add(n_tok);
        if end > cache.positions {
            return Err(Error::ContextFull(format!(
                "positions {pos0}..{end} do not fit a KV cache of {} positions",
                cache.positions
            )));
        }
        let n = n_tok * cache.n_kv_heads;
        if n > i32::MAX as usize {
            return Err(Error::InvalidArgument("kv_store: too many tokens".into()));
        }
        k.check(self, f32s(n * cache.head_dim), "kv_store k")?;
        v.check(self, f32s(n * cache.head_dim), "kv_store v")?;
        launch!(self, &cache.kernel("kv_store"), (n as u32, 1, 1), (cache.head_dim as u32, 1, 1);
            k.ptr(), v.ptr(), cache.table, cache.layer as i32, cache.n_kv_heads as i32,
            cache.head_dim as i32, pos0 as i32)
    }

    /// Causal attention of `n_tok` queries at positions pos0.. over the cache (which must hold
    /// positions 0..pos0+n_tok). `q`, `out`: n_tok x n_heads x head_dim f32. `scale` multiplies
    /// the scores (usually 1/sqrt(head_dim)); `window` > 0 limits each query to the last
    /// `window` keys (sliding-window layers), 0 = no limit. `sinks` (n_heads f32, GPT-OSS):
    /// each head's sink logit joins its softmax's denominator, with no value.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        cache: &KvLayer,
        pos0: usize,
        scale: f32,
        window: usize,
        sinks: Option<&DeviceBuffer>,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        // The plain kernel's grid has a block row per token (at most 65535).
        self.attention_check(q, n_tok, n_heads, cache, pos0, sinks, out, 65535)?;
        let window_i = dim(window, "attention window")?;
        let s = sinks.map_or(0, |b| b.ptr());
        if n_tok >= ATTN_TILED_MIN_TOKENS {
            return self
                .attention_tiled_launch(q, n_tok, n_heads, cache, pos0, scale, window_i, s, out);
        }
        let hd = cache.head_dim;
        launch!(self, &cache.kernel("attention"), (n_heads as u32, n_tok as u32, 1), (128, 1, 1);
            q.ptr(), cache.table, cache.layer as i32, out.ptr(), n_heads as i32,
            cache.n_kv_heads as i32, hd as i32, pos0 as i32, scale, window_i, s)
    }

    /// The argument checks both attention kernels share; `max_tok`: the most tokens the
    /// kernel's grid takes.
    #[allow(clippy::too_many_arguments)]
    fn attention_check(
        &self,
        q: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        cache: &KvLayer,
        pos0: usize,
        sinks: Option<&DeviceBuffer>,
        out: &DeviceBuffer,
        max_tok: usize,
    ) -> Result<()> {
        positive(n_tok, "attention n_tok")?;
        if let Some(s) = sinks {
            s.check(self, f32s(n_heads), "attention sinks")?;
        }
        positive(n_heads, "attention n_heads")?;
        if n_heads % cache.n_kv_heads != 0 {
            return Err(Error::InvalidArgument(format!(
                "attention: {n_heads} query heads is not a multiple of {} KV heads",
                cache.n_kv_heads
            )));
        }
        if n_heads > 65535 || n_tok > max_tok {
            return Err(Error::InvalidArgument(format!(
                "attention: {n_tok} tokens x {n_heads} heads is too many for one launch"
            )));
        }
        let end = pos0.saturating_add(n_tok);
        if end > cache.positions {
            return Err(Error::ContextFull(format!(
                "positions {pos0}..{end} do not fit a KV cache of {} positions",
                cache.positions
            )));
        }
        let size = f32s(n_tok * n_heads * cache.head_dim);
        q.check(self, size, "attention q")?;
        out.check(self, size, "attention out")
    }

    /// [`attention`](Self::attention) for a prompt: kernels/attention_tiled.cu stages tiles of
    /// 32 keys and values in shared memory for 16 queries at a time (same arithmetic: f32
    /// scores over the cache, precise expf; only the summation order differs).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tiled(
        &self,
        q: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        cache: &KvLayer,
        pos0: usize,
        scale: f32,
        window: usize,
        sinks: Option<&DeviceBuffer>,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let max = i32::MAX as usize;
        self.attention_check(q, n_tok, n_heads, cache, pos0, sinks, out, max)?;
        let window_i = dim(window, "attention window")?;
        let s = sinks.map_or(0, |b| b.ptr());
        self.attention_tiled_launch(q, n_tok, n_heads, cache, pos0, scale, window_i, s, out)
    }

    /// The attention_tiled launch, arguments checked.
    #[allow(clippy::too_many_arguments)]
    fn attention_tiled_launch(
        &self,
        q: &DeviceBuffer,
        n_tok: usize,
        n_heads: usize,
        cache: &KvLayer,
        pos0: usize,
        scale: f32,
        window: i32,
        sinks: u64,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        let hd = cache.head_dim;
        // 16 queries (f32), then two stages of 32 keys (rows padded by one 4-byte word) and
        // 32 values: one tile scored while the next is copied in.
        let words = hd * cache.elem_bytes() / 4;
        let smem = (16 * hd * 4 + 2 * (32 * (words + 1) * 4 + 32 * words * 4)) as u32;
        let grid = (n_tok.div_ceil(16) as u32, n_heads as u32, 1);
        let name = cache.kernel(if sinks == 0 {
            "attention_tiled"
        } else {
            "attention_tiled_sinks"
        });
        launch!(self, &name, grid, (128, 1, 1), raise_shared = smem;
            q.ptr(), cache.table, cache.layer as i32, out.ptr(), n_tok as i32, n_heads as i32,
            cache.n_kv_heads as i32, hd as i32, pos0 as i32, scale, window, sinks)
    }

    /// out = silu(g) * u over n values.
    pub fn swiglu(
        &self,
        g: &DeviceBuffer,
        u: &DeviceBuffer,
        n: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        self.glu("swiglu", g, u, n, out)
    }

    /// out = gelu_tanh(g) * u over n values (Gemma).
    pub fn geglu(
        &self,
        g: &DeviceBuffer,
        u: &DeviceBuffer,
        n: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        self.glu("geglu", g, u, n, out)
    }

    /// GPT-OSS's expert activation over n values: `g = min(g, limit)`, `u = clamp(u, -limit,
    /// limit)`, `out = g * sigmoid(alpha * g) * (u + 1)`.
    #[allow(clippy::too_many_arguments)]
    pub fn clamped_swiglu(
        &self,
        g: &DeviceBuffer,
        u: &DeviceBuffer,
        n: usize,
        alpha: f32,
        limit: f32,
        out: &DeviceBuffer,
    ) -> Result<()> {
        let name = "clamped_swiglu";
        positive(n, name)?;
        g.check(self, f32s(n), name)?;
        u.check(self, f32s(n), name)?;
        out.check(self, f32s(n), name)?;
        launch!(self, name, (ew_grid(n), 1, 1), (256, 1, 1);
            g.ptr(), u.ptr(), out.ptr(), n as i64, alpha, limit)
    }

    fn glu(
        &self,
        name: &str,
        g: &DeviceBuffer,
        u: &DeviceBuffer,
        n: usize,
        out: &mut DeviceBuffer,
    ) -> Result<()> {
        positive(n, name)?;
        g.check(self, f32s(n), name)?;
        u.check(self, f32s(n), name)?;
        out.check(self, f32s(n), name)?;
        launch!(self, name, (ew_grid(n), 1, 1), (256, 1, 1); g.ptr(), u.ptr(), out.ptr(), n as i64)
    }

    /// y[t][j] += b[j] for n_tok rows of n values.
    pub fn add_bias(
        &self,
        y: &mut DeviceBuffer,
        b: &DeviceBuffer,
        n_tok: usize,
        n: usize,
    ) -> Result<()> {
        positive(n, "add_bias n")?;
        positive(n_tok, "add_bias n_tok")?;
        y.check(self, f32s(n_tok * n), "add_bias y")?;
        b.check(self, f32s(n), "add_bias b")?;
        launch!(self, "add_bias", (ew_grid(n_tok * n), 1, 1), (256, 1, 1);
            y.ptr(), b.ptr(), n as i32, (n_tok * n) as i64)
    }

    /// y += x over n values (residual).
    pub fn add(&self, y: &mut DeviceBuffer, x: &DeviceBuffer, n: usize) -> Result<()> {
        positive(n, "add n")?;
        y.check(self, f32s(n), "add y")?;
        x.check(self, f32s(n), "add x")?;
        launch!(self, "add", (ew_grid(n), 1, 1), (256, 1, 1); y.ptr(), x.ptr(), n as i64)
    }

    /// y *= s over n values.
    pub fn scale(&self, y: &mut DeviceBuffer, s: f32, n: usize) -> Result<()> {
        positive(n, "scale n")?;
        y.check(self, f32s(n), "scale y")?;
        launch!(self, "scale", (ew_grid(n), 1, 1), (256, 1, 1); y.ptr(), s, n as i64)
    }

    /// y = cap * tanh(y / cap) over n values (logit soft-capping).
    pub fn softcap(&self, y: &mut DeviceBuffer, cap: f32, n: usize) -> Result<()> {
        positive(n, "softcap n")?;
        y.check(self, f32s(n), "softcap y")?;
        launch!(self, "softcap", (ew_grid(n), 1, 1), (256, 1, 1); y.ptr(), cap, n as i64)
    }

    /// Greedy pick per row: the index of the largest logit of each of `n_rows` rows of
    /// `n_cols` (ties: smallest index; NaNs skipped). Waits for the result.
    pub fn argmax(&self, logits: &DeviceBuffer, n_rows: usize, n_cols: usize) -> Result<Vec<u32>> {
        let out = self.argmax_buffer(n_rows.max(1))?;
        self.argmax_into(logits, 0, n_rows, n_cols, &out)?
            .into_iter()
            .enumerate()
            .map(|(r, i)| {
                i.ok_or_else(|| {
                    Error::Internal(format!("argmax: row {r} of the logits is all NaN"))
                })
            })
            .collect()
    }

    /// A buffer for the picks of up to `rows` rows (see
    /// [`argmax_launch`](Self::argmax_launch)): the i32 picks first, then the kernel's
    /// per-row counters (zeroed here; each launch leaves them zero) and slice results.
    pub fn argmax_buffer(&self, rows: usize) -> Result<DeviceBuffer> {
        let bytes = rows
            .checked_mul(ARGMAX_ROW_BYTES)
            .ok_or_else(|| Error::InvalidArgument("argmax: too many rows".into()))?;
        let mut b = self.alloc(bytes, MemKind::Scratch)?;
        self.fill_bytes(&mut b, 0)?;
        Ok(b)
    }

    /// [`argmax`](Self::argmax) of the rows from f32 `offset` of `logits` on, through `out`
    /// (an [`argmax_buffer`](Self::argmax_buffer) of at least `n_rows` rows); `None` for a
    /// row of only NaNs.
    pub fn argmax_into(
        &self,
        logits: &DeviceBuffer,
        offset: usize,
        n_rows: usize,
        n_cols: usize,
        out: &DeviceBuffer,
    ) -> Result<Vec<Option<u32>>> {
        self.argmax_launch(logits, offset, n_rows, n_cols, out)?;
        let idx = self.download_i32(out, n_rows)?;
        Ok(idx.iter().map(|&i| u32::try_from(i).ok()).collect())
    }

    /// [`argmax_into`](Self::argmax_into)'s kernel alone: the picks stay in `out` (i32 per
    /// row), nothing is waited for.
    pub fn argmax_launch(
        &self,
        logits: &DeviceBuffer,
        offset: usize,
        n_rows: usize,
        n_cols: usize,
        out: &DeviceBuffer,
    ) -> Result<()> {
        positive(n_rows, "argmax rows")?;
        let cols = positive(n_cols, "argmax cols")?;
        if n_rows > u16::MAX as usize {
            return Err(Error::InvalidArgument("argmax: too many rows".into()));
        }
        let end = n_rows
            .checked_mul(n_cols)
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| Error::InvalidArgument("argmax: size overflows".into()))?;
        logits.check(self, f32s(end), "argmax logits")?;
        // The buffer's layout follows its capacity, so that its counters stay where the
        // last launch left them zeroed whatever the row count.
        let cap = out.len_bytes() / ARGMAX_ROW_BYTES;
        if cap < n_rows {
            return Err(Error::InvalidArgument(format!(
                "argmax: a buffer of {cap} rows for {n_rows}"
            )));
        }
        // Slices of at least 2,048 values: a 152k vocabulary takes all 32.
        let slices = n_cols.div_ceil(2048).clamp(1, ARGMAX_SLICES);
        let base = out.ptr();
        launch!(self, "argmax_rows", (slices as u32, n_rows as u32, 1), (256, 1, 1);
            logits.ptr() + offset as u64 * 4, base, base + cap as u64 * 4,
            base + cap as u64 * 8, cols)
    }
}

/// Slices of a row in `argmax_rows` at most (kernels/argmax.cu's ARGMAX_SLICES).
const ARGMAX_SLICES: usize = 32;
/// An argmax buffer's bytes a row: the pick, the counter, the slices' (value, index) pairs.
const ARGMAX_ROW_BYTES: usize = 4 + 4 + 8 * ARGMAX_SLICES;

#[cfg(test)]
mod tests {
    use super::*;

    /// The picks for the measured shapes (bench/RESULTS.md, H200, 132 multiprocessors): the
    /// fastest tile, or within 8% of it.
    #[test]
    fn mma_tile_picks() {
        let pick = |n: usize, rows: usize, k: usize| mma_tile(n, rows, k / 32, 132);
        // Qwen2.5 0.5B: q/o, k/v, gate/up, down.
        assert_eq!(pick(256, 896, 896), 5);
        assert_eq!(pick(512, 896, 896), 4);
        assert_eq!(pick(256, 128, 896), 5);
        assert_eq!(pick(512, 128, 896), 5);
        assert_eq!(pick(256, 4864, 896), 1);
        assert_eq!(pick(512, 4864, 896), 1);
        assert_eq!(pick(256, 896, 4864), 5);
        assert_eq!(pick(512, 896, 4864), 4);
        // Qwen2.5 7B.
        assert_eq!(pick(256, 3584, 3584), 4);
        assert_eq!(pick(512, 3584, 3584), 1);
        assert_eq!(pick(256, 512, 3584), 5);
        assert_eq!(pick(256, 18944, 3584), 0);
        assert_eq!(pick(512, 18944, 3584), 0);
        assert_eq!(pick(256, 3584, 18944), 4);
        assert_eq!(pick(512, 3584, 18944), 1);
    }

    /// The GEMM tiles for the measured shapes (bench/RESULTS.md, H200, 132 multiprocessors).
    #[test]
    fn gemm_tile_picks() {
        let pick = |n: usize, rows: usize| gemm_tile(n, rows, 132);
        // 7B gate/up, down, q/o at 512 tokens: 128x128; k/v: 64x64.
        assert_eq!(pick(512, 18944), 0);
        assert_eq!(pick(512, 3584), 0);
        assert_eq!(pick(512, 512), 2);
        // 256 tokens: down and q/o 64x128.
        assert_eq!(pick(256, 3584), 1);
        // 0.5B at 512: gate/up 128x128, q/o and down 64x64.
        assert_eq!(pick(512, 4864), 0);
        assert_eq!(pick(512, 896), 2);
    }

    /// The f32 / tensor-core crossover of the small-batch timings.
    #[test]
    fn mma_from_few_tokens_for_big_matrices() {
        assert!(!matmul_uses_mma(8, 896, 896));
        assert!(matmul_uses_mma(16, 896, 896));
        assert!(!matmul_uses_mma(3, 3584, 3584));
        assert!(matmul_uses_mma(4, 3584, 3584));
        assert!(matmul_uses_mma(2, 18944, 3584));
        assert!(!matmul_uses_mma(1, 18944, 3584));
    }
}
