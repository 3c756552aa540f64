//! Embeddings on the GPU against the CPU engine, on the real Qwen2.5-Coder-0.5B: the same
//! inputs, each pooling. The GPU reaches the hidden rows through the same taps as the CPU
//! (src/session/embed.rs), so this checks that path on CUDA. Needs a GPU and the model file
//! named by LLORCH_REAL_MODEL (as tests/cuda_real.rs); otherwise it prints why it skips and
//! passes.
//!
//! Tolerance: the GPU keeps the KV cache in f16 and multiplies prompts on tensor cores with
//! f16 operands (2^-11 relative rounding each, tests/cuda_parity.rs), over 24 layers, where
//! the CPU quantizes activations to 8 bits; so the two final hidden states differ by far more
//! than f32 rounding. A cosine above 0.999 (about 4.5% relative) still fails a wrong row, a
//! wrong pooling or a missing final norm, which move the vector by 30% or more.
#![cfg(feature = "cuda")]

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::model::Model;
use llorch::session::embed::{embed, EmbedOptions, Pooling};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn real_qwen_embeddings_gpu_equal_cpu() {
    let Some((path, gpu_ctx)) = common::real_model_and_gpu() else {
        return;
    };
    let cpu_ctx = Context::new(ContextOptions::default()).unwrap();
    let gpu = Model::load(&gpu_ctx, &path, None).unwrap();
    let cpu = Model::load(&cpu_ctx, &path, None).unwrap();
    // One token, a sentence, and a text longer than one CPU step (256 tokens).
    let long = "The licensor grants you a perpetual, worldwide, royalty-free license. ".repeat(30);
    let texts = ["Hello", "The capital of France is Paris.", long.as_str()];
    for pooling in [Pooling::Mean, Pooling::Last, Pooling::Cls] {
        let opts = EmbedOptions {
            pooling: Some(pooling),
            normalize: false,
        };
        let g = embed(&gpu, &texts, &opts).unwrap();
        let c = embed(&cpu, &texts, &opts).unwrap();
        for i in 0..texts.len() {
            let cos = cosine(g.row(i), c.row(i));
            let rel = common::rel_err(g.row(i), c.row(i));
            eprintln!(
                "{} input {i}: GPU vs CPU cosine 1 - {:.1e}, rel. {rel:.2e}",
                pooling.name(),
                1.0 - cos
            );
            assert!(cos > 0.999, "{} input {i}: cosine {cos}", pooling.name());
        }
    }
}
