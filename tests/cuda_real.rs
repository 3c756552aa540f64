//! The real Qwen2.5-Coder-0.5B on the GPU against the CPU engine: the greedy 32-token
//! continuations of the six golden prompts must be equal, token for token. Needs a GPU and
//! the model file named by LLORCH_REAL_MODEL (the device machine gets it in pieces, see
//! docs/cuda.md); otherwise it prints why it skips and passes.
#![cfg(feature = "cuda")]

mod common;

use llorch::backend::Context;
use llorch::backend::ContextOptions;
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Session, SessionOptions};
use std::sync::Arc;

fn greedy(model: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(
        model.clone(),
        SessionOptions {
            n_ctx: 256,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap();
    common::greedy_tokens(&mut s, prompt, n)
}

#[test]
fn real_qwen_greedy_gpu_equals_cpu() {
    let Some((path, gpu_ctx)) = common::real_model_and_gpu() else {
        return;
    };
    let cpu_ctx = Context::new(ContextOptions::default()).unwrap();
    let gpu = Model::load(&gpu_ctx, &path, None).unwrap();
    let cpu = Model::load(&cpu_ctx, &path, None).unwrap();
    let golden = common::golden_json("qwen25coder05b.json");
    let mut same = 0;
    for p in golden["prompts"].as_array().unwrap() {
        let ids: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = p["greedy32_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let g = greedy(&gpu, &ids, 32);
        let c = greedy(&cpu, &ids, 32);
        eprintln!(
            "{:?}: GPU {} CPU, GPU {} reference",
            p["text"].as_str().unwrap(),
            if g == c { "==" } else { "!=" },
            if g == want { "==" } else { "!=" }
        );
        same += (g == c) as usize;
    }
    eprintln!("GPU greedy equals CPU greedy for {same}/6 golden prompts");
    assert_eq!(
        same, 6,
        "the GPU's greedy continuations differ from the CPU's"
    );
}

/// The tokens one generation adds to the conversation.
fn turn(s: &mut Session, prompt: &str, p: &GenerateParams) -> Vec<u32> {
    let before = s.tokens().len();
    let add_bos = before == 0;
    let n_prompt = s
        .model()
        .tokenizer()
        .encode(prompt, true, add_bos)
        .unwrap()
        .len();
    s.generate(prompt, p, &mut |_, _| true).unwrap();
    s.tokens()[before + n_prompt..].to_vec()
}

/// Save -> restore (a new GPU session) -> continue equals the uninterrupted GPU run, token
/// for token, greedy and seeded; a fork continues alike; a GPU state restores on the CPU
/// (the rows travel as f32) and its KV rows come back exactly (f16 values widen exactly).
/// Greedy log-probabilities on the GPU (the row is downloaded then) keep the tokens of the
/// on-device pick. Needs a GPU and LLORCH_REAL_MODEL, else it skips.
#[test]
fn real_qwen_gpu_state_save_restore_continue() {
    let Some((path, gpu_ctx)) = common::real_model_and_gpu() else {
        return;
    };
    let gpu = Model::load(&gpu_ctx, &path, None).unwrap();
    let new = |seed| {
        Session::new(
            gpu.clone(),
            SessionOptions {
                n_ctx: 512,
                seed,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (t1, t2) = ("def fibonacci(n):", "\n\ndef factorial(n):");
    let seeded = GenerateParams {
        max_tokens: 24,
        sampling: SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            ..Default::default()
        },
        ..Default::default()
    };
    let greedy = GenerateParams {
        max_tokens: 24,
        ..Default::default()
    };
    for (name, p) in [("greedy", &greedy), ("seeded", &seeded)] {
        let mut a = new(3);
        let a1 = turn(&mut a, t1, p);
        let a2 = turn(&mut a, t2, p);
        let mut b = new(3);
        assert_eq!(turn(&mut b, t1, p), a1, "{name}");
        let bytes = b.save_state().unwrap();
        let mut fork = b.fork().unwrap();
        let mut c = new(99);
        c.restore_state(&bytes).unwrap();
        let c2 = turn(&mut c, t2, p);
        let f2 = turn(&mut fork, t2, p);
        eprintln!(
            "{name}: restored {} fork {} ({} tokens)",
            c2 == a2,
            f2 == a2,
            a2.len()
        );
        assert_eq!(c2, a2, "{name}: restored GPU run");
        assert_eq!(f2, a2, "{name}: forked GPU run");
        // The rows come back as they were saved.
        assert!(c.save_state().unwrap().len() > bytes.len());
        let mut d = new(3);
        d.restore_state(&bytes).unwrap();
        assert_eq!(
            d.save_state().unwrap(),
            bytes,
            "{name}: GPU rows round trip"
        );
        // On the CPU too (its f32 cache holds the f16 values exactly).
        let cpu_ctx = Context::new(ContextOptions::default()).unwrap();
        let cpu = Model::load(&cpu_ctx, &path, None).unwrap();
        let mut e = Session::new(
            cpu,
            SessionOptions {
                n_ctx: 512,
                seed: 0,
                ..Default::default()
            },
        )
        .unwrap();
        e.restore_state(&bytes).unwrap();
        assert_eq!(
            e.save_state().unwrap(),
            bytes,
            "{name}: GPU state on the CPU"
        );
    }
    let with_lp = GenerateParams {
        logprobs: 4,
        ..greedy.clone()
    };
    let mut g = new(0);
    let mut lps = Vec::new();
    g.generate_pieces(t1, &with_lp, &mut |p| {
        lps.extend(p.logprobs.iter().map(|l| l.token));
        true
    })
    .unwrap();
    let mut plain = new(0);
    let want = turn(&mut plain, t1, &greedy);
    assert_eq!(lps, want[..lps.len()], "greedy with logprobs on the GPU");
}
