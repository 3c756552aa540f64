//! The CPU backend. Weights are used in place from the memory map (no copy of the quantized
//! bytes). Arithmetic: matrices in their block format against activations quantized to
//! 16 bits per block of 32 (`quant::Acts16`; 8 bits with `LLORCH_CPU_ACTIVATIONS=int8`),
//! integer dot products accumulated in f32; everything else (norms, RoPE, attention, KV
//! cache) in f32. Work is split over rows across the context's threads.

mod attn;
mod kv_rows;
mod moe;
mod pool;

use super::{
    unfused, Activation, AttnShape, Dims, Glu, Linear, Moe, Norm, NormIn, Ops, Projection, Rope,
    RopeStyle, Slot, Tap, WeightId, WeightTensor,
};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::{self, BlockQ8, GgmlType};
use crate::{Error, Result};
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
    n_ctx: usize,
    /// Per layer, `n_ctx` rows of `kv_dim` values.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    slots: Vec<Vec<f32>>,
    q8: Vec<BlockQ8>,
    a16: quant::Acts16,
    /// Intermediate values, recorded when `Some`.
    pub taps: Option<Vec<Tap>>,
}

impl CpuState {
    /// Bytes a state of `n_ctx` positions needs for its KV cache.
    pub fn kv_bytes(dims: &Dims, n_ctx: usize) -> u64 {
        2 * dims.n_layer as u64 * n_ctx as u64 * dims.kv_dim() as u64 * 4
    }

    pub fn new(dims: &Dims, n_ctx: usize) -> Result<Self> {
        let per_layer = n_ctx.checked_mul(dims.kv_dim()).ok_or_else(|| {
            Error::InvalidArgument(format!("context of {n_ctx} tokens is too large"))
        })?;
        let mut k = Vec::with_capacity(dims.n_layer);
        let mut v = Vec::with_capacity(dims.n_layer);
        for _ in 0..dims.n_layer {
            k.push(zeroed(per_layer)?);
            v.push(zeroed(per_layer)?);
        }
        Ok(CpuState {
            dims: dims.clone(),
            n_ctx,
            k,
            v,
            slots: vec![Vec::new(); Slot::ALL.len()],
            q8: Vec::new(),
            a16: quant::Acts16::new(),
            taps: None,
        })
    }

    pub fn vocab(&self) -> usize {
        self.dims.vocab
    }

    /// The logits of the last step: `rows` rows of `vocab` values.
    pub fn logits(&self, rows: usize) -> &[f32] {
        &self.slots[Slot::Logits.index()][..rows * self.dims.vocab]
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

/// A zeroed f32 buffer, or OutOfMemory instead of an abort.
fn zeroed(n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::OutOfMemory(format!(
            "cannot allocate {} bytes of host memory",
            n as u64 * 4
        ))
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// One forward step on the CPU: `tokens` at positions `pos0..`.
pub struct CpuStep<'a> {
    m: &'a CpuModel,
    st: &'a mut CpuState,
    tokens: &'a [u32],
    pos0: usize,
    n: usize,
}

impl<'a> CpuStep<'a> {
    /// The caller guarantees `pos0 + tokens.len() <= n_ctx` and token ids below the vocabulary.
    pub fn new(
        m: &'a CpuModel,
        st: &'a mut CpuState,
        tokens: &'a [u32],
        pos0: usize,
    ) -> Result<Self> {
        if pos0 + tokens.len() > st.n_ctx {
            return Err(Error::ContextFull(format!(
                "{} tokens at position {pos0} exceed the context of {}",
                tokens.len(),
                st.n_ctx
            )));
        }
        for s in Slot::ALL {
            let need = tokens.len() * s.width(&st.dims);
            let buf = &mut st.slots[s.index()];
            if buf.len() < need {
                buf.try_reserve_exact(need - buf.len()).map_err(|_| {
                    Error::OutOfMemory(format!("cannot allocate {} bytes of host memory", need * 4))
                })?;
                buf.resize(need, 0.0);
            }
        }
        Ok(CpuStep {
            m,
            st,
            tokens,
            pos0,
            n: tokens.len(),
        })
    }

    fn take(&mut self, s: Slot) -> Vec<f32> {
        std::mem::take(&mut self.st.slots[s.index()])
    }

    fn put(&mut self, s: Slot, v: Vec<f32>) {
        self.st.slots[s.index()] = v;
    }

    fn width(&self, s: Slot) -> usize {
        s.width(&self.st.dims)
    }

    /// `out[t] = W · x[t]` for the `n` rows of `x` (any buffer, not only a slot): the wide
    /// kernels where they take `W`, else the 8-bit-plane ones.
    fn product(&mut self, w: WeightId, x: &[f32], n: usize, out: &mut [f32]) {
        let wt = self.m.weight(w);
        let data = self.m.bytes(w);
        let mut q8 = std::mem::take(&mut self.st.q8);
        let mut a16 = std::mem::take(&mut self.st.a16);
        self.m.pool.install(|| {
            if precise_activations() && quant::wide_supported(wt.ty, wt.cols) {
                matmul_wide(wt, data, x, n, &mut a16, out)
            } else {
                matmul(wt, data, x, n, &mut q8, out)
            }
        });
        self.st.q8 = q8;
        self.st.a16 = a16;
    }

    /// `out = W · x (+ b)` for `n` rows of `x`, `out` resized to `n` rows of W's outputs.
    fn linear(&mut self, lin: Linear, x: &[f32], n: usize, out: &mut Vec<f32>) {
        let rows = self.m.weight(lin.w).rows;
        out.clear();
        out.resize(n * rows, 0.0);
        self.product(lin.w, x, n, out);
        if let Some(b) = lin.bias {
            add_rows(out, self.m.vector(b));
        }
    }

    /// Record a tap of `rows` rows (no-op unless taps are on).
    fn record(&mut self, name: &str, layer: Option<usize>, rows: usize, data: Vec<f32>) {
        if let Some(taps) = self.st.taps.as_mut() {
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
            let xs = &mut self.st.slots[x.index()][..n * width];
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
        let xs = &mut self.st.slots[x.index()][..n * width];
        xs.chunks_mut(head_dim)
            .for_each(|h| rms_norm_row(h, g, norm.eps));
    }

    fn matmul(&mut self, w: WeightId, x: Slot, out: Slot) {
        let cols = self.m.weight(w).cols;
        let xs = self.take(x);
        let mut o = self.take(out);
        let n = self.n;
        self.product(w, &xs[..n * cols], n, &mut o);
        self.put(x, xs);
        self.put(out, o);
    }

    fn add_bias(&mut self, x: Slot, b: WeightId) {
        let width = self.width(x);
        let n = self.n;
        add_rows(&mut self.st.slots[x.index()][..n * width], self.m.vector(b));
    }

    fn rope(&mut self, x: Slot, n_heads: usize, head_dim: usize, rope: &Rope) {
        // As the reference computes it: inverse frequencies in f32, angle = pos * inv_freq.
        let inv_freq = rope.inv_freq();
        let width = n_heads * head_dim;
        let (n, pos0) = (self.n, self.pos0);
        for (t, row) in self.st.slots[x.index()][..n * width]
            .chunks_mut(width)
            .enumerate()
        {
            for head in row.chunks_mut(head_dim) {
                rope_head(head, pos0 + t, rope, &inv_freq);
            }
        }
    }

    fn attention(&mut self, layer: usize, q: Slot, k: Slot, v: Slot, shape: AttnShape, out: Slot) {
        let kv_dim = shape.n_head_kv * shape.head_dim;
        let q_dim = shape.n_head * shape.head_dim;
        let (n, pos0) = (self.n, self.pos0);
        // Append this step's keys and values to the cache.
        let kc = &mut self.st.k[layer];
        kc[pos0 * kv_dim..(pos0 + n) * kv_dim]
            .copy_from_slice(&self.st.slots[k.index()][..n * kv_dim]);
        let vc = &mut self.st.v[layer];
        vc[pos0 * kv_dim..(pos0 + n) * kv_dim]
            .copy_from_slice(&self.st.slots[v.index()][..n * kv_dim]);
        let qs = self.take(q);
        let mut o = self.take(out);
        let (kc, vc) = (&self.st.k[layer], &self.st.v[layer]);
        let hd = shape.head_dim;
        let group = shape.n_head / shape.n_head_kv;
        let sinks = shape.sinks.map(|w| self.m.vector(w));
        self.m.pool.install(|| {
            o[..n * q_dim].par_chunks_mut(hd).enumerate().for_each_init(
                Vec::new,
                |scores, (i, oh)| {
                    let (t, h) = (i / shape.n_head, i % shape.n_head);
                    let kvh = h / group;
                    let qh = &qs[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                    let end = pos0 + t + 1;
                    let lo = shape.window.map_or(0, |w| end.saturating_sub(w));
                    let at = lo * kv_dim + kvh * hd;
                    let (ks, vs) = (&kc[at..], &vc[at..]);
                    let sink = sinks.map(|s| s[h]);
                    attn::head(qh, ks, vs, kv_dim, end - lo, shape.scale, sink, scores, oh);
                },
            );
        });
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
            &mut self.st.slots[out.index()][..n * width],
        );
        self.put(gate, g);
        self.put(up, u);
    }

    fn add(&mut self, x: Slot, y: Slot) {
        let width = self.width(x);
        let n = self.n;
        let ys = self.take(y);
        for (a, &b) in self.st.slots[x.index()][..n * width]
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
        self.st.slots[x.index()][..n * width]
            .iter_mut()
            .for_each(|v| *v *= factor);
    }

    fn softcap(&mut self, x: Slot, cap: f32) {
        let width = self.width(x);
        let n = self.n;
        self.st.slots[x.index()][..n * width]
            .iter_mut()
            .for_each(|v| *v = cap * (*v / cap).tanh());
    }

    fn keep_last_row(&mut self, x: Slot) {
        let width = self.width(x);
        let n = self.n;
        self.st.slots[x.index()].copy_within((n - 1) * width..n * width, 0);
        self.n = 1;
    }

    fn norm_matmul(&mut self, input: NormIn, projs: &[Projection]) {
        if !self.wide_all(projs.iter().map(|p| p.w)) {
            return unfused::norm_matmul(self, input, projs);
        }
        self.rms_norm(input.x, input.norm, input.normed);
        let normed = input.normed;
        // One quantization of the shared input, one parallel job for all projections, each
        // task adding its rows' bias.
        let n = self.n;
        let m = self.m;
        let xs = self.take(normed);
        let mut outs: Vec<Vec<f32>> = projs.iter().map(|p| self.take(p.out)).collect();
        let mut a16 = std::mem::take(&mut self.st.a16);
        let cols = m.weight(projs[0].w).cols;
        let jobs: Vec<ProjJob> = projs
            .iter()
            .zip(outs.iter_mut())
            .map(|(p, o)| ProjJob {
                w: m.weight(p.w),
                data: m.bytes(p.w),
                out: SyncPtr(o.as_mut_ptr()),
            })
            .collect();
        let biases: Vec<Option<&[f32]>> =
            projs.iter().map(|p| p.bias.map(|b| m.vector(b))).collect();
        m.pool.install(|| {
            quantize_wide(&xs[..n * cols], cols, n, &mut a16);
            run_wide(&jobs, &a16, &|j, r0, nr| {
                if let Some(b) = biases[j] {
                    let (rows, o) = (jobs[j].w.rows, jobs[j].out);
                    for t in 0..n {
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
        });
        drop(jobs);
        self.st.a16 = a16;
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
        // of those rows: one quantization, one parallel job, no serial pass.
        let n = self.n;
        let xs = self.take(normed);
        let (mut g, mut u, mut a) = (self.take(gate), self.take(up), self.take(act));
        let mut a16 = std::mem::take(&mut self.st.a16);
        let (rows, cols) = (wg.rows, wg.cols);
        let (gp, up_, ap) = (
            SyncPtr(g.as_mut_ptr()),
            SyncPtr(u.as_mut_ptr()),
            SyncPtr(a.as_mut_ptr()),
        );
        let (dg, du) = (m.bytes(w_gate), m.bytes(w_up));
        m.pool.install(|| {
            quantize_wide(&xs[..n * cols], cols, n, &mut a16);
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
                        // SAFETY: rows r0..r0+nr of every token row, disjoint across tasks.
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
                    for t in 0..n {
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
        });
        self.st.a16 = a16;
        self.put(normed, xs);
        self.put(gate, g);
        self.put(up, u);
        self.put(act, a);
    }

    fn matmul_add(&mut self, w: WeightId, x: Slot, tmp: Slot, acc: Slot) {
        if !self.wide_all([w].into_iter()) {
            return unfused::matmul_add(self, w, x, tmp, acc);
        }
        // The residual add of each task's rows inside the parallel job.
        let (n, m) = (self.n, self.m);
        let wt = m.weight(w);
        let xs = self.take(x);
        let (mut o, mut r) = (self.take(tmp), self.take(acc));
        let mut a16 = std::mem::take(&mut self.st.a16);
        let rows = wt.rows;
        let (op, rp) = (SyncPtr(o.as_mut_ptr()), SyncPtr(r.as_mut_ptr()));
        let job = [ProjJob {
            w: wt,
            data: m.bytes(w),
            out: op,
        }];
        m.pool.install(|| {
            quantize_wide(&xs[..n * wt.cols], wt.cols, n, &mut a16);
            run_wide(&job, &a16, &|_, r0, nr| {
                for t in 0..n {
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
        });
        self.st.a16 = a16;
        self.put(x, xs);
        self.put(tmp, o);
        self.put(acc, r);
    }

    fn tap(&mut self, name: &str, layer: Option<usize>, x: Slot) {
        if self.st.taps.is_none() {
            return;
        }
        let width = self.width(x);
        let n = self.n;
        let data = self.st.slots[x.index()][..n * width].to_vec();
        self.record(name, layer, n, data);
    }

    fn moe(&mut self, layer: usize, moe: &Moe, x: Slot, out: Slot, expert_taps: bool) {
        self.mixture(layer, moe, x, out, expert_taps)
    }
}
