//! The prefix cache on the GPU: a session's first prompt's whole blocks are copied into
//! the model's pool (device memory), and later sessions whose prompts start alike copy them
//! into their caches instead of computing those positions (src/backend/cuda/model/
//! prefix_blocks.rs). Synthetic model of the Qwen2 0.5B shape.
//!
//! Without a GPU it prints `skipped: no CUDA device (<reason>)` on stderr and passes.
#![cfg(feature = "cuda")]

mod common;

use llorch::backend::Context;
use llorch::model::Model;
use llorch::session::bench::bench_tokens;
use llorch::session::{GenerateParams, Session, SessionOptions, StopReason};
use std::io::Write;
use std::sync::Arc;

fn say(s: &str) {
    let _ = std::io::stderr().write_all(format!("{s}\n").as_bytes());
}

fn gpu_file(test: &str) -> Option<(Arc<Context>, std::path::PathBuf)> {
    common::gpu_synth_file(test, "qwen2-0.5b", 512)
}

const GEN: u32 = 24;

fn session(m: &Arc<Model>) -> Session {
    Session::new(
        m.clone(),
        SessionOptions {
            n_ctx: 512,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The prefix cache on the GPU (copies of a first prompt's whole blocks:
/// src/backend/cuda/model/prefix_blocks.rs). Prompts sharing a 200-token start take its
/// whole blocks from the cache, one after another and four at once; the rows a session
/// takes are bit for bit those the first session computed; and each generates what the same
/// prompt generates on a freshly loaded model up to the GPU's batching tolerance (the rest
/// of its prompt runs over fewer rows, so through other product kernels: see the module's
/// notes above). Prints the time to first token saved.
#[test]
fn prefix_cache_serves_shared_prompts() {
    let Some((ctx, path)) = gpu_file("prefix_cache_serves_shared_prompts") else {
        return;
    };
    llorch::backend::cuda::set_prefix_cache(true);
    let load = || Model::load(&ctx, &path, None).unwrap();
    let m = load();
    let vocab = m.vocab_size();
    let system = bench_tokens(200, vocab, 7);
    let prompts: Vec<Vec<u32>> = (0..5)
        .map(|i| [system.clone(), bench_tokens(20 + i, vocab, 100 + i as u64)].concat())
        .collect();
    let p = GenerateParams {
        max_tokens: GEN,
        ignore_eos: true,
        ..Default::default()
    };
    let gen = |s: &mut Session, prompt: &[u32]| {
        let st = s.generate_tokens(prompt, &p, &mut |_, _| true).unwrap();
        assert_eq!(st.stop_reason, StopReason::Limit);
        (s.tokens()[prompt.len()..].to_vec(), st)
    };
    // References: each prompt on a model of its own (an empty cache).
    let cold: Vec<(Vec<u32>, f64)> = prompts
        .iter()
        .map(|pr| {
            let cm = load();
            let (t, st) = gen(&mut session(&cm), pr);
            assert_eq!(st.prompt_cached, 0);
            (t, st.prompt_seconds)
        })
        .collect();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let block = m.kv_stats().block_positions;
    let shared = 200 / block * block;
    let mut first = session(&m);
    let (t0, st0) = gen(&mut first, &prompts[0]);
    assert_eq!(
        st0.prompt_cached, 0,
        "the first prompt finds an empty cache"
    );
    assert_eq!(
        t0, cold[0].0,
        "the first session differs from a fresh model's"
    );
    let cached = m.kv_stats().cached_blocks;
    assert_eq!(
        cached,
        prompts[0].len() / block,
        "the first prompt's whole blocks are cached"
    );
    let mut same = 0;
    let mut total = 0;
    // Prompts 1-3 are served twice: the second time their own whole blocks are cached too
    // (all but the last token's block: the last token is always computed).
    let mut served = [false; 5];
    let mut check = |i: usize, t: &[u32], cached: u32| {
        let own = (prompts[i].len() - 1) / block * block;
        let want = if served[i] { own } else { shared };
        served[i] = true;
        assert_eq!(
            cached as usize, want,
            "prompt {i}: positions from the cache"
        );
        let prefix = t.iter().zip(&cold[i].0).take_while(|(a, b)| a == b).count();
        say(&format!(
            "prompt {i}: {prefix} of {GEN} tokens equal to a fresh model's before the first difference"
        ));
        assert!(prefix >= 1, "prompt {i}: the first token already differs");
        same += prefix;
        total += GEN as usize;
    };
    let mut second = session(&m);
    let (t1, st1) = gen(&mut second, &prompts[1]);
    check(1, &t1, st1.prompt_cached);
    let mut warm = vec![st1.prompt_seconds];
    for (i, prompt) in prompts.iter().enumerate().take(4).skip(2) {
        let (t, st) = gen(&mut session(&m), prompt);
        check(i, &t, st.prompt_cached);
        warm.push(st.prompt_seconds);
    }
    // Four at once (stepped together by the batcher).
    let runs: Vec<(Vec<u32>, u32)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (1..5)
            .map(|i| {
                let (m, pr, p) = (m.clone(), prompts[i].clone(), p.clone());
                sc.spawn(move || {
                    let mut s = session(&m);
                    let st = s.generate_tokens(&pr, &p, &mut |_, _| true).unwrap();
                    (s.tokens()[pr.len()..].to_vec(), st.prompt_cached)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (t, c)) in runs.iter().enumerate() {
        check(i + 1, t, *c);
    }
    // The rows the second session took from the cache are the first session's, bit for bit.
    first.rewind(shared as u32).unwrap();
    second.rewind(shared as u32).unwrap();
    assert!(
        first.save_state().unwrap() == second.save_state().unwrap(),
        "the cached rows differ from the rows they were copied from"
    );
    let mut cold_t: Vec<f64> = cold[1..4].iter().map(|c| c.1).collect();
    cold_t.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    say(&format!(
        "prefix cache: {same} of {total} tokens equal to a fresh model's; time to first token \
         of {} prompt tokens ({shared} cached): cold {:.2} ms, from the cache {:.2} ms (medians)",
        prompts[1].len(),
        cold_t[1] * 1e3,
        warm[1] * 1e3
    ));
    assert!(
        same * 10 >= 9 * total,
        "served from the cache, tokens differ"
    );
}
