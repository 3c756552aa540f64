//! The CPU backend. Weights are used in place from the memory map (no copy of the quantized
//! bytes). Arithmetic: matrices in their block format against activations quantized to
//! 16 bits per block of 32 (`quant::Acts16`; 8 bits with `LLORCH_CPU_ACTIVATIONS=int8`),
//! integer dot products accumulated in f32; everything else (norms, RoPE, attention) in f32,
//! the KV cache in f32 or f16 (`fp16`). Work is split over rows across the context's threads.

mod attn;
pub mod fp16;
mod kv;
mod moe;
mod pool;

use super::kvpool::{Elem, KvPool};
use super::{
    unfused, Activation, AttnShape, Dims, Glu, Linear, Moe, Norm, NormIn, Ops, Projection, Rope,
    RopeStyle, Slot, Tap, WeightId, WeightTensor,
};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::{self, BlockQ8, GgmlType};
use crate::{Error, Result};
pub use kv::CpuKv;
pub use pool::Pool;
use rayon::prelude::*;
use std::sync::Arc;

/// A weight bound to the CPU: its descriptor (the bytes stay in the map), plus an f32 copy
/// of small one-dimensional tensors (norm weights, biases).
struct CpuWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// The weight's bytes: `start..start + len` of the file tensor `info` (a view may be part
    /// of a fused tensor).
    info: TensorInfo,
    start: usize,
    len: usize,
    vector: Option<Vec<f32>>,
}

/// Model weights bound to the CPU.
pub struct CpuModel {
    gguf: Arc<Gguf>,
    weights: Vec<CpuWeight>,
    pool: Arc<Pool>,
}

/// Build the thread pool of a context.
pub fn thread_pool(threads: usize) -> Result<Arc<Pool>> {
    Pool::new(threads)
}

/// Types whose rows the CPU can multiply.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || quant::supported_for_dot(ty)
}

impl CpuModel {
    /// Runs a whole forward step on one of the pool's threads: the step's products and
    /// attention then split their work from inside the pool, where handing it out costs
    /// no wake-up of the calling thread (each `install` from outside queues the work, wakes
    /// a worker and puts the caller to sleep until it is done: hundreds of times a token).
    pub fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        self.pool.install(step)
    }

    /// Bind the recipe's tensors. Touches every page of the weights once (so the first token
    /// is not slowed by page faults), reporting progress; `progress` returning false cancels.
    pub fn new(
        gguf: Arc<Gguf>,
        tensors: &[WeightTensor],
        pool: Arc<Pool>,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Self> {
        let total: u64 = tensors.iter().map(|t| t.view_bytes()).sum::<u64>().max(1);
        let mut done = 0u64;
        let mut weights = Vec::with_capacity(tensors.len());
        let mut checksum = 0u8;
        for t in tensors {
            if !supported(t.ty) {
                return Err(Error::Unsupported(format!(
                    "tensor '{}' has type {}, which the CPU backend cannot multiply",
                    t.name,
                    t.ty.name()
                )));
            }
            let data = t.data(&gguf)?;
            let row_bytes = t.row_bytes()?;
            let start = row_bytes * t.row0;
            let vector = if t.rows == 1 {
                let v = t.to_f32(data)?;
                Some(v)
            } else {
                None
            };
            for page in data.chunks(4096) {
                checksum ^= page[0];
            }
            weights.push(CpuWeight {
                ty: t.ty,
                rows: t.rows,
                cols: t.cols,
                row_bytes,
                info: t.info.clone(),
                start,
                len: data.len(),
                vector,
            });
            done += data.len() as u64;
            if !progress(done as f32 / total as f32) {
                return Err(Error::Cancelled);
            }
        }
        std::hint::black_box(checksum);
        Ok(CpuModel {
            gguf,
            weights,
            pool,
        })
    }

    fn bytes(&self, w: WeightId) -> &[u8] {
        let w = &self.weights[w.0 as usize];
        &self.gguf.tensor_data(&w.info)[w.start..w.start + w.len]
    }

    fn weight(&self, w: WeightId) -> &CpuWeight {
        &self.weights[w.0 as usize]
    }

    fn vector(&self, w: WeightId) -> &[f32] {
        self.weights[w.0 as usize]
            .vector
            .as_deref()
            .expect("a one-dimensional weight")
    }
}

/// A session's state on the CPU: the KV cache and the activation buffers.
pub struct CpuState {
    dims: Dims,
    kv: CpuKv,
    scratch: CpuScratch,
    /// Intermediate values, recorded when `Some`.
    pub taps: Option<Vec<Tap>>,
}

/// A forward step's working buffers: the activation slots and the quantized inputs of the
/// products. A session has its own; a batch of sessions uses one for all (see
/// `backend::Batch`).
#[derive(Default)]
pub struct CpuScratch {
    slots: Vec<Vec<f32>>,
    q8: Vec<BlockQ8>,
    a16: quant::Acts16,
}

impl CpuState {
    /// A state whose KV cache of up to `n_ctx` positions of `elem` values grows in blocks
    /// of `pool`.
    pub fn new(dims: &Dims, n_ctx: usize, pool: Arc<KvPool>, elem: Elem) -> Self {
        CpuState {
            dims: dims.clone(),
            kv: CpuKv::new(pool, n_ctx, elem),
            scratch: CpuScratch::default(),
            taps: None,
        }
    }

    pub fn vocab(&self) -> usize {
        self.dims.vocab
    }

    /// The logits of the last step: `rows` rows of `vocab` values.
    pub fn logits(&self, rows: usize) -> &[f32] {
        self.scratch.logits(rows, self.dims.vocab)
    }

    pub fn dims(&self) -> &Dims {
        &self.dims
    }

    /// The cache, for a step of this state's sequence in a batch.
    pub fn kv_mut(&mut self) -> &mut CpuKv {
        &mut self.kv
    }

    pub fn kv(&self) -> &CpuKv {
        &self.kv
    }
}

impl CpuScratch {
    /// The logits of the last step: `rows` rows of `vocab` values.
    pub fn logits(&self, rows: usize, vocab: usize) -> &[f32] {
        &self.slots[Slot::Logits.index()][..rows * vocab]
    }
}

/// `x = x / rms(x) * g` in place (f32, as the references compute it).
fn rms_norm_row(x: &mut [f32], g: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (v, &gv) in x.iter_mut().zip(g) {
        *v = *v * scale * gv;
    }
}

/// `x[r] += b` for every row `r` of `b.len()` values of `x`.
fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_mut(b.len()) {
        for (v, &bv) in row.iter_mut().zip(b) {
            *v += bv;
        }
    }
}

/// One sequence of a forward step: its tokens, at positions `pos0..` of its cache.
pub struct CpuSeq<'a> {
    pub kv: &'a mut CpuKv,
    pub tokens: &'a [u32],
    pub pos0: usize,
}

/// The rows of one sequence in a step: `rows` rows from `row0`, at positions `pos0..`.
#[derive(Debug, Clone, Copy)]
struct Span {
    row0: usize,
    rows: usize,
    pos0: usize,
}

/// One forward step on the CPU: the tokens of one sequence, or of several (a batch: each
/// sequence's rows attend to its own cache at its own positions; the products run over all
/// rows at once).
pub struct CpuStep<'a> {
    m: &'a CpuModel,
    dims: Dims,
    w: &'a mut CpuScratch,
    taps: Option<&'a mut Vec<Tap>>,
    tokens: Vec<u32>,
    kvs: Vec<&'a mut CpuKv>,
    spans: Vec<Span>,
    /// Per row: its position and its sequence.
    row_pos: Vec<usize>,
    row_seq: Vec<usize>,
    n: usize,
}

impl<'a> CpuStep<'a> {
    /// A step of one session. The caller guarantees token ids below the vocabulary.
    pub fn new(
        m: &'a CpuModel,
        st: &'a mut CpuState,
        tokens: &'a [u32],
        pos0: usize,
    ) -> Result<Self> {
        let seq = CpuSeq {
            kv: &mut st.kv,
            tokens,
            pos0,
        };
        let taps = st.taps.as_mut();
        Self::batch(m, &st.dims, &mut st.scratch, taps, vec![seq])
    }

    /// A step of several sequences at once, their rows in the order given. Rows of a
    /// sequence of one token (decoding) are multiplied in groups of at most
    /// [`quant::WIDE_INVARIANT_COLS`] (with the AVX-512 kernels: all in one), so that each
    /// one's result is bit for bit what it would be alone; a sequence of several tokens (a
    /// prompt chunk) is one group, as alone.
    pub fn batch(
        m: &'a CpuModel,
        dims: &Dims,
        w: &'a mut CpuScratch,
        taps: Option<&'a mut Vec<Tap>>,
        seqs: Vec<CpuSeq<'a>>,
    ) -> Result<Self> {
        let mut tokens = Vec::new();
        let (mut kvs, mut spans) = (Vec::with_capacity(seqs.len()), Vec::new());
        for s in seqs {
            if s.tokens.is_empty() {
                return Err(Error::Internal("a sequence of a step has no tokens".into()));
            }
            if s.pos0 + s.tokens.len() > s.kv.n_ctx {
                return Err(Error::ContextFull(format!(
                    "{} tokens at position {} exceed the context of {}",
                    s.tokens.len(),
                    s.pos0,
                    s.kv.n_ctx
                )));
            }
            if !s.kv.writable(s.pos0, s.pos0 + s.tokens.len()) {
                return Err(Error::Internal(format!(
                    "no KV blocks of the session's own for positions {}..{} (grow first)",
                    s.pos0,
                    s.pos0 + s.tokens.len()
                )));
            }
            spans.push(Span {
                row0: tokens.len(),
                rows: s.tokens.len(),
                pos0: s.pos0,
            });
            tokens.extend_from_slice(s.tokens);
            kvs.push(s.kv);
        }
        let n = tokens.len();
        if n == 0 {
            return Err(Error::InvalidArgument("a forward step needs tokens".into()));
        }
        if w.slots.len() != Slot::ALL.len() {
            w.slots = vec![Vec::new(); Slot::ALL.len()];
        }
        for s in Slot::ALL {
            // Logits for the last row of each sequence at least; all rows if asked.
            let need = n * s.width(dims);
            let buf = &mut w.slots[s.index()];
            if buf.len() < need {
                buf.try_reserve_exact(need - buf.len()).map_err(|_| {
                    Error::OutOfMemory(format!("cannot allocate {} bytes of host memory", need * 4))
                })?;
                buf.resize(need, 0.0);
            }
        }
        let mut step = CpuStep {
            m,
            dims: dims.clone(),
            w,
            taps,
            tokens,
            kvs,
            spans,
            row_pos: Vec::new(),
            row_seq: Vec::new(),
            n,
        };
        step.index_rows();
        Ok(step)
    }

    /// `row_pos` and `row_seq` from the spans.
    fn index_rows(&mut self) {
        self.row_pos.clear();
        self.row_seq.clear();
        for (i, s) in self.spans.iter().enumerate() {
            self.row_pos.extend(s.pos0..s.pos0 + s.rows);
            self.row_seq.extend(std::iter::repeat(i).take(s.rows));
        }
    }

    /// The row ranges the products of a weight run over (see [`CpuStep::batch`]): all rows
    /// for one sequence; in a batch, each prompt chunk alone and the decoding rows in groups
    /// of `wide ? WIDE_INVARIANT_COLS : 1`. `row_of(r)` maps the product's input rows to
    /// the step's rows (the identity, or a gather's rows).
    fn groups(
        &self,
        n: usize,
        wide: bool,
        row_of: &dyn Fn(usize) -> usize,
    ) -> Vec<std::ops::Range<usize>> {
        if self.spans.len() == 1 {
            return (n > 0).then_some(0..n).into_iter().collect();
        }
        let most = if wide { quant::WIDE_INVARIANT_COLS } else { 1 };
        let key = |r: usize| {
            let s = self.row_seq[row_of(r)];
            (self.spans[s].rows > 1).then_some(s)
        };
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for r in 0..n {
            match out.last_mut() {
                Some(g) if key(g.start) == key(r) && (key(r).is_some() || g.len() < most) => {
                    g.end = r + 1
                }
                _ => out.push(r..r + 1),
            }
        }
        out
    }

    fn take(&mut self, s: Slot) -> Vec<f32> {
        std::mem::take(&mut self.w.slots[s.index()])
    }

    fn put(&mut self, s: Slot, v: Vec<f32>) {
        self.w.slots[s.index()] = v;
    }

    fn width(&self, s: Slot) -> usize {
        s.width(&self.dims)
    }

    /// `out[t] = W · x[t]` for the `n` rows of `x` (any buffer, not only a slot): the wide
    /// kernels where they take `W`, else the 8-bit-plane ones; in groups of rows (see
    /// [`groups`](Self::groups)).
    fn product(
        &mut self,
        w: WeightId,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        row_of: &dyn Fn(usize) -> usize,
    ) {
        let wt = self.m.weight(w);
        let data = self.m.bytes(w);
        let wide = precise_activations() && quant::wide_supported(wt.ty, wt.cols);
        let (rows, cols) = (wt.rows, wt.cols);
        let groups = self.groups(n, wide, row_of);
        let mut q8 = std::mem::take(&mut self.w.q8);
        let mut a16 = std::mem::take(&mut self.w.a16);
        self.m.pool.install(|| {
            for g in groups {
                let (x, o) = (&x[g.start * cols..g.end * cols], &mut out[g.start * rows..]);
                if wide {
                    matmul_wide(wt, data, x, g.len(), &mut a16, o)
                } else {
                    matmul(wt, data, x, g.len(), &mut q8, o)
                }
            }
        });
        self.w.q8 = q8;
        self.w.a16 = a16;
    }

    /// `out = W · x (+ b)` for `n` rows of `x`, `out` resized to `n` rows of W's outputs.
    fn linear(
        &mut self,
        lin: Linear,
        x: &[f32],
        n: usize,
        out: &mut Vec<f32>,
        row_of: &dyn Fn(usize) -> usize,
    ) {
        let rows = self.m.weight(lin.w).rows;
        out.clear();
        out.resize(n * rows, 0.0);
        self.product(lin.w, x, n, out, row_of);
        if let Some(b) = lin.bias {
            add_rows(out, self.m.vector(b));
        }
    }

    /// Record a tap of `rows` rows (no-op unless taps are on).
    fn record(&mut self, name: &str, layer: Option<usize>, rows: usize, data: Vec<f32>) {
        if let Some(taps) = self.taps.as_mut() {
            taps.push(Tap {
                name: name.to_string(),
                layer,
                rows,
                data,
            });
        }
    }

    /// Whether the wide kernels take every weight in `ws`, all with one input width.
    fn wide_all(&self, mut ws: impl Iterator<Item = WeightId>) -> bool {
        let Some(first) = ws.next() else {
            return false;
        };
        let cols = self.m.weight(first).cols;
        let ok = |w: WeightId| {
            let w = self.m.weight(w);
            w.cols == cols && quant::wide_supported(w.ty, cols)
        };
        precise_activations() && ok(first) && ws.all(ok)
    }
}

/// The identity map of a product's rows to the step's (see `CpuStep::groups`): a slot's
/// rows.
fn same_row(r: usize) -> usize {
    r
}

/// Rows per parallel task: enough tasks to balance the threads, not so many that scheduling
/// costs show.
fn rows_per_task(rows: usize) -> usize {
    (rows / (rayon::current_num_threads() * 16)).clamp(4, 256)
}

/// `out[t][r] = W[r] · x[t]` for `n` token rows.
fn matmul(w: &CpuWeight, data: &[u8], x: &[f32], n: usize, q8: &mut Vec<BlockQ8>, out: &mut [f32]) {
    let (rows, cols, rb) = (w.rows, w.cols, w.row_bytes);
    let chunk = rows_per_task(rows);
    let row = |r: usize| &data[r * rb..(r + 1) * rb];
    if matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        let mut tmp = vec![0f32; rows * n];
        tmp.par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(ci, o)| {
                for (j, y) in o.chunks_mut(n).enumerate() {
                    let wr = row(ci * chunk + j);
                    for (t, yt) in y.iter_mut().enumerate() {
                        *yt = quant::vec_dot_f32(w.ty, wr, &x[t * cols..(t + 1) * cols]);
                    }
                }
            });
        transpose_into(&tmp, rows, n, out);
        return;
    }
    // Activations in 8-bit blocks, twice: hi = q8(x), lo = q8(x - hi), so that
    // W·x = W·hi + W·lo with ~15 bits of precision per block (the residual's step is
    // 1/254 of the first's). One 8-bit pass alone moved Qwen's logits by ~0.1 and changed
    // greedy continuations; with the residual pass they match the f32 reference.
    let nb = cols / 32;
    let planes = if precise_activations() { 2 } else { 1 };
    q8.clear();
    q8.resize(planes * n * nb, BlockQ8::default());
    let (hi, lo) = q8.split_at_mut(n * nb);
    hi.par_chunks_mut(nb)
        .zip(x.par_chunks(cols))
        .for_each(|(q, xs)| quant::quantize_q8(xs, q));
    if planes == 2 {
        lo.par_chunks_mut(nb)
            .zip(hi.par_chunks(nb))
            .zip(x.par_chunks(cols))
            .for_each(|((l, h), xs)| {
                let mut r = [0f32; 32];
                for ((lb, hb), xb) in l.iter_mut().zip(h).zip(xs.chunks_exact(32)) {
                    for ((ri, &q), &xv) in r.iter_mut().zip(&hb.qs).zip(xb) {
                        *ri = xv - hb.d * q as f32;
                    }
                    quant::quantize_q8(&r, std::slice::from_mut(lb));
                }
            });
    }
    let acts = &q8[..];
    let cols_total = planes * n;
    let dot_row = |r: usize, y: &mut [f32], scratch: &mut Vec<f32>| {
        scratch.resize(cols_total, 0.0);
        quant::vec_dot_multi(w.ty, row(r), acts, cols_total, scratch);
        for (t, yt) in y.iter_mut().enumerate() {
            *yt = scratch[t] + if planes == 2 { scratch[n + t] } else { 0.0 };
        }
    };
    if n == 1 {
        out[..rows]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(ci, o)| {
                let mut scratch = Vec::new();
                for (j, y) in o.iter_mut().enumerate() {
                    dot_row(ci * chunk + j, std::slice::from_mut(y), &mut scratch);
                }
            });
    } else {
        let mut tmp = vec![0f32; rows * n];
        tmp.par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(ci, o)| {
                let mut scratch = Vec::new();
                for (j, y) in o.chunks_mut(n).enumerate() {
                    dot_row(ci * chunk + j, y, &mut scratch);
                }
            });
        transpose_into(&tmp, rows, n, out);
    }
}

/// Quantizes `n` token rows of `cols` values for the wide kernels (in parallel for a prompt).
fn quantize_wide(x: &[f32], cols: usize, n: usize, a16: &mut quant::Acts16) {
    a16.reset(cols, n);
    #[cfg(target_arch = "x86_64")]
    {
        if n >= 8 {
            let parts: Vec<_> = a16.parts_mut().collect();
            parts
                .into_par_iter()
                .zip(x.par_chunks(cols))
                .for_each(|(p, xs)| quant::quantize_column(xs, p));
        } else {
            for (p, xs) in a16.parts_mut().zip(x.chunks(cols)) {
                quant::quantize_column(xs, p);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// One projection's share of a parallel job: its weight, bytes and token-major output
/// (`rows` values per token).
struct ProjJob<'a> {
    w: &'a CpuWeight,
    data: &'a [u8],
    out: SyncPtr,
}

/// Row ranges of every projection in `jobs` (all of the same input, quantized in `a16`) as
/// one parallel run; `then(job, r0, nr)` runs on each range once its rows are written (a
/// bias, an epilogue). Row tasks come in multiples of 4 (the kernel's row tile).
fn run_wide(
    jobs: &[ProjJob<'_>],
    a16: &quant::Acts16,
    then: &(dyn Fn(usize, usize, usize) + Sync),
) {
    let mut tasks = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let rows = job.w.rows;
        let chunk = rows_per_task(rows).div_ceil(4) * 4;
        tasks.extend(
            (0..rows)
                .step_by(chunk)
                .map(|r0| (j, r0, chunk.min(rows - r0))),
        );
    }
    tasks.into_par_iter().for_each(|(j, r0, nr)| {
        let job = &jobs[j];
        let (rb, rows) = (job.w.row_bytes, job.w.rows);
        // SAFETY: this task writes only rows r0..r0+nr of each token row of its job's
        // output (rows*n values); tasks' row ranges are disjoint.
        unsafe {
            quant::wide_matmul_strided(
                job.w.ty,
                &job.data[r0 * rb..(r0 + nr) * rb],
                rb,
                a16,
                nr,
                job.out.get().add(r0),
                1,
                rows,
            )
        }
        then(j, r0, nr);
    });
}

/// `matmul` with the wide kernels: activations at 16 bits per value (as precise as the two
/// 8-bit planes, in one pass), several rows and columns per kernel call.
fn matmul_wide(
    w: &CpuWeight,
    data: &[u8],
    x: &[f32],
    n: usize,
    a16: &mut quant::Acts16,
    out: &mut [f32],
) {
    quantize_wide(x, w.cols, n, a16);
    let out = &mut out[..w.rows * n];
    let job = ProjJob {
        w,
        data,
        out: SyncPtr(out.as_mut_ptr()),
    };
    run_wide(&[job], a16, &|_, _, _| {});
}

/// A raw output pointer shared by tasks that write disjoint places.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only for disjoint writes (see matmul_wide).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// The pointer (a method, so closures capture the whole Sync wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Two 8-bit passes per activation (default), or one with `LLORCH_CPU_ACTIVATIONS=int8`
/// (faster, logits within ~0.1 of the reference instead of ~0.01).
fn precise_activations() -> bool {
    static PRECISE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRECISE.get_or_init(|| std::env::var("LLORCH_CPU_ACTIVATIONS").as_deref() != Ok("int8"))
}

/// `out[t * rows + r] = tmp[r * n + t]`.
fn transpose_into(tmp: &[f32], rows: usize, n: usize, out: &mut [f32]) {
    for (t, o) in out[..rows * n].chunks_mut(rows).enumerate() {
        for (r, y) in o.iter_mut().enumerate() {
            *y = tmp[r * n + t];
        }
    }
}

/// Rotate pairs of one head in place.
fn rope_head(x: &mut [f32], pos: usize, rope: &Rope, inv_freq: &[f32]) {
    let half = rope.dims / 2;
    for (i, &f) in inv_freq.iter().enumerate() {
        let angle = pos as f32 * f;
        let (sin, cos) = angle.sin_cos();
        let (sin, cos) = (sin * rope.mscale, cos * rope.mscale);
        let (a, b) = match rope.style {
            RopeStyle::Normal => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

impl Ops for CpuStep<'_> {
    fn n_tokens(&self) -> usize {
        self.n
    }

    fn embed(&mut self, table: WeightId, out: Slot) {
        let w = self.m.weight(table);
        let data = self.m.bytes(table);
        let width = self.width(out);
        let mut o = self.take(out);
        for (t, &tok) in self.tokens.iter().enumerate() {
            let tok = tok as usize;
            quant::dequantize(
                w.ty,
                &data[tok * w.row_bytes..(tok + 1) * w.row_bytes],
                &mut o[t * width..(t + 1) * width],
            )
            .expect("embedding rows are whole blocks");
        }
        self.put(out, o);
    }

    fn rms_norm(&mut self, x: Slot, norm: Norm, out: Slot) {
        let width = self.width(x);
        let g = self.m.vector(norm.w);
        let n = self.n;
        if x == out {
            let xs = &mut self.w.slots[x.index()][..n * width];
            return xs
                .chunks_mut(width)
                .for_each(|r| rms_norm_row(r, g, norm.eps));
        }
        let xs = self.take(x);
        let mut o = self.take(out);
        for (xr, or) in xs[..n * width].chunks(width).zip(o.chunks_mut(width)) {
            or.copy_from_slice(xr);
            rms_norm_row(or, g, norm.eps);
        }
        self.put(x, xs);
        self.put(out, o);
    }

    fn rms_norm_heads(&mut self, x: Slot, head_dim: usize, norm: Norm) {
        let width = self.width(x);
        let g = self.m.vector(norm.w);
        let n = self.n;
        let xs = &mut self.w.slots[x.index()][..n * width];
        xs.chunks_mut(head_dim)
            .for_each(|h| rms_norm_row(h, g, norm.eps));
    }

    fn matmul(&mut self, w: WeightId, x: Slot, out: Slot) {
        let cols = self.m.weight(w).cols;
        let xs = self.take(x);
        let mut o = self.take(out);
        let n = self.n;
        self.product(w, &xs[..n * cols], n, &mut o, &same_row);
        self.put(x, xs);
        self.put(out, o);
    }

    fn add_bias(&mut self, x: Slot, b: WeightId) {
        let width = self.width(x);
        let n = self.n;
        add_rows(&mut self.w.slots[x.index()][..n * width], self.m.vector(b));
    }

    fn rope(&mut self, x: Slot, n_heads: usize, head_dim: usize, rope: &Rope) {
        // As the reference computes it: inverse frequencies in f32, angle = pos * inv_freq.
        let inv_freq = rope.inv_freq();
        let width = n_heads * head_dim;
        let n = self.n;
        let xs = &mut self.w.slots[x.index()][..n * width];
        for (row, &pos) in xs.chunks_mut(width).zip(&self.row_pos) {
            for head in row.chunks_mut(head_dim) {
                rope_head(head, pos, rope, &inv_freq);
            }
        }
    }

    fn attention(&mut self, layer: usize, q: Slot, k: Slot, v: Slot, shape: AttnShape, out: Slot) {
        let kv_dim = shape.n_head_kv * shape.head_dim;
        let q_dim = shape.n_head * shape.head_dim;
        let n = self.n;
        // Append this step's keys and values to each sequence's cache (blocks of its own:
        // checked when the step was made).
        for (sp, kv) in self.spans.iter().zip(self.kvs.iter_mut()) {
            for r in 0..sp.rows {
                let at = (sp.row0 + r) * kv_dim..(sp.row0 + r + 1) * kv_dim;
                kv.put(
                    layer,
                    sp.pos0 + r,
                    &self.w.slots[k.index()][at.clone()],
                    &self.w.slots[v.index()][at],
                );
            }
        }
        let qs = self.take(q);
        let mut o = self.take(out);
        // Per sequence: its blocks' keys of this layer, and their values.
        let caches: Vec<attn::Cache> = self.kvs.iter().map(|kv| kv.layer(layer)).collect();
        let (row_pos, row_seq) = (&self.row_pos, &self.row_seq);
        let hd = shape.head_dim;
        let group = shape.n_head / shape.n_head_kv;
        let sinks = shape.sinks.map(|w| self.m.vector(w));
        let range = |t: usize| {
            let end = row_pos[t] + 1;
            (shape.window.map_or(0, |w| end.saturating_sub(w)), end)
        };
        // Tiles of rows times query heads of one KV head, each reading its keys and values
        // once (`attn::heads`, whose outputs are bit for bit `attn::head`'s).
        let mut tiles = Vec::new();
        if self.spans.iter().all(|s| s.rows == 1) {
            // Decoding: one row a tile; a KV head's query heads split further while there
            // are fewer tiles than twice the threads.
            let split = (2 * rayon::current_num_threads())
                .div_ceil(n * shape.n_head_kv)
                .clamp(1, group);
            let heads_per_tile = group.div_ceil(split).min(attn::MAX_TILE);
            for t in 0..n {
                for g in 0..shape.n_head_kv {
                    let (g0, g1) = (g * group, (g + 1) * group);
                    for h0 in (g0..g1).step_by(heads_per_tile) {
                        tiles.push((t, t + 1, h0, (h0 + heads_per_tile).min(g1)));
                    }
                }
            }
        } else {
            // A prompt chunk: as many rows a tile as fit beside the heads.
            let heads_per_tile = group.min(attn::MAX_TILE);
            let rows_per_tile = (attn::MAX_TILE / heads_per_tile).max(1);
            for sp in &self.spans {
                for t0 in (sp.row0..sp.row0 + sp.rows).step_by(rows_per_tile) {
                    let t1 = (t0 + rows_per_tile).min(sp.row0 + sp.rows);
                    for h0 in (0..shape.n_head).step_by(heads_per_tile) {
                        // Heads of one KV head only.
                        let h1 = (h0 + heads_per_tile).min((h0 / group + 1) * group);
                        tiles.push((t0, t1, h0, h1));
                    }
                }
            }
        }
        let dst = SyncPtr(o.as_mut_ptr());
        self.m.pool.install(|| {
            tiles
                .into_par_iter()
                .for_each_init(Vec::new, |scores, (t0, t1, h0, h1)| {
                    let mut tile = Vec::with_capacity(attn::MAX_TILE);
                    for t in t0..t1 {
                        let (lo, end) = range(t);
                        for h in h0..h1 {
                            tile.push(attn::Query {
                                q: &qs[t * q_dim + h * hd..t * q_dim + (h + 1) * hd],
                                lo,
                                end,
                                sink: sinks.map(|s| s[h]),
                                // SAFETY: in bounds (t < n, h < n_head).
                                out: unsafe { dst.get().add(t * q_dim + h * hd) },
                            });
                        }
                    }
                    let cache = &caches[row_seq[t0]];
                    // SAFETY: each (row, head) output belongs to one tile.
                    unsafe { cache.heads(&tile, h0 / group * hd, shape.scale, scores) };
                });
        });
        drop(caches);
        self.put(q, qs);
        self.put(out, o);
    }

    fn glu(&mut self, act: Activation, gate: Slot, up: Slot, out: Slot) {
        let width = self.width(gate);
        let n = self.n;
        let (g, u) = (self.take(gate), self.take(up));
        attn::glu(
            act,
            &g[..n * width],
            &u[..n * width],
            &mut self.w.slots[out.index()][..n * width],
        );
        self.put(gate, g);
        self.put(up, u);
    }

    fn add(&mut self, x: Slot, y: Slot) {
        let width = self.width(x);
        let n = self.n;
        let ys = self.take(y);
        for (a, &b) in self.w.slots[x.index()][..n * width]
            .iter_mut()
            .zip(&ys[..n * width])
        {
            *a += b;
        }
        self.put(y, ys);
    }

    fn scale(&mut self, x: Slot, factor: f32) {
        let width = self.width(x);
        let n = self.n;
        self.w.slots[x.index()][..n * width]
            .iter_mut()
            .for_each(|v| *v *= factor);
    }

    fn softcap(&mut self, x: Slot, cap: f32) {
        let width = self.width(x);
        let n = self.n;
        self.w.slots[x.index()][..n * width]
            .iter_mut()
            .for_each(|v| *v = cap * (*v / cap).tanh());
    }

    /// Keeps the last row of each sequence: row i is then sequence i's.
    fn keep_last_row(&mut self, x: Slot) {
        let width = self.width(x);
        let buf = &mut self.w.slots[x.index()];
        for (i, sp) in self.spans.iter_mut().enumerate() {
            let last = sp.row0 + sp.rows - 1;
            // Rows move down only (i <= last), in order: no source is overwritten first.
            buf.copy_within(last * width..(last + 1) * width, i * width);
            *sp = Span {
                row0: i,
                rows: 1,
                pos0: sp.pos0 + sp.rows - 1,
            };
        }
        self.n = self.spans.len();
        self.tokens.truncate(0);
        self.index_rows();
    }

    fn norm_matmul(&mut self, input: NormIn, projs: &[Projection]) {
        if !self.wide_all(projs.iter().map(|p| p.w)) {
            return unfused::norm_matmul(self, input, projs);
        }
        self.rms_norm(input.x, input.norm, input.normed);
        let normed = input.normed;
        // One quantization of the shared input, one parallel job for all projections, each
        // task adding its rows' bias (per group of rows, see `groups`).
        let n = self.n;
        let m = self.m;
        let xs = self.take(normed);
        let mut outs: Vec<Vec<f32>> = projs.iter().map(|p| self.take(p.out)).collect();
        let mut a16 = std::mem::take(&mut self.w.a16);
        let cols = m.weight(projs[0].w).cols;
        let biases: Vec<Option<&[f32]>> =
            projs.iter().map(|p| p.bias.map(|b| m.vector(b))).collect();
        let groups = self.groups(n, true, &same_row);
        m.pool.install(|| {
            for g in groups {
                let gn = g.len();
                let jobs: Vec<ProjJob> = projs
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|(p, o)| {
                        let w = m.weight(p.w);
                        ProjJob {
                            w,
                            data: m.bytes(p.w),
                            out: SyncPtr(o[g.start * w.rows..].as_mut_ptr()),
                        }
                    })
                    .collect();
                quantize_wide(&xs[g.start * cols..g.end * cols], cols, gn, &mut a16);
                run_wide(&jobs, &a16, &|j, r0, nr| {
                    if let Some(b) = biases[j] {
                        let (rows, o) = (jobs[j].w.rows, jobs[j].out);
                        for t in 0..gn {
                            // SAFETY: rows r0..r0+nr of token t belong to this task.
                            let y = unsafe {
                                std::slice::from_raw_parts_mut(o.get().add(t * rows + r0), nr)
                            };
                            for (v, &bv) in y.iter_mut().zip(&b[r0..r0 + nr]) {
                                *v += bv;
                            }
                        }
                    }
                });
            }
        });
        self.w.a16 = a16;
        self.put(normed, xs);
        for (p, o) in projs.iter().zip(outs) {
            self.put(p.out, o);
        }
    }

    fn norm_glu(&mut self, input: NormIn, glu: Glu) {
        let m = self.m;
        let (w_gate, w_up) = (glu.gate.w, glu.up.w);
        let (wg, wu) = (m.weight(w_gate), m.weight(w_up));
        let no_bias = glu.gate.bias.is_none() && glu.up.bias.is_none();
        if wg.rows != wu.rows || !no_bias || !self.wide_all([w_gate, w_up].into_iter()) {
            return unfused::norm_glu(self, input, glu);
        }
        self.rms_norm(input.x, input.norm, input.normed);
        let (normed, gate, up, act) = (input.normed, glu.gate.out, glu.up.out, glu.out);
        // Gate and up rows of one range in the same task, which then writes the activation
        // of those rows: one quantization, one parallel job, no serial pass (per group of
        // rows, see `groups`).
        let n = self.n;
        let xs = self.take(normed);
        let (mut g, mut u, mut a) = (self.take(gate), self.take(up), self.take(act));
        let mut a16 = std::mem::take(&mut self.w.a16);
        let (rows, cols) = (wg.rows, wg.cols);
        let (dg, du) = (m.bytes(w_gate), m.bytes(w_up));
        let groups = self.groups(n, true, &same_row);
        m.pool.install(|| {
            for grp in groups {
                let gn = grp.len();
                let at = grp.start * rows;
                let (gp, up_, ap) = (
                    SyncPtr(g[at..].as_mut_ptr()),
                    SyncPtr(u[at..].as_mut_ptr()),
                    SyncPtr(a[at..].as_mut_ptr()),
                );
                quantize_wide(&xs[grp.start * cols..grp.end * cols], cols, gn, &mut a16);
                let a16 = &a16;
                let chunk = rows_per_task(rows).div_ceil(4) * 4;
                (0..rows)
                    .step_by(chunk)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .for_each(|r0| {
                        let nr = chunk.min(rows - r0);
                        let (gp, up_, ap) = (gp, up_, ap);
                        for (w, d, o) in [(wg, dg, gp), (wu, du, up_)] {
                            let rb = w.row_bytes;
                            // SAFETY: rows r0..r0+nr of every token row, disjoint across
                            // tasks.
                            unsafe {
                                quant::wide_matmul_strided(
                                    w.ty,
                                    &d[r0 * rb..(r0 + nr) * rb],
                                    rb,
                                    a16,
                                    nr,
                                    o.get().add(r0),
                                    1,
                                    rows,
                                )
                            }
                        }
                        for t in 0..gn {
                            let at = t * rows + r0;
                            // SAFETY: as above.
                            let (gs, us, os) = unsafe {
                                (
                                    std::slice::from_raw_parts(gp.get().add(at), nr),
                                    std::slice::from_raw_parts(up_.get().add(at), nr),
                                    std::slice::from_raw_parts_mut(ap.get().add(at), nr),
                                )
                            };
                            attn::glu(glu.act, gs, us, os);
                        }
                    });
            }
        });
        self.w.a16 = a16;
        self.put(normed, xs);
        self.put(gate, g);
        self.put(up, u);
        self.put(act, a);
    }

    fn matmul_add(&mut self, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        if !self.wide_all([w].into_iter()) {
            return unfused::matmul_add(self, w, x, tmp, acc);
        }
        // The residual add of each task's rows inside the parallel job (per group of rows,
        // see `groups`).
        let (n, m) = (self.n, self.m);
        let wt = m.weight(w);
        let xs = self.take(x);
        let (mut o, mut r) = (self.take(tmp), self.take(acc));
        let mut a16 = std::mem::take(&mut self.w.a16);
        let rows = wt.rows;
        let groups = self.groups(n, true, &same_row);
        m.pool.install(|| {
            for g in groups {
                let gn = g.len();
                let (op, rp) = (
                    SyncPtr(o[g.start * rows..].as_mut_ptr()),
                    SyncPtr(r[g.start * rows..].as_mut_ptr()),
                );
                let job = [ProjJob {
                    w: wt,
                    data: m.bytes(w),
                    out: op,
                }];
                quantize_wide(
                    &xs[g.start * wt.cols..g.end * wt.cols],
                    wt.cols,
                    gn,
                    &mut a16,
                );
                run_wide(&job, &a16, &|_, r0, nr| {
                    for t in 0..gn {
                        let at = t * rows + r0;
                        // SAFETY: rows r0..r0+nr of token t belong to this task.
                        let (ys, acc) = unsafe {
                            (
                                std::slice::from_raw_parts(op.get().add(at), nr),
                                std::slice::from_raw_parts_mut(rp.get().add(at), nr),
                            )
                        };
                        for (a, &y) in acc.iter_mut().zip(ys) {
                            *a += y;
                        }
                    }
                });
            }
        });
        self.w.a16 = a16;
        self.put(x, xs);
        self.put(tmp, o);
        self.put(acc, r);
    }

    fn tap(&mut self, name: &str, layer: Option<usize>, x: Slot) {
        if self.taps.is_none() {
            return;
        }
        let width = self.width(x);
        let n = self.n;
        let data = self.w.slots[x.index()][..n * width].to_vec();
        self.record(name, layer, n, data);
    }

    fn moe(&mut self, layer: usize, moe: &Moe, x: Slot, out: Slot, expert_taps: bool) {
        self.mixture(layer, moe, x, out, expert_taps)
    }
}
