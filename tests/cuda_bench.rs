//! Timing harness for the prompt products on a GPU (not a test: `#[ignore]`d, run with
//! `cuda_bench --ignored --nocapture`). For the Qwen2.5 0.5B and 7B shapes (Q4_K_M type mix)
//! and the other weight types on the 7B FFN shape, at 256 and 512 tokens: the f32 kernel
//! (`matmul_*`) beside the tensor-core kernel (`mma_*`, every tile and the automatic choice)
//! and the two-pass path (`matmul_gemm`: dequantize to f16, round the activations, f16 GEMM;
//! its time counts all three launches; every GEMM tile and the automatic choice), as TFLOP/s
//! (2·n_tok·rows·k per product). Each figure is the median of CUDA-event timings of
//! single launches, after a warm-up, with L2 flushed (a 192 MiB memset) before every launch
//! so weights come from memory as they do in a real forward pass. Then a short sweep of small
//! token counts (old vs new) to place `MMA_MIN_TOKENS`, and the products' share of a prompt:
//! tok/s of the matrix products alone per model.
#![cfg(feature = "cuda")]

use llorch::backend::cuda::{CudaDevice, DeviceBuffer, MemKind, GEMM_TILES, MMA_TILES};
use llorch::quant::GgmlType;
use std::io::Write;

fn say(s: &str) {
    let _ = std::io::stderr().write_all(format!("{s}\n").as_bytes());
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Random weights: random code bits, small finite scales (no inf/NaN anywhere).
fn weights(ty: GgmlType, rows: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let n = rows * k;
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    match ty {
        GgmlType::F32 => {
            return (0..n)
                .flat_map(|_| (rng.f() * 0.05).to_le_bytes())
                .collect()
        }
        GgmlType::F16 => return (0..n).flat_map(|_| h(rng.f() * 0.05)).collect(),
        _ => {}
    }
    let ts = ty.type_size();
    let mut out: Vec<u8> = (0..n / ty.block_size() * ts)
        .map(|_| rng.next() as u8)
        .collect();
    for b in out.chunks_mut(ts) {
        if ty == GgmlType::MXFP4 {
            b[0] = 118; // E8M0 exponent: scale 2^-9
            continue;
        }
        let at = match ty {
            GgmlType::Q6_K => 208,
            _ => 0,
        };
        b[at..at + 2].copy_from_slice(&h(0.001));
        if matches!(ty, GgmlType::Q4_1 | GgmlType::Q4_K) {
            b[2..4].copy_from_slice(&h(0.001));
        }
    }
    out
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Bench {
    dev: CudaDevice,
    flush: DeviceBuffer,
    x: DeviceBuffer,
    y: DeviceBuffer,
    /// The two-pass path's f16 weights and activations.
    wh: DeviceBuffer,
    xh: DeviceBuffer,
}

#[derive(Clone, Copy, PartialEq)]
enum Kernel {
    Old,
    Mma(Option<usize>),
    Gemm(Option<usize>),
}

const MAX_TOK: usize = 512;
const MAX_K: usize = 18944;
const MAX_ROWS: usize = 18944;

impl Bench {
    /// Median ms of `reps` single launches of `kernel` (after one warm-up), L2 flushed first.
    #[allow(clippy::too_many_arguments)]
    fn time(
        &mut self,
        w: &DeviceBuffer,
        ty: GgmlType,
        rows: usize,
        k: usize,
        n_tok: usize,
        kernel: Kernel,
        reps: usize,
    ) -> f32 {
        let mut t = Vec::new();
        for i in 0..=reps {
            self.dev.fill_bytes(&mut self.flush, i as u8).unwrap();
            let (dev, x, y) = (&self.dev, &self.x, &mut self.y);
            let (wh, xh) = (&mut self.wh, &mut self.xh);
            let ms = dev
                .time_ms(|| match kernel {
                    Kernel::Old => dev.matmul_f32(ty, w, rows, k, x, n_tok, y),
                    Kernel::Mma(tile) => dev.matmul_mma(ty, w, rows, k, x, n_tok, y, tile),
                    Kernel::Gemm(tile) => {
                        dev.matmul_gemm(ty, w, rows, k, x, n_tok, y, wh, xh, tile)
                    }
                })
                .unwrap();
            if i > 0 {
                t.push(ms);
            }
        }
        median(t)
    }
}

fn tflops(n_tok: usize, rows: usize, k: usize, ms: f32) -> f64 {
    2.0 * (n_tok * rows * k) as f64 / (ms as f64 * 1e-3) / 1e12
}

/// One product of a model layer: (name, rows, k, type, how many of it per layer on average).
type Product = (&'static str, usize, usize, GgmlType, f64);

#[test]
#[ignore]
fn mma_prompt_bench() {
    let dev = match CudaDevice::open(0, 0) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("mma_prompt_bench: skipped: {e}"));
            return;
        }
    };
    say(&format!(
        "{} ({} SMs); TFLOP/s = 2*n*rows*k / median time; L2 flushed before each launch",
        dev.name(),
        dev.sm_count() as usize
    ));
    let mut rng = Rng(7);
    let xs: Vec<f32> = (0..MAX_TOK * MAX_K).map(|_| rng.f()).collect();
    let mut b = Bench {
        flush: dev.alloc(192 << 20, MemKind::Scratch).unwrap(),
        x: dev.upload_f32(&xs, MemKind::Scratch).unwrap(),
        y: dev
            .alloc(MAX_TOK * MAX_ROWS.max(4864) * 4, MemKind::Scratch)
            .unwrap(),
        wh: dev.alloc(18944 * 3584 * 2, MemKind::Scratch).unwrap(),
        xh: dev.alloc(MAX_TOK * MAX_K * 2, MemKind::Scratch).unwrap(),
        dev: dev.clone(),
    };
    use GgmlType::*;
    // Q4_K_M: Q4_K matrices (Q5_0 where k = 896 is not whole 256-blocks), attn_v and ffn_down
    // in Q6_K (Q8_0 for k = 896) on about half of the layers.
    let half = 0.5;
    let m05: Vec<Product> = vec![
        ("q", 896, 896, Q5_0, 1.0),
        ("k", 128, 896, Q5_0, 1.0),
        ("v", 128, 896, Q5_0, half),
        ("v+", 128, 896, Q8_0, half),
        ("o", 896, 896, Q5_0, 1.0),
        ("gate/up", 4864, 896, Q5_0, 2.0),
        ("down", 896, 4864, Q4_K, half),
        ("down+", 896, 4864, Q6_K, half),
    ];
    let m7: Vec<Product> = vec![
        ("q", 3584, 3584, Q4_K, 1.0),
        ("k", 512, 3584, Q4_K, 1.0),
        ("v", 512, 3584, Q4_K, half),
        ("v+", 512, 3584, Q6_K, half),
        ("o", 3584, 3584, Q4_K, 1.0),
        ("gate/up", 18944, 3584, Q4_K, 2.0),
        ("down", 3584, 18944, Q4_K, half),
        ("down+", 3584, 18944, Q6_K, half),
    ];
    // The other types on the 7B gate shape.
    let others: Vec<Product> = [F32, F16, Q4_1, Q5_0, Q8_0]
        .iter()
        .map(|&t| ("gate", 18944, 3584, t, 0.0))
        .collect();

    let mut table = Vec::new();
    let mut layer_ms = std::collections::HashMap::new();
    for (model, set, layers) in [("0.5B", &m05, 24usize), ("7B", &m7, 28), ("7B", &others, 0)] {
        for &(name, rows, k, ty, count) in set.iter() {
            let w = weights(ty, rows, k, &mut rng);
            let wd = dev.upload(&w, MemKind::Weights).unwrap();
            for n_tok in [256usize, 512] {
                let old = b.time(&wd, ty, rows, k, n_tok, Kernel::Old, 3);
                let auto = b.time(&wd, ty, rows, k, n_tok, Kernel::Mma(None), 15);
                let tiles: Vec<f32> = (0..MMA_TILES.len())
                    .map(|t| b.time(&wd, ty, rows, k, n_tok, Kernel::Mma(Some(t)), 9))
                    .collect();
                let gemm = b.time(&wd, ty, rows, k, n_tok, Kernel::Gemm(None), 15);
                let gtiles: Vec<f32> = (0..GEMM_TILES.len())
                    .map(|t| b.time(&wd, ty, rows, k, n_tok, Kernel::Gemm(Some(t)), 9))
                    .collect();
                let tf = |ms| tflops(n_tok, rows, k, ms);
                let pick = dev.mma_tile_for(n_tok, rows, k).unwrap();
                let gpick = dev.gemm_tile_for(n_tok, rows);
                let mut line = format!(
                    "| {model} {name:<7} | {:<4} | {rows}x{k} | {n_tok} | {:.2} | {:.1} ({:.3} ms, #{pick}) | {:.1} ({:.3} ms, #{gpick}) |",
                    ty.name(),
                    tf(old),
                    tf(auto),
                    auto,
                    tf(gemm),
                    gemm
                );
                for &t in &tiles {
                    line += &format!(" {:.1}", tf(t));
                }
                line += " |";
                for &t in &gtiles {
                    line += &format!(" {:.1}", tf(t));
                }
                line += " |";
                say(&line);
                table.push(line);
                if layers > 0 {
                    let e = layer_ms
                        .entry((model, layers, n_tok))
                        .or_insert((0.0, 0.0, 0.0));
                    e.0 += count * old as f64;
                    e.1 += count * auto as f64;
                    e.2 += count * gemm as f64;
                }
            }
        }
    }
    say("\n| product | type | rows x k | tokens | f32 TFLOP/s | mma TFLOP/s (time, tile) | gemm TFLOP/s (time, tile) | mma tiles 128x128 128x64 64x64 32x64 64x64k2 32x64k4 | gemm tiles 128x128 64x128 64x64 |");
    say("|---|---|---|---|---|---|---|---|---|");
    for l in &table {
        say(l);
    }
    say("\nMatrix products alone, whole model (layers x per-layer sum), as prompt tok/s:");
    let mut keys: Vec<_> = layer_ms.keys().cloned().collect();
    keys.sort_by_key(|k| (k.1, k.2));
    for key in keys {
        let (old, mma, gemm) = layer_ms[&key];
        let (model, layers, n_tok) = key;
        let per = |ms: f64| n_tok as f64 / (ms * layers as f64 * 1e-3);
        say(&format!(
            "  {model} n_tok {n_tok}: f32 {:.0} tok/s ({:.2} ms/layer), mma {:.0} tok/s ({:.3} ms/layer), gemm {:.0} tok/s ({:.3} ms/layer)",
            per(old),
            old,
            per(mma),
            mma,
            per(gemm),
            gemm
        ));
    }

    // Prompt attention (tiled kernel): a 256-token chunk after 256 cached positions.
    say("\nPrompt attention, 256 queries at positions 256..511 (attention_tiled):");
    for &(n_heads, n_kv, hd) in &[(14usize, 2usize, 64usize), (28, 4, 128)] {
        let (n_tok, pos0) = (256usize, 256usize);
        let kv_cache = dev.alloc_kv_layer(n_kv, hd, 512, false).unwrap();
        let cache = kv_cache.layer(0);
        let kv: Vec<f32> = (0..512 * n_kv * hd).map(|_| rng.f()).collect();
        let kd = dev.upload_f32(&kv, MemKind::Scratch).unwrap();
        dev.kv_store(&kd, &kd, 512, &cache, 0).unwrap();
        let q: Vec<f32> = (0..n_tok * n_heads * hd).map(|_| rng.f()).collect();
        let qd = dev.upload_f32(&q, MemKind::Scratch).unwrap();
        let mut od = dev.alloc(q.len() * 4, MemKind::Scratch).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut t = Vec::new();
        for i in 0..11 {
            let ms = dev
                .time_ms(|| {
                    dev.attention(&qd, n_tok, n_heads, &cache, pos0, scale, 0, None, &mut od)
                })
                .unwrap();
            if i > 0 {
                t.push(ms);
            }
        }
        say(&format!(
            "  heads {n_heads}/{n_kv} head_dim {hd}: {:.1} us",
            median(t) * 1e3
        ));
    }

    // Small token counts: where the tensor cores start to pay.
    say("\nSmall batches (ms, f32 / mma / gemm, each its automatic tile):");
    for &(rows, k, ty) in &[
        (896usize, 896usize, Q5_0),
        (128, 896, Q5_0),
        (896, 4864, Q4_K),
        (512, 3584, Q4_K),
        (3584, 3584, Q4_K),
        (18944, 3584, Q4_K),
        (3584, 18944, Q6_K),
    ] {
        let w = weights(ty, rows, k, &mut rng);
        let wd = dev.upload(&w, MemKind::Weights).unwrap();
        let mut line = format!("  {} {rows}x{k}:", ty.name());
        for n_tok in [2usize, 4, 8, 12, 16, 24, 32, 64, 128] {
            let old = b.time(&wd, ty, rows, k, n_tok, Kernel::Old, 5);
            let new = b.time(&wd, ty, rows, k, n_tok, Kernel::Mma(None), 5);
            let gemm = b.time(&wd, ty, rows, k, n_tok, Kernel::Gemm(None), 5);
            line += &format!(" n{n_tok} {old:.3}/{new:.3}/{gemm:.3}");
        }
        say(&line);
    }
}

/// Median ms of 15 timed runs of `f` (after a warm-up), `flush` rewritten before each so the
/// weights come from memory.
fn time_flushed(
    dev: &CudaDevice,
    flush: &mut DeviceBuffer,
    mut f: impl FnMut() -> llorch::Result<()>,
) -> f32 {
    let mut t = Vec::new();
    for i in 0..16 {
        dev.fill_bytes(flush, i as u8).unwrap();
        let ms = dev.time_ms(&mut f).unwrap();
        if i > 0 {
            t.push(ms);
        }
    }
    median(t)
}

/// Decode products of GPT-OSS 20B's shapes (hidden 2880, 32 experts of 2880 x 2880, top 4):
/// `fused_matvec` over one 2880 x 2880 matrix in MXFP4 beside Q8_0 and Q5_0 (and over 4
/// experts' gate and up rows as one dense matrix, the bytes a token's expert products read),
/// and `expert_matvec` (gate + up of the 4 selected experts on one input; down on each
/// expert's own input), as GB/s of weight blocks read (L2 flushed before each launch; the
/// input's records prepared once, outside the timing). Run: `cuda_bench mxfp4_decode_bench
/// --ignored --nocapture`.
#[test]
#[ignore]
fn mxfp4_decode_bench() {
    use llorch::backend::cuda::{Epilogue, ExpertInput, ExpertOut, ExpertsRef, MatRef, MatVecOut};
    let dev = match CudaDevice::open(0, 0) {
        Ok(d) => d,
        Err(e) => {
            say(&format!("mxfp4_decode_bench: skipped: {e}"));
            return;
        }
    };
    say(&format!(
        "{} ({} SMs); GB/s of weight blocks read, median of 15, L2 flushed",
        dev.name(),
        dev.sm_count()
    ));
    let mut rng = Rng(11);
    let (h, n_expert, n_sel) = (2880usize, 32usize, 4usize);
    let mut flush = dev.alloc(192 << 20, MemKind::Scratch).unwrap();
    let x: Vec<f32> = (0..n_sel * h).map(|_| rng.f()).collect();
    let xd = dev.upload_f32(&x, MemKind::Scratch).unwrap();
    let rec = dev
        .alloc(CudaDevice::input_record_bytes(n_sel * h), MemKind::Scratch)
        .unwrap();
    dev.prep_input(&xd, n_sel * h, None, &rec).unwrap();
    let out = dev.alloc(2 * n_sel * h * 4, MemKind::Scratch).unwrap();
    let out2 = dev.alloc(n_sel * h * 4, MemKind::Scratch).unwrap();
    let gbs = |bytes: usize, ms: f32| bytes as f64 / (ms as f64 * 1e-3) / 1e9;

    use GgmlType::*;
    for (ty, rows) in [(MXFP4, h), (Q8_0, h), (Q5_0, h), (MXFP4, 2 * n_sel * h)] {
        let w = weights(ty, rows, h, &mut rng);
        let wd = dev.upload_padded(&w, 16, MemKind::Weights).unwrap();
        let prods = [MatVecOut {
            mat: MatRef {
                ty,
                w: &wd,
                rows,
                cols: h,
            },
            bias: None,
            out: &out,
        }];
        let ms = time_flushed(&dev, &mut flush, || {
            dev.fused_matvec(&xd, h, None, &prods, Epilogue::Plain, &rec, true)
        });
        say(&format!(
            "  fused_matvec {} {rows}x{h}: {:.1} us, {:.0} GB/s",
            ty.name(),
            ms * 1e3,
            gbs(w.len(), ms)
        ));
    }

    let ids: Vec<u8> = [3i32, 17, 30, 8]
        .iter()
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let idd = dev.upload(&ids, MemKind::Scratch).unwrap();
    let tensors: Vec<DeviceBuffer> = (0..3)
        .map(|_| {
            let w = weights(MXFP4, n_expert * h, h, &mut rng);
            dev.upload_padded(&w, 16, MemKind::Weights).unwrap()
        })
        .collect();
    let tables: Vec<_> = tensors
        .iter()
        .map(|t| {
            dev.stacked_expert_table(t, n_expert, h * h / 32 * 17)
                .unwrap()
        })
        .collect();
    let experts = |i: usize| ExpertsRef {
        ty: MXFP4,
        table: &tables[i],
        rows: h,
        cols: h,
    };
    let read = n_sel * h * h / 32 * 17; // one tensor's selected experts
    let gate_up = [
        ExpertOut {
            experts: experts(0),
            bias: None,
            out: &out,
        },
        ExpertOut {
            experts: experts(1),
            bias: None,
            out: &out2,
        },
    ];
    let ms = time_flushed(&dev, &mut flush, || {
        dev.expert_matvec(&idd, n_sel, ExpertInput::Shared(&rec), &gate_up)
    });
    say(&format!(
        "  expert_matvec MXFP4 gate+up, {n_sel} of {n_expert} experts {h}x{h}: {:.1} us, {:.0} GB/s",
        ms * 1e3,
        gbs(2 * read, ms)
    ));
    let down = [ExpertOut {
        experts: experts(2),
        bias: None,
        out: &out,
    }];
    let ms = time_flushed(&dev, &mut flush, || {
        dev.expert_matvec(&idd, n_sel, ExpertInput::PerExpert(&rec), &down)
    });
    say(&format!(
        "  expert_matvec MXFP4 down, {n_sel} of {n_expert} experts {h}x{h}: {:.1} us, {:.0} GB/s",
        ms * 1e3,
        gbs(read, ms)
    ));
}
