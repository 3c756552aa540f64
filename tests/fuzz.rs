//! The fuzzing job (issue 14, item 6): the GGUF reader, the tokenizers and the chat template
//! renderer, each for a fixed budget of cases from a fixed seed, printing the cases run and how
//! they ended. The cases and properties live in fuzz/src/ (shared with the `cargo fuzz` targets
//! in fuzz/, for longer runs); see each module's comment.
//!
//! Ignored in a plain `cargo test` (40 s on 2 quiet cores, 2 min busy); `scripts/test-all`
//! runs them:
//!     cargo test --release --test fuzz -- --ignored --nocapture
//! `LLORCH_FUZZ_SEED` picks another seed, `LLORCH_FUZZ_SCALE` multiplies the budgets.

mod common;

#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/chat_template.rs"]
mod chat_template;
#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/gguf.rs"]
mod gguf;
#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/rng.rs"]
mod rng;
#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/tokenizer.rs"]
mod tokenizer;

use common::*;
use llorch::gguf::Gguf;
use llorch::tokenizer::Tokenizer;
use rng::Rng;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

fn seed() -> u64 {
    std::env::var("LLORCH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x11_0c4)
}

fn cases(base: usize) -> usize {
    let scale: usize = std::env::var("LLORCH_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    base * scale
}

/// Run `case(rng, i)` `n` times; a panic fails the test naming the case to replay.
fn run<T: Ord + std::fmt::Debug>(what: &str, n: usize, mut case: impl FnMut(&mut Rng, usize) -> T) {
    let seed = seed();
    let mut tally: BTreeMap<T, usize> = BTreeMap::new();
    let t0 = Instant::now();
    for i in 0..n {
        // Each case has its own generator, so one can be replayed alone.
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        match catch_unwind(AssertUnwindSafe(|| case(&mut rng, i))) {
            Ok(outcome) => *tally.entry(outcome).or_default() += 1,
            Err(_) => panic!("fuzz {what}: case {i} of seed {seed} failed (message above)"),
        }
    }
    let counts: Vec<String> = tally.iter().map(|(o, c)| format!("{o:?} {c}")).collect();
    println!(
        "fuzz {what}: {n} cases, seed {seed}, {:.1} s; {}",
        t0.elapsed().as_secs_f64(),
        counts.join(", ")
    );
}

#[test]
#[ignore = "the fuzz job: scripts/test-all runs it with --ignored"]
fn fuzz_gguf() {
    let files = gguf::valid_files();
    let real: Vec<Vec<u8>> = [SMOLLM2, QWEN_05B]
        .iter()
        .map(|m| gguf::with_real_metadata(&Gguf::open(&model_path(m)).unwrap()))
        .collect();
    let n = cases(80_000);
    let (mut accepted, mut rejected) = (0, 0);
    // Outcome: whether the reader accepted the file.
    run("gguf", n, |rng, i| {
        let bytes = match i % 100 {
            // Real vocabularies and templates, mutated: the tokenizer loads from these.
            0 => gguf::mutate(rng, real[i / 100 % real.len()].clone()),
            1..=49 => gguf::generate(rng),
            _ => {
                let base = rng.pick(&files).clone();
                gguf::mutate(rng, base)
            }
        };
        let ok = gguf::check(&bytes);
        if ok {
            accepted += 1
        } else {
            rejected += 1
        }
        ok
    });
    // Both must occur often: far off either way means the generator or the reader is broken.
    assert!(accepted > n / 20 && rejected > n / 5);
}

#[test]
#[ignore = "the fuzz job: scripts/test-all runs it with --ignored"]
fn fuzz_tokenizer() {
    for model in [QWEN_05B, SMOLLM2, GEMMA3] {
        let g = Gguf::open(&model_path(model)).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        // Outcome: the kind of case (0 text, 1 ids, 2 raw bytes).
        run(&format!("tokenizer {model}"), cases(40_000), |rng, i| {
            match i % 3 {
                0 => tokenizer::check_text(&tok, &tokenizer::text(rng)),
                1 => {
                    let ids = tokenizer::ids(rng, tok.vocab_size());
                    tokenizer::check_ids(&tok, &ids, rng)
                }
                _ => {
                    let n = rng.below(64);
                    tokenizer::check_bytes(&tok, &rng.bytes(n))
                }
            }
            i % 3
        });
    }
}

#[test]
#[ignore = "the fuzz job: scripts/test-all runs it with --ignored"]
fn fuzz_chat_template() {
    let templates: Vec<String> = [QWEN_05B, SMOLLM2]
        .iter()
        .map(|m| {
            let g = Gguf::open(&model_path(m)).unwrap();
            g.get_str("tokenizer.chat_template")
                .unwrap()
                .unwrap()
                .to_string()
        })
        .collect();
    let real: Vec<&str> = templates.iter().map(String::as_str).collect();
    let messages = chat_template::messages();
    run("chat template", cases(12_000), |rng, _| {
        let t = chat_template::generate(rng, &real);
        chat_template::check(&t, &messages)
    });
}
