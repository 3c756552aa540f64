//! Aggregate decoding speed of several sessions generating at once (`llorch bench
//! --parallel`): what continuous batching buys.

use super::{GenerateParams, Session, SessionOptions};
use crate::model::Model;
use crate::{Error, Result};
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// One measurement: `seqs` sessions, each fed `prompt` tokens and then generating `gen`.
#[derive(Debug, Clone)]
pub struct ParallelRun {
    pub seqs: usize,
    /// Generated tokens of all sessions per second of the decoding phase (from the moment
    /// every prompt is in until the last session is done).
    pub decode_tps: f64,
    /// Mean sequences per batched step during the run.
    pub mean_batch: f64,
    /// Mean milliseconds of one step (the forward pass and its results).
    pub step_ms: f64,
    /// Share of the decoding phase spent in steps: the rest is the sessions' own work
    /// between steps and the batcher's gathering (host overhead, where it is large).
    pub busy: f64,
}

/// Deterministic pseudo-random tokens (the work is the same as for text).
pub fn bench_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1D_u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

/// Run `seqs` sessions at once on threads of their own: each feeds its own `prompt`
/// random tokens, waits for the others, then generates `gen` tokens greedily (past
/// end-of-generation tokens).
pub fn parallel_decode(
    model: &Arc<Model>,
    seqs: usize,
    prompt: usize,
    gen: usize,
) -> Result<ParallelRun> {
    if seqs == 0 || gen == 0 {
        return Err(Error::InvalidArgument(
            "parallel decoding needs at least one session and one token".into(),
        ));
    }
    let n_ctx = (prompt.max(1) + gen + 1).max(16) as u32;
    let ready = Arc::new(Barrier::new(seqs + 1));
    let go = Arc::new(Barrier::new(seqs + 1));
    let handles: Vec<_> = (0..seqs)
        .map(|i| {
            let (model, ready, go) = (model.clone(), ready.clone(), go.clone());
            std::thread::spawn(move || -> Result<()> {
                let made = Session::new(
                    model.clone(),
                    SessionOptions {
                        n_ctx,
                        seed: 0,
                        ..Default::default()
                    },
                );
                let toks = bench_tokens(prompt.max(1), model.vocab_size(), i as u64);
                let fed = made.and_then(|mut s| {
                    s.eval(&toks[..toks.len() - 1], crate::backend::Logits::Last)?;
                    Ok(s)
                });
                ready.wait();
                go.wait();
                let mut s = fed?;
                let params = GenerateParams {
                    max_tokens: gen as u32,
                    ignore_eos: true,
                    ..Default::default()
                };
                s.generate_tokens(&toks[toks.len() - 1..], &params, &mut |_, _| true)?;
                Ok(())
            })
        })
        .collect();
    ready.wait();
    let before = model.batch_stats();
    let t = Instant::now();
    go.wait();
    let mut first_err = None;
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("a bench thread panicked".into())));
        if let (Err(e), None) = (r, &first_err) {
            first_err = Some(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let secs = t.elapsed().as_secs_f64();
    let after = model.batch_stats();
    let steps = (after.steps - before.steps).max(1);
    let step_secs = (after.step_ns - before.step_ns) as f64 * 1e-9;
    Ok(ParallelRun {
        seqs,
        decode_tps: (seqs * gen) as f64 / secs,
        mean_batch: (after.seqs - before.seqs) as f64 / steps as f64,
        step_ms: step_secs * 1e3 / steps as f64,
        busy: step_secs / secs,
    })
}
