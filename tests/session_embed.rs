//! Embeddings (src/session/embed.rs) against HF transformers: LlamaModel's last_hidden_state on
//! the dequantized weights of the real SmolLM2-135M, pooled (mean, last, CLS) by
//! scripts/reference/embeddings_hf.py into tests/fixtures/embed/.
//!
//! Tolerances. The pooled vectors are the final norm's output, which engine_stages checks
//! against an f64 reference within 2e-3 relative (our matrices quantize each activation block
//! to 8 bits, a relative error near 2^-15 per product, accumulated over 30 layers; measured
//! about 3e-4 on the logits). Here the same bound, 2e-3 relative L2 error per vector, and the
//! cosine similarity it implies (1 - e²/2 > 0.999998). A wrong pooling (mean for last, or an
//! unnormed row) misses by 30% or more; the inputs differ from each other by more than 20%.
//! Measured: at most 2.5e-4 relative (cosine 1 - 3e-8) over the 5 inputs and 3 poolings.

mod common;

use common::EmbedReference;
use llorch::backend::{Context, ContextOptions};
use llorch::model::Model;
use llorch::session::embed::{embed, embed_tokens, EmbedOptions, Embeddings, Pooling};
use std::sync::Arc;

const TOL: f64 = 2e-3;

fn model() -> Arc<Model> {
    common::cpu_model(common::SMOLLM2)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn pooled_vectors_match_hf_transformers() {
    let fx = EmbedReference::load();
    let model = model();
    let texts: Vec<&str> = fx.texts.iter().map(String::as_str).collect();
    // Our tokenizer gives HF's ids, so the vectors compare the forward passes alone.
    for (t, ids) in texts.iter().zip(&fx.ids) {
        assert_eq!(
            &model.tokenizer().encode(t, false, true).unwrap(),
            ids,
            "{t}"
        );
    }
    assert!(
        fx.ids.iter().any(|i| i.len() > 256),
        "no input spans two steps"
    );
    for pooling in [Pooling::Mean, Pooling::Last, Pooling::Cls] {
        let opts = EmbedOptions {
            pooling: Some(pooling),
            normalize: false,
        };
        let e = embed(&model, &texts, &opts).unwrap();
        assert_eq!(
            (e.dim, e.pooling, e.data.len()),
            (fx.dim, pooling, texts.len() * fx.dim)
        );
        for i in 0..texts.len() {
            let (got, want) = (e.row(i), fx.want(i, pooling));
            let err = common::rel_err(got, want);
            let cos = cosine(got, want);
            eprintln!(
                "{:>4} {} tokens: rel. error {err:.2e}, cosine 1 - {:.1e}",
                pooling.name(),
                fx.ids[i].len(),
                1.0 - cos
            );
            assert!(err <= TOL, "{} input {i}: {err} > {TOL}", pooling.name());
            assert!(
                cos >= 1.0 - TOL * TOL / 2.0,
                "{} input {i}: cosine {cos}",
                pooling.name()
            );
        }
    }
    // The inputs are far apart, so matching the right one means something.
    let m = |i| fx.want(i, Pooling::Mean);
    assert!(common::rel_err(m(0), m(1)) > 0.2);
    // And so are the poolings of one input.
    assert!(common::rel_err(fx.want(1, Pooling::Mean), fx.want(1, Pooling::Last)) > 0.3);
}

#[test]
fn normalized_default_pooling_and_batch_independence() {
    let fx = EmbedReference::load();
    let model = model();
    let texts: Vec<&str> = fx.texts.iter().map(String::as_str).take(3).collect();
    // SmolLM2's file has no llama.pooling_type: a decoder LM pools its last token.
    assert!(model.gguf().get("llama.pooling_type").is_none());
    assert_eq!(Pooling::of_model(&model).unwrap(), Pooling::Last);
    let unit = embed(
        &model,
        &texts,
        &EmbedOptions {
            pooling: None,
            normalize: true,
        },
    )
    .unwrap();
    assert_eq!(unit.pooling, Pooling::Last);
    for i in 0..texts.len() {
        // Unit length within f32 rounding of 576 values.
        assert!(
            (norm(unit.row(i)) - 1.0).abs() < 1e-6,
            "{}",
            norm(unit.row(i))
        );
        let want = fx.want(i, Pooling::Last);
        let scaled: Vec<f32> = want
            .iter()
            .map(|x| (*x as f64 / norm(want)) as f32)
            .collect();
        assert!(common::rel_err(unit.row(i), &scaled) <= TOL);
    }
    // An input's vector does not depend on what else is in the batch, or on its place
    // (each runs from an empty cache): the same arithmetic, so equal to f32 rounding.
    let alone = |i: usize| -> Embeddings {
        embed_tokens(
            &model,
            &[&fx.ids[i]],
            &EmbedOptions {
                pooling: Some(Pooling::Last),
                normalize: true,
            },
        )
        .unwrap()
    };
    for i in 0..texts.len() {
        let e = common::rel_err(alone(i).row(0), unit.row(i));
        assert!(e < 1e-6, "input {i} alone differs by {e}");
    }
}

#[test]
fn bad_inputs_are_named_errors() {
    let model = model();
    let opts = EmbedOptions::default();
    let e = embed(&model, &["fine", ""], &opts).unwrap_err().to_string();
    assert!(e.contains("input 1 is empty"), "{e}");
    let too_long = vec![1u32; model.context_length() as usize + 1];
    let e = embed_tokens(&model, &[&[1, 2], &too_long], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("input 1 has") && e.contains("context"), "{e}");
    let e = embed_tokens(&model, &[&[u32::MAX]], &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    // No inputs: no vectors.
    let none = embed(&model, &[], &opts).unwrap();
    assert!(none.data.is_empty() && none.dim == 576);
}

/// The other architectures: Qwen2 (biases, untied head; the f64 numpy reference) and Gemma 3
/// (embedding scale, sandwich norms, the stored `1 + w` final norm; HF transformers): every
/// position's final norm of prompt 0 is in tests/fixtures/reference/<model>/final_norm.bin,
/// pooled here three ways. Tolerance as above (engine_stages checks the same rows at 2e-3).
#[test]
fn pooled_vectors_match_the_stage_references_of_qwen2_and_gemma3() {
    for name in [common::QWEN_05B, common::GEMMA3] {
        let dir = common::repo_root()
            .join("tests/fixtures/reference")
            .join(name);
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap())
                .unwrap();
        let ids = common::json_ids(&index["ids"]);
        let rows = common::read_f32(&dir.join("final_norm.bin"));
        let dim = rows.len() / ids.len();
        let row = |i: usize| &rows[i * dim..(i + 1) * dim];
        let mean: Vec<f32> = (0..dim)
            .map(|j| {
                ((0..ids.len()).map(|i| row(i)[j] as f64).sum::<f64>() / ids.len() as f64) as f32
            })
            .collect();
        let ctx = Context::new(ContextOptions::default()).unwrap();
        let model = Model::load(&ctx, &common::model_path(name), None).unwrap();
        for (pooling, want) in [
            (Pooling::Mean, &mean[..]),
            (Pooling::Last, row(ids.len() - 1)),
            (Pooling::Cls, row(0)),
        ] {
            let opts = EmbedOptions {
                pooling: Some(pooling),
                normalize: false,
            };
            let e = embed_tokens(&model, &[&ids], &opts).unwrap();
            let err = common::rel_err(e.row(0), want);
            eprintln!("{name} {}: rel. error {err:.2e}", pooling.name());
            assert!(err <= TOL, "{name} {}: {err}", pooling.name());
        }
    }
}
