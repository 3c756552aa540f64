//! Continuous batching (the model's batcher steps its generating sessions together): a
//! session's tokens do not depend on what else is in the batch, bit for bit on the CPU —
//! greedy and seeded sampling, sessions joining mid-way, a long prompt fed between the
//! others' decoding steps, a neighbour cancelled; and the steps really are shared.
//! Real models: SmolLM2-135M and Qwen2.5-Coder-0.5B (whose products mix the wide kernels and
//! the 8-bit-plane ones: 896-value K-quant rows).

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, StopReason};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn load(name: &str) -> Arc<Model> {
    let ctx = Context::new(ContextOptions::default()).unwrap();
    Model::load(&ctx, &common::model_path(name), None).unwrap()
}

/// Request `i`: its prompt and parameters (even: greedy; odd: seeded sampling).
fn request(i: usize, max_tokens: u32) -> (String, GenerateParams, u64) {
    let topics = [
        "the sea",
        "a red fox",
        "Rust's borrow checker",
        "autumn rain",
        "a lighthouse",
        "binary search",
        "the moon",
        "coffee",
    ];
    let prompt = format!(
        "Write two sentences about {}. Number {i} of a series:",
        topics[i % topics.len()]
    );
    let mut p = GenerateParams {
        max_tokens,
        ..Default::default()
    };
    if i % 2 == 1 {
        p.sampling = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            ..SamplingParams::default()
        };
    } else {
        p.sampling = SamplingParams::default(); // greedy
    }
    (prompt, p, 1000 + i as u64)
}

/// The conversation's tokens after generating request `i` (prompt text `prompt`) in a fresh
/// session, and why it stopped.
fn run(m: &Arc<Model>, prompt: &str, p: &GenerateParams, seed: u64) -> (Vec<u32>, StopReason) {
    let mut s = common::session(m, 2048, seed);
    let st = s.generate(prompt, p, &mut |_, _| true).unwrap();
    (s.tokens(), st.stop_reason)
}

/// Every request alone, one after another.
fn alone(m: &Arc<Model>, reqs: &[(String, GenerateParams, u64)]) -> Vec<(Vec<u32>, StopReason)> {
    reqs.iter()
        .map(|(pr, p, seed)| run(m, pr, p, *seed))
        .collect()
}

/// Every request in its own thread at once (started together, or `delay(i)` later).
fn together(
    m: &Arc<Model>,
    reqs: &[(String, GenerateParams, u64)],
    delay: impl Fn(usize) -> Duration,
) -> Vec<(Vec<u32>, StopReason)> {
    let start = Arc::new(Barrier::new(reqs.len()));
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (pr, p, seed))| {
            let (m, start) = (m.clone(), start.clone());
            let wait = delay(i);
            std::thread::spawn(move || {
                start.wait();
                std::thread::sleep(wait);
                run(&m, &pr, &p, seed)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check_equal(name: &str, got: &[(Vec<u32>, StopReason)], want: &[(Vec<u32>, StopReason)]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{name}: request {i} differs batched vs alone");
    }
}

fn batching_is_invariant(name: &str) {
    let m = load(name);
    // 12: more decoding rows than the decode kernel's 8 columns, so full steps take the
    // prompt tile (the same arithmetic per column).
    let reqs: Vec<_> = (0..12).map(|i| request(i, 24)).collect();
    let want = alone(&m, &reqs);
    let before = m.batch_stats();
    let got = together(&m, &reqs, |_| Duration::ZERO);
    let after = m.batch_stats();
    check_equal(name, &got, &want);
    let (steps, seqs) = (after.steps - before.steps, after.seqs - before.seqs);
    eprintln!("{name}: {seqs} sequence steps in {steps} steps");
    // 12 sessions of ~24 decoding steps each: alone they would take ~300 steps; batched,
    // the decoding steps carry several sessions each (the mean stays above 2 even with the
    // prompts, one per step, and the stragglers).
    assert!(
        seqs as f64 / steps as f64 > 2.0,
        "{name}: mean batch {seqs}/{steps}: the sessions did not step together"
    );
    assert_eq!(after.generating, 0, "every generation left the batcher");

    // Sessions joining at different times, one of them with a long prompt fed in chunks
    // between the others' decoding steps.
    let mut reqs: Vec<_> = (0..6).map(|i| request(i, 32)).collect();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    reqs.push((format!("{long}\nSummarize:"), request(6, 16).1, 7));
    let want = alone(&m, &reqs);
    let got = together(&m, &reqs, |i| Duration::from_millis(40 * i as u64));
    check_equal(&format!("{name} staggered"), &got, &want);
}

#[test]
fn smollm2_batched_equals_alone() {
    batching_is_invariant(common::SMOLLM2);
}

#[test]
fn qwen_batched_equals_alone() {
    batching_is_invariant(common::QWEN_05B);
}

/// A session cancelled in the middle of a batch stops (reason `Cancelled`, usable after);
/// its neighbours go on unchanged.
#[test]
fn cancel_in_a_batch_leaves_the_others() {
    let m = load(common::SMOLLM2);
    let reqs: Vec<_> = (0..4).map(|i| request(i, 40)).collect();
    let want = alone(&m, &reqs);
    let start = Arc::new(Barrier::new(reqs.len()));
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (pr, p, seed))| {
            let (m, start) = (m.clone(), start.clone());
            std::thread::spawn(move || {
                let mut s = common::session(&m, 2048, seed);
                let flag = s.cancel_flag();
                start.wait();
                let mut n = 0;
                let st = s
                    .generate(&pr, &p, &mut |_, _| {
                        n += 1;
                        if i == 1 && n == 5 {
                            flag.store(true, Ordering::SeqCst);
                        }
                        true
                    })
                    .unwrap();
                // The cancelled session stays usable.
                if i == 1 {
                    let again = s.generate(" And", &reqs_short(), &mut |_, _| true).unwrap();
                    assert_ne!(again.stop_reason, StopReason::Cancelled);
                }
                (s.tokens(), st.stop_reason)
            })
        })
        .collect();
    let got: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got[1].1, StopReason::Cancelled);
    for i in [0, 2, 3] {
        assert_eq!(
            got[i], want[i],
            "request {i} changed by a cancelled neighbour"
        );
    }
}

fn reqs_short() -> GenerateParams {
    GenerateParams {
        max_tokens: 4,
        ..Default::default()
    }
}
