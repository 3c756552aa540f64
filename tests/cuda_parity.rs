//! The CUDA forward pass against the CPU engine, stage by stage, on synthetic models of real
//! shapes and tensor types (`llorch::model::synth`), plus out-of-memory behaviour of model
//! loading and sessions on a GPU context.
//!
//! Without a GPU each test prints `skipped: no CUDA device (<reason>)` on stderr and passes.
//!
//! Parity: a 64-token prompt (all logits) then 32 decode steps, both sessions fed the CPU's
//! greedy choices. Every tap (embed, layer-0 stages, each layer's output, output_norm) and the
//! logits of all 96 positions are compared row by row as ‖gpu − cpu‖ / ‖cpu‖ (layer outputs
//! after scaling rows to rms 1, as RMSNorm passes them on; the raw error is printed too).
//! Which side a disagreement comes from: layer-0 products and every whole layer (all 64
//! prompt positions) are recomputed in f64 from each side's own input. The GPU's decode path
//! is also checked against its own prefill of all 96 tokens.
//!
//! Tolerances, from the arithmetic:
//! * The CPU multiplies matrices against activations quantized in two 8-bit passes per block
//!   of 32 (the value, then its residual): the residual's step is max|x|/(127·254), so each
//!   element carries ≈ 2.5/(127·254·√12) ≈ 2.2e-5 relative error (≈ 5e-5 for heavy-tailed
//!   inputs such as the SwiGLU product). `PRODUCT` = 5e-4 bounds one product with room.
//! * The GPU's prompt products (≥ `MMA_MIN_TOKENS` tokens, so the 64-token prompt) run on the
//!   tensor cores with weights and activations rounded to f16 (2⁻¹¹ relative each, rms ≈ 2.8e-4;
//!   ≈ 4e-4 rms on a zero-mean product, measured 2e-4 – 3e-4): `GPU_PRODUCT` = 2e-3 for one
//!   product against the CPU. Its decode products take the input quantized to 16 bits per 32
//!   values (max|x|/64516 per value, ≈ 1e-5 relative). It keeps the KV cache in f16 (2⁻¹¹
//!   relative rounding, rms ≈ 2.8e-4 in the attention output), so the GPU dominates the
//!   difference.
//! * Through the network each layer injects that difference (each layer's own error against
//!   f64 is checked separately: `GPU_LAYER_VS_F64`) into the residual stream, and the random
//!   synthetic network amplifies it at some positions: in the 0.5B shape layers 15-17 at
//!   positions 42 and 51 multiply a difference about 3x (seen with f32 prompt products too,
//!   1.5e-3 -> 1.0e-2). With f16 prompt operands the largest deep difference measured on the
//!   H200 is 2.0e-2 (2026-11-28, layer 16, rms-normalized), the logits 1.3e-2. `DEEP` = 3e-2
//!   bounds every later stage and the logits; argmax must still agree wherever the gap is
//!   clear.
//! * Stages before any matrix (embed, layer-0 attn_norm) are the same f32 arithmetic on the
//!   same values on both sides: `EXACT_ISH` = 1e-5.
#![cfg(feature = "cuda")]

use llorch::backend::Context;
use llorch::backend::Logits;
use llorch::backend::Tap;
use llorch::backend::{ContextOptions, Device};
use llorch::model::synth::{build, preset};
use llorch::model::Model;
use llorch::session::{GenerateParams, Session, SessionOptions};
use llorch::Error;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

const EXACT_ISH: f64 = 1e-5;
const PRODUCT: f64 = 5e-4;
const GPU_PRODUCT: f64 = 2e-3;
const DEEP: f64 = 3e-2;
/// The GPU's layer-0 products (prompt: tensor cores, f16 operands) against f64 from its own
/// input: ≈ 4e-4 rms from the two f16 roundings (measured 2e-4 – 3e-4), with room.
const GPU_VS_F64: f64 = 2e-3;

/// A budget for the contexts of the memory tests, under four times the smollm2 shape's f16
/// weight copies (2 bytes x 134.5M = 269 MB; made only where they take at most a quarter of
/// the budget): no context of those tests makes them, so the sizes measured on one hold on
/// another with a smaller budget.
const NO_COPIES_BUDGET: u64 = 900 << 20;

/// Positions of the per-layer f64 check: the whole prompt.
const LOCAL_ROWS: usize = 64;
/// The GPU's layer against f64 from its own input: f32 arithmetic (≈ 1e-6) plus the f16 KV
/// cache (2⁻¹¹ relative rounding of K and V, rms ≈ 2.8e-4 in the attention output, diluted by
/// the residual), with room.
const GPU_LAYER_VS_F64: f64 = 2e-3;

fn say(s: &str) {
    // Straight to fd 2: the harness captures print!/eprint! of passing tests.
    let _ = std::io::stderr().write_all(format!("{s}\n").as_bytes());
}

fn gpu_context(test: &str, budget: u64) -> Option<Arc<Context>> {
    match Context::new(ContextOptions {
        device: Device::Cuda(0),
        threads: 0,
        memory_budget: budget,
    }) {
        Ok(c) => Some(c),
        Err(Error::NoDevice(why)) => {
            say(&format!("{test}: skipped: no CUDA device ({why})"));
            None
        }
        Err(e) => panic!("{test}: opening CUDA device 0 failed with a non-NoDevice error: {e}"),
    }
}

fn cpu_context() -> Arc<Context> {
    Context::new(ContextOptions::default()).expect("CPU context")
}

/// The synthetic model `name` (seed 1) written to a temporary file.
fn synth_file(name: &str) -> PathBuf {
    let mut spec = preset(name).expect("known preset");
    // A window the 96 positions pass, so that the local layers' window matters.
    if spec.sliding_window.is_some() {
        spec.sliding_window = Some(48);
    }
    // Phi-3-mini: 4 of its 32 layers (each of the real shape; the CPU side of all 32 would take
    // minutes), and a window the 96 positions pass.
    if spec.arch == "phi3" {
        spec.n_layer = 4;
        spec.sliding_window = Some(48);
    }
    let path = std::env::temp_dir().join(format!(
        "llorch-cuda-parity-{name}-{}.gguf",
        std::process::id()
    ));
    build(&spec, 1)
        .expect("synthetic model")
        .write_file(&path)
        .expect("write synthetic model");
    path
}

/// Removes the file when dropped (also when the test fails).
struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The synthetic Qwen2.5-0.5B shape loaded on the GPU (its file, removed when dropped) and
/// options for sessions of 96 positions; None (said) without a GPU.
fn small_qwen_on_gpu(test: &str) -> Option<(TempFile, Arc<Model>, SessionOptions)> {
    let gctx = gpu_context(test, 0)?;
    let file = TempFile(synth_file("qwen2-0.5b"));
    let mg = Model::load(&gctx, &file.0, None).expect("GPU load");
    let opts = SessionOptions {
        n_ctx: 96,
        seed: 0,
        ..Default::default()
    };
    Some((file, mg, opts))
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        assert!(x.is_finite(), "non-finite value {x}");
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn rel64(a: &[f32], r: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        num += (x as f64 - y).powi(2);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

/// The worst row of a stage: its error, where, and how the two rows' sizes compare.
#[derive(Clone, Copy)]
struct RowStats {
    err: f64,
    pos: usize,
    norm_ratio: f64,
    /// Max over rows of the error after scaling each row to rms 1 (what RMSNorm passes on).
    normalized_err: f64,
}

impl RowStats {
    fn merge(&mut self, o: RowStats) {
        let n = self.normalized_err.max(o.normalized_err);
        if o.err > self.err {
            *self = o;
        }
        self.normalized_err = n;
    }
}

fn row_stats(gpu: &[f32], cpu: &[f32], rows: usize, pos0: usize) -> RowStats {
    let w = cpu.len() / rows;
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let mut st = RowStats {
        err: -1.0,
        pos: 0,
        norm_ratio: 0.0,
        normalized_err: 0.0,
    };
    for r in 0..rows {
        let (g, c) = (&gpu[r * w..(r + 1) * w], &cpu[r * w..(r + 1) * w]);
        let e = rel(g, c);
        let (ng, nc) = (norm(g), norm(c));
        let gs: Vec<f32> = g
            .iter()
            .map(|&x| (x as f64 / ng.max(1e-300)) as f32)
            .collect();
        let cs: Vec<f32> = c
            .iter()
            .map(|&x| (x as f64 / nc.max(1e-300)) as f32)
            .collect();
        st.normalized_err = st.normalized_err.max(rel(&gs, &cs));
        if e > st.err {
            (st.err, st.pos, st.norm_ratio) = (e, pos0 + r, ng / nc.max(1e-300));
        }
    }
    st
}

fn key(t: &Tap) -> String {
    match t.layer {
        Some(l) if t.name == "layer" => format!("layer{l:02}"),
        Some(l) => format!("l{l}.{}", t.name),
        None => t.name.clone(),
    }
}

fn tolerance(key: &str) -> f64 {
    match key {
        "embed" | "l0.attn_norm" => EXACT_ISH,
        "l0.q" | "l0.k" | "l0.v" | "l0.q_rope" | "l0.k_rope" | "l0.q_norm" | "l0.k_norm" => {
            GPU_PRODUCT
        }
        _ => DEEP,
    }
}

/// `x` (rows of `cols`) times the dequantized weight `name` (+ its bias), in f64.
fn f64_product(model: &Model, name: &str, bias: Option<&str>, x: &[f32], rows: usize) -> Vec<f64> {
    let g = model.gguf();
    let info = g.tensor(name).unwrap_or_else(|| panic!("tensor {name}"));
    let (cols, out) = (info.dims[0] as usize, info.dims[1] as usize);
    let mut w = vec![0f32; cols * out];
    llorch::quant::dequantize(info.ty, g.tensor_data(info), &mut w).expect("dequantize");
    let b: Vec<f32> = bias
        .map(|b| {
            let bi = g.tensor(b).expect("bias");
            let mut v = vec![0f32; out];
            llorch::quant::dequantize(bi.ty, g.tensor_data(bi), &mut v).expect("bias");
            v
        })
        .unwrap_or_else(|| vec![0.0; out]);
    assert_eq!(x.len(), rows * cols);
    let mut y = vec![0f64; rows * out];
    for t in 0..rows {
        let xr = &x[t * cols..(t + 1) * cols];
        for (o, yo) in y[t * out..(t + 1) * out].iter_mut().enumerate() {
            let wr = &w[o * cols..(o + 1) * cols];
            *yo = b[o] as f64
                + wr.iter()
                    .zip(xr)
                    .map(|(&a, &c)| a as f64 * c as f64)
                    .sum::<f64>();
        }
    }
    y
}

/// A dequantized weight as f32 (rows × cols), or None if the model lacks it.
fn weight_f32(model: &Model, name: &str) -> Option<Vec<f32>> {
    let g = model.gguf();
    let info = g.tensor(name)?;
    let n = info.dims.iter().product::<u64>() as usize;
    let mut w = vec![0f32; n];
    llorch::quant::dequantize(info.ty, g.tensor_data(info), &mut w).expect("dequantize");
    Some(w)
}

/// `y[t] = W x[t] (+ b)` in f64, W rows × cols; rows in parallel.
fn mat64(w: &[f32], b: Option<&[f32]>, x: &[f64], cols: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let rows = w.len() / cols;
    let n = x.len() / cols;
    let mut y = vec![0f64; n * rows];
    y.par_chunks_mut(rows).enumerate().for_each(|(t, yt)| {
        let xt = &x[t * cols..(t + 1) * cols];
        for (o, yo) in yt.iter_mut().enumerate() {
            let wr = &w[o * cols..(o + 1) * cols];
            *yo = b.map_or(0.0, |b| b[o] as f64)
                + wr.iter().zip(xt).map(|(&a, &c)| a as f64 * c).sum::<f64>();
        }
    });
    y
}

fn rmsnorm64(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let n = w.len();
    x.chunks(n)
        .flat_map(|r| {
            let s = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            r.iter().zip(w).map(move |(v, &g)| v * s * g as f64)
        })
        .collect()
}

/// One decoder layer in f64 from `input` (rows = positions 0..): the recipe's arithmetic
/// (RMSNorm, Q/K/V + bias, RoPE, causal GQA attention, output, SwiGLU FFN, residuals) with
/// the file's weights dequantized. Returns the layer's output rows.
fn ref_layer(model: &Model, l: usize, input: &[f32]) -> Vec<f64> {
    let hp = model.hparams();
    let (e, hd) = (hp.n_embd, hp.head_dim);
    let (nh, nkv) = (hp.n_head, hp.n_head_kv);
    let w = |s: &str| weight_f32(model, &format!("blk.{l}.{s}"));
    let need = |s: &str| w(s).unwrap_or_else(|| panic!("blk.{l}.{s}"));
    let eps = hp.norm_eps as f64;
    let n = input.len() / e;
    let mut h: Vec<f64> = input.iter().map(|&v| v as f64).collect();
    let a = rmsnorm64(&h, &need("attn_norm.weight"), eps);
    let mut q = mat64(&need("attn_q.weight"), w("attn_q.bias").as_deref(), &a, e);
    let mut k = mat64(&need("attn_k.weight"), w("attn_k.bias").as_deref(), &a, e);
    let v = mat64(&need("attn_v.weight"), w("attn_v.bias").as_deref(), &a, e);
    let neox = model.architecture() == "qwen2";
    let dims = hp.rope_dims;
    let rope = |x: &mut [f64], heads: usize| {
        for t in 0..n {
            for hh in 0..heads {
                let v = &mut x[(t * heads + hh) * hd..(t * heads + hh + 1) * hd];
                for i in 0..dims / 2 {
                    let f = (hp.rope_base as f64).powf(-2.0 * i as f64 / dims as f64);
                    let (sn, cs) = (t as f64 * f).sin_cos();
                    let (ia, ib) = if neox {
                        (i, i + dims / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (x0, x1) = (v[ia], v[ib]);
                    v[ia] = x0 * cs - x1 * sn;
                    v[ib] = x0 * sn + x1 * cs;
                }
            }
        }
    };
    rope(&mut q, nh);
    rope(&mut k, nkv);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut att = vec![0f64; n * nh * hd];
    for t in 0..n {
        for hh in 0..nh {
            let kh = hh / (nh / nkv);
            let qv = &q[(t * nh + hh) * hd..(t * nh + hh + 1) * hd];
            let sc: Vec<f64> = (0..=t)
                .map(|j| {
                    let kv = &k[(j * nkv + kh) * hd..(j * nkv + kh + 1) * hd];
                    qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() * scale
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = p.iter().sum();
            let o = &mut att[(t * nh + hh) * hd..(t * nh + hh + 1) * hd];
            for (j, pj) in p.iter().enumerate() {
                let vv = &v[(j * nkv + kh) * hd..(j * nkv + kh + 1) * hd];
                for (a, b) in o.iter_mut().zip(vv) {
                    *a += pj / z * b;
                }
            }
        }
    }
    let o = mat64(&need("attn_output.weight"), None, &att, nh * hd);
    h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    let f = rmsnorm64(&h, &need("ffn_norm.weight"), eps);
    let g = mat64(&need("ffn_gate.weight"), None, &f, e);
    let u = mat64(&need("ffn_up.weight"), None, &f, e);
    let sw: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    let d = mat64(&need("ffn_down.weight"), None, &sw, hp.n_ff);
    h.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
    h
}

/// Max over rows of the per-row relative error against an f64 reference.
fn max_row_rel64(x: &[f32], r: &[f64], width: usize) -> f64 {
    x.chunks(width)
        .zip(r.chunks(width))
        .map(|(a, b)| rel64(a, b))
        .fold(0.0, f64::max)
}

fn argmax(v: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    let mut second = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            second = best.1;
            best = (i, x);
        } else if x > second {
            second = x;
        }
    }
    (best.0, best.1 - second)
}

fn parity(test: &str, preset_name: &str) {
    let Some(gctx) = gpu_context(test, 0) else {
        return;
    };
    let file = TempFile(synth_file(preset_name));
    let mc = Model::load(&cpu_context(), &file.0, None).expect("CPU load");
    let t0 = std::time::Instant::now();
    let mg = Model::load(&gctx, &file.0, None).expect("GPU load");
    let mem = gctx.memory_report().unwrap().unwrap();
    say(&format!(
        "{test}: uploaded in {:.2} s; GPU weights {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        mem.weights as f64 / (1 << 20) as f64
    ));
    let vocab = mc.vocab_size();
    let opts = SessionOptions {
        n_ctx: 128,
        seed: 0,
        ..Default::default()
    };
    let mut sc = Session::new(mc.clone(), opts.clone()).unwrap();
    let mut sg = Session::new(mg.clone(), opts).unwrap();
    sc.set_taps(true);
    sg.set_taps(true);

    // Pseudo-random prompt ids (the work does not depend on which).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let prompt: Vec<u32> = (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect();

    let mut worst: Vec<(String, RowStats)> = Vec::new();
    let mut gpu_decode_logits: Vec<f32> = Vec::new();
    let mut f64_lines = Vec::new();
    let mut local: Vec<(usize, f64, f64)> = Vec::new();
    let mut logit_err = 0f64;
    let (mut checked, mut agree, mut disagree_close) = (0, 0, 0);
    let mut failures = Vec::new();

    let mut feed = |step: usize, toks: &[u32], which: Logits| -> u32 {
        let lc = sc.eval(toks, which).expect("CPU eval");
        let lg = sg.eval(toks, which).expect("GPU eval");
        let (tc, tg) = (sc.take_taps(), sg.take_taps());
        assert_eq!(tc.len(), tg.len(), "tap count");
        for (c, g) in tc.iter().zip(&tg) {
            let k = key(c);
            assert_eq!(k, key(g), "tap order");
            assert_eq!((c.rows, c.data.len()), (g.rows, g.data.len()), "{k} shape");
            let st = row_stats(&g.data, &c.data, c.rows, step);
            match worst.iter_mut().find(|(n, _)| *n == k) {
                Some((_, w)) => w.merge(st),
                None => worst.push((k, st)),
            }
        }
        // The f64 reference layer below implements the qwen2/llama recipe only; other
        // architectures are checked stage by stage and at the logits against the CPU.
        let f64_ref = matches!(mc.architecture(), "qwen2" | "llama");
        if step == 0 && f64_ref {
            // Which side is off: each side's layer-0 products against f64 from its own input.
            let tap = |taps: &[Tap], k: &str| {
                taps.iter()
                    .find(|t| key(t) == k)
                    .unwrap_or_else(|| panic!("tap {k}"))
                    .data
                    .clone()
            };
            let bias = mc.architecture() == "qwen2";
            for (out, input, w, b) in [
                (
                    "l0.q",
                    "l0.attn_norm",
                    "blk.0.attn_q.weight",
                    "blk.0.attn_q.bias",
                ),
                (
                    "l0.v",
                    "l0.attn_norm",
                    "blk.0.attn_v.weight",
                    "blk.0.attn_v.bias",
                ),
                ("l0.attn_out", "l0.attn", "blk.0.attn_output.weight", ""),
                ("l0.gate", "l0.ffn_norm", "blk.0.ffn_gate.weight", ""),
                ("l0.ffn_out", "l0.swiglu", "blk.0.ffn_down.weight", ""),
            ] {
                let b = (bias && !b.is_empty()).then_some(b);
                let rows = toks.len();
                let rc = f64_product(&mc, w, b, &tap(&tc, input), rows);
                let rg = f64_product(&mc, w, b, &tap(&tg, input), rows);
                let ec = rel64(&tap(&tc, out), &rc);
                let eg = rel64(&tap(&tg, out), &rg);
                let ty = mc.gguf().tensor(w).unwrap().ty.name();
                f64_lines.push(format!(
                    "  {out:<14} ({ty:>4}) vs f64 of own input: cpu {ec:.2e}  gpu {eg:.2e}"
                ));
                if eg > GPU_VS_F64 {
                    failures.push(format!("{out}: GPU vs f64 {eg:.2e} > {GPU_VS_F64:.0e}"));
                }
                if ec > PRODUCT {
                    failures.push(format!("{out}: CPU vs f64 {ec:.2e} > {PRODUCT:.0e}"));
                }
            }
        }
        if step == 0 && f64_ref {
            // Each layer in f64 from each side's own input (its previous layer's output, first
            // LOCAL_ROWS positions): the error a side adds in that layer alone, apart from
            // what it inherits. Tells a wrong kernel from an error carried in from earlier layers.
            let e = mc.hparams().n_embd;
            let rows_of = |taps: &[Tap], k: &str| {
                let t = taps.iter().find(|t| key(t) == k).unwrap();
                t.data[..LOCAL_ROWS * e].to_vec()
            };
            for l in 0..mc.hparams().n_layer {
                let prev = if l == 0 {
                    "embed".to_string()
                } else {
                    format!("layer{:02}", l - 1)
                };
                let this = format!("layer{l:02}");
                let (ic, ig) = (rows_of(&tc, &prev), rows_of(&tg, &prev));
                let ec = max_row_rel64(&rows_of(&tc, &this), &ref_layer(&mc, l, &ic), e);
                let eg = max_row_rel64(&rows_of(&tg, &this), &ref_layer(&mc, l, &ig), e);
                local.push((l, ec, eg));
            }
        }
        if which == Logits::Last {
            gpu_decode_logits.extend_from_slice(&lg);
        }
        let rows = lc.len() / vocab;
        assert_eq!(lg.len(), lc.len());
        for r in 0..rows {
            let (c, g) = (
                &lc[r * vocab..(r + 1) * vocab],
                &lg[r * vocab..(r + 1) * vocab],
            );
            let e = rel(g, c);
            logit_err = logit_err.max(e);
            let (ac, gap) = argmax(c);
            let (ag, _) = argmax(g);
            // A flip needs the difference of two logits' errors to exceed the gap. At the
            // tolerance each logit's error has rms DEEP·rms(row); their difference √2 times
            // that; 6 rms of the row's error makes a flip a > 4σ event.
            let rms = (c.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / vocab as f64).sqrt();
            if gap as f64 > 6.0 * DEEP * rms {
                checked += 1;
                if ac != ag {
                    failures.push(format!(
                        "position {}: GPU argmax {ag} != CPU {ac} with gap {gap:.3} (row rms {rms:.3})",
                        step + r
                    ));
                }
            }
            if ac == ag {
                agree += 1;
            } else {
                disagree_close += 1;
            }
        }
        argmax(&lc[(rows - 1) * vocab..]).0 as u32
    };

    let mut next = feed(0, &prompt, Logits::All);
    for i in 0..32 {
        next = feed(64 + i, &[next], Logits::Last);
    }

    // The GPU's decode path (mat-vec, one position at a time into the cache, f32 products)
    // against its own prefill path (tensor-core products of all 96 positions at once, f16
    // operands: ≈ 3e-4 relative each), times the network's gain at the output (measured ≤ ~5
    // against the CPU): ≈ 1.5e-3 (measured 6.8e-4 on an H200): tolerance 5e-3.
    let all = sg.tokens();
    assert_eq!(all.len(), 96);
    let mut fresh = Session::new(
        mg.clone(),
        SessionOptions {
            n_ctx: 128,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let once = fresh.eval(&all[..96], Logits::All).unwrap();
    let dec = &once[64 * vocab..];
    let worst_dec = (0..32)
        .map(|r| {
            rel(
                &gpu_decode_logits[r * vocab..(r + 1) * vocab],
                &dec[r * vocab..(r + 1) * vocab],
            )
        })
        .fold(0.0, f64::max);
    say(&format!(
        "{test}: GPU decode vs GPU 96-token prefill, logits of positions 64..95: max rel {worst_dec:.2e} (tol 5e-3)"
    ));
    if worst_dec > 5e-3 {
        failures.push(format!("GPU decode vs prefill {worst_dec:.2e} > 5e-3"));
    }

    say(&format!(
        "{test}: max over rows of ‖gpu−cpu‖/‖cpu‖ per stage (64-token prompt + 32 decode steps):"
    ));
    say("  stage              max err    (tol)    at pos  ‖gpu‖/‖cpu‖  max err of rms-normalized rows");
    for (k, st) in &worst {
        let tol = tolerance(k);
        // Layer outputs are judged as every consumer sees them, through RMSNorm (attn_norm,
        // ffn_norm, output_norm): row by row at rms 1. The raw error is reported beside it.
        let layer = k.starts_with("layer");
        let e = if layer { st.normalized_err } else { st.err };
        let k = k.as_str();
        let mark = if e > tol { "  FAIL" } else { "" };
        say(&format!(
            "  {k:<18} {:.3e}  ({tol:.0e})  {:>4}  {:>10.4}  {:.3e}{mark}",
            st.err, st.pos, st.norm_ratio, st.normalized_err
        ));
        if e > tol {
            failures.push(format!("{k}: {e:.3e} > {tol:.0e}"));
        }
    }
    say(&format!(
        "  {:<18} {logit_err:.3e}  (tol {DEEP:.0e})",
        "logits (96 pos)"
    ));
    if logit_err > DEEP {
        failures.push(format!("logits: {logit_err:.3e} > {DEEP:.0e}"));
    }
    for l in &f64_lines {
        say(l);
    }
    say(&format!(
        "  local error of each layer vs f64 from the side's own input (prompt positions 0..{LOCAL_ROWS}):"
    ));
    for &(l, ec, eg) in &local {
        say(&format!("    layer{l:02}: cpu {ec:.2e}  gpu {eg:.2e}"));
        if eg > GPU_LAYER_VS_F64 {
            failures.push(format!(
                "layer {l}: GPU vs f64 {eg:.2e} > {GPU_LAYER_VS_F64:.0e}"
            ));
        }
        if ec > PRODUCT {
            failures.push(format!("layer {l}: CPU vs f64 {ec:.2e} > {PRODUCT:.0e}"));
        }
    }
    say(&format!(
        "  argmax: {agree}/96 equal; {checked} positions had a gap above 6·tol·rms (all must \
         agree); {disagree_close} differed, all at close calls"
    ));
    // embed, output_norm, 14 layer-0 stages (+ QK-norm and the two post-norms in gemma3),
    // one per layer.
    let extra = if mc.architecture() == "gemma3" { 4 } else { 0 };
    assert_eq!(
        worst.len(),
        2 + 14 + extra + mc.hparams().n_layer,
        "taps seen"
    );
    assert!(failures.is_empty(), "{test}: {failures:#?}");
}

#[test]
fn parity_qwen2_05b_q4_k_m() {
    parity("parity_qwen2_05b_q4_k_m", "qwen2-0.5b");
}

/// Gemma 3's recipe on the GPU: QK-norm, sandwich norms, GeGLU, embedding scale, local
/// layers with a window of 48 (so that 96 positions pass it) and a global one.
#[test]
fn parity_gemma3_270m_q4_k_m() {
    parity("parity_gemma3_270m_q4_k_m", "gemma3-270m");
}

/// Phi-3's recipe on the GPU: fused attn_qkv and gate+up as row views, LongRoPE factors
/// (the rope_scaled kernel: divisors and the attention factor), head size 96, a window of 48.
#[test]
fn parity_phi3_mini_q4_k_m() {
    parity("parity_phi3_mini_q4_k_m", "phi3-mini");
}

#[test]
fn parity_smollm2_135m_q4_1() {
    parity("parity_smollm2_135m_q4_1", "smollm2-135m");
}

/// Too small a budget: load and session creation fail with OutOfMemory and the numbers,
/// nothing stays allocated, and the same context then loads and generates within its budget.
/// A session's KV cache grows with what its generations ask for: a generation that would
/// outgrow the budget fails with OutOfMemory at its start, leaves the memory as it was, and
/// a shorter one on the same session then runs.
#[test]
fn out_of_memory_then_recover() {
    let test = "out_of_memory_then_recover";
    let Some(probe) = gpu_context(test, NO_COPIES_BUDGET) else {
        return;
    };
    let file = TempFile(synth_file("smollm2-135m"));
    let long = SessionOptions {
        n_ctx: 4096,
        seed: 0,
        ..Default::default()
    };
    // The weights' size on the GPU and a fresh 4,096-token session's.
    let (weights, session) = {
        let m = Model::load(&probe, &file.0, None).expect("load");
        let w = probe.memory_report().unwrap().unwrap().used;
        let s = Session::new(m.clone(), long.clone()).expect("session");
        let used = probe.memory_report().unwrap().unwrap().used;
        drop((s, m));
        assert_eq!(probe.memory_report().unwrap().unwrap().used, 0, "freed");
        (w, used - w)
    };
    drop(probe);
    let prompt = [256, 300, 301, 302];
    let params = |max_tokens| GenerateParams {
        max_tokens,
        ..Default::default()
    };

    // 1. A budget below the weights.
    let small = gpu_context(test, weights / 2).unwrap();
    match Model::load(&small, &file.0, None) {
        Err(Error::OutOfMemory(msg)) => {
            say(&format!("{test}: load: {msg}"));
            assert!(msg.contains("budget"), "message names the budget: {msg}");
        }
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(_) => panic!("expected OutOfMemory, the model loaded"),
    }
    assert_eq!(small.memory_report().unwrap().unwrap().used, 0, "leak");
    drop(small);

    // 2. Room for the weights and a fresh session, not for the session's whole context.
    let ctx = gpu_context(test, weights + session + (1 << 20)).unwrap();
    let m = Model::load(&ctx, &file.0, None).expect("load within budget");
    let mut s = Session::new(m.clone(), long.clone()).expect("a session costs its first positions");
    let before = ctx.memory_report().unwrap().unwrap().used;
    match s.generate_tokens(&prompt, &params(4000), &mut |_, _| true) {
        Err(Error::OutOfMemory(msg)) => say(&format!("{test}: generation: {msg}")),
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(_) => panic!("expected OutOfMemory for a 4,000-token generation"),
    }
    assert_eq!(
        ctx.memory_report().unwrap().unwrap().used,
        before,
        "a cache that could not grow left buffers behind"
    );

    // 3. The same session still works within what it holds, and a second session does not
    // fit beside it.
    let stats = s
        .generate_tokens(&prompt, &params(8), &mut |_, _| true)
        .expect("generate");
    match Session::new(m.clone(), long.clone()) {
        Err(Error::OutOfMemory(msg)) => say(&format!("{test}: second session: {msg}")),
        Err(e) => panic!("expected OutOfMemory, got {e}"),
        Ok(_) => panic!("expected OutOfMemory for a second session"),
    }
    let rep = ctx.memory_report().unwrap().unwrap();
    say(&format!(
        "{test}: generated {} tokens; GPU used {} (weights {}, KV {}, scratch {}) of budget {}",
        stats.generated_tokens, rep.used, rep.weights, rep.kv_cache, rep.scratch, rep.budget
    ));
    assert!(stats.generated_tokens >= 1);
    assert_eq!(rep.used, before, "a failed session left buffers behind");
    drop(s);
    drop(m);
    assert_eq!(ctx.memory_report().unwrap().unwrap().used, 0, "all freed");
}

/// GPU sessions wait in the model's KV line as the CPU's do: with room for one grown cache
/// but not two, a second session's generation that must grow its cache is busy at once when
/// it asked not to wait, and when it waits it is served as soon as the first session (holding
/// the memory) is dropped (its pages go back to the arena, their slabs to the device).
#[test]
fn gpu_cache_waits_in_line() {
    let test = "gpu_cache_waits_in_line";
    let Some(probe) = gpu_context(test, NO_COPIES_BUDGET) else {
        return;
    };
    let file = TempFile(synth_file("smollm2-135m"));
    let opts = SessionOptions {
        n_ctx: 1024,
        seed: 0,
        ..Default::default()
    };
    let prompt = [256, 300, 301, 302];
    // A generation of up to 600 tokens grows a cache of 256 positions to 768.
    let params = GenerateParams {
        max_tokens: 600,
        ..Default::default()
    };
    // The weights, a fresh session (its first cache) and the growth.
    let (weights, fresh, first, growth) = {
        let m = Model::load(&probe, &file.0, None).expect("load");
        let mem = || probe.memory_report().unwrap().unwrap();
        let w = mem().used;
        let mut s = Session::new(m.clone(), opts.clone()).expect("session");
        let (f, k) = (mem().used - w, mem().kv_cache);
        s.generate_tokens(&prompt, &params, &mut |_, _| false)
            .expect("generate");
        let g = mem().used - w - f;
        drop((s, m));
        (w, f, k, g)
    };
    drop(probe);
    assert!(growth > first + (1 << 20), "the cache grew");
    // Two fresh sessions and one growth: less than a slab of pages (16 pages of 16 positions:
    // 5.9 MB for this model) is left for the second growth.
    let budget = weights + 2 * fresh + growth + (1 << 20);
    let ctx = gpu_context(test, budget).unwrap();
    let m = Model::load(&ctx, &file.0, None).expect("load");
    let mut a = Session::new(m.clone(), opts.clone()).expect("first session");
    let mut b = Session::new(m.clone(), opts.clone()).expect("second session");
    a.generate_tokens(&prompt, &params, &mut |_, _| false)
        .expect("the first session grows its cache");
    b.set_fail_when_busy(true);
    match b.generate_tokens(&prompt, &params, &mut |_, _| false) {
        Err(Error::Busy(msg)) => say(&format!("{test}: busy: {msg}")),
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("expected Busy: two grown caches do not fit"),
    }
    b.set_fail_when_busy(false);
    let waiter = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let r = b.generate_tokens(&prompt, &params, &mut |_, _| false);
        (r.map(|st| st.generated_tokens), t.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(a);
    let (r, waited) = waiter.join().unwrap();
    let n = r.expect("served once the first session is dropped");
    say(&format!(
        "{test}: served after waiting {:.0} ms ({n} token)",
        waited.as_secs_f64() * 1e3
    ));
    assert!(waited.as_millis() >= 90, "it waited for the memory");
}

/// A decode step replayed from the captured CUDA graph computes exactly what the same fused
/// kernels compute when launched one by one (a session with taps on is never graphed): the
/// logits of 40 decode steps after a 20-token prompt are bit-identical. Replays run at later
/// positions than the capture, so this also checks that nothing position-dependent was baked
/// into the graph.
#[test]
fn graph_replay_equals_direct_decode() {
    let test = "graph_replay_equals_direct_decode";
    let Some((_file, mg, opts)) = small_qwen_on_gpu(test) else {
        return;
    };
    let mut direct = Session::new(mg.clone(), opts.clone()).unwrap();
    let mut graphed = Session::new(mg.clone(), opts).unwrap();
    direct.set_taps(true);
    let prompt: Vec<u32> = (0..20).map(|i| 1000 + 37 * i).collect();
    let a = direct.eval(&prompt, Logits::Last).unwrap();
    let b = graphed.eval(&prompt, Logits::Last).unwrap();
    assert_eq!(a, b, "prompt logits");
    let mut next = llorch::sampling::argmax(&a);
    for step in 0..40 {
        let a = direct.eval(&[next], Logits::Last).unwrap();
        direct.take_taps();
        let b = graphed.eval(&[next], Logits::Last).unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            a == b,
            "decode step {step}: graph replay differs from direct launches by up to {diff}"
        );
        next = llorch::sampling::argmax(&a);
    }
    say(&format!("{test}: 40 decode steps bit-identical"));
}

/// A session's KV cache is made of pages (16 positions of every layer) found through its page
/// table, wherever the arena put them: two sessions fed in turn, one token at a time (so that
/// their pages interleave in the arena, and the first's are pages it gave back in a reset and
/// took again), compute the same logits, bit for bit, as a session fed alone, over 300
/// positions (page and slab boundaries) of a prompt and its greedy continuation.
#[test]
fn paged_cache_changes_no_bit() {
    let test = "paged_cache_changes_no_bit";
    let Some((_file, mg, mut opts)) = small_qwen_on_gpu(test) else {
        return;
    };
    opts.n_ctx = 1024;
    let prompt: Vec<u32> = (0..200).map(|i| 700 + 13 * i).collect();
    // Token by token: each step the same single-row kernels, whatever the session.
    let feed = |s: &mut Session, t: u32| s.eval(&[t], Logits::Last).unwrap();
    let mut alone = Session::new(mg.clone(), opts.clone()).unwrap();
    let mut want = Vec::new();
    let mut next = 0;
    for i in 0..300 {
        let t = if i < prompt.len() { prompt[i] } else { next };
        let l = feed(&mut alone, t);
        next = llorch::sampling::argmax(&l);
        want.push(l);
    }
    drop(alone);
    let mut a = Session::new(mg.clone(), opts.clone()).unwrap();
    // a takes pages past its first slab, then gives them back.
    a.eval(&prompt, Logits::Last).unwrap();
    a.reset();
    let mut b = Session::new(mg.clone(), opts).unwrap();
    let mut next = [0u32; 2];
    for (i, w) in want.iter().enumerate() {
        for (j, s) in [&mut a, &mut b].into_iter().enumerate() {
            let t = if i < prompt.len() { prompt[i] } else { next[j] };
            let l = feed(s, t);
            assert!(
                l == *w,
                "position {i}: session {j} of two interleaved differs from alone"
            );
            next[j] = llorch::sampling::argmax(&l);
        }
    }
    say(&format!(
        "{test}: 300 positions of two interleaved sessions bit-identical to alone"
    ));
}

/// A fork on the GPU shares its parent's pages (no KV memory beyond its page table until one
/// of them writes), and each copies a shared page before writing into it: the parent and the
/// fork, continued with different tokens, compute bit for bit what fresh sessions fed the
/// same tokens compute (a write through a shared page would change the other's rows).
#[test]
fn gpu_fork_shares_pages() {
    let test = "gpu_fork_shares_pages";
    llorch::backend::cuda::set_prefix_cache(false);
    let Some((_file, mg, mut opts)) = small_qwen_on_gpu(test) else {
        return;
    };
    opts.n_ctx = 1024;
    let gctx = mg.context().clone();
    // 40 positions: the fork's first write (position 40) lands in a shared, partly full page.
    let prompt: Vec<u32> = (0..40).map(|i| 900 + 29 * i).collect();
    let kv = || gctx.memory_report().unwrap().unwrap().kv_cache;
    let mut parent = Session::new(mg.clone(), opts.clone()).unwrap();
    let first = parent.eval(&prompt, Logits::Last).unwrap();
    // A session made and dropped leaves a spare slab of pages in the model's arena: the
    // fork's own first pages come from it and go back to it when it takes its parent's.
    drop(Session::new(mg.clone(), opts.clone()).unwrap());
    let before = kv();
    let mut fork = parent.fork().unwrap();
    let grew = kv() - before;
    say(&format!(
        "{test}: the fork holds {grew} bytes of KV memory of its own"
    ));
    assert!(grew <= 1024 / 16 * 8, "the fork copied pages: {grew} bytes");
    // Fresh sessions fed what the parent and the fork will be fed.
    let mut ref_parent = Session::new(mg.clone(), opts.clone()).unwrap();
    let mut ref_fork = Session::new(mg.clone(), opts).unwrap();
    assert_eq!(ref_parent.eval(&prompt, Logits::Last).unwrap(), first);
    assert_eq!(ref_fork.eval(&prompt, Logits::Last).unwrap(), first);
    let mut next = llorch::sampling::argmax(&first);
    for step in 0..40u32 {
        let other = 2000 + 17 * step;
        let a = parent.eval(&[next], Logits::Last).unwrap();
        let b = fork.eval(&[other], Logits::Last).unwrap();
        assert!(
            a == ref_parent.eval(&[next], Logits::Last).unwrap(),
            "parent, step {step}"
        );
        assert!(
            b == ref_fork.eval(&[other], Logits::Last).unwrap(),
            "fork, step {step}"
        );
        next = llorch::sampling::argmax(&a);
    }
    say(&format!(
        "{test}: parent and fork 40 steps each bit-identical to fresh sessions"
    ));
}

/// Greedy generation picks each token on the GPU (`argmax_rows`, 4 bytes downloaded instead of
/// the logits row): the tokens equal those of a session that downloads every row and takes
/// the host's argmax, step for step.
#[test]
fn greedy_pick_on_gpu_equals_host_argmax() {
    let test = "greedy_pick_on_gpu_equals_host_argmax";
    // Two sessions of one model, bit for bit: the second computes its whole prompt too.
    llorch::backend::cuda::set_prefix_cache(false);
    let Some((_file, mg, opts)) = small_qwen_on_gpu(test) else {
        return;
    };
    let prompt: Vec<u32> = (0..20).map(|i| 500 + 41 * i).collect();

    let mut picked = Session::new(mg.clone(), opts.clone()).unwrap();
    let params = GenerateParams {
        max_tokens: 32,
        ..Default::default()
    };
    let stats = picked
        .generate_tokens(&prompt, &params, &mut |_, _| true)
        .expect("generate");
    let on_gpu = picked.tokens()[prompt.len()..].to_vec();
    assert_eq!(on_gpu.len(), stats.generated_tokens as usize);
    assert!(!on_gpu.is_empty());

    let mut host = Session::new(mg.clone(), opts).unwrap();
    let mut logits = host.eval(&prompt, Logits::Last).unwrap();
    let mut on_host = Vec::new();
    for _ in 0..on_gpu.len() {
        let next = llorch::sampling::argmax(&logits);
        on_host.push(next);
        logits = host.eval(&[next], Logits::Last).unwrap();
    }
    assert_eq!(
        on_gpu, on_host,
        "tokens picked on the GPU vs the host's argmax"
    );
    say(&format!("{test}: {} greedy tokens equal", on_gpu.len()));
}

/// Greedy generation with each next step run one token ahead on the GPU
/// (`CudaState::run_ahead`, the default, turned on here in case `LLORCH_CUDA_LOOKAHEAD=0`):
/// over several turns of one conversation (a limit reached with a step ahead in flight, a new
/// turn's prompt after it, a turn that fills the context and is rolled back, a turn after
/// that) the tokens and stop reasons equal those of a session whose generations download
/// every logits row (log-probabilities asked for: no GPU pick, nothing ahead).
#[test]
fn greedy_ahead_equals_row_by_row() {
    let test = "greedy_ahead_equals_row_by_row";
    // Two sessions of one model, bit for bit: the second computes its whole prompt too.
    llorch::backend::cuda::set_prefix_cache(false);
    let Some((_file, mg, opts)) = small_qwen_on_gpu(test) else {
        return;
    };
    let turns: [(Vec<u32>, u32); 4] = [
        ((0..20).map(|i| 500 + 41 * i).collect(), 24),
        ((0..6).map(|i| 900 + 7 * i).collect(), 17),
        ((0..5).map(|i| 1300 + 3 * i).collect(), 200),
        ((0..3).map(|i| 77 + i).collect(), 9),
    ];
    let run = |logprobs: u32| {
        let mut s = Session::new(mg.clone(), opts.clone()).unwrap();
        let mut seen = Vec::new();
        for (prompt, max_tokens) in &turns {
            let params = GenerateParams {
                max_tokens: *max_tokens,
                logprobs,
                ..Default::default()
            };
            let stats = s
                .generate_tokens(prompt, &params, &mut |_, _| true)
                .expect("generate");
            seen.push((stats.stop_reason, s.tokens()));
        }
        seen
    };
    llorch::backend::cuda::set_lookahead(true);
    let ahead = run(0);
    let by_row = run(1);
    for (i, (a, b)) in ahead.iter().zip(&by_row).enumerate() {
        assert_eq!(
            a, b,
            "turn {i}: stop reason and conversation, ahead vs row by row"
        );
    }
    let reasons: Vec<_> = ahead.iter().map(|(r, _)| *r).collect();
    assert!(
        reasons.contains(&llorch::session::StopReason::ContextFull),
        "one turn fills the context: {reasons:?}"
    );
    say(&format!(
        "{test}: {} turns equal ({reasons:?}), {} tokens in the end",
        turns.len(),
        ahead.last().map_or(0, |(_, t)| t.len())
    ));
}
