//! Launches of the fused decode kernels (kernels/decode.cu): one token's mat-vecs with the
//! RMSNorm and the epilogue folded in, RoPE + KV store, and split-K attention. Every launch
//! reads the position from a device buffer, so a decode step can be captured as a CUDA graph.
//!
//! Outputs are passed as `&DeviceBuffer` (the kernels write through device pointers; the host
//! side of a buffer never changes), so one call can name several slots of a step at once.

use super::device::CudaDevice;
use super::drv;
use super::kv_pages::KvLayer;
use super::launch::{
    allow_shared, dim, f32s, positive, row_bytes, skinny_launch, type_suffix, RopeParams,
    SKINNY_ROWS,
};
use super::memory::DeviceBuffer;
use super::mmq::mmq_input_bytes;
use super::moe::moe_matvec_takes;
use crate::quant::GgmlType;
use crate::{Error, Result};
use cudarc::driver::result;
use std::ffi::c_void;

/// Warps per block and bytes of weight row each warp stages (kernels/decode.cu DW, STAGE).
const DW: usize = 8;
const STAGE: usize = 2048;
/// Bytes of a 32-value chunk record of a prepared input (kernels/decode.cu XREC).
const XREC: usize = 80;
/// fused_matvec's dynamic shared memory: two units of stage buffers a warp (kernels/decode.cu
/// row_dot2), a unit one buffer, or two for a SwiGLU's gate and up rows (64 KiB a block, over
/// the default 48 KiB limit: raised when the module is loaded, `prepare_kernel`).
const FUSED_SHARED: usize = 2 * DW * STAGE;
const FUSED_SHARED_GLU: usize = 4 * DW * STAGE;

/// Set what a kernel needs before its first launch: the fused mat-vecs may take
/// FUSED_SHARED_GLU bytes of dynamic shared memory.
pub(super) fn prepare_kernel(name: &str, f: cudarc::driver::sys::CUfunction) -> Result<()> {
    if name.starts_with("fused_matvec") {
        allow_shared(f, name, FUSED_SHARED_GLU)?;
    }
    if name.starts_with("mmq_") {
        allow_shared(f, name, super::mmq::mmq_shared_max())?;
    }
    // The staged decode attention above 48 KiB: head size 128 (f16: 64 KiB), and 64 or 128
    // over an f32 cache (64 and 128 KiB).
    match name {
        "attention_decode_d128" => allow_shared(f, name, attn_shared(128, 2))?,
        "attention_decode_d64_f32kv" => allow_shared(f, name, attn_shared(64, 4))?,
        "attention_decode_d128_f32kv" => allow_shared(f, name, attn_shared(128, 4))?,
        _ => {}
    }
    Ok(())
}
/// fused_matvec blocks a multiprocessor holds at once (its `__launch_bounds__(256, 3)` and
/// FUSED_SHARED): grids are capped at one full wave, each block looping over its rows, so
/// every block is resident from the start and can prefetch its rows while the kernel before
/// finishes (programmatic dependent launch). Measured on the H200 (2026-11-28, tg128 with
/// PDL): 0.5B 784 vs 762 with 16 blocks a multiprocessor, 7B 279 vs 264; 4 is worse (0.5B
/// 674, 7B 217: a second, partial wave).
const MATVEC_BLOCKS_PER_SM: usize = 3;
/// Pairs of formats with a fused_matvec of their own (a Q4_K_M file's q/k/v: Q4_K with a Q6_K
/// v, and where rows are not whole 256-blocks Q5_0 with a Q8_0 v).
const MATVEC_PAIRS: [(GgmlType, GgmlType); 2] = [
    (GgmlType::Q5_0, GgmlType::Q8_0),
    (GgmlType::Q4_K, GgmlType::Q6_K),
];

/// The fused_matvec kernel for a product (kernels/decode.cu): that of its one format (the
/// SwiGLU's with `glu`) or of its pair of formats, else the generic one, which handles every
/// format (and is seven times the code: the small products spent most of their time waiting
/// for instructions in it). `LLORCH_CUDA_ONE_FORMAT=0` always takes the generic one.
/// `nr` > 1: the kernel of that many inputs (`_r<nr>`, 2, 4 or 8), which exists for the
/// products of one format and of the pairs only ([`matvec_rows_supported`]).
fn matvec_kernel(types: &[GgmlType], glu: bool, nr: usize) -> Result<String> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("LLORCH_CUDA_ONE_FORMAT").map_or(true, |v| v != "0"));
    let rows = if nr > 1 {
        format!("_r{nr}")
    } else {
        String::new()
    };
    let glu_sfx = if glu { "_glu" } else { "" };
    match kernel_formats(types, glu) {
        Some((a, b)) if on || nr > 1 => Ok(match b {
            None => format!("fused_matvec_{}{rows}{glu_sfx}", type_suffix(a)?),
            Some(b) => format!("fused_matvec_{}_{}{rows}", type_suffix(a)?, type_suffix(b)?),
        }),
        _ if nr == 1 => Ok("fused_matvec".into()),
        _ => Err(Error::Unsupported(format!(
            "fused mat-vec of {nr} inputs: no kernel for the formats {types:?}"
        ))),
    }
}

/// The formats of a product's kernel of its own: one format, or a pair of MATVEC_PAIRS (not
/// for a SwiGLU); None: only the generic kernel fits.
fn kernel_formats(types: &[GgmlType], glu: bool) -> Option<(GgmlType, Option<GgmlType>)> {
    let ty = *types.first()?;
    type_suffix(ty).ok()?;
    if types.iter().all(|&t| t == ty) {
        return Some((ty, None));
    }
    MATVEC_PAIRS
        .iter()
        .find(|(a, b)| !glu && types.iter().all(|t| t == a || t == b))
        .map(|&(a, b)| (a, Some(b)))
}

/// Whether [`CudaDevice::fused_matvec_rows`] has kernels of several inputs for products of
/// these weight formats (with the SwiGLU epilogue: `glu`).
pub fn matvec_rows_supported(types: &[GgmlType], glu: bool) -> bool {
    types.iter().all(|&t| type_code(t).is_ok()) && kernel_formats(types, glu).is_some()
}

/// Whether [`CudaDevice::mmq_rows`] has a kernel for products of these weight formats (with
/// the SwiGLU epilogue: `glu`).
pub fn mmq_supported(types: &[GgmlType], glu: bool) -> bool {
    super::mmq::mmq_kernel(types, glu).is_some()
}

/// Most rows of a batched step whose products run as fused mat-vecs of several inputs
/// ([`CudaDevice::fused_matvec_rows`]) rather than the two-pass GEMM; the records scratch of
/// a batch holds this many rows.
pub const MULTIROW_MAX: usize = 32;

/// Rows up to which a batched step takes the fused mat-vecs of several inputs
/// (`LLORCH_CUDA_MULTIROW`, at most [`MULTIROW_MAX`]; 0 or 1: never). 8: on an H100 they win
/// at 2-8 rows (0.5B 8 sessions 2,754 vs 2,009 tok/s, 7B 502 vs 402) and lose at 16 (3,292 vs
/// 3,511; 557 vs 795): bench/RESULTS.md, "Batched decode: mat-vecs of several rows".
pub fn multirow_rows() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("LLORCH_CUDA_MULTIROW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8)
            .min(MULTIROW_MAX)
    })
}

/// The kernels of several inputs kernels/`file`.cu defines besides launch.rs's
/// `kernel_names`: for decode.cu, the `_r2`, `_r4` and `_r8` forms of each fused mat-vec of
/// one format or pair.
pub(super) fn rows_kernel_names(file: &str) -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    if file != "decode" {
        return &[];
    }
    NAMES.get_or_init(|| {
        let one = super::launch::kernel_names("decode");
        let mut v = Vec::new();
        for name in one.iter().filter(|n| n.starts_with("fused_matvec_")) {
            for nr in [2, 4, 8] {
                let n = match name.strip_suffix("_glu") {
                    Some(base) => format!("{base}_r{nr}_glu"),
                    None => format!("{name}_r{nr}"),
                };
                v.push(&*Box::leak(n.into_boxed_str()));
            }
        }
        v
    })
}

/// Most inputs one fused mat-vec launch multiplies with each weight block (kernels/decode.cu
/// `_r8`): more rows run as several launches.
const MATVEC_MAX_INPUTS: usize = 8;

/// attention_decode's dynamic shared memory for head size `hd` (the kernels of one head size):
/// 4 warps x (32 key + 32 value rows) of the cache type (`elem_bytes` a value).
fn attn_shared(hd: usize, elem_bytes: usize) -> usize {
    4 * 2 * 32 * hd * elem_bytes
}

/// Key slices per head in attention_decode (one per lane of the merging warp). Fixed, so a
/// captured graph fits every length.
pub const ATTN_SPLITS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Seg {
    w: u64,
    bias: u64,
    out: u64,
    row_bytes: i64,
    ty: i32,
    rows: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct MvArgs {
    acc: u64,
    act: u64,
    k: i32,
    mode: i32,
    n_seg: i32,
    /// Bytes from one input to the next (the kernels of several inputs).
    x_stride: i32,
    seg: [Seg; 3],
}

/// Which kernels run a fused product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductPath {
    /// The mat-vecs of one to 8 inputs (kernels/decode.cu `fused_matvec*`).
    MatVec,
    /// The tensor cores on the quantized blocks (kernels/mmq.cu).
    Mmq,
    /// The tensor cores on f16 weight copies (kernels/gemm_f16.cu `skinny_fused_n*`): each
    /// product's matrix is its copy (a [`MatRef`] of type F16), `rec` the inputs in f16
    /// (prep_f16; `prepared`: already there), up to [`super::launch::skinny_max`] inputs.
    Skinny,
}

/// The kernels' type code (kernels/common.cuh T_*).
fn type_code(ty: GgmlType) -> Result<i32> {
    Ok(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_K => 12,
        GgmlType::Q6_K => 14,
        GgmlType::MXFP4 => 39,
        other => {
            return Err(Error::Unsupported(format!(
                "fused mat-vec: {} weights are not supported",
                other.name()
            )))
        }
    })
}

/// A weight matrix in VRAM: `rows` rows of `cols` values of type `ty`, GGUF block layout. The
/// buffer must extend at least 16 bytes past the last row (the kernel loads whole 16-byte
/// words).
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub ty: GgmlType,
    pub w: &'a DeviceBuffer,
    pub rows: usize,
    pub cols: usize,
}

/// One product of a fused mat-vec: `out = W x (+ bias)`.
#[derive(Clone, Copy)]
pub struct MatVecOut<'a> {
    pub mat: MatRef<'a>,
    pub bias: Option<&'a DeviceBuffer>,
    pub out: &'a DeviceBuffer,
}

/// The token's new key and value (n_kv_heads x head_dim f32, k not yet rotated) for an
/// attention that applies RoPE and stores them in the cache itself.
#[derive(Clone, Copy)]
pub struct NewKv<'a> {
    pub k: &'a DeviceBuffer,
    pub v: &'a DeviceBuffer,
    pub rope: RopeParams,
}

/// What a fused mat-vec does with its products.
pub enum Epilogue<'a> {
    /// Each product goes to its `out` (+ bias).
    Plain,
    /// Two products of equal rows, gate then up: `act = silu(gate) * up` besides the outs.
    Glu { act: &'a DeviceBuffer },
    /// One product, also added into `acc` (the residual stream).
    Add { acc: &'a DeviceBuffer },
}

/// A table in device memory of the addresses of `len` experts' buffers (their matrices, or
/// their bias rows), which the kernels index by the router's picks without a host round trip
/// (a model uploads each expert of a stacked tensor as its own buffer). Every buffer it points
/// at holds at least `min_bytes`.
///
/// The table holds addresses, not the buffers: whoever makes one keeps the buffers alive as
/// long as it (the model owns both its weights and their tables).
pub struct ExpertTable {
    ptrs: DeviceBuffer,
    len: usize,
    min_bytes: u64,
}

impl ExpertTable {
    /// Entries of the table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The table's address in device memory (an array of `len` addresses).
    pub(super) fn ptr(&self) -> u64 {
        self.ptrs.ptr()
    }
}

/// The experts of one stacked tensor: `n_expert` (the table's entries) matrices of `rows` x
/// `cols` values of type `ty`, each followed by at least 16 bytes of padding as every weight
/// buffer.
#[derive(Clone, Copy)]
pub struct ExpertsRef<'a> {
    pub ty: GgmlType,
    pub table: &'a ExpertTable,
    pub rows: usize,
    pub cols: usize,
}

/// One product of [`CudaDevice::expert_matvec`]: the selected experts of `experts` (with their
/// bias rows, `rows` f32 each, when given) into `out` (`[n_sel][rows]` f32).
#[derive(Clone, Copy)]
pub struct ExpertOut<'a> {
    pub experts: ExpertsRef<'a>,
    pub bias: Option<&'a ExpertTable>,
    pub out: &'a DeviceBuffer,
}

/// The input of [`CudaDevice::expert_matvec`], as chunk records of [`CudaDevice::prep_input`].
#[derive(Clone, Copy)]
pub enum ExpertInput<'a> {
    /// One vector (`cols` values) for every selected expert (the gate and up products).
    Shared(&'a DeviceBuffer),
    /// One vector per selected expert, back to back (`n_sel * cols` values: the down product
    /// of each expert's own activation).
    PerExpert(&'a DeviceBuffer),
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct ExpertArgs {
    w: [u64; 2],
    bias: [u64; 2],
    out: [u64; 2],
    ids: u64,
    row_bytes: i64,
    x_stride: i64,
    n_mat: i32,
    n_sel: i32,
    n_expert: i32,
    rows: i32,
    k: i32,
    unused: i32,
}

/// Experts a token may select in [`CudaDevice::expert_matvec`] (top-k of the router).
pub const MAX_SELECTED_EXPERTS: usize = 8;

/// The RMSNorm folded into a fused mat-vec's input.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub weight: &'a DeviceBuffer,
    pub eps: f32,
    /// Where the normalized input is written too (for the slot it stands for), if anywhere.
    pub normed: Option<&'a DeviceBuffer>,
}

impl CudaDevice {
    /// Bytes of the prepared-input records for inputs of up to `k` values.
    pub fn input_record_bytes(k: usize) -> usize {
        k.div_ceil(32) * XREC
    }

    /// Products of one input vector `x` (k f32, normalized first when `norm` is given) with up
    /// to three matrices of k columns. `rec`: scratch of [`input_record_bytes`] for the
    /// prepared input (normalized, quantized to 16 bits per 32 values for the quantized
    /// formats); two launches: prep_input, fused_matvec. `prepared`: `rec` already holds
    /// `x`'s records (written by [`attention_decode`](Self::attention_decode)), no norm.
    ///
    /// [`input_record_bytes`]: Self::input_record_bytes
    #[allow(clippy::too_many_arguments)]
    pub fn fused_matvec(
        &self,
        x: &DeviceBuffer,
        k: usize,
        norm: Option<Norm>,
        prods: &[MatVecOut],
        epilogue: Epilogue,
        rec: &DeviceBuffer,
        prepared: bool,
    ) -> Result<()> {
        self.fused_matvec_rows(x, 1, k, norm, prods, epilogue, rec, prepared)
    }

    /// [`fused_matvec`](Self::fused_matvec) for `n` input rows at once (a batched step's
    /// sequences: `x` holds n rows of k, every output, `normed`, `act` and `acc` n rows of
    /// theirs, `rec` n rows of records): each weight block is read once for up to 8 rows
    /// (kernels/decode.cu `_r<NR>`), so the products cost little more than one row's. For
    /// n > 1, the products of one format or of a pair ([`matvec_rows_supported`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fused_matvec_rows(
        &self,
        x: &DeviceBuffer,
        n: usize,
        k: usize,
        norm: Option<Norm>,
        prods: &[MatVecOut],
        epilogue: Epilogue,
        rec: &DeviceBuffer,
        prepared: bool,
    ) -> Result<()> {
        self.fused_products(
            x,
            n,
            k,
            norm,
            prods,
            epilogue,
            rec,
            prepared,
            ProductPath::MatVec,
        )
    }

    /// [`fused_matvec_rows`](Self::fused_matvec_rows) on the tensor cores (kernels/mmq.cu:
    /// int8 products of the weights' quants with the same 16-bit chunk records, laid out in
    /// fragment order: `rec` holds [`mmq_input_bytes`]), for products of the formats
    /// [`mmq_supported`] takes; any number of rows.
    #[allow(clippy::too_many_arguments)]
    pub fn mmq_rows(
        &self,
        x: &DeviceBuffer,
        n: usize,
        k: usize,
        norm: Option<Norm>,
        prods: &[MatVecOut],
        epilogue: Epilogue,
        rec: &DeviceBuffer,
    ) -> Result<()> {
        self.fused_products(x, n, k, norm, prods, epilogue, rec, false, ProductPath::Mmq)
    }

    /// The products of `n` inputs: the checks and the input's preparation (prep_input, or
    /// prep_f16 for the skinny form), then the kernels of `path`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_products(
        &self,
        x: &DeviceBuffer,
        n: usize,
        k: usize,
        norm: Option<Norm>,
        prods: &[MatVecOut],
        epilogue: Epilogue,
        rec: &DeviceBuffer,
        prepared: bool,
        path: ProductPath,
    ) -> Result<()> {
        let mmq = path == ProductPath::Mmq;
        let skinny = path == ProductPath::Skinny;
        let types: Vec<GgmlType> = prods.iter().map(|p| p.mat.ty).collect();
        if skinny && types.iter().any(|&t| t != GgmlType::F16) {
            return Err(Error::InvalidArgument(format!(
                "skinny products take f16 weight copies, not {types:?}"
            )));
        }
        let glu = matches!(epilogue, Epilogue::Glu { .. });
        if mmq && !mmq_supported(&types, glu) {
            return Err(Error::Unsupported(format!(
                "tensor-core products of {types:?}{}: no kernel",
                if glu { " (SwiGLU)" } else { "" }
            )));
        }
        let k_i = positive(k, "fused matvec k")?;
        let n_i = positive(n, "fused matvec rows of input")?;
        if n > 1 && prepared && !skinny {
            return Err(Error::InvalidArgument(
                "fused matvec: prepared records are for one row".into(),
            ));
        }
        if prods.is_empty() || prods.len() > 3 {
            return Err(Error::InvalidArgument(format!(
                "fused matvec: {} products (1 to 3)",
                prods.len()
            )));
        }
        if k % 32 != 0 {
            return Err(Error::InvalidArgument(format!(
                "fused matvec: input of {k} values is not a multiple of 32"
            )));
        }
        x.check(self, f32s(n * k), "fused matvec x")?;
        // The quantized formats multiply the 16-bit chunk records; F32/F16 weights the f32
        // input (normalized into `normed` first when there is a norm).
        let xint = prods
            .iter()
            .all(|p| !matches!(p.mat.ty, GgmlType::F32 | GgmlType::F16));
        let mut a = MvArgs {
            k: k_i,
            n_seg: prods.len() as i32,
            ..Default::default()
        };
        let mut total = 0usize;
        for (i, p) in prods.iter().enumerate() {
            let m = p.mat;
            if m.cols != k {
                return Err(Error::InvalidArgument(format!(
                    "fused matvec: matrix {i} has {} columns, the input {k}",
                    m.cols
                )));
            }
            let rb = row_bytes(m.ty, k, "fused matvec")?;
            // The mat-vecs stage whole 16-byte words (padding past the last row); the skinny
            // kernel reads within the rows.
            let pad = if skinny { 0 } else { 16 };
            m.w.check(
                self,
                rb * m.rows as u64 + pad,
                "fused matvec weights (+16 padding)",
            )?;
            p.out.check(self, f32s(n * m.rows), "fused matvec out")?;
            if let Some(b) = p.bias {
                b.check(self, f32s(m.rows), "fused matvec bias")?;
            }
            a.seg[i] = Seg {
                w: m.w.ptr(),
                bias: p.bias.map_or(0, |b| b.ptr()),
                out: p.out.ptr(),
                row_bytes: rb as i64,
                ty: type_code(m.ty)?,
                rows: positive(m.rows, "fused matvec rows")?,
            };
            total += m.rows;
        }
        let jobs = match epilogue {
            Epilogue::Plain => {
                a.mode = 0;
                total
            }
            Epilogue::Glu { act } => {
                let r = prods[0].mat.rows;
                if prods.len() != 2 || prods[1].mat.rows != r {
                    return Err(Error::InvalidArgument(
                        "fused matvec: the gated form takes gate and up of equal rows".into(),
                    ));
                }
                act.check(self, f32s(n * r), "fused matvec act")?;
                a.mode = 1;
                a.act = act.ptr();
                r
            }
            Epilogue::Add { acc } => {
                let r = prods[0].mat.rows;
                if prods.len() != 1 {
                    return Err(Error::InvalidArgument(
                        "fused matvec: the residual form takes one product".into(),
                    ));
                }
                acc.check(self, f32s(n * r), "fused matvec acc")?;
                a.mode = 2;
                a.acc = acc.ptr();
                r
            }
        };

        // The input: normalized and/or quantized once, by prep_input.
        let (mut norm_w, mut eps, mut normed) = (0u64, 0f32, 0u64);
        let n_rows = n;
        if let Some(n) = norm {
            n.weight.check(self, f32s(k), "fused matvec norm weight")?;
            norm_w = n.weight.ptr();
            eps = n.eps;
            if let Some(o) = n.normed {
                o.check(self, f32s(n_rows * k), "fused matvec normed")?;
                normed = o.ptr();
            }
            if normed == 0 && !xint {
                return Err(Error::InvalidArgument(
                    "fused matvec: F32/F16 weights with a norm need the normed buffer".into(),
                ));
            }
        }
        if skinny {
            // The inputs in f16 (normalized first where there is a norm).
            rec.check(self, (n * k * 2) as u64, "skinny products' f16 inputs")?;
            if !prepared {
                let grid = (k.div_ceil(256) as u32, n_i as u32, 1);
                launch!(self, "prep_f16", grid, (256, 1, 1);
                    x.ptr(), norm_w, eps, normed, rec.ptr(), k_i)?;
            }
            let tiles: usize = if glu {
                prods[0].mat.rows.div_ceil(SKINNY_ROWS / 2)
            } else {
                prods.iter().map(|p| p.mat.rows.div_ceil(SKINNY_ROWS)).sum()
            };
            let (nt, smem, grid) = skinny_launch(n, tiles)?;
            return launch!(self, &format!("skinny_fused_n{nt}"), grid, (128, 1, 1),
                raise_shared_pdl = smem; a, rec.ptr(), n_i);
        }
        if prepared && (!xint || norm.is_some()) {
            return Err(Error::InvalidArgument(
                "fused matvec: a prepared input is for quantized weights without a norm".into(),
            ));
        }
        if mmq {
            // The records in the tensor cores' fragment order (kernels/mmq.cu mmq_prep).
            rec.check(self, mmq_input_bytes(n, k) as u64, "mmq input records")?;
            let n8 = dim(n.div_ceil(8), "mmq input groups")?;
            let grid = ((k / 32).div_ceil(8) as u32, n_i as u32, 1);
            launch!(self, "mmq_prep", grid, (256, 1, 1);
                x.ptr(), norm_w, eps, normed, rec.ptr(), k_i, n8)?;
            let rows: Vec<usize> = prods.iter().map(|p| p.mat.rows).collect();
            return self.launch_mmq(a, glu, rec.ptr(), n, &types, &rows);
        }
        // Records for the quantized formats; for F32/F16 the normed f32 (or x itself).
        let (rec_ptr, input, stride) = if xint {
            let per = Self::input_record_bytes(k);
            rec.check(self, (n * per) as u64, "fused matvec records")?;
            (rec.ptr(), rec.ptr(), per)
        } else if norm_w != 0 {
            (0, normed, k * 4)
        } else {
            (0, x.ptr(), k * 4)
        };
        if !prepared && (xint || norm_w != 0) {
            self.launch_prep_input(x, n_i, k_i, norm_w, eps, normed, rec_ptr)?;
        }
        a.x_stride = dim(stride, "fused matvec input stride")?;
        // Groups of up to MATVEC_MAX_INPUTS rows (powers of two), a launch each.
        let mut row = 0;
        while row < n {
            let nr = [MATVEC_MAX_INPUTS, 4, 2, 1]
                .into_iter()
                .find(|&g| g <= n - row)
                .unwrap_or(1);
            let mut g = a;
            for (s, p) in g.seg.iter_mut().zip(prods) {
                s.out += (row * p.mat.rows * 4) as u64;
            }
            if g.act != 0 {
                g.act += (row * prods[0].mat.rows * 4) as u64;
            }
            if g.acc != 0 {
                g.acc += (row * prods[0].mat.rows * 4) as u64;
            }
            self.launch_matvec(g, input + (row * stride) as u64, nr, jobs, prods)?;
            row += nr;
        }
        Ok(())
    }

    /// prep_input over `k` values of `x` (kernels/decode.cu): normalized with `norm_w` (0:
    /// none), written to `normed` (0: not) and/or as chunk records to `rec` (0: not).
    /// `n` rows of input (x, normed and rec n rows apart).
    #[allow(clippy::too_many_arguments)]
    fn launch_prep_input(
        &self,
        x: &DeviceBuffer,
        n: i32,
        k: i32,
        norm_w: u64,
        eps: f32,
        normed: u64,
        rec: u64,
    ) -> Result<()> {
        let grid = (k as usize / 32).div_ceil(DW) as u32;
        launch!(self, "prep_input", (grid, n as u32, 1), ((32 * DW) as u32, 1, 1);
            x.ptr(), norm_w, eps, normed, rec, k)
    }

    /// The fused_matvec launch over `jobs` rows (or row pairs) with the prepared `input`,
    /// `nr` inputs (a.x_stride bytes apart) at once.
    fn launch_matvec(
        &self,
        a: MvArgs,
        input: u64,
        nr: usize,
        jobs: usize,
        prods: &[MatVecOut],
    ) -> Result<()> {
        let min_steps = prods
            .iter()
            .map(|p| full_steps(p.mat.ty, p.mat.cols))
            .min()
            .unwrap_or(1);
        let (wpr, blocks) = matvec_split(jobs, min_steps, self.sm_count() as usize);
        let types: Vec<GgmlType> = prods.iter().map(|p| p.mat.ty).collect();
        let name = matvec_kernel(&types, a.mode == 1, nr)?;
        let smem = if a.mode == 1 {
            FUSED_SHARED_GLU
        } else {
            FUSED_SHARED
        };
        launch!(self, &name, (blocks as u32, 1, 1), ((32 * DW) as u32, 1, 1),
            shared = smem as u32; a, input, wpr as i32)
    }

    /// The chunk records of `k` values of `x` (normalized first with `norm`, whose `normed`
    /// also receives the normalized values when given) into `rec` (at least
    /// [`input_record_bytes`](Self::input_record_bytes)`(k)` bytes): the input form of
    /// [`expert_matvec`](Self::expert_matvec). Records are per 32 values, so the inputs of
    /// several experts back to back are prepared by one call over all of them.
    pub fn prep_input(
        &self,
        x: &DeviceBuffer,
        k: usize,
        norm: Option<Norm>,
        rec: &DeviceBuffer,
    ) -> Result<()> {
        let k_i = positive(k, "prep_input k")?;
        if k % 32 != 0 {
            return Err(Error::InvalidArgument(format!(
                "prep_input: {k} values is not a multiple of 32"
            )));
        }
        x.check(self, f32s(k), "prep_input x")?;
        rec.check(
            self,
            Self::input_record_bytes(k) as u64,
            "prep_input records",
        )?;
        let (mut norm_w, mut eps, mut normed) = (0u64, 0f32, 0u64);
        if let Some(n) = norm {
            n.weight.check(self, f32s(k), "prep_input norm weight")?;
            (norm_w, eps) = (n.weight.ptr(), n.eps);
            if let Some(o) = n.normed {
                o.check(self, f32s(k), "prep_input normed")?;
                normed = o.ptr();
            }
        }
        self.launch_prep_input(x, 1, k_i, norm_w, eps, normed, rec.ptr())
    }

    /// A table of the addresses of `bufs` (see [`ExpertTable`]: they must outlive it).
    pub fn expert_table(&self, bufs: &[&DeviceBuffer]) -> Result<ExpertTable> {
        let mut ptrs = Vec::with_capacity(bufs.len());
        for (i, b) in bufs.iter().enumerate() {
            b.check(self, 0, &format!("expert table entry {i}"))?;
            ptrs.push(b.ptr());
        }
        let min_bytes = bufs.iter().map(|b| b.len_bytes() as u64).min().unwrap_or(0);
        self.upload_table(&ptrs, min_bytes)
    }

    /// A table of `n` experts stored one after another in `w`, `stride` bytes apart (each
    /// readable to the buffer's end). `w` must outlive the table.
    pub fn stacked_expert_table(
        &self,
        w: &DeviceBuffer,
        n: usize,
        stride: usize,
    ) -> Result<ExpertTable> {
        let last = n
            .checked_sub(1)
            .and_then(|m| m.checked_mul(stride))
            .filter(|&o| o <= w.len_bytes())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "expert table: {n} experts of {stride} bytes do not fit a buffer of {}",
                    w.len_bytes()
                ))
            })?;
        w.check(self, 0, "expert table")?;
        let ptrs: Vec<u64> = (0..n).map(|e| w.ptr() + (e * stride) as u64).collect();
        // What can be read from each address: up to the buffer's end (the last expert's least).
        self.upload_table(&ptrs, (w.len_bytes() - last) as u64)
    }

    fn upload_table(&self, ptrs: &[u64], min_bytes: u64) -> Result<ExpertTable> {
        let bytes: Vec<u8> = ptrs.iter().flat_map(|p| p.to_ne_bytes()).collect();
        Ok(ExpertTable {
            ptrs: self.upload(&bytes, super::memory::MemKind::Weights)?,
            len: ptrs.len(),
            min_bytes,
        })
    }

    /// That `t` is on this device and each of its buffers holds `bytes` (for `what`).
    pub(super) fn check_table(&self, t: &ExpertTable, bytes: u64, what: &str) -> Result<()> {
        t.ptrs.check(self, t.len as u64 * 8, what)?;
        if t.min_bytes < bytes {
            return Err(Error::InvalidArgument(format!(
                "{what}: the table's buffers hold {} bytes, {bytes} needed",
                t.min_bytes
            )));
        }
        Ok(())
    }

    /// One token's products with the experts its router selected, without a host round trip:
    /// `ids` (device memory, `n_sel` i32, 1 to [`MAX_SELECTED_EXPERTS`]) names experts of
    /// each product's table; `out[s][r]` = row r of expert `ids[s]` · input s (+ its
    /// bias). Only the selected experts' rows are read. One or two products (a gate and an up
    /// tensor) of one format and shape share the ids and the input. The quantized formats
    /// only (the input is chunk records, [`prep_input`](Self::prep_input)). An id outside
    /// 0..n_expert gives NaN rows for its slot (nothing is read for it).
    pub fn expert_matvec(
        &self,
        ids: &DeviceBuffer,
        n_sel: usize,
        input: ExpertInput,
        prods: &[ExpertOut],
    ) -> Result<()> {
        if n_sel == 0 || n_sel > MAX_SELECTED_EXPERTS {
            return Err(Error::InvalidArgument(format!(
                "expert matvec: {n_sel} selected experts (1 to {MAX_SELECTED_EXPERTS})"
            )));
        }
        let Some(first) = prods.first().map(|p| p.experts) else {
            return Err(Error::InvalidArgument("expert matvec: no product".into()));
        };
        if prods.len() > 2 {
            return Err(Error::InvalidArgument(format!(
                "expert matvec: {} products (1 or 2)",
                prods.len()
            )));
        }
        let (ty, rows, k, n_expert) = (first.ty, first.rows, first.cols, first.table.len);
        if matches!(ty, GgmlType::F32 | GgmlType::F16) {
            return Err(Error::Unsupported(format!(
                "expert matvec: {} weights (the quantized formats only)",
                ty.name()
            )));
        }
        let rb = row_bytes(ty, k, "expert matvec")?;
        let expert_bytes = rb
            .checked_mul(rows as u64)
            .ok_or_else(|| Error::InvalidArgument("expert matvec: experts too large".into()))?;
        let jobs = prods.len() * n_sel * rows;
        let mut a = ExpertArgs {
            ids: ids.ptr(),
            row_bytes: rb as i64,
            n_mat: prods.len() as i32,
            n_sel: n_sel as i32,
            n_expert: positive(n_expert, "expert matvec experts")?,
            rows: positive(rows, "expert matvec rows")?,
            k: positive(k, "expert matvec k")?,
            ..Default::default()
        };
        dim(jobs, "expert matvec rows of all selected experts")?;
        for (i, p) in prods.iter().enumerate() {
            let e = p.experts;
            if (e.ty, e.rows, e.cols, e.table.len) != (ty, rows, k, n_expert) {
                return Err(Error::InvalidArgument(format!(
                    "expert matvec: product {i} is {} {}x{}x{}, product 0 {} {n_expert}x{rows}x{k}",
                    e.ty.name(),
                    e.table.len,
                    e.rows,
                    e.cols,
                    ty.name()
                )));
            }
            self.check_table(
                e.table,
                expert_bytes + 16,
                "expert matvec weights (+16 padding)",
            )?;
            if let Some(b) = p.bias {
                if b.len != n_expert {
                    return Err(Error::InvalidArgument(format!(
                        "expert matvec: {} bias rows for {n_expert} experts",
                        b.len
                    )));
                }
                self.check_table(b, f32s(rows), "expert matvec bias")?;
            }
            p.out.check(self, f32s(n_sel * rows), "expert matvec out")?;
            a.w[i] = e.table.ptrs.ptr();
            a.bias[i] = p.bias.map_or(0, |b| b.ptrs.ptr());
            a.out[i] = p.out.ptr();
        }
        ids.check(self, n_sel as u64 * 4, "expert matvec ids")?;
        let per = Self::input_record_bytes(k);
        let rec = match input {
            ExpertInput::Shared(r) => {
                r.check(self, per as u64, "expert matvec input records")?;
                r
            }
            ExpertInput::PerExpert(r) => {
                r.check(self, (per * n_sel) as u64, "expert matvec input records")?;
                a.x_stride = per as i64;
                r
            }
        };
        if ty == GgmlType::MXFP4 && moe_matvec_takes(rb as usize, k) {
            return self.moe_matvec_mxfp4(a, rec, n_sel, prods.len(), rows, rb as usize, k);
        }
        let (wpr, blocks) = expert_split(jobs, self.sm_count() as usize);
        let name = format!("expert_matvec_{}", type_suffix(ty)?);
        launch!(self, &name, (blocks as u32, 1, 1), ((32 * DW) as u32, 1, 1),
            shared = FUSED_SHARED as u32; a, rec.ptr(), wpr as i32)
    }

    /// The experts' weighted sum for one token: `out[r]` = Σ_s `weights[s]` · `parts[s][r]`
    /// (s < `n_sel`, in order; `parts`: [`expert_matvec`](Self::expert_matvec)'s `[n_sel][rows]`
    /// output, `weights`: the router's n_sel f32 in device memory); with `acc`, also
    /// `acc[r] += out[r]` (the residual stream).
    pub fn expert_combine(
        &self,
        parts: &DeviceBuffer,
        weights: &DeviceBuffer,
        n_sel: usize,
        rows: usize,
        out: &DeviceBuffer,
        acc: Option<&DeviceBuffer>,
    ) -> Result<()> {
        if n_sel == 0 || n_sel > MAX_SELECTED_EXPERTS {
            return Err(Error::InvalidArgument(format!(
                "expert combine: {n_sel} selected experts (1 to {MAX_SELECTED_EXPERTS})"
            )));
        }
        let rows_i = positive(rows, "expert combine rows")?;
        parts.check(self, f32s(n_sel * rows), "expert combine parts")?;
        weights.check(self, f32s(n_sel), "expert combine weights")?;
        out.check(self, f32s(rows), "expert combine out")?;
        if let Some(a) = acc {
            a.check(self, f32s(rows), "expert combine acc")?;
        }
        launch!(self, "expert_combine", (rows.div_ceil(256) as u32, 1, 1), (256, 1, 1);
            parts.ptr(), weights.ptr(), out.ptr(), acc.map_or(0, |a| a.ptr()), n_sel as i32, rows_i)
    }

    /// One token: RoPE on `q` (n_heads heads) and `k` (the cache's heads) at position
    /// `pos[0]`, and k, v stored in `cache` there.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv(
        &self,
        q: &DeviceBuffer,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        cache: &KvLayer,
        pos: &DeviceBuffer,
        n_heads: usize,
        p: RopeParams,
    ) -> Result<()> {
        let (hd, n_kv) = (cache.head_dim, cache.n_kv_heads);
        positive(n_heads, "rope_kv heads")?;
        if p.rot_dim == 0 || p.rot_dim % 2 != 0 || p.rot_dim > hd || p.pos_scale != 1.0 {
            return Err(Error::InvalidArgument(format!(
                "rope_kv: rotary dim {} (even, <= head_dim {hd}), position scale 1 only",
                p.rot_dim
            )));
        }
        q.check(self, f32s(n_heads * hd), "rope_kv q")?;
        k.check(self, f32s(n_kv * hd), "rope_kv k")?;
        v.check(self, f32s(n_kv * hd), "rope_kv v")?;
        pos.check(self, 4, "rope_kv pos")?;
        launch!(self, &cache.kernel("rope_kv"), ((n_heads + n_kv) as u32, 1, 1), (hd as u32, 1, 1);
            q.ptr(), k.ptr(), v.ptr(), cache.table, cache.layer as i32, pos.ptr(),
            n_heads as i32, n_kv as i32, hd as i32, p.rot_dim as i32, p.base, p.neox as i32)
    }

    /// Split-K attention of one query (`q`: n_heads x head_dim) at position `pos[0]` over
    /// the cache; with `rec`, also the output's records for the next fused mat-vec. `part`:
    /// scratch of [`attention_scratch_floats`] f32; `count`: n_heads i32, zero before the
    /// first call (the kernel leaves it zero). With `rope`, q and the token's k are not yet
    /// rotated and k, v not yet cached: the kernel does both (what [`rope_kv`] does, in the
    /// same arithmetic) without writing q or k back; without it, [`rope_kv`] (or a rope and
    /// [`kv_store_decode`](Self::kv_store_decode)) ran before. `sinks` (n_heads f32, GPT-OSS):
    /// each head's sink logit joins its softmax's denominator.
    ///
    /// [`rope_kv`]: Self::rope_kv
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        q: &DeviceBuffer,
        cache: &KvLayer,
        pos: &DeviceBuffer,
        n_heads: usize,
        scale: f32,
        window: usize,
        part: &DeviceBuffer,
        count: &DeviceBuffer,
        out: &DeviceBuffer,
        rec: Option<&DeviceBuffer>,
        rope: Option<NewKv>,
        sinks: Option<&DeviceBuffer>,
    ) -> Result<()> {
        let hd = cache.head_dim;
        if let Some(s) = sinks {
            s.check(self, f32s(n_heads), "attention sinks")?;
        }
        let (mut knew, mut vnew, mut rot_dim, mut base, mut neox) = (0u64, 0u64, 0i32, 0f32, 0i32);
        if let Some(r) = rope {
            let p = r.rope;
            if p.rot_dim == 0 || p.rot_dim % 2 != 0 || p.rot_dim > hd || p.pos_scale != 1.0 {
                return Err(Error::InvalidArgument(format!(
                    "attention_decode: rotary dim {} (even, <= head_dim {hd}), position scale 1 only",
                    p.rot_dim
                )));
            }
            r.k.check(self, f32s(cache.n_kv_heads * hd), "attention new k")?;
            r.v.check(self, f32s(cache.n_kv_heads * hd), "attention new v")?;
            (knew, vnew) = (r.k.ptr(), r.v.ptr());
            (rot_dim, base, neox) = (p.rot_dim as i32, p.base, p.neox as i32);
        }
        if let Some(r) = rec {
            r.check(
                self,
                Self::input_record_bytes(n_heads * hd) as u64,
                "attention records",
            )?;
        }
        positive(n_heads, "attention heads")?;
        if n_heads % cache.n_kv_heads != 0 {
            return Err(Error::InvalidArgument(format!(
                "attention: {n_heads} heads is not a multiple of {} KV heads",
                cache.n_kv_heads
            )));
        }
        q.check(self, f32s(n_heads * hd), "attention q")?;
        out.check(self, f32s(n_heads * hd), "attention out")?;
        part.check(
            self,
            f32s(attention_scratch_floats(n_heads, hd)),
            "attention scratch",
        )?;
        count.check(self, n_heads as u64 * 4, "attention counters")?;
        pos.check(self, 4, "attention pos")?;
        let window_i = dim(window, "attention window")?;
        // The kernels for head sizes 64 and 128 (a third less code), else the generic one.
        let name = match hd {
            64 => "attention_decode_d64",
            128 => "attention_decode_d128",
            _ => "attention_decode",
        };
        // The kernels of one head size stage each warp's 32 keys and values in shared memory.
        let smem = if name == "attention_decode" {
            0
        } else {
            attn_shared(hd, cache.elem_bytes())
        };
        launch!(self, &cache.kernel(name), (n_heads as u32, ATTN_SPLITS as u32, 1), (128, 1, 1),
            shared = smem as u32;
            q.ptr(), cache.table, cache.layer as i32, out.ptr(), part.ptr(), count.ptr(),
            pos.ptr(), n_heads as i32, cache.n_kv_heads as i32, hd as i32, scale, window_i,
            rec.map_or(0, |r| r.ptr()),
            knew, vnew, rot_dim, base, neox, sinks.map_or(0, |s| s.ptr()))
    }

    /// One token: `k` (already rotated) and `v` (the cache's heads x head_dim f32 each)
    /// stored in `cache` at position `pos[0]` (device memory: a graph replays it for every
    /// position).
    pub fn kv_store_decode(
        &self,
        k: &DeviceBuffer,
        v: &DeviceBuffer,
        cache: &KvLayer,
        pos: &DeviceBuffer,
    ) -> Result<()> {
        let (hd, n_kv) = (cache.head_dim, cache.n_kv_heads);
        k.check(self, f32s(n_kv * hd), "kv_store_decode k")?;
        v.check(self, f32s(n_kv * hd), "kv_store_decode v")?;
        pos.check(self, 4, "kv_store_decode pos")?;
        launch!(self, &cache.kernel("kv_store_decode"), (n_kv as u32, 1, 1), (hd as u32, 1, 1);
            k.ptr(), v.ptr(), cache.table, cache.layer as i32, pos.ptr(), hd as i32)
    }

    /// Zero `buf` in stream order (no host wait).
    pub fn zero_async(&self, buf: &DeviceBuffer) -> Result<()> {
        buf.check(self, 0, "zero")?;
        self.inner.bind()?;
        unsafe { result::memset_d8_async(buf.ptr(), 0, buf.len_bytes(), self.stream.raw) }
            .map_err(|e| drv("memset", e))
    }
}

/// Full steps of the dot product of a row of `cols` values of `ty` in kernels/decode.cu: a
/// warp takes 32 / LPB blocks a step (LPB: the lanes a block of the format takes, `Lane<T>`).
fn full_steps(ty: GgmlType, cols: usize) -> usize {
    let lanes_per_block = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::MXFP4 => 4,
        _ => 8,
    };
    cols / ty.block_size() / (32 / lanes_per_block)
}

/// Warps per row (`wpr`, a power of two up to DW) and blocks of a fused_matvec over `jobs`
/// rows whose dot products take at least `min_steps` full steps, on `sms` multiprocessors.
/// The grid is one resident wave at most and its warps take the rows' parts in rounds, so a
/// product costs about rounds x (row time / wpr): the split that minimizes
/// ceil(jobs x wpr / warps) / wpr is taken (the smaller wpr on ties), each part keeping at
/// least one full step. (A 7B down projection, 3584 rows: 2 warps a row ran 3 rounds where
/// 2.26 would do; 4 warps a row run 5 for 4.5.)
pub(crate) fn matvec_split(jobs: usize, min_steps: usize, sms: usize) -> (usize, usize) {
    let mut best = (1, 1, f64::INFINITY);
    let mut wpr = 1;
    while wpr <= DW && (wpr == 1 || min_steps >= wpr) {
        let tasks = jobs * wpr;
        let blocks = tasks.div_ceil(DW).clamp(1, sms * MATVEC_BLOCKS_PER_SM);
        let rounds = tasks.div_ceil(blocks * DW);
        let cost = rounds as f64 / wpr as f64;
        if cost < best.2 {
            best = (wpr, blocks, cost);
        }
        wpr *= 2;
    }
    (best.0, best.1)
}

/// Warps per row and blocks of an expert_matvec over `jobs` rows: a whole row a warp (the
/// next round's row is fetched while one is multiplied, so a warp keeps a row's bytes in
/// flight), a resident wave at most. matvec_split's finer splits cost gpt-oss-20b's experts
/// (23,040 rows of 1,530 bytes) 59 rounds of ~190 bytes a warp, each round about a memory
/// latency: 281 GB/s, tg128 119 tok/s; a row a warp: tg64 227 (H100, 2026-12-06).
fn expert_split(jobs: usize, sms: usize) -> (usize, usize) {
    (1, jobs.div_ceil(DW).clamp(1, sms * MATVEC_BLOCKS_PER_SM))
}

/// f32 values of attention_decode's scratch for `n_heads` heads of `head_dim`.
pub fn attention_scratch_floats(n_heads: usize, head_dim: usize) -> usize {
    n_heads * ATTN_SPLITS * (head_dim + 2)
}

// The kernel's MvArgs: 2 pointers, 4 words, 3 segments of 40 bytes, no padding surprises.
const _: () = assert!(std::mem::size_of::<MvArgs>() == 152);
// The kernel's ExpertArgs: 7 pointers, 2 i64, 6 i32.
const _: () = assert!(std::mem::size_of::<ExpertArgs>() == 96);

#[cfg(test)]
mod tests {
    use super::{matvec_kernel, matvec_rows_supported, matvec_split, rows_kernel_names};
    use crate::quant::GgmlType;

    #[test]
    fn kernels_of_several_inputs_are_loaded() {
        // Every kernel a product of several inputs can launch is one the loader looks up (a
        // missing name failed a batched step on the device: "kernel ... was not loaded").
        use GgmlType::*;
        let loaded = rows_kernel_names("decode");
        let formats = [F32, F16, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K, MXFP4];
        let mut cases: Vec<(Vec<GgmlType>, bool)> = Vec::new();
        for t in formats {
            cases.push((vec![t, t, t], false));
            cases.push((vec![t, t], true));
        }
        cases.push((vec![Q5_0, Q5_0, Q8_0], false));
        cases.push((vec![Q4_K, Q4_K, Q6_K], false));
        for (types, glu) in cases {
            assert!(matvec_rows_supported(&types, glu), "{types:?}");
            for nr in [2, 4, 8] {
                let name = matvec_kernel(&types, glu, nr).unwrap();
                assert!(loaded.contains(&name.as_str()), "{name} is not loaded");
            }
        }
        assert_eq!(loaded.len(), 3 * 18);
        // Mixed formats without a kernel of their own, a SwiGLU of two formats, a format
        // the mat-vecs do not take: not by rows.
        assert!(!matvec_rows_supported(&[Q4_K, Q8_0], false));
        assert!(!matvec_rows_supported(&[Q4_K, Q6_K], true));
        assert!(!matvec_rows_supported(&[Q4_0], false));
        assert!(matvec_kernel(&[Q4_K, Q8_0], false, 4).is_err());
    }

    #[test]
    fn matvec_split_balances_rounds() {
        // H200 (132 SMs, 3168 warps in one wave), the 7B's products.
        assert_eq!(matvec_split(3584, 18, 132), (4, 396)); // down: 5 rounds of 4.5
        assert_eq!(matvec_split(4608, 3, 132), (2, 396)); // q, k, v: 3 rounds of 2.9
        assert_eq!(matvec_split(18944, 3, 132), (1, 396)); // gate/up: 6 rounds of 5.98

        // Few rows: every part in the first round, as many warps a row as the steps allow.
        assert_eq!(matvec_split(896, 3, 132), (2, 224));
        assert_eq!(matvec_split(10, 100, 132), (8, 10));
        // Short rows are not split.
        assert_eq!(matvec_split(100, 1, 132), (1, 13));
    }
}
