//! Perplexity over a text, the end-to-end canary: a broken kernel shows as a jump.
//! Method (as the golden references use): consecutive windows of `window` tokens (at most
//! `max_windows`), each from an empty cache; only the second half of each window is scored
//! (positions window/2 .. window-2 predicting the next token). A model that needs its BOS
//! (Gemma) gets it in place of the first token of each window, as the reference does.

use super::{KvType, Session, SessionOptions};
use crate::backend::Logits;
use crate::model::Model;
use crate::{Error, Result};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    pub windows: usize,
    pub scored_tokens: usize,
}

/// log p(target | logits), in f64 for a stable sum.
pub fn log_prob(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target as usize] as f64 - max - sum.ln()
}

/// The perplexity of `tokens` (see the module's notes), the sessions' KV caches of `kv_type`.
pub fn perplexity(
    model: &Arc<Model>,
    tokens: &[u32],
    window: usize,
    max_windows: usize,
    bos: Option<u32>,
    kv_type: KvType,
) -> Result<Perplexity> {
    if window < 4 {
        return Err(Error::InvalidArgument(format!(
            "window of {window} tokens is too short"
        )));
    }
    let windows = (tokens.len() / window).min(max_windows);
    if windows == 0 {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens, fewer than one window of {window}",
            tokens.len()
        )));
    }
    let mut session = Session::new(
        model.clone(),
        SessionOptions {
            n_ctx: window as u32,
            seed: 0,
            kv_type,
        },
    )?;
    let vocab = model.vocab_size();
    let (mut nll, mut scored) = (0.0f64, 0usize);
    for w in 0..windows {
        let mut toks = tokens[w * window..(w + 1) * window].to_vec();
        if let Some(b) = bos {
            toks[0] = b;
        }
        session.reset();
        let logits = session.eval(&toks, Logits::All)?;
        for pos in window / 2..window - 1 {
            nll -= log_prob(&logits[pos * vocab..(pos + 1) * vocab], toks[pos + 1]);
            scored += 1;
        }
    }
    Ok(Perplexity {
        ppl: (nll / scored as f64).exp(),
        windows,
        scored_tokens: scored,
    })
}
