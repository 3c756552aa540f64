//! The forward pass on the GPU: weights in VRAM ([`CudaModel`]), a session's KV cache and
//! activation buffers ([`CudaState`]) and one step of the recipe ([`CudaStep`], an [`Ops`]).
//!
//! Arithmetic: matrices stay in their GGUF block format and multiply f32 activations (no
//! 8-bit activation quantization, unlike the CPU; F16/F32 weights' prompt products exact to
//! f32, `launch::gemm_parts`); the KV cache is f16, or f32 for a `kv_type` f32 session; norms,
//! RoPE, softmax and the residual stream are f32. Longer steps (the prompt) run the plain
//! operations with the mat-mul kernels. A decode step (one token) runs the fused kernels of
//! kernels/decode.cu, six per layer: norm + Q/K/V (+ biases), RoPE + KV store, split-K
//! attention, output projection + residual, norm + gate/up + SwiGLU, down + residual. Those
//! read the position from device memory, so the whole step is captured once as a CUDA graph
//! and replayed for each later token (`LLORCH_CUDA_GRAPH=0` turns that off). Work is queued
//! in order on the session's own stream; only downloads (logits, taps) wait for it.

mod f16_weights;
mod kv_rows;
mod prefix_blocks;
pub use prefix_blocks::{prefix_cache_enabled, set_prefix_cache};

use super::device::CudaDevice;
use super::drv;
use super::fused::{
    attention_scratch_floats, Epilogue, MatRef, MatVecOut, NewKv, Norm as FusedNorm,
};
use super::fused::{
    matvec_rows_supported, mmq_supported, multirow_rows, ProductPath, MULTIROW_MAX,
};
use super::fused::{ExpertTable, MAX_SELECTED_EXPERTS};
use super::kv_pages::{page_bytes, KvCache, PageArena, KV_PAGE};
use super::launch::{
    gemm_enabled, gemm_parts, matmul_uses_gemm, skinny_fused, skinny_max, RopeParams,
};
use super::memory::{DeviceBuffer, MemKind, PinnedHost};
use super::mmq::{mmq_enabled, mmq_min_rows, mmq_prompt};
use super::moe::{expert_tables, moe_shape, MoeScratch, MoeShape};
use crate::backend::kvpool::{KvPool, WakeOnDrop};
use crate::backend::{
    unfused, Activation, AttnIn, AttnShape, Dims, Glu, Moe, Norm, NormIn, Ops, Projection, Rope,
    RopeStyle, Slot, Tap, WeightId, WeightTensor,
};
use crate::gguf::Gguf;
use crate::quant::GgmlType;
use crate::{Error, Result};
use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

mod mixture;

/// Token rows a state's activation buffers hold at first: the session's prefill chunk on the
/// GPU. A longer step grows them. (512 rather than 256: a 512-token prompt in one step runs
/// the products with twice the columns; H200 pp512, 0.5B 26.9k -> 39.4k tok/s, 7B 4.95k ->
/// 6.69k, bench/RESULTS.md.)
pub const MAX_STEP_TOKENS: usize = 512;

/// Positions a session's KV cache holds when it opens (at most its context: one slab of
/// pages, kv_pages.rs), so that short generations need no allocation. It grows a page at a
/// time as generations ask for more ([`CudaState::ensure_kv`]), so a session costs the
/// memory of the context it uses, not of the one it may use.
pub const KV_FIRST_POSITIONS: usize = KV_PAGE * super::kv_pages::SLAB_PAGES;

/// Types the CUDA kernels multiply (and embed) in place.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4_K
            | GgmlType::Q6_K
            | GgmlType::MXFP4
    )
}

/// A weight in VRAM: the file's blocks for matrices, f32 for one-dimensional tensors.
struct CudaWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    buf: DeviceBuffer,
}

/// Model weights uploaded once to one GPU (accounted as [`MemKind::Weights`]).
pub struct CudaModel {
    dev: CudaDevice,
    weights: Vec<CudaWeight>,
    /// The device tables of each stacked expert tensor's per-expert buffers, by the weight id
    /// of expert 0 (the mixture's decode kernels index them by the router's picks).
    experts: HashMap<u32, ExpertTable>,
    /// What a session's mixture scratch is sized for, when the model has experts.
    moe: Option<MoeShape>,
    /// f16 copies of the quantized matrices for the products of many rows, by weight id
    /// (see f16_weights.rs).
    f16: Vec<Option<DeviceBuffer>>,
    /// Where the sessions' KV pages come from, one arena per page shape (f16 and f32
    /// caches): shared, so that a page one session gives back serves the next, and the
    /// prefix cache's pages are every session's.
    kv_arenas: parking_lot::Mutex<Vec<Arc<PageArena>>>,
}

impl CudaModel {
    /// Upload the recipe's tensors. Out of memory (budget or card) is
    /// [`Error::OutOfMemory`]; what was uploaded so far is freed on the way out.
    /// `progress` returning false cancels.
    pub fn new(
        dev: CudaDevice,
        gguf: &Gguf,
        tensors: &[WeightTensor],
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self> {
        let total: u64 = tensors.iter().map(|t| t.view_bytes()).sum::<u64>().max(1);
        let mut done = 0u64;
        let mut weights = Vec::with_capacity(tensors.len());
        for t in tensors {
            let data = t.data(gguf)?;
            let w = if t.rows == 1 {
                // Norm weights and biases: small, read by elementwise kernels as f32.
                let v = t.to_f32(data)?;
                CudaWeight {
                    ty: GgmlType::F32,
                    rows: 1,
                    cols: t.cols,
                    buf: dev.upload_f32(&v, MemKind::Weights)?,
                }
            } else {
                if !supported(t.ty) {
                    return Err(Error::Unsupported(format!(
                        "tensor '{}' has type {}, which the CUDA backend cannot multiply",
                        t.name,
                        t.ty.name()
                    )));
                }
                if t.cols % 32 != 0 {
                    return Err(Error::Unsupported(format!(
                        "tensor '{}': rows of {} values (the CUDA kernels need multiples of 32)",
                        t.name, t.cols
                    )));
                }
                CudaWeight {
                    ty: t.ty,
                    rows: t.rows,
                    cols: t.cols,
                    // The decode kernels load whole 16-byte words, up to 15 bytes past a row.
                    buf: dev.upload_padded(data, 16, MemKind::Weights)?,
                }
            };
            weights.push(w);
            done += data.len() as u64;
            if !progress(done as f32 / total as f32) {
                return Err(Error::Cancelled);
            }
        }
        let bufs: Vec<&DeviceBuffer> = weights.iter().map(|w| &w.buf).collect();
        let experts = expert_tables(&dev, tensors, &bufs)?;
        let f16 = f16_weights::f16_copies(&dev, tensors, &weights)?;
        // A failed copy would otherwise surface at the first step.
        dev.synchronize()?;
        Ok(CudaModel {
            dev,
            weights,
            experts,
            moe: moe_shape(tensors),
            f16,
            kv_arenas: parking_lot::Mutex::new(Vec::new()),
        })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The arena of KV pages of `dims`' shape (f32 values with `f32`, else f16).
    fn kv_arena(&self, dims: &Dims, f32: bool) -> Result<Arc<PageArena>> {
        let bytes = page_bytes(dims.n_layer, dims.n_head_kv, dims.head_dim, f32)?;
        let mut arenas = self.kv_arenas.lock();
        if let Some(a) = arenas.iter().find(|a| a.page_bytes() == bytes) {
            return Ok(a.clone());
        }
        let a = PageArena::new(&self.dev, bytes);
        arenas.push(a.clone());
        Ok(a)
    }

    fn weight(&self, w: WeightId) -> &CudaWeight {
        &self.weights[w.0 as usize]
    }

    /// The two-pass prompt products' scratch needs (kernels/gemm_f16.cu): the most values of
    /// one matrix that may take that path, and the longest row of any matrix. The vocabulary
    /// matrices (`vocab` rows: the output head, multiplied by more than one token only when
    /// every position's logits are asked for) are left out: they are several times the
    /// largest layer matrix (0.5B: 136M values against 4.4M), so they keep the one-pass kernel.
    /// F16 and F32 matrices count [`gemm_parts`] times (their exact products' split values);
    /// matrices the model holds in f16 (f16_weights.rs) need no first pass, so no room.
    fn gemm_sizes(&self, vocab: usize) -> (usize, usize) {
        let most = (self.weights.iter().zip(&self.f16))
            .filter(|(w, copy)| w.rows > 1 && w.rows != vocab && copy.is_none())
            .map(|(w, _)| w.rows * w.cols * gemm_parts(w.ty))
            .max()
            .unwrap_or(0);
        let mats = self.weights.iter().filter(|w| w.rows > 1);
        let longest = mats.map(|w| w.cols * gemm_parts(w.ty)).max();
        (most, longest.unwrap_or(0))
    }

    /// Weight `w` as the kernels of `path` read it: its f16 copy for the skinny products
    /// (`fused_path` chooses them only where every matrix has one), else as loaded.
    fn mat_on(&self, w: WeightId, path: ProductPath) -> MatRef<'_> {
        match (&self.f16[w.0 as usize], path) {
            (Some(copy), ProductPath::Skinny) => {
                let t = self.weight(w);
                MatRef {
                    ty: GgmlType::F16,
                    w: copy,
                    rows: t.rows,
                    cols: t.cols,
                }
            }
            _ => self.mat(w),
        }
    }

    fn mat(&self, w: WeightId) -> MatRef<'_> {
        let w = self.weight(w);
        MatRef {
            ty: w.ty,
            w: &w.buf,
            rows: w.rows,
            cols: w.cols,
        }
    }
}

/// A decode step captured as a CUDA graph, ready to replay. Its kernels hold the addresses of
/// the state's buffers, so it is dropped whenever those are reallocated.
pub(super) struct DecodeGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    /// Keeps the CUDA context alive until the graph is destroyed, whatever order its owner's
    /// fields drop in (a graph destroyed after its context is released crashes the driver).
    dev: CudaDevice,
}

impl Drop for DecodeGraph {
    fn drop(&mut self) {
        let _ = self.dev.inner.bind();
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

// Graph handles are plain ids; the driver allows their use from any thread.
unsafe impl Send for DecodeGraph {}

/// Whether decode steps are captured as graphs (`LLORCH_CUDA_GRAPH=0` turns it off).
/// Read once: it is asked on every decode step.
fn graphs_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("LLORCH_CUDA_GRAPH").map_or(true, |v| v != "0"))
}

/// A session's state on the GPU: per-layer KV cache (f16, or f32 for kv_type f32), activation buffers for up to
/// `cap` token rows, the step's positions and token ids.
pub struct CudaState {
    /// The model's device with this session's own stream.
    dev: CudaDevice,
    dims: Dims,
    n_ctx: usize,
    /// The KV cache, in pages (kv_pages.rs; grown by `ensure_kv`).
    kv: KvCache,
    slots: Vec<DeviceBuffer>,
    positions: DeviceBuffer,
    ids: DeviceBuffer,
    /// Token rows the buffers hold.
    cap: usize,
    /// attention_decode's partial results and per-head counters (zeroed once).
    attn_part: DeviceBuffer,
    attn_count: DeviceBuffer,
    /// A decode mat-vec's prepared input (chunk records, see kernels/decode.cu), for
    /// `xrec_rows` rows.
    xrec: DeviceBuffer,
    xrec_rows: usize,
    /// The greedy pick (one i32, see `argmax_row`).
    pick: DeviceBuffer,
    /// Page-locked staging for one row of logits, downloaded every decode step.
    logits_stage: PinnedHost,
    /// A step launched ahead's pick (i32 0, copied back) and its position and token
    /// (i32s `AHEAD_POS`, `AHEAD_ID`, uploaded from here), page-locked.
    ahead_stage: PinnedHost,
    /// Whether greedy decode steps may be launched one token ahead (see `run_ahead`).
    pub(crate) ahead_allowed: bool,
    /// The step launched ahead and not yet taken: its token and position.
    ahead: Option<(u32, usize)>,
    /// The two-pass prompt products' scratch (`CudaDevice::matmul_gemm`), when that path is
    /// on: f16 weights of the largest layer matrix, f16 activations for `cap` rows of the
    /// longest matrix row (`gemm_k` values).
    gemm_w: Option<DeviceBuffer>,
    gemm_x: Option<DeviceBuffer>,
    gemm_k: usize,
    graph: Option<DecodeGraph>,
    /// False once a decode step needed an operation that takes the position from the host
    /// (the unfused attention, for ropes the decode kernels do not fold): a captured graph
    /// would replay that first position forever, so such a model's steps run without one.
    graph_ok: bool,
    /// The mixture-of-experts buffers (models with experts): one token's at first, grown by a
    /// longer step's mixture.
    moe: Option<MoeScratch>,
    /// Intermediate values, recorded when `Some` (downloaded: slow, for verification).
    pub taps: Option<Vec<Tap>>,
    /// The prefix-cache blocks whose pages this cache starts with (`kv_adopt`): held while
    /// it uses them (the cache does not evict them), and the chain its own first prompt's
    /// blocks are offered after.
    prefix: Vec<Arc<crate::backend::kvpool::Block>>,
    /// The model's KV pool, told when this state's buffers are freed (its waiters for memory
    /// look again). Last: fields drop in order, the buffers above first.
    freed: Option<WakeOnDrop>,
}

/// The per-row buffers of a state for `cap` token rows.
struct RowBuffers {
    slots: Vec<DeviceBuffer>,
    positions: DeviceBuffer,
    ids: DeviceBuffer,
    /// f16 activations of the two-pass products (`cap` x `gemm_k`), when that path is on.
    gemm_x: Option<DeviceBuffer>,
}

/// The scratch buffers for `cap` token rows (`gemm_k`: the longest matrix row, 0 when the
/// two-pass products are off).
fn alloc_scratch(dev: &CudaDevice, dims: &Dims, cap: usize, gemm_k: usize) -> Result<RowBuffers> {
    let mut slots = Vec::with_capacity(Slot::ALL.len());
    for s in Slot::ALL {
        slots.push(dev.alloc(cap * s.width(dims) * 4, MemKind::Scratch)?);
    }
    let positions = dev.alloc(cap * 4, MemKind::Scratch)?;
    let ids = dev.alloc(cap * 4, MemKind::Scratch)?;
    let gemm_x = match gemm_k {
        0 => None,
        k => Some(dev.alloc(cap * k * 2, MemKind::Scratch)?),
    };
    Ok(RowBuffers {
        slots,
        positions,
        ids,
        gemm_x,
    })
}

/// Bytes of the prepared inputs (chunk records) of `rows` rows of the widest product input,
/// in either layout (the mat-vecs' records, or the tensor cores' fragment order of
/// kernels/mmq.cu, which takes groups of 8 rows).
fn record_bytes(dims: &Dims, rows: usize) -> usize {
    let widest = dims.n_embd.max(dims.q_dim()).max(dims.n_ff);
    let recs = CudaDevice::input_record_bytes(widest) * rows;
    recs.max(super::mmq::mmq_input_bytes(rows, widest))
}

impl CudaState {
    /// [`with_kv`](Self::with_kv) with the f16 cache.
    pub fn new(model: &CudaModel, dims: &Dims, n_ctx: usize) -> Result<Self> {
        Self::with_kv(model, dims, n_ctx, false)
    }

    /// Allocates everything a session needs up front, so that out of memory shows here (as
    /// [`Error::OutOfMemory`], with nothing left allocated) rather than mid-generation. The
    /// KV cache holds f32 values with `f32_kv`, else f16.
    pub fn with_kv(model: &CudaModel, dims: &Dims, n_ctx: usize, f32_kv: bool) -> Result<Self> {
        let dev = model.dev.with_own_stream()?;
        let arena = model.kv_arena(dims, f32_kv)?;
        let (n_kv, hd) = (dims.n_head_kv, dims.head_dim);
        let mut kv = KvCache::new(&dev, arena, n_ctx, dims.n_layer, n_kv, hd, f32_kv)?;
        kv.prepare(&dev, 0, n_ctx.min(KV_FIRST_POSITIONS))?;
        let cap = MAX_STEP_TOKENS.min(n_ctx).max(1);
        // The two-pass prompt products need scratch only where steps of several tokens fit.
        let (gemm_most, gemm_k) = if gemm_enabled() && n_ctx >= 2 {
            model.gemm_sizes(dims.vocab)
        } else {
            (0, 0)
        };
        let rows = alloc_scratch(&dev, dims, cap, gemm_k)?;
        let gemm_w = match gemm_most {
            0 => None,
            n => Some(dev.alloc(n * 2, MemKind::Scratch)?),
        };
        let attn_part = dev.alloc(
            attention_scratch_floats(dims.n_head, dims.head_dim) * 4,
            MemKind::Scratch,
        )?;
        let mut attn_count = dev.alloc(dims.n_head * 4, MemKind::Scratch)?;
        dev.fill_bytes(&mut attn_count, 0)?;
        let pick = dev.argmax_buffer(1)?;
        // Records of one row; of a prompt chunk's rows when its products take the tensor
        // cores (LLORCH_CUDA_MMQ_PROMPT).
        let xrec_rows = if mmq_prompt() && n_ctx >= 2 { cap } else { 1 };
        let xrec = dev.alloc(record_bytes(dims, xrec_rows), MemKind::Scratch)?;
        let logits_stage = dev.alloc_pinned(dims.vocab * 4)?;
        let ahead_stage = dev.alloc_pinned(12)?;
        let moe = model
            .moe
            .map(|s| MoeScratch::new(&dev, s, 1, MAX_SELECTED_EXPERTS))
            .transpose()?;
        Ok(CudaState {
            dev,
            dims: dims.clone(),
            n_ctx,
            kv,
            slots: rows.slots,
            positions: rows.positions,
            ids: rows.ids,
            cap,
            attn_part,
            attn_count,
            xrec,
            xrec_rows,
            pick,
            logits_stage,
            ahead_stage,
            ahead_allowed: false,
            ahead: None,
            gemm_w,
            gemm_x: rows.gemm_x,
            gemm_k,
            graph: None,
            graph_ok: true,
            moe,
            taps: None,
            prefix: Vec::new(),
            freed: None,
        })
    }

    pub(super) fn device(&self) -> &CudaDevice {
        &self.dev
    }

    pub(super) fn dims(&self) -> &Dims {
        &self.dims
    }

    /// Swap the state's decode graph with `g` (a batch keeps one per batch size).
    pub(super) fn swap_graph(&mut self, g: &mut Option<DecodeGraph>) {
        std::mem::swap(&mut self.graph, g);
    }

    /// Positions the KV cache holds now (it grows up to the context: `ensure_kv`).
    pub fn kv_capacity(&self) -> usize {
        self.kv.capacity()
    }

    /// Tell `pool` when this state's buffers are freed (dropped).
    pub fn wake_on_drop(&mut self, pool: Arc<KvPool>) {
        self.freed = Some(WakeOnDrop(pool));
    }

    /// Why the cache could never hold `end` positions, even with no other session's pages
    /// on the device, beside the weights and every session's scratch. None when it could (or
    /// holds them already).
    pub fn kv_never_fits(&self, end: usize) -> Option<String> {
        let have = self.kv.capacity();
        if end <= have || end > self.n_ctx {
            return None;
        }
        let page = self.kv.page_bytes() as u64;
        let mine = self.kv.pages().len() as u64 * page;
        let more = (end.div_ceil(KV_PAGE) - self.kv.pages().len()) as u64 * page;
        let m = self.dev.memory().ok()?;
        let limit = if m.budget > 0 {
            m.budget
        } else {
            m.device_total
        };
        let others = m.used.saturating_sub(m.kv_cache);
        (others + mine + more > limit).then(|| {
            format!(
                "a KV cache of {end} positions needs {} bytes, and the device's {} of {limit} \
                 bytes hold {others} of weights and scratch",
                mine + more,
                if m.budget > 0 { "budget" } else { "memory" }
            )
        })
    }

    /// Make positions `start..end` of the KV cache writable (`end` at most the context):
    /// pages added up to `end` (none moves: a captured decode graph stays valid), and private
    /// copies of pages shared with the prefix cache from `start`'s on. When the pages do not
    /// fit, `Error::OutOfMemory` and nothing changed.
    pub fn ensure_kv(&mut self, start: usize, end: usize) -> Result<()> {
        if end > self.n_ctx {
            return Err(Error::ContextFull(format!(
                "{end} positions do not fit the context of {}",
                self.n_ctx
            )));
        }
        self.kv.prepare(&self.dev, start, end)
    }

    /// Give back the pages past the first `n` positions (a rewind or reset; the first
    /// `KV_FIRST_POSITIONS` stay for the session's life, so that a short generation after a
    /// reset allocates nothing), and the prefix-cache blocks past them.
    pub fn kv_truncate(&mut self, n: usize) {
        self.settle_ahead();
        // Kernels still queued may use the pages.
        if self.dev.synchronize().is_err() {
            return;
        }
        self.kv.truncate(n.max(self.n_ctx.min(KV_FIRST_POSITIONS)));
        self.prefix.truncate(n / KV_PAGE);
        if let Some(w) = &self.freed {
            w.0.freed();
        }
    }

    /// Make room for steps of `rows` token rows now, so that later steps do not move the
    /// buffers (captured graphs hold their addresses).
    pub(super) fn reserve_rows(&mut self, rows: usize) -> Result<()> {
        if rows > self.cap {
            self.graph = None;
            self.slots.clear();
            self.gemm_x = None;
            let r = alloc_scratch(&self.dev, &self.dims, rows, self.gemm_k)?;
            (self.slots, self.positions, self.ids, self.gemm_x) =
                (r.slots, r.positions, r.ids, r.gemm_x);
            // The records of a batched step's products of several rows: all rows for the
            // tensor cores (kernels/mmq.cu), else those of the mat-vecs of several inputs.
            let keep = if mmq_enabled() || mmq_prompt() {
                rows
            } else {
                rows.min(MULTIROW_MAX)
            };
            if keep > self.xrec_rows {
                self.xrec = self
                    .dev
                    .alloc(record_bytes(&self.dims, keep), MemKind::Scratch)?;
                self.xrec_rows = keep;
            }
            self.cap = rows;
        }
        Ok(())
    }

    /// The dimensions it was made for.
    pub fn dims_pub(&self) -> &Dims {
        &self.dims
    }

    /// The cache's page table, bit 0 set for an f32 cache (a batched step's table entry:
    /// kernels/attention_batch.cu), so that sessions of both types share a batched step.
    pub(super) fn kv_table_ref(&self) -> u64 {
        self.kv.table_ref()
    }

    pub(super) fn logits_buffer(&self) -> &DeviceBuffer {
        &self.slots[Slot::Logits.index()]
    }

    /// The logits of the last step: `rows` rows of `vocab` values (waits for the GPU).
    pub fn logits(&self, rows: usize) -> Result<Vec<f32>> {
        self.dev
            .download_f32(&self.slots[Slot::Logits.index()], rows * self.dims.vocab)
    }

    /// [`logits`](Self::logits) appended to `out`; one row goes through page-locked memory
    /// (a decode step's download: 0.6 MB for a 152k vocabulary, every token).
    pub fn logits_into(&self, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = rows * self.dims.vocab;
        let logits = &self.slots[Slot::Logits.index()];
        self.dev
            .download_f32_into(logits, n, &self.logits_stage, out)
    }

    /// The index of the largest logit of row `row` of the last step, picked on the GPU (4
    /// bytes come back, not the row): the first on ties, NaNs never win, 0 when all are NaN
    /// (as `sampling::argmax`). Waits for the GPU.
    pub fn argmax_row(&self, row: usize) -> Result<u32> {
        let vocab = self.dims.vocab;
        let logits = &self.slots[Slot::Logits.index()];
        let i = self
            .dev
            .argmax_into(logits, row * vocab, 1, vocab, &self.pick)?;
        Ok(i.first().copied().flatten().unwrap_or(0))
    }

    /// Greedy decoding one token ahead: right after a decode step's pick `token` at `pos - 1`
    /// comes back, the next step (that token at `pos`) is launched through the captured
    /// graph, with its pick copied into page-locked memory, and not waited for. While the
    /// caller turns the token into text, runs its callback and queues the next step, the GPU
    /// is already computing it; [`take_ahead`](Self::take_ahead) then only waits. The step is
    /// the graph the caller's own step would replay, so its pick is the same. Nothing is
    /// launched without a graph, past the cache, with taps on, or unless `ahead_allowed` (the
    /// batcher allows it to a session generating alone: others' steps would take the row).
    /// A launch that fails leaves nothing ahead (the caller's next step meets the error).
    pub fn run_ahead(&mut self, token: u32, pos: usize) {
        if !self.ahead_allowed || !lookahead_enabled() || self.taps.is_some() {
            return;
        }
        if pos >= self.kv.capacity() || token as usize >= self.dims.vocab {
            return;
        }
        let launched = (|| -> Result<bool> {
            let Some(g) = self.graph.as_ref() else {
                return Ok(false);
            };
            // Position and token through the page-locked stage: copies that need no wait
            // (the stage is rewritten only after the next `take_ahead` has synchronized).
            self.ahead_stage.set_i32(AHEAD_POS, pos as i32);
            self.ahead_stage.set_i32(AHEAD_ID, token as i32);
            self.dev
                .upload_from_pinned(&mut self.positions, &self.ahead_stage, AHEAD_POS, 1)?;
            self.dev
                .upload_from_pinned(&mut self.ids, &self.ahead_stage, AHEAD_ID, 1)?;
            self.dev.inner.bind()?;
            unsafe { result::graph::launch(g.exec, self.dev.stream.raw) }
                .map_err(|e| drv("graph launch", e))?;
            let logits = &self.slots[Slot::Logits.index()];
            let vocab = self.dims.vocab;
            self.dev.argmax_launch(logits, 0, 1, vocab, &self.pick)?;
            self.dev.copy_to_pinned(&self.pick, 4, &self.ahead_stage)?;
            Ok(true)
        })();
        match launched {
            Ok(true) => self.ahead = Some((token, pos)),
            Ok(false) => {}
            // Part of it may be queued: let it drain (the error shows again at the next use).
            Err(_) => {
                let _ = self.dev.synchronize();
            }
        }
    }

    /// The pick of the step launched ahead, if it is `key` (token, position) and once it has
    /// run; None after waiting for whatever else was ahead (discarded: its cache row is
    /// rewritten by the step the caller runs instead, and nothing reads past the
    /// conversation). Every use of the state other than taking the step goes through here or
    /// [`settle_ahead`](Self::settle_ahead) first.
    pub fn take_ahead(&mut self, key: Option<(u32, usize)>) -> Result<Option<u32>> {
        let Some(ahead) = self.ahead.take() else {
            return Ok(None);
        };
        self.dev.synchronize()?;
        if key != Some(ahead) {
            return Ok(None);
        }
        let pick = self.ahead_stage.first_i32().unwrap_or(0);
        Ok(Some(u32::try_from(pick).unwrap_or(0)))
    }

    /// Wait for and drop a step launched ahead, if any (before the state is used otherwise).
    pub fn settle_ahead(&mut self) {
        if self.ahead.take().is_some() {
            // An error here is the device's and shows again at the state's next use.
            let _ = self.dev.synchronize();
        }
    }
}

impl Drop for CudaState {
    fn drop(&mut self) {
        // A step launched ahead still reads and writes this state's buffers.
        self.settle_ahead();
    }
}

/// Where a step launched ahead's position and token id wait in its stage (i32 indices).
const AHEAD_POS: usize = 1;
const AHEAD_ID: usize = 2;

/// Whether greedy decode steps run one token ahead: on unless `LLORCH_CUDA_LOOKAHEAD=0` or
/// [`set_lookahead`] turned it off. H100, 0.5B shape, tg128 greedy 1,173.6 -> 1,188.4 tok/s
/// (session 15; test `greedy_ahead_equals_row_by_row`).
fn lookahead_enabled() -> bool {
    switch(&LOOKAHEAD, "LLORCH_CUDA_LOOKAHEAD")
}

/// A process-wide switch, on by default: as set (`set_*`), else off where the environment
/// variable `var` is "0" (read once: these are asked every step).
fn switch(state: &AtomicU8, var: &str) -> bool {
    match state.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var(var).map_or(true, |v| v != "0");
            state.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static LOOKAHEAD: AtomicU8 = AtomicU8::new(UNSET);

/// Turn greedy decoding one step ahead on or off for the process (overrides
/// `LLORCH_CUDA_LOOKAHEAD`; sessions already running take it at their next step).
pub fn set_lookahead(on: bool) {
    LOOKAHEAD.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// One forward step on the GPU: `n` tokens at positions `pos0..`. The [`Ops`] calls cannot
/// return errors, so the first one is kept and the rest of the step is skipped;
/// [`finish`](Self::finish) returns it.
pub struct CudaStep<'a> {
    m: &'a CudaModel,
    st: &'a mut CudaState,
    pos0: usize,
    n: usize,
    err: Option<Error>,
    /// The slot whose chunk records `st.xrec` holds (written by the decode attention for
    /// the output projection), if any.
    rec_of: Option<Slot>,
    /// The slot whose f16 image `st.gemm_x` holds (made by the last launch, a product on f16
    /// weight copies: q, k and v, or gate and up, share their input), if any.
    h16_of: Option<Slot>,
    /// Kernels are being captured into a graph, not run.
    capturing: bool,
    /// A batched step (see `batch.rs`): its rows' cache table (address, entries per layer);
    /// the positions are per row.
    batch: Option<(u64, usize)>,
}

impl<'a> CudaStep<'a> {
    pub fn new(
        m: &'a CudaModel,
        st: &'a mut CudaState,
        tokens: &[u32],
        pos0: usize,
    ) -> Result<Self> {
        let n = tokens.len();
        if n == 0 {
            return Err(Error::InvalidArgument("a forward step needs tokens".into()));
        }
        if pos0 + n > st.n_ctx {
            return Err(Error::ContextFull(format!(
                "{n} tokens at position {pos0} exceed the context of {}",
                st.n_ctx
            )));
        }
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= st.dims.vocab)
        {
            return Err(Error::InvalidArgument(format!(
                "token {t} at index {i} is outside the vocabulary of {}",
                st.dims.vocab
            )));
        }
        st.ensure_kv(pos0, pos0 + n)?;
        if n > st.cap {
            // Free the old buffers first so that the budget sees only the new ones; a captured
            // graph points at them.
            st.graph = None;
            st.slots.clear();
            st.gemm_x = None;
            let r = alloc_scratch(&st.dev, &st.dims, n, st.gemm_k)?;
            (st.slots, st.positions, st.ids, st.gemm_x) = (r.slots, r.positions, r.ids, r.gemm_x);
            st.cap = n;
        }
        let pos: Vec<usize> = (pos0..pos0 + n).collect();
        Self::start(m, st, tokens, &pos, None)
    }

    /// A batched step: row i is `tokens[i]` at position `pos[i]` of the session whose
    /// cache is entry i of each layer's block of the table at `tab` (`rows` entries per
    /// layer). The caller checked the positions against those caches.
    pub(super) fn batch(
        m: &'a CudaModel,
        st: &'a mut CudaState,
        tokens: &[u32],
        pos: &[usize],
        tab: &DeviceBuffer,
        rows: usize,
    ) -> Result<Self> {
        if st.dims.vocab <= tokens.iter().copied().max().unwrap_or(0) as usize {
            return Err(Error::InvalidArgument(
                "a token outside the vocabulary".into(),
            ));
        }
        st.reserve_rows(tokens.len())?;
        Self::start(m, st, tokens, pos, Some((tab.ptr(), rows)))
    }

    /// Upload the step's positions and token ids.
    fn start(
        m: &'a CudaModel,
        st: &'a mut CudaState,
        tokens: &[u32],
        pos: &[usize],
        batch: Option<(u64, usize)>,
    ) -> Result<Self> {
        let n = tokens.len();
        let p32: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        st.dev.write(&mut st.positions, 0, as_bytes(&p32))?;
        st.dev.write(&mut st.ids, 0, as_bytes(&ids))?;
        Ok(CudaStep {
            m,
            st,
            pos0: pos[0],
            n,
            err: None,
            rec_of: None,
            h16_of: None,
            capturing: false,
            batch,
        })
    }

    /// Whether this step can run as a graph: one token, no taps, graphs not turned off, and
    /// no operation of this model's step takes the position from the host.
    pub fn graphable(&self) -> bool {
        let rows_ok = self.n == 1 || self.batch.is_some();
        rows_ok && self.st.taps.is_none() && graphs_enabled() && self.st.graph_ok
    }

    /// Run a decode step through the state's CUDA graph: replay it if there is one, else
    /// capture `forward` (which issues the step's kernels through this step) into a new one,
    /// then launch it. A failed or cancelled capture leaves no graph behind. A step that turns
    /// out not to be capturable (see `graph_ok`) is run directly instead (nothing ran while
    /// capturing), and so are the later steps of this state.
    pub fn run_graphed(mut self, mut forward: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        if self.st.graph.is_none() {
            let stream = self.st.dev.stream.raw;
            self.st.dev.inner.bind()?;
            let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
            unsafe { result::stream::begin_capture(stream, mode) }
                .map_err(|e| drv("graph capture", e))?;
            self.capturing = true;
            let r = forward(&mut self);
            self.capturing = false;
            let captured = unsafe { result::stream::end_capture(stream) };
            if !self.st.graph_ok {
                if let Ok(g) = captured {
                    unsafe {
                        let _ = result::graph::destroy(g);
                    }
                }
                (self.err, self.rec_of, self.h16_of) = (None, None, None);
                let r = forward(&mut self);
                // A device error outranks a cancellation seen after it.
                return self.finish().and(r);
            }
            // A device error outranks a cancellation seen after it.
            if let Err(e) = self.err.take().map_or(r, Err) {
                if let Ok(g) = captured {
                    unsafe {
                        let _ = result::graph::destroy(g);
                    }
                }
                return Err(e);
            }
            let graph = captured.map_err(|e| drv("graph capture", e))?;
            let flags = sys::CUgraphInstantiate_flags(0);
            match unsafe { result::graph::instantiate(graph, flags) } {
                Ok(exec) => {
                    let dev = self.st.dev.clone();
                    self.st.graph = Some(DecodeGraph { graph, exec, dev })
                }
                Err(e) => {
                    unsafe {
                        let _ = result::graph::destroy(graph);
                    }
                    return Err(drv("graph instantiation", e));
                }
            }
        }
        let g = self.st.graph.as_ref().expect("graph captured above");
        self.st.dev.inner.bind()?;
        unsafe { result::graph::launch(g.exec, self.st.dev.stream.raw) }
            .map_err(|e| drv("graph launch", e))
    }

    /// The first error of the step, if any.
    pub fn finish(self) -> Result<()> {
        match self.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn width(&self, s: Slot) -> usize {
        s.width(&self.st.dims)
    }

    /// Whether this step's products of weights `w` (a SwiGLU epilogue: `glu`) run fused, and
    /// on which kernels: the tensor cores on the quantized blocks (`Mmq`, kernels/mmq.cu: a
    /// batched step of at least `LLORCH_CUDA_MMQ_MIN` rows with `LLORCH_CUDA_MMQ=1`, a prompt
    /// chunk with `LLORCH_CUDA_MMQ_PROMPT=1`); the tensor cores on the f16 weight copies
    /// (`Skinny`: 2 to `skinny_max` rows where every matrix has a copy); or mat-vecs
    /// (`MatVec`: one row, or a batched step of few rows, each weight block read once for all
    /// of them). None: the two-pass GEMM, a product at a time.
    fn fused_path(&self, w: &[WeightId], glu: bool) -> Option<ProductPath> {
        if self.n == 1 {
            return Some(ProductPath::MatVec);
        }
        let types: Vec<GgmlType> = w.iter().map(|&w| self.m.weight(w).ty).collect();
        let mmq = match self.batch {
            Some(_) => mmq_enabled() && self.n >= mmq_min_rows(),
            None => mmq_prompt(),
        };
        if mmq && self.n <= self.st.xrec_rows && mmq_supported(&types, glu) {
            return Some(ProductPath::Mmq);
        }
        // Where every matrix has an f16 copy, the skinny f16 products beat the mat-vecs of
        // several rows (H100, 8 sessions: 7B 1,091 vs 512 tok/s, 0.5B 3,583 vs 3,029 with
        // them unfused; bench/RESULTS.md, session 12).
        let copies = w.iter().all(|w| self.m.f16[w.0 as usize].is_some());
        if copies {
            if !skinny_fused(self.n) {
                // One product at a time (`matmul`'s f16-weights path: the same kernel unfused).
                return None;
            }
            let k = w.iter().map(|&w| self.m.weight(w).cols).max().unwrap_or(0);
            let room = self.st.gemm_x.as_ref().map_or(0, |b| b.len_bytes());
            let fits = self.n <= skinny_max() && room >= self.n * k * 2;
            return fits.then_some(ProductPath::Skinny);
        }
        let multirow = self.batch.is_some()
            && self.n <= multirow_rows()
            && self.n <= self.st.xrec_rows
            && matvec_rows_supported(&types, glu);
        multirow.then_some(ProductPath::MatVec)
    }

    /// The input scratch of a fused product on `path`: the f16 inputs of the skinny
    /// products, the chunk records of the others.
    fn product_input(st: &CudaState, path: ProductPath) -> Result<&DeviceBuffer> {
        match path {
            ProductPath::Skinny => st
                .gemm_x
                .as_ref()
                .ok_or_else(|| Error::Internal("skinny products without their f16 scratch".into())),
            _ => Ok(&st.xrec),
        }
    }

    /// Run `f` unless an earlier call failed; keep its error.
    /// Every launch goes through here, so `h16_of` holds only until the next one (a
    /// product on f16 weights sets it again).
    /// A batched step's attention of `layer`: each row's query in `q` over its own cache
    /// (`tab`: the rows' page tables, see `batch.rs`) into `out`.
    fn batch_attention(
        &mut self,
        tab: u64,
        layer: usize,
        q: Slot,
        shape: AttnShape,
        out: Slot,
    ) -> Result<()> {
        let (n, m, st) = (self.n, self.m, &mut *self.st);
        let (qb, ob) = pair(&mut st.slots, q, out)?;
        let sinks = shape.sinks.map(|w| &m.weight(w).buf);
        st.dev.attention_batch(
            qb,
            n,
            tab,
            layer,
            &st.positions,
            shape.n_head,
            shape.n_head_kv,
            shape.head_dim,
            shape.scale,
            shape.window.unwrap_or(0),
            sinks,
            ob,
        )
    }

    fn run(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) {
        self.h16_of = None;
        if self.err.is_none() {
            if let Err(e) = f(self) {
                self.err = Some(e);
            }
        }
    }
}

/// Slot `a` to read and a different slot `b` to write.
fn pair(
    slots: &mut [DeviceBuffer],
    a: Slot,
    b: Slot,
) -> Result<(&DeviceBuffer, &mut DeviceBuffer)> {
    let (ia, ib) = (a.index(), b.index());
    if ia == ib {
        return Err(Error::Internal(format!(
            "CUDA step: {a:?} is both input and output"
        )));
    }
    if ia < ib {
        let (lo, hi) = slots.split_at_mut(ib);
        Ok((&lo[ia], &mut hi[0]))
    } else {
        let (lo, hi) = slots.split_at_mut(ia);
        Ok((&hi[0], &mut lo[ib]))
    }
}

/// Slots `a` and `b` to read and a third, different slot `c` to write.
fn read2_write1(
    slots: &mut [DeviceBuffer],
    a: Slot,
    b: Slot,
    c: Slot,
) -> Result<(&DeviceBuffer, &DeviceBuffer, &mut DeviceBuffer)> {
    let ic = c.index();
    if ic == a.index() || ic == b.index() {
        return Err(Error::Internal(format!(
            "CUDA step: {c:?} is both input and output"
        )));
    }
    let (lo, rest) = slots.split_at_mut(ic);
    let (cb, hi) = rest.split_first_mut().expect("slot index in range");
    fn get<'s>(
        lo: &'s [DeviceBuffer],
        hi: &'s [DeviceBuffer],
        ic: usize,
        i: usize,
    ) -> &'s DeviceBuffer {
        if i < ic {
            &lo[i]
        } else {
            &hi[i - ic - 1]
        }
    }
    let (lo, hi) = (&*lo, &*hi);
    Ok((get(lo, hi, ic, a.index()), get(lo, hi, ic, b.index()), cb))
}

/// The kernels' rotary parameters (frequency divisors and the attention factor apart).
fn rope_params(rope: &Rope) -> RopeParams {
    RopeParams {
        rot_dim: rope.dims,
        base: rope.base,
        pos_scale: rope.pos_scale,
        neox: rope.style == RopeStyle::Neox,
    }
}

/// A rope the fused decode attention can apply itself: no divisors, no factors, no scaling.
/// A RoPE the plain `rope` kernels apply (no divisors, no attention factor).
fn plain_rope(rope: &Rope) -> bool {
    rope.freq_factors.is_none() && rope.mscale == 1.0
}

/// A RoPE the decode attention applies itself: plain, positions unscaled.
fn foldable(rope: &Rope) -> bool {
    plain_rope(rope) && rope.pos_scale == 1.0
}

fn as_bytes(v: &[i32]) -> &[u8] {
    // SAFETY: i32 has no padding; every byte of it is initialized.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl Ops for CudaStep<'_> {
    fn n_tokens(&self) -> usize {
        self.n
    }

    fn embed(&mut self, table: WeightId, out: Slot) {
        self.run(|s| {
            let w = s.m.weight(table);
            let st = &mut *s.st;
            let o = &mut st.slots[out.index()];
            st.dev
                .embed_ids(w.ty, &w.buf, w.rows, w.cols, &st.ids, s.n, o)
        });
    }

    fn rms_norm(&mut self, x: Slot, norm: Norm, out: Slot) {
        self.run(|s| {
            let width = s.width(x);
            let g = &s.m.weight(norm.w).buf;
            let n = s.n;
            if x == out {
                let xb = &mut s.st.slots[x.index()];
                return s.st.dev.rmsnorm_inplace(xb, g, n, width, norm.eps);
            }
            let (xb, ob) = pair(&mut s.st.slots, x, out)?;
            s.st.dev.rmsnorm(xb, g, n, width, norm.eps, ob)
        });
    }

    fn rms_norm_heads(&mut self, x: Slot, head_dim: usize, norm: Norm) {
        self.run(|s| {
            let rows = s.n * s.width(x) / head_dim;
            let g = &s.m.weight(norm.w).buf;
            let xb = &mut s.st.slots[x.index()];
            s.st.dev.rmsnorm_inplace(xb, g, rows, head_dim, norm.eps)
        });
    }

    fn matmul(&mut self, w: WeightId, x: Slot, out: Slot) {
        // As matmul_add: the attention may have written x's records already.
        let float_w = matches!(self.m.weight(w).ty, GgmlType::F32 | GgmlType::F16);
        let prepared = self.n == 1 && self.rec_of == Some(x) && !float_w;
        self.rec_of = None;
        let multirow = if self.n > 1 {
            self.fused_path(&[w], false)
        } else {
            None
        };
        // Reusing the f16 inputs is part of the fused form.
        let h16_ready = skinny_fused(self.n) && self.h16_of == Some(x);
        self.run(|s| {
            let (m, wt) = (s.m, s.m.weight(w));
            let n = s.n;
            let st = &mut *s.st;
            let (rows, k) = (wt.rows, wt.cols);
            let (xb, ob) = pair(&mut st.slots, x, out)?;
            if n == 1 {
                // The fused mat-vec (1-2 TB/s) rather than the plain one (0.6 TB/s on an o
                // projection with a bias, which takes this path): H100, ncu.
                let prod = [MatVecOut {
                    mat: s.m.mat(w),
                    bias: None,
                    out: ob,
                }];
                let plain = Epilogue::Plain;
                return st
                    .dev
                    .fused_matvec(xb, k, None, &prod, plain, &st.xrec, prepared);
            }
            // (A skinny product alone takes the f16-weights path below: the same kernel.)
            if let Some(path) = multirow.filter(|&p| p != ProductPath::Skinny) {
                let prods = [MatVecOut {
                    mat: m.mat(w),
                    bias: None,
                    out: ob,
                }];
                return st.dev.fused_products(
                    xb,
                    n,
                    k,
                    None,
                    &prods,
                    Epilogue::Plain,
                    &st.xrec,
                    false,
                    path,
                );
            }
            // The two-pass path's second pass alone where the model has the weights in f16.
            if let (Some(wh), Some(xh)) = (m.f16[w.0 as usize].as_ref(), st.gemm_x.as_mut()) {
                // Any batch takes it: up to skinny_max inputs, the skinny product.
                let wide = matmul_uses_gemm(n, rows, k) || n <= skinny_max();
                if xh.len_bytes() >= n * k * 2 && wide {
                    st.dev
                        .matmul_f16_weights(wh, rows, k, xb, n, ob, xh, h16_ready, None)?;
                    s.h16_of = Some(x);
                    return Ok(());
                }
            }
            // The two-pass path where the scratch holds this product (not the vocabulary
            // matrices, see `CudaModel::gemm_sizes`) and it is the faster one.
            if let (Some(wh), Some(xh)) = (st.gemm_w.as_mut(), st.gemm_x.as_mut()) {
                let kp = k * gemm_parts(wt.ty);
                let fits = wh.len_bytes() >= rows * kp * 2 && xh.len_bytes() >= n * kp * 2;
                if fits && matmul_uses_gemm(n, rows, k) {
                    return st
                        .dev
                        .matmul_gemm(wt.ty, &wt.buf, rows, k, xb, n, ob, wh, xh, None);
                }
            }
            st.dev.matmul(wt.ty, &wt.buf, rows, k, xb, n, ob)
        });
    }

    fn add_bias(&mut self, x: Slot, b: WeightId) {
        self.run(|s| {
            let width = s.width(x);
            let n = s.n;
            let bias = &s.m.weight(b).buf;
            s.st.dev
                .add_bias(&mut s.st.slots[x.index()], bias, n, width)
        });
    }

    fn rope(&mut self, x: Slot, n_heads: usize, head_dim: usize, rope: &Rope) {
        self.run(|s| {
            let p = rope_params(rope);
            let n = s.n;
            let st = &mut *s.st;
            let x = &mut st.slots[x.index()];
            if plain_rope(rope) {
                return st.dev.rope(x, &st.positions, n, n_heads, head_dim, p);
            }
            let ones;
            let div = match &rope.freq_factors {
                Some(d) => &d[..],
                None => {
                    ones = vec![1.0; rope.dims / 2];
                    &ones[..]
                }
            };
            let pos = &st.positions;
            st.dev
                .rope_scaled(x, pos, n, n_heads, head_dim, p, rope.mscale, div)
        });
    }

    fn attention(&mut self, layer: usize, q: Slot, k: Slot, v: Slot, shape: AttnShape, out: Slot) {
        self.run(|s| {
            if let Some((tab, _)) = s.batch {
                let (n, st) = (s.n, &*s.st);
                let (hd, n_kv) = (shape.head_dim, shape.n_head_kv);
                let slot = |x: Slot| &st.slots[x.index()];
                st.dev
                    .kv_store_batch(slot(k), slot(v), n, tab, layer, &st.positions, n_kv, hd)?;
                return s.batch_attention(tab, layer, q, shape, out);
            }
            if s.capturing {
                // The cache position below is a kernel argument: a graph would keep it.
                s.st.graph_ok = false;
                return Err(Error::Internal(
                    "attention with a host position in a captured step".into(),
                ));
            }
            let (n, pos0) = (s.n, s.pos0);
            let st = &mut *s.st;
            let cache = st.kv.layer(layer);
            st.dev
                .kv_store(&st.slots[k.index()], &st.slots[v.index()], n, &cache, pos0)?;
            let (qb, ob) = pair(&mut st.slots, q, out)?;
            let window = shape.window.unwrap_or(0);
            let sinks = shape.sinks.map(|w| &s.m.weight(w).buf);
            st.dev.attention(
                qb,
                n,
                shape.n_head,
                &cache,
                pos0,
                shape.scale,
                window,
                sinks,
                ob,
            )
        });
    }

    fn glu(&mut self, act: Activation, gate: Slot, up: Slot, out: Slot) {
        self.run(|s| {
            let len = s.n * s.width(gate);
            let st = &mut *s.st;
            let (g, u, o) = read2_write1(&mut st.slots, gate, up, out)?;
            match act {
                Activation::Silu => st.dev.swiglu(g, u, len, o),
                Activation::GeluTanh => st.dev.geglu(g, u, len, o),
                Activation::ClampedSwiglu { alpha, limit } => {
                    st.dev.clamped_swiglu(g, u, len, alpha, limit, o)
                }
            }
        });
    }

    fn scale(&mut self, x: Slot, factor: f32) {
        self.run(|s| {
            let len = s.n * s.width(x);
            s.st.dev.scale(&mut s.st.slots[x.index()], factor, len)
        });
    }

    fn softcap(&mut self, x: Slot, cap: f32) {
        self.run(|s| {
            let len = s.n * s.width(x);
            s.st.dev.softcap(&mut s.st.slots[x.index()], cap, len)
        });
    }

    fn add(&mut self, x: Slot, y: Slot) {
        self.run(|s| {
            let len = s.n * s.width(x);
            let (yb, xb) = pair(&mut s.st.slots, y, x)?;
            s.st.dev.add(xb, yb, len)
        });
    }

    fn keep_last_row(&mut self, x: Slot) {
        if self.batch.is_some() {
            // A batched step has one row per sequence (decoding): each is a last row.
            return;
        }
        self.run(|s| {
            let row = s.width(x) * 4;
            let n = s.n;
            if n > 1 {
                let b = &mut s.st.slots[x.index()];
                s.st.dev.copy_within(b, (n - 1) * row, 0, row)?;
            }
            s.n = 1;
            Ok(())
        });
    }

    fn norm_matmul(&mut self, input: NormIn, projs: &[Projection]) {
        let w: Vec<WeightId> = projs.iter().map(|p| p.w).collect();
        let path = (projs.len() <= 3).then(|| self.fused_path(&w, false));
        let Some(Some(path)) = path else {
            return unfused::norm_matmul(self, input, projs);
        };
        let NormIn { x, norm, normed } = input;
        self.rec_of = None;
        self.run(|s| {
            let (m, st) = (s.m, &*s.st);
            let prods: Vec<MatVecOut> = projs
                .iter()
                .map(|p| MatVecOut {
                    mat: m.mat_on(p.w, path),
                    bias: p.bias.map(|b| &m.weight(b).buf),
                    out: &st.slots[p.out.index()],
                })
                .collect();
            let norm = FusedNorm {
                weight: &m.weight(norm.w).buf,
                eps: norm.eps,
                normed: Some(&st.slots[normed.index()]),
            };
            let k = x.width(&st.dims);
            st.dev.fused_products(
                &st.slots[x.index()],
                s.n,
                k,
                Some(norm),
                &prods,
                Epilogue::Plain,
                Self::product_input(st, path)?,
                false,
                path,
            )?;
            // The skinny products' f16 inputs are the normalized values.
            if path == ProductPath::Skinny {
                s.h16_of = Some(normed);
            }
            Ok(())
        });
    }

    fn norm_glu(&mut self, input: NormIn, glu: Glu) {
        let biased = glu.gate.bias.is_some() || glu.up.bias.is_some();
        let silu = glu.act == Activation::Silu;
        let path = self.fused_path(&[glu.gate.w, glu.up.w], silu);
        let (false, Some(path)) = (biased, path) else {
            return unfused::norm_glu(self, input, glu);
        };
        self.rec_of = None;
        let NormIn { x, norm, normed } = input;
        self.run(|s| {
            let (m, st) = (s.m, &*s.st);
            let prod = |p: Projection| MatVecOut {
                mat: m.mat_on(p.w, path),
                bias: None,
                out: &st.slots[p.out.index()],
            };
            let prods = [prod(glu.gate), prod(glu.up)];
            let norm = FusedNorm {
                weight: &m.weight(norm.w).buf,
                eps: norm.eps,
                normed: Some(&st.slots[normed.index()]),
            };
            // SiLU is folded into the products' epilogue; other activations follow them.
            let epi = match glu.act {
                Activation::Silu => Epilogue::Glu {
                    act: &st.slots[glu.out.index()],
                },
                _ => Epilogue::Plain,
            };
            let k = x.width(&st.dims);
            st.dev.fused_products(
                &st.slots[x.index()],
                s.n,
                k,
                Some(norm),
                &prods,
                epi,
                Self::product_input(st, path)?,
                false,
                path,
            )
        });
        if glu.act != Activation::Silu {
            self.glu(glu.act, glu.gate.out, glu.up.out, glu.out);
        }
    }

    fn matmul_add(&mut self, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        let Some(path) = self.fused_path(&[w], false) else {
            return unfused::matmul_add(self, w, x, tmp, acc);
        };
        // The attention just wrote x's records: no prep_input launch (quantized weights);
        // or x's f16 image is in the skinny products' scratch already.
        let float_w = matches!(self.m.weight(w).ty, GgmlType::F32 | GgmlType::F16);
        let prepared = match path {
            ProductPath::Skinny => self.h16_of == Some(x),
            _ => self.rec_of == Some(x) && !float_w,
        };
        self.rec_of = None;
        self.run(|s| {
            let (m, st) = (s.m, &*s.st);
            let prods = [MatVecOut {
                mat: m.mat_on(w, path),
                bias: None,
                out: &st.slots[tmp.index()],
            }];
            let epi = Epilogue::Add {
                acc: &st.slots[acc.index()],
            };
            let k = x.width(&st.dims);
            st.dev.fused_products(
                &st.slots[x.index()],
                s.n,
                k,
                None,
                &prods,
                epi,
                Self::product_input(st, path)?,
                prepared,
                path,
            )?;
            if path == ProductPath::Skinny {
                s.h16_of = Some(x);
            }
            Ok(())
        });
    }

    fn rope_attention(&mut self, a: &AttnIn) {
        if let (Some((tab, _)), true) = (self.batch, plain_rope(a.rope)) {
            // A batched step: RoPE of q and k and the cache store in one launch, then each
            // row's attention over its own cache.
            let (layer, s) = (a.layer, a.shape);
            return self.run(|st| {
                let (n, stt) = (st.n, &*st.st);
                let slot = |x: Slot| &stt.slots[x.index()];
                stt.dev.rope_kv_batch(
                    slot(a.q),
                    slot(a.k),
                    slot(a.v),
                    n,
                    tab,
                    layer,
                    &stt.positions,
                    s.n_head,
                    s.n_head_kv,
                    s.head_dim,
                    rope_params(a.rope),
                )?;
                st.batch_attention(tab, layer, a.q, s, a.out)
            });
        }
        if self.n != 1 || a.shape.n_head_kv != self.st.dims.n_head_kv {
            return unfused::rope_attention(self, a);
        }
        let (layer, q, k, v, shape, out) = (a.layer, a.q, a.k, a.v, a.shape, a.out);
        // A rope the attention cannot apply itself (divisors, a factor, position scaling:
        // YaRN, Llama 3, LongRoPE) runs first through the `rope` kernels, which read the
        // position from device memory too, so the step still replays as a graph.
        let foldable = foldable(a.rope);
        if !foldable {
            self.rope(q, shape.n_head, shape.head_dim, a.rope);
            self.rope(k, shape.n_head_kv, shape.head_dim, a.rope);
        }
        self.run(|s| {
            let st = &*s.st;
            let p = rope_params(a.rope);
            let cache = &st.kv.layer(layer);
            let slot = |x: Slot| &st.slots[x.index()];
            // RoPE and the cache store inside the attention (one launch fewer), unless taps
            // read the rotated q and k back from their slots.
            let fold_rope = st.taps.is_none() && foldable;
            if !foldable {
                st.dev
                    .kv_store_decode(slot(k), slot(v), cache, &st.positions)?;
            } else if !fold_rope {
                st.dev.rope_kv(
                    slot(q),
                    slot(k),
                    slot(v),
                    cache,
                    &st.positions,
                    shape.n_head,
                    p,
                )?;
            }
            let new_kv = fold_rope.then(|| NewKv {
                k: slot(k),
                v: slot(v),
                rope: p,
            });
            st.dev.attention_decode(
                slot(q),
                cache,
                &st.positions,
                shape.n_head,
                shape.scale,
                shape.window.unwrap_or(0),
                &st.attn_part,
                &st.attn_count,
                slot(out),
                Some(&st.xrec),
                new_kv,
                shape.sinks.map(|w| &s.m.weight(w).buf),
            )
        });
        self.rec_of = Some(out);
    }

    fn moe(&mut self, layer: usize, moe: &Moe, x: Slot, out: Slot, expert_taps: bool) {
        self.rec_of = None;
        self.run(|s| s.mixture(layer, moe, x, out, expert_taps));
    }

    fn tap(&mut self, name: &str, layer: Option<usize>, x: Slot) {
        if self.st.taps.is_none() {
            return;
        }
        self.run(|s| {
            let n = s.n;
            let data =
                s.st.dev
                    .download_f32(&s.st.slots[x.index()], n * s.width(x))?;
            if let Some(taps) = s.st.taps.as_mut() {
                taps.push(Tap {
                    name: name.to_string(),
                    layer,
                    rows: n,
                    data,
                });
            }
            Ok(())
        });
    }
}
