//! The CPU engine against Hugging Face transformers on tiny random models of the families no
//! small real GGUF exists for here (Llama 3 with its rope scaling, Qwen3, Phi-3, GPT-OSS),
//! converted by our `scripts/hf-to-gguf`; references by `scripts/reference/tiny_models.py`
//! (HF's own forward, eager attention, f32, on the weights each GGUF holds), in
//! tests/fixtures/tiny/.
//!
//! For every variant (f16, q8_0, q4_k weights; GPT-OSS also q8_0 with MXFP4 experts) and
//! sequence (the 6 golden prompts; Phi-3 and GPT-OSS also a 96-token teacher-forced text past
//! their windows, and Phi-3's original context): the token ids of our tokenizer, the logits at
//! every position, every recorded stage, and a mixture's expert picks (every layer).
//!
//! Tolerances. f16 weights hold the models' (bf16-rounded) weights exactly, bar ~60 of a million
//! tiny ones moved by < 3e-8, and HF's reference ran on exactly what the file holds: our CPU
//! multiplies them in f32, so logits (|l| ~ 2-8) land within ~5e-5 of HF; the bound for
//! f32 weights is 1e-3. Quantized weights: the activations of the integer dot products are
//! quantized to ~15 bits per block of 32 (2^-15 of the block's largest value), the same
//! weights on both sides: ~2e-5 relative per product, ~1e-4 on the logits of the dense models
//! measured. GPT-OSS's fixture scales its experts' gate/up by 3 so that the clamp bites: its
//! activations have peaks ~7x their rms, so blocks quantize coarser relative to most of their
//! values and the error compounds through 2 expert layers: stages within 2e-4, logits within
//! 4e-3 measured (MXFP4 experts alike: their blocks are exact, the error is the activations').
//! Bound 5e-3. Stages: ‖ours − HF‖/‖HF‖ ≤ 1e-4 (f16) / 2e-3 (quantized). Argmax equal wherever
//! the top two differ by more than 2× the bound.

mod common;

use llorch::backend::{Context, ContextOptions, Logits};
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, KvType, Session, SessionOptions, StopReason};
use llorch::tokenizer::chat::ChatMessage;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn dir(model: &str) -> PathBuf {
    common::repo_root().join("tests/fixtures/tiny").join(model)
}

/// The reference index of a tiny model's fixture folder.
fn reference(d: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap()
}

/// The decode path: `ids` one token a step from an empty session of `opts`; the largest
/// |difference| of each step's logits from row `pos` of `want`.
fn decode_diff(m: &Arc<Model>, opts: &SessionOptions, ids: &[u32], want: &[f32]) -> f32 {
    let mut sess = Session::new(m.clone(), opts.clone()).unwrap();
    let vocab = m.vocab_size();
    let mut diff = 0f32;
    for (pos, &t) in ids.iter().enumerate() {
        let l = sess.eval(&[t], Logits::Last).unwrap();
        let row = &want[pos * vocab..(pos + 1) * vocab];
        diff = l
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(diff, f32::max);
    }
    diff
}

fn check(model: &str) {
    check_on(
        model,
        &Context::new(ContextOptions::default()).unwrap(),
        None,
        KvType::Auto,
        None,
    );
}

/// The checks on `ctx`'s device, with sessions of `kv_type` caches, on every variant or
/// `only` one; on a GPU (`gpu_logits`: its bound on the logits, the stages' bounds taken 10
/// times) also the decode path (one token a step, through the captured graph where the
/// model's step allows one) against the reference logits of every position.
fn check_on(
    model: &str,
    ctx: &Arc<Context>,
    gpu_logits: Option<f64>,
    kv_type: KvType,
    only: Option<&str>,
) {
    let d = dir(model);
    let r = reference(&d);
    let gpu = ctx.options.device != llorch::backend::Device::Cpu;
    let seqs: Vec<(String, String, Vec<u32>)> = r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["text"].as_str().unwrap_or("").to_string(),
                common::json_ids(&s["ids"]),
            )
        })
        .collect();
    let mut failures = Vec::new();
    for v in r["variants"].as_array().unwrap() {
        let variant = v["name"].as_str().unwrap();
        if only.is_some_and(|o| o != variant) {
            continue;
        }
        let exact = variant == "f16";
        let (logit_tol, stage_tol) = if exact { (1e-3, 1e-4) } else { (5e-3, 2e-3) };
        let (logit_tol, stage_tol) = match gpu_logits {
            Some(l) => (l, stage_tol * 10.0),
            None => (logit_tol, stage_tol),
        };
        let m: Arc<Model> = Model::load(ctx, &d.join(v["gguf"].as_str().unwrap()), None)
            .unwrap_or_else(|e| panic!("{model} {variant}: {e}"));
        let vocab = m.vocab_size();
        if variant == "f16" && !gpu {
            // Our tokenizer against HF's on the golden prompts and the 30 tricky strings.
            for (name, text, want) in &seqs {
                if name != "long" {
                    let got = m.tokenizer().encode(text, true, true).unwrap();
                    assert_eq!(&got, want, "{model}: ids of {text:?}");
                }
            }
            for t in r["tokenize"].as_array().unwrap() {
                let text = t["text"].as_str().unwrap();
                let got = m.tokenizer().encode(text, true, false).unwrap();
                assert_eq!(got, common::json_ids(&t["ids"]), "{model}: ids of {text:?}");
            }
        }
        for (name, _, seq_ids) in &seqs {
            let Some(s) = v["sequences"].get(name) else {
                continue;
            };
            // A session sized to the sequence (Phi-3 picks its LongRoPE factors by it, as HF
            // picks them by the sequence's length).
            let n_ctx = seq_ids.len().next_power_of_two().max(16) as u32;
            let opts = SessionOptions {
                n_ctx,
                seed: 0,
                kv_type,
            };
            let mut sess = Session::new(m.clone(), opts.clone()).unwrap();
            sess.set_taps(true);
            let logits = sess.eval(seq_ids, Logits::All).unwrap();
            let taps = sess.take_taps();
            let mut worst_stage = (0.0f64, String::new());
            for st in s["stages"].as_array().unwrap() {
                let stage = st["name"].as_str().unwrap();
                let want = common::read_f32(&d.join(st["file"].as_str().unwrap()));
                if stage == "logits" {
                    let diff = logits
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max) as f64;
                    eprintln!("{model} {variant} {name}: logits max |diff| {diff:.2e}");
                    if diff > logit_tol {
                        failures.push(format!("{model} {variant} {name}: logits {diff:.2e}"));
                    }
                    for (pos, row) in want.chunks(vocab).enumerate() {
                        let got = &logits[pos * vocab..(pos + 1) * vocab];
                        let mut sorted = row.to_vec();
                        sorted.sort_by(|a, b| b.total_cmp(a));
                        let arg = |x: &[f32]| {
                            (0..x.len()).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap()
                        };
                        if (sorted[0] - sorted[1]) as f64 > 2.0 * logit_tol && arg(got) != arg(row)
                        {
                            failures.push(format!("{model} {variant} {name}: argmax at {pos}"));
                        }
                    }
                    continue;
                }
                let Some(tap) = common::find_tap(&taps, stage) else {
                    failures.push(format!("{model} {variant} {name}: no tap for {stage}"));
                    continue;
                };
                let e = common::rel_err(&tap.data, &want);
                if e > worst_stage.0 {
                    worst_stage = (e, stage.to_string());
                }
                if e > stage_tol {
                    failures.push(format!("{model} {variant} {name}: {stage} {e:.2e}"));
                }
            }
            // A mixture's routing: the experts each token picked, per layer, in HF's order.
            if let Some(want) = s.get("expert_ids").and_then(Value::as_object) {
                for (layer, rows) in want {
                    let want: Vec<u32> = rows
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(common::json_ids)
                        .collect();
                    let got = common::find_tap(&taps, &format!("{layer}.expert_ids"))
                        .map(|t| t.data.iter().map(|&e| e as u32).collect::<Vec<u32>>());
                    if got.as_ref() != Some(&want) {
                        failures.push(format!("{model} {variant} {name}: {layer} expert ids"));
                    }
                }
            }
            eprintln!(
                "{model} {variant} {name}: worst stage {} {:.2e}",
                worst_stage.1, worst_stage.0
            );
            if gpu {
                // The decode path: one token a step from an empty cache.
                let want = common::read_f32(
                    &d.join(
                        s["stages"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|st| st["name"] == "logits")
                            .unwrap()["file"]
                            .as_str()
                            .unwrap(),
                    ),
                );
                let diff = decode_diff(&m, &opts, seq_ids, &want);
                eprintln!("{model} {variant} {name}: decode path logits max |diff| {diff:.2e}");
                if diff as f64 > logit_tol {
                    failures.push(format!(
                        "{model} {variant} {name}: decode logits {diff:.2e}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn llama3_matches_hf() {
    check("llama3");
}

#[test]
fn qwen3_matches_hf() {
    check("qwen3");
}

#[test]
fn phi3_matches_hf() {
    check("phi3");
}

#[test]
fn gpt_oss_matches_hf() {
    check("gpt-oss");
}

/// The harmony format through the file's chat template: the rendered turn, its special
/// tokens, and a generation that ends on `<|return|>` (forced by a logit bias: random weights
/// would not pick it) but runs on past `<|end|>`, which only closes a harmony message.
#[test]
fn gpt_oss_harmony_turns_end_on_return() {
    let d = dir("gpt-oss");
    let ctx = Context::new(ContextOptions::default()).unwrap();
    let r = reference(&d);
    let gguf = r["variants"][0]["gguf"].as_str().unwrap();
    let m = Model::load(&ctx, &d.join(gguf), None).unwrap();
    let msg = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    let prompt = m
        .apply_chat_template(&[msg("user", "Hi")], true, None)
        .unwrap();
    assert_eq!(
        prompt,
        "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    );
    let tok = m.tokenizer();
    let id = |t: &str| tok.special_id(t).unwrap();
    // The special tokens of the turn, in order, each one token (the text between is words).
    let specials: Vec<u32> = tok
        .encode(&prompt, true, false)
        .unwrap()
        .into_iter()
        .filter(|&t| tok.token_piece(t).is_some_and(|p| p.starts_with("<|")))
        .collect();
    let want = ["<|start|>", "<|message|>", "<|end|>", "<|start|>"].map(id);
    assert_eq!(specials, want);
    assert!(tok.is_eog(id("<|return|>")) && tok.is_eog(id("<|endoftext|>")));
    assert!(!tok.is_eog(id("<|end|>")));
    let generate = |forced: &str| {
        let mut s = Session::new(m.clone(), SessionOptions::default()).unwrap();
        let p = GenerateParams {
            max_tokens: 3,
            sampling: SamplingParams {
                logit_bias: vec![(id(forced), 100.0)],
                ..Default::default()
            },
            ..Default::default()
        };
        s.generate(&prompt, &p, &mut |_, _| true).unwrap()
    };
    let stats = generate("<|return|>");
    assert_eq!(
        (stats.stop_reason, stats.generated_tokens),
        (StopReason::Eos, 1)
    );
    let stats = generate("<|end|>");
    assert_eq!(
        (stats.stop_reason, stats.generated_tokens),
        (StopReason::Limit, 3)
    );
}

/// GPT-OSS's prompt path (the 96-token text in one step: each expert's products over all
/// the tokens that picked it, attention of every query at once) against its decode path (one
/// token a step from an empty cache, past the window of 16), every variant; a routing, cache
/// or window slip moves logits by ~1. f16 weights: the same arithmetic per token row, equal
/// bits measured; bound 1e-5. Quantized: the two paths' attention sums differ in their last
/// bits (~5e-7), and that flips roundings of the 16-bit activations (a step is 2^-15 of a
/// block's largest value, ~2e-5 on a product): the paths differ at the quantization's noise
/// level, up to 1.3e-3 on the logits measured (the dense Phi-3 q8_0 shows 5e-4); bound the HF
/// one, 5e-3.
#[test]
fn gpt_oss_prompt_and_decode_paths_agree() {
    let d = dir("gpt-oss");
    let r = reference(&d);
    let seq = r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "long")
        .unwrap();
    let seq_ids = common::json_ids(&seq["ids"]);
    let ctx = Context::new(ContextOptions::default()).unwrap();
    for v in r["variants"].as_array().unwrap() {
        let m = Model::load(&ctx, &d.join(v["gguf"].as_str().unwrap()), None).unwrap();
        let opts = SessionOptions {
            n_ctx: 128,
            seed: 0,
            ..Default::default()
        };
        let prompt = Session::new(m.clone(), opts.clone())
            .unwrap()
            .eval(&seq_ids, Logits::All)
            .unwrap();
        let diff = decode_diff(&m, &opts, &seq_ids, &prompt);
        let name = v["name"].as_str().unwrap();
        let bound = if name == "f32" || name == "f16" {
            1e-5
        } else {
            5e-3
        };
        eprintln!("gpt-oss {name}: prompt vs decode logits max |diff| {diff:.2e}");
        assert!(diff <= bound, "{name}: {diff}");
    }
}

/// A context on GPU 0, or none (the test is skipped) where this machine has no CUDA device.
#[cfg(feature = "cuda")]
fn gpu() -> Option<Arc<Context>> {
    let opts = ContextOptions {
        device: llorch::backend::Device::Cuda(0),
        ..ContextOptions::default()
    };
    Context::new(opts)
        .map_err(|e| eprintln!("skipped: no CUDA device ({e})"))
        .ok()
}

/// The same models on the GPU, prompt and decode paths (one token a step, through the captured
/// graph where the model's step allows one), against the same HF references, with the GPU's
/// default (f16) KV cache.
/// Tolerance: the f16 cache rounds every key and value (2^-11 relative), and the quantized
/// variants' prompt products round their activations to f16 too (F16 weights' products are
/// exact: gemm_parts). Emulated on the CPU (f16 rounding of the cache, of the prompt
/// products' inputs, against these references, 2026-12-06): the cache alone moves the logits
/// up to 4.0e-3 (llama3), 4.9e-3 (qwen3), 5.5e-3 (phi3), the f16 inputs alone up to 8.8e-3,
/// both 1.15e-2 (phi3's 96-token text); measured on an H100 before the exact products up to
/// 7.1e-3 on the prompts and 1.36e-2 on phi3's long text (q4_k), decode paths up to 5.6e-3.
/// Bound 2e-2 on the logits for every variant; stages 10 times the CPU's.
#[cfg(feature = "cuda")]
#[test]
fn tiny_models_on_gpu_match_hf() {
    let Some(ctx) = gpu() else {
        return;
    };
    for model in ["llama3", "qwen3", "phi3"] {
        check_on(model, &ctx, Some(2e-2), KvType::Auto, None);
    }
}

/// Issue 15's bar on the GPU: exact weights (the f16 variant holds the models' values
/// exactly) with an f32 KV cache (`kv_type` f32) and exact prompt products (F16 weights'
/// activations split into two f16 parts, kernels/gemm_f16.cu): the logits within 1e-3 of
/// HF's f32 forward on every sequence, prompt and decode paths alike. What remains is f32
/// summation order (the CPU lands within 1.5e-5) and the GPU's expf/rsqrt.
#[cfg(feature = "cuda")]
#[test]
fn tiny_models_exact_on_gpu_match_hf() {
    let Some(ctx) = gpu() else {
        return;
    };
    for model in ["llama3", "qwen3", "phi3"] {
        check_on(model, &ctx, Some(1e-3), KvType::F32, Some("f16"));
    }
}

/// A session's greedy tokens from its prompt (`bench_tokens` of seed `i`), `kv_type` cache.
#[cfg(feature = "cuda")]
fn greedy(m: &Arc<Model>, i: usize, kv_type: KvType) -> Vec<u32> {
    let opts = SessionOptions {
        n_ctx: 128,
        seed: 0,
        kv_type,
    };
    let mut s = Session::new(m.clone(), opts).unwrap();
    let prompt = llorch::session::bench::bench_tokens(8 + 3 * i, m.vocab_size(), i as u64);
    let p = GenerateParams {
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    s.generate_tokens(&prompt, &p, &mut |_, _| true).unwrap();
    s.tokens()[prompt.len()..].to_vec()
}

/// Continuous batching over sessions of both cache types at once (kernels/attention_batch.cu
/// reads each row's cache type from its table entry): each session's greedy tokens as it
/// generates them alone. Exact weights make both paths f32-exact products, so a difference
/// can come only from a near-tie of the top two logits: at least 90% of the tokens equal up
/// to each session's first difference, and the first token always (a row read as the wrong
/// type gives garbage from its first token).
#[cfg(feature = "cuda")]
#[test]
fn gpu_batch_of_mixed_kv_types() {
    let Some(ctx) = gpu() else {
        return;
    };
    // Batched against alone, not against rows the prefix cache copied from the run alone.
    llorch::backend::cuda::set_prefix_cache(false);
    let m = Model::load(&ctx, &dir("qwen3").join("qwen3-f16.gguf"), None).unwrap();
    const N: usize = 6;
    let kv = |i: usize| {
        if i % 2 == 0 {
            KvType::F32
        } else {
            KvType::Auto
        }
    };
    let alone: Vec<Vec<u32>> = (0..N).map(|i| greedy(&m, i, kv(i))).collect();
    let before = m.batch_stats();
    let start = std::sync::Barrier::new(N);
    let batched: Vec<Vec<u32>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..N)
            .map(|i| {
                let (m, start) = (&m, &start);
                sc.spawn(move || {
                    start.wait();
                    greedy(m, i, kv(i))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = m.batch_stats();
    let (steps, seqs) = (after.steps - before.steps, after.seqs - before.seqs);
    let mut same = 0;
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        eprintln!(
            "session {i} ({:?}): {prefix} of {} tokens equal",
            kv(i),
            a.len()
        );
        assert!(prefix >= 1, "session {i}: the first batched token differs");
        same += prefix;
    }
    eprintln!("{seqs} sequence steps in {steps} batched steps");
    assert!(
        seqs as f64 > 2.0 * steps as f64,
        "the sessions did not step together"
    );
    assert!(same * 10 >= 9 * N * 24, "batched tokens differ from alone");
}

/// `kv_type` on the CPU: f32 is its own cache (the same logits as auto, bit for bit); f16
/// really rounds (the logits move) and stays close: K and V rounded to f16 (relative error
/// at most 2^-11) move these logits by a few 1e-3 (measured: see the message); 2e-2 is the
/// bound the GPU's f16 cache is held to on this model.
#[test]
fn cpu_kv_types() {
    let ctx = Context::new(ContextOptions::default()).unwrap();
    let m = Model::load(&ctx, &dir("qwen3").join("qwen3-f16.gguf"), None).unwrap();
    let ids = m
        .tokenizer()
        .encode("The quick brown fox", true, false)
        .unwrap();
    let logits = |kv_type| {
        let opts = SessionOptions {
            n_ctx: 32,
            seed: 0,
            kv_type,
        };
        Session::new(m.clone(), opts)?.eval(&ids, Logits::All)
    };
    let f32 = logits(KvType::F32).unwrap();
    assert_eq!(f32, logits(KvType::Auto).unwrap());
    let f16 = logits(KvType::F16).unwrap();
    let worst = f32
        .iter()
        .zip(&f16)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("f16 KV: largest logit difference from f32 KV {worst:.2e}");
    assert!(worst > 0.0 && worst <= 2e-2, "{worst}");
}

/// The token rows of a tap whose every value equals the other tap's row (`k` values a row).
#[cfg(feature = "cuda")]
fn same_rows(a: &[f32], b: &[f32], k: usize) -> Vec<bool> {
    a.chunks(k).zip(b.chunks(k)).map(|(x, y)| x == y).collect()
}

/// The largest |difference| of each position's logits, and whether its argmax agrees.
#[cfg(feature = "cuda")]
fn per_position(got: &[f32], want: &[f32], vocab: usize) -> Vec<(f32, bool)> {
    let arg = |x: &[f32]| (0..x.len()).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap();
    got.chunks(vocab)
        .zip(want.chunks(vocab))
        .map(|(g, w)| {
            let d = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            (d, arg(g) == arg(w))
        })
        .collect()
}

/// GPT-OSS on the GPU against the CPU (itself checked against HF by `gpt_oss_matches_hf`), every
/// variant (f16, q8_0, q4_k weights, MXFP4 experts) and sequence (the golden prompts and the
/// 96-token text past layer 0's window of 16): the prompt path with taps (router logits, the
/// picks, sinks in the attention, every stage), then the decode path (one token a step, the
/// mixture on the GPU throughout, replayed as a graph where the experts are quantized).
///
/// Tolerance. The GPU rounds prompt activations to f16 on the tensor cores and keeps the KV
/// cache in f16 (2^-11 relative each, ~1e-3 of the logits through two layers, as the dense tiny
/// models measure: bound 2e-2 there), and this fixture's experts amplify (gate/up scaled by 3 so
/// that the clamp bites; the CPU's own quantized paths differ from HF by 4e-3). A router whose
/// two best logits are closer than that rounding may pick differently on the two devices: then
/// that position's feed-forward takes another expert and its logits move by O(0.1) — a real
/// tie, not a bug. So: the picks agree on at least 95% of the (token, layer) rows; the logits
/// are within 3e-2 on at least 95% of the positions (those of agreeing picks all but the
/// few an earlier flip reaches through attention) and the argmax agrees on at least 95%;
/// stages other than the per-pick ones within 2e-2 relative (10x the CPU's quantized bound).
#[cfg(feature = "cuda")]
#[test]
fn gpt_oss_on_gpu_matches_the_cpu() {
    let Some(gpu) = gpu() else {
        return;
    };
    let cpu = Context::new(ContextOptions::default()).unwrap();
    let d = dir("gpt-oss");
    let r = reference(&d);
    const LOGITS: f32 = 3e-2;
    const STAGES: f64 = 2e-2;
    let per_pick = [
        "expert_ids",
        "expert_weights",
        "gate",
        "up",
        "swiglu",
        "expert_out",
    ];
    let mut failures = Vec::new();
    for v in r["variants"].as_array().unwrap() {
        let variant = v["name"].as_str().unwrap();
        let path = d.join(v["gguf"].as_str().unwrap());
        let mc = Model::load(&cpu, &path, None).unwrap();
        let mg = Model::load(&gpu, &path, None).unwrap_or_else(|e| panic!("{variant}: {e}"));
        let vocab = mc.vocab_size();
        // Per path: positions within the logits bound, argmax equal, all.
        let mut pooled: std::collections::BTreeMap<&str, (usize, usize, usize)> =
            Default::default();
        for s in r["sequences"].as_array().unwrap() {
            let name = s["name"].as_str().unwrap();
            let ids = common::json_ids(&s["ids"]);
            let n_ctx = ids.len().next_power_of_two().max(16) as u32;
            let run = |m: &Arc<Model>| {
                let mut sess = Session::new(
                    m.clone(),
                    SessionOptions {
                        n_ctx,
                        seed: 0,
                        ..Default::default()
                    },
                )
                .unwrap();
                sess.set_taps(true);
                let l = sess.eval(&ids, Logits::All).unwrap();
                (l, sess.take_taps())
            };
            let (lc, tc) = run(&mc);
            let (lg, tg) = run(&mg);
            let what = format!("gpt-oss {variant} {name}");
            // The picks, per layer; the tokens whose picks agree in every layer.
            let mut same_picks = vec![true; ids.len()];
            let (mut rows, mut agree) = (0usize, 0usize);
            for t in tc.iter().filter(|t| t.name == "expert_ids") {
                let Some(g) = tg.iter().find(|g| g.name == t.name && g.layer == t.layer) else {
                    failures.push(format!("{what}: no GPU expert_ids for layer {:?}", t.layer));
                    continue;
                };
                let k = t.data.len() / t.rows;
                let same = same_rows(&g.data, &t.data, k);
                for (all, &x) in same_picks.iter_mut().zip(&same) {
                    *all &= x;
                }
                rows += same.len();
                agree += same.iter().filter(|&&x| x).count();
            }
            eprintln!("{what}: picks agree on {agree} of {rows} (token, layer) rows");
            if rows == 0 || agree * 100 < rows * 95 {
                failures.push(format!("{what}: picks agree on {agree} of {rows}"));
            }
            // Every stage but the per-pick ones, over the tokens whose picks agree.
            let mut worst = (0f64, String::new());
            for t in tc.iter().filter(|t| !per_pick.contains(&t.name.as_str())) {
                let Some(g) = tg.iter().find(|g| g.name == t.name && g.layer == t.layer) else {
                    failures.push(format!("{what}: no GPU tap {} {:?}", t.name, t.layer));
                    continue;
                };
                let keep = |x: &[f32]| -> Vec<f32> {
                    if t.rows != ids.len() {
                        return x.to_vec();
                    }
                    let w = x.len() / t.rows;
                    let rows = x.chunks(w).zip(&same_picks).filter(|(_, &k)| k);
                    rows.flat_map(|(r, _)| r.iter().copied()).collect()
                };
                let e = common::rel_err(&keep(&g.data), &keep(&t.data));
                if e > worst.0 {
                    worst = (e, format!("{} {:?}", t.name, t.layer));
                }
                if e > STAGES {
                    failures.push(format!("{what}: {} {:?} {e:.2e}", t.name, t.layer));
                }
            }
            eprintln!("{what}: worst stage {} {:.2e}", worst.1, worst.0);
            // The logits of the prompt path, then of the decode path, against the CPU's.
            let decode = {
                let mut sess = Session::new(
                    mg.clone(),
                    SessionOptions {
                        n_ctx,
                        seed: 0,
                        ..Default::default()
                    },
                )
                .unwrap();
                let mut all = Vec::with_capacity(ids.len() * vocab);
                for &t in &ids {
                    all.extend(sess.eval(&[t], Logits::Last).unwrap());
                }
                all
            };
            for (path, got) in [("prompt", &lg), ("decode", &decode)] {
                let pos = per_position(got, &lc, vocab);
                let n = pos.len();
                let close = pos.iter().filter(|p| p.0 <= LOGITS).count();
                let argmax = pos.iter().filter(|p| p.1).count();
                let mut diffs: Vec<f32> = pos.iter().map(|p| p.0).collect();
                diffs.sort_by(f32::total_cmp);
                eprintln!(
                    "{what} {path}: logits |diff| median {:.2e} max {:.2e}; within {LOGITS:.0e} at \
                     {close} of {n}, argmax equal at {argmax}",
                    diffs[n / 2],
                    diffs[n - 1]
                );
                let c = pooled.entry(path).or_insert((0, 0, 0));
                *c = (c.0 + close, c.1 + argmax, c.2 + n);
            }
        }
        // The bars count every position of the variant's sequences (a short prompt alone
        // would turn 95% into "all": one near-tie among 16 positions).
        for (path, (close, argmax, n)) in pooled {
            eprintln!(
                "gpt-oss {variant} {path}: within bound at {close}/{n}, argmax at {argmax}/{n}"
            );
            if close * 100 < n * 95 || argmax * 100 < n * 95 {
                failures.push(format!(
                    "gpt-oss {variant} {path}: within bound at {close}/{n}, argmax at {argmax}/{n}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
