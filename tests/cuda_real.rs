//! The real Qwen2.5-Coder-0.5B on the GPU against the CPU engine: the greedy 32-token
//! continuations of the six golden prompts must be equal, token for token. Needs a GPU and
//! the model file named by LLORCH_REAL_MODEL (the device machine gets it in pieces, see
//! docs/cuda.md); otherwise it prints why it skips and passes.
#![cfg(feature = "cuda")]

mod common;

use llorch::backend::Context;
use llorch::backend::Logits;
use llorch::backend::{ContextOptions, Device};
use llorch::model::Model;
use llorch::sampling::argmax;
use llorch::session::{Session, SessionOptions};
use std::sync::Arc;

fn greedy(model: &Arc<Model>, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(
        model.clone(),
        SessionOptions {
            n_ctx: 256,
            seed: 0,
        },
    )
    .unwrap();
    let mut logits = s.eval(prompt, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = s.eval(&[t], Logits::Last).unwrap();
    }
    out
}

#[test]
fn real_qwen_greedy_gpu_equals_cpu() {
    let Some(path) = std::env::var_os("LLORCH_REAL_MODEL") else {
        eprintln!("skipped: LLORCH_REAL_MODEL is not set (the real model file for the GPU check)");
        return;
    };
    let gpu_ctx = match Context::new(ContextOptions {
        device: Device::Cuda(0),
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            return;
        }
    };
    let cpu_ctx = Context::new(ContextOptions::default()).unwrap();
    let path = std::path::PathBuf::from(path);
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
