//! Continuous batching on the GPU: sessions of one model generating at once step together
//! (the products over all their rows, each row's attention over its own cache:
//! kernels/attention_batch.cu), and each session's greedy tokens match what it generates
//! alone. Synthetic model of the Qwen2 0.5B shape (`llorch::model::synth`).
//!
//! Not bit for bit: a large batch's products run on the tensor cores (f16 operands), a
//! session alone on the mat-vec kernels (16-bit inputs), so logits differ by ~1e-3 relative
//! (the parity tests' `GPU_PRODUCT`, through the layers); a small batch's products run on the
//! mat-vec kernels of several rows (the same sums as alone), but its attention on the batch
//! kernel (another summation order). A greedy pick flips only where the top two logits are
//! that close. On random synthetic weights such near-ties occur, so the test asks for ≥ 90%
//! of the generated tokens equal up to each session's first difference (a broken batch —
//! wrong cache, wrong position, a row's product landing in another row — gives garbage from
//! its first token). 3 sessions (padded to 4 rows) take the mat-vecs of 4 rows, 8 the
//! mat-vecs of 8 rows, 24 (32 rows) and 65 sessions (128 rows) the two-pass GEMM; with
//! `LLORCH_CUDA_MMQ=1`, 8 rows and more (`LLORCH_CUDA_MMQ_MIN`) the tensor-core products that
//! read the quantized weights (kernels/mmq.cu: the same integer dot products as a session
//! alone, another f32 order; 65 sessions are two of its input tiles).
//!
//! Without a GPU it prints `skipped: no CUDA device (<reason>)` on stderr and passes.
#![cfg(feature = "cuda")]

mod common;

use llorch::backend::Context;
use llorch::model::Model;
use llorch::session::bench::bench_tokens;
use llorch::session::{GenerateParams, Session, SessionOptions, StopReason};
use std::io::Write;
use std::sync::{Arc, Barrier};

fn say(s: &str) {
    let _ = std::io::stderr().write_all(format!("{s}\n").as_bytes());
}

fn gpu_model(test: &str) -> Option<Arc<Model>> {
    let (ctx, path) = gpu_file(test)?;
    let m = Model::load(&ctx, &path, None).unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    Some(m)
}

fn gpu_file(test: &str) -> Option<(Arc<Context>, std::path::PathBuf)> {
    common::gpu_synth_file(test, "qwen2-0.5b", 512)
}

const GEN: u32 = 24;

fn generate(m: &Arc<Model>, i: usize) -> Vec<u32> {
    let mut s = Session::new(
        m.clone(),
        SessionOptions {
            // The longest prompt (12 + 5 * 64 tokens for 65 sessions) and its tokens fit.
            n_ctx: 512,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = bench_tokens(12 + 5 * i, m.vocab_size(), i as u64);
    let p = GenerateParams {
        max_tokens: GEN,
        ignore_eos: true,
        ..Default::default()
    };
    let stats = s.generate_tokens(&prompt, &p, &mut |_, _| true).unwrap();
    assert_eq!(stats.stop_reason, StopReason::Limit, "session {i}");
    s.tokens()[prompt.len()..].to_vec()
}

#[test]
fn batched_greedy_matches_alone() {
    let Some(m) = gpu_model("batched_greedy_matches_alone") else {
        return;
    };
    // Each session's batched run against its run alone, not against rows the prefix cache
    // copied from that earlier run.
    llorch::backend::cuda::set_prefix_cache(false);
    for seqs in [8, 3, 24, 65] {
        say(&format!("{seqs} sessions:"));
        batched_matches_alone(&m, seqs);
    }
}

/// `seqs` sessions generating at once against each alone.
fn batched_matches_alone(m: &Arc<Model>, seqs: usize) {
    let alone: Vec<Vec<u32>> = (0..seqs).map(|i| generate(m, i)).collect();
    let before = m.batch_stats();
    let start = Arc::new(Barrier::new(seqs));
    let handles: Vec<_> = (0..seqs)
        .map(|i| {
            let (m, start) = (m.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                generate(&m, i)
            })
        })
        .collect();
    let batched: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let after = m.batch_stats();
    let (steps, rows) = (after.steps - before.steps, after.seqs - before.seqs);
    let mut same = 0;
    for (i, (a, b)) in alone.iter().zip(&batched).enumerate() {
        let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        say(&format!(
            "session {i}: {prefix} of {GEN} tokens equal before the first difference"
        ));
        assert!(
            prefix >= 1,
            "session {i}: the first batched token already differs"
        );
        same += prefix;
    }
    say(&format!(
        "{same} of {} tokens equal; {rows} sequence steps in {steps} steps",
        seqs * GEN as usize
    ));
    // Together: more than half of them a step on average (at most 2 for the larger batches,
    // whose sessions start and finish a few steps apart).
    assert!(
        rows as f64 / steps as f64 > (seqs as f64 / 2.0).min(2.0),
        "the sessions did not step together"
    );
    assert!(
        same * 10 >= 9 * seqs * GEN as usize,
        "batched tokens differ from alone"
    );
}
