//! Logits → token: greedy, temperature, top-k, top-p, min-p, penalties, logit bias,
//! and a seeded RNG so the same seed and input give the same tokens.
//! (Agreed interface; the implementation fills in the bodies.)

use crate::Result;

/// Sampling settings. Defaults are greedy decoding with every filter off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax). Must be >= 0 and finite.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// In (0, 1]; 1 = off.
    pub top_p: f32,
    /// In [0, 1]; 0 = off.
    pub min_p: f32,
    /// > 0; 1 = off. Applied to the last `penalty_last_n` tokens.
    pub repeat_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub penalty_last_n: u32,
    /// Added to the logit of a token before anything else.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// `Error::InvalidArgument` naming the bad field.
    pub fn validate(&self, _vocab_size: usize) -> Result<()> {
        todo!()
    }
}

/// A sampler with its own seeded RNG.
pub struct Sampler {
    _todo: (),
}

impl Sampler {
    pub fn new(_params: SamplingParams, _seed: u64) -> Self {
        todo!()
    }
    /// Choose the next token. `logits` may be modified in place; `history` is the tokens so far.
    pub fn sample(&mut self, _logits: &mut [f32], _history: &[u32]) -> u32 {
        todo!()
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}
