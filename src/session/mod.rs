//! The generation loop: prefill, decode, stop conditions, cancellation, streaming of whole
//! UTF-8 characters. A session owns its KV cache.

pub mod perplexity;
mod stop;

use crate::backend::{Logits, Out, Reservation, State, Tap};
use crate::model::recipe::forward;
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::StreamDecoder;
use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stop::StopMatcher;

/// Default KV cache length when the caller asks for "the model's": training contexts of
/// 32k+ tokens would reserve gigabytes that a chat rarely needs.
pub const DEFAULT_MAX_CTX: u32 = 4096;

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// KV cache length in tokens; 0 = the model's training context, capped at
    /// [`DEFAULT_MAX_CTX`].
    pub n_ctx: u32,
    /// Seed of the sampler's RNG.
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings would be emitted; none of it is emitted.
    pub stop: Vec<String>,
    /// Match special tokens (`<|im_start|>` …) written in the prompt text.
    pub parse_special: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            parse_special: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// `max_tokens` reached.
    Limit,
    /// A stop string matched.
    StopString,
    /// `cancel()` was called, or the callback returned false.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct GenerateStats {
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
    pub stop_reason: StopReason,
}

/// One conversation with its KV cache. `Send`; not shared between threads except its
/// cancel flag.
pub struct Session {
    model: Arc<Model>,
    state: State,
    _reservation: Reservation,
    n_ctx: usize,
    /// Tokens whose keys and values are in the cache.
    history: Vec<u32>,
    /// A sampled token not yet fed to the model (fed first by the next call).
    pending: Option<u32>,
    cancel: Arc<AtomicBool>,
    seed: u64,
    generation: u64,
}

impl Session {
    pub fn new(model: Arc<Model>, options: SessionOptions) -> Result<Session> {
        let n_ctx = match options.n_ctx {
            0 => model.context_length().min(DEFAULT_MAX_CTX),
            n if n > model.context_length() => {
                return Err(Error::InvalidArgument(format!(
                    "context of {n} tokens exceeds the model's training context of {}",
                    model.context_length()
                )))
            }
            n => n,
        } as usize;
        let dims = model.dims();
        let reservation = model.context().reserve(
            model.weights.host_kv_bytes(&dims, n_ctx),
            "the session's KV cache",
        )?;
        let state = model.weights.new_state(&dims, n_ctx)?;
        Ok(Session {
            model,
            state,
            _reservation: reservation,
            n_ctx,
            history: Vec::new(),
            pending: None,
            cancel: Arc::new(AtomicBool::new(false)),
            seed: options.seed,
            generation: 0,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// A flag that, set from any thread, stops generation (also prefill) within one token.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Forget the conversation (empty the KV cache).
    pub fn reset(&mut self) {
        self.history.clear();
        self.pending = None;
        self.generation = 0;
    }

    /// Tokens in the KV cache.
    pub fn n_past(&self) -> u32 {
        self.history.len() as u32
    }

    pub fn n_ctx(&self) -> u32 {
        self.n_ctx as u32
    }

    /// The conversation's tokens so far (those in the cache, then any not yet fed).
    pub fn tokens(&self) -> Vec<u32> {
        self.history.iter().copied().chain(self.pending).collect()
    }

    /// Record intermediate values of the next forward steps (for verification).
    pub fn set_taps(&mut self, on: bool) {
        self.state.set_taps(on);
    }

    /// The intermediate values recorded since taps were turned on.
    pub fn take_taps(&mut self) -> Vec<Tap> {
        self.state.take_taps()
    }

    /// Feed tokens to the model (appending them to the conversation) and return the logits of
    /// the last one, or of every one with `Logits::All` (`tokens.len()` rows of the vocabulary).
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.feed(tokens, which, Out::Logits(&mut out))?;
        Ok(out)
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let need = self.history.len() + self.pending.is_some() as usize + tokens.len();
        if need > self.n_ctx {
            return Err(Error::ContextFull(format!(
                "{} tokens in the session plus {} new exceed its context of {} tokens",
                self.history.len() + self.pending.is_some() as usize,
                tokens.len(),
                self.n_ctx
            )));
        }
        Ok(())
    }

    /// Run the model over `tokens` in chunks; the last chunk's logits (last row, or all rows
    /// with `Logits::All`), or the last row's argmax, go to `out`. On error or cancellation the cache is left
    /// as it was before the failed chunk.
    fn feed(&mut self, tokens: &[u32], which: Logits, mut out: Out) -> Result<()> {
        self.check_tokens(tokens)?;
        let mut all: Vec<u32> = self.pending.take().into_iter().collect();
        all.extend_from_slice(tokens);
        let cancel = self.cancel.clone();
        let cancelled = move || cancel.load(Ordering::Relaxed);
        let recipe = &self.model.recipe;
        let n_ctx = self.n_ctx;
        let chunks: Vec<&[u32]> = all.chunks(self.state.prefill_chunk()).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mode = if which == Logits::All {
                Logits::All
            } else {
                Logits::Last
            };
            let pos0 = self.history.len();
            let want = if which == Logits::All || last {
                out.reborrow()
            } else {
                Out::Nothing
            };
            let mut run =
                |ops: &mut dyn crate::backend::Ops| forward(ops, recipe, mode, n_ctx, &cancelled);
            self.state.step(chunk, pos0, mode, &mut run, want)?;
            self.history.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Append `prompt` to the conversation and generate. Each piece passed to `on_piece` is
    /// whole UTF-8; returning false stops (stop reason `Cancelled`). A cancelled generation
    /// returns Ok with `StopReason::Cancelled` and leaves the session usable.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        let model = self.model.clone();
        let tok = model.tokenizer();
        let add_bos = self.history.is_empty() && self.pending.is_none();
        let ids = tok.encode(prompt, params.parse_special, add_bos)?;
        self.generate_tokens(&ids, params, on_piece)
    }

    /// As [`generate`](Self::generate), with the prompt already tokenized.
    ///
    /// A call that fails (a full context, a backend error) leaves the conversation as it was
    /// before the call, so the session stays usable; text already streamed is not taken back.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        let (n_past, pending) = (self.history.len(), self.pending);
        let result = self.generate_inner(prompt, params, on_piece);
        if result.is_err() {
            self.history.truncate(n_past);
            self.pending = pending;
        }
        result
    }

    fn generate_inner(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        params.sampling.validate(self.model.vocab_size())?;
        if params.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::InvalidArgument(
                "stop strings must not be empty".into(),
            ));
        }
        if prompt.is_empty() && self.history.is_empty() && self.pending.is_none() {
            return Err(Error::InvalidArgument(
                "the prompt is empty and the session has no history".into(),
            ));
        }
        // Room for the prompt and at least one generated token.
        self.check_tokens(prompt)?;
        self.cancel.store(false, Ordering::SeqCst);
        self.generation += 1;
        let mut sampler = Sampler::new(
            params.sampling.clone(),
            self.seed ^ self.generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut stats = GenerateStats {
            prompt_tokens: prompt.len() as u32,
            generated_tokens: 0,
            prompt_seconds: 0.0,
            generate_seconds: 0.0,
            stop_reason: StopReason::Limit,
        };
        let t0 = Instant::now();
        // Greedy: the backend picks the token where the logits are (on the GPU, 4 bytes come
        // back instead of the row); otherwise the sampler gets the row.
        let greedy = sampler.is_greedy();
        let mut logits = Vec::new();
        let mut pick = None;
        fn out<'a>(greedy: bool, logits: &'a mut Vec<f32>, pick: &'a mut Option<u32>) -> Out<'a> {
            if greedy {
                Out::Argmax(pick)
            } else {
                Out::Logits(logits)
            }
        }
        match self.feed(prompt, Logits::Last, out(greedy, &mut logits, &mut pick)) {
            Ok(()) => {}
            Err(Error::Cancelled) => {
                stats.stop_reason = StopReason::Cancelled;
                stats.prompt_seconds = t0.elapsed().as_secs_f64();
                return Ok(stats);
            }
            Err(e) => return Err(e),
        }
        if logits.is_empty() && pick.is_none() {
            // Empty prompt after a turn that ended without feeding: nothing new to condition on.
            return Err(Error::InvalidArgument(
                "nothing to generate from: empty prompt".into(),
            ));
        }
        stats.prompt_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut decoder = StreamDecoder::new();
        let mut stops = StopMatcher::new(&params.stop);
        let model = self.model.clone();
        let tok = model.tokenizer();
        let emit = |text: &str, id: u32, on_piece: &mut dyn FnMut(&str, u32) -> bool| -> bool {
            text.is_empty() || on_piece(text, id)
        };
        let mut history = self.tokens();
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                stats.stop_reason = StopReason::Cancelled;
                break;
            }
            if stats.generated_tokens >= params.max_tokens {
                stats.stop_reason = StopReason::Limit;
                break;
            }
            let id = match pick.take() {
                Some(id) => id,
                None => sampler.sample(&mut logits, &history),
            };
            stats.generated_tokens += 1;
            history.push(id);
            self.pending = Some(id);
            if tok.is_eog(id) {
                stats.stop_reason = StopReason::Eos;
                break;
            }
            let text = decoder.push(&tok.token_bytes(id)?);
            let (ready, hit) = stops.push(&text);
            if !emit(&ready, id, on_piece) {
                stats.stop_reason = StopReason::Cancelled;
                break;
            }
            if hit {
                stats.stop_reason = StopReason::StopString;
                break;
            }
            if stats.generated_tokens >= params.max_tokens {
                stats.stop_reason = StopReason::Limit;
                break;
            }
            if self.history.len() + 1 >= self.n_ctx {
                stats.generate_seconds = t1.elapsed().as_secs_f64();
                return Err(Error::ContextFull(format!(
                    "the session's context of {} tokens is full after {} generated tokens",
                    self.n_ctx, stats.generated_tokens
                )));
            }
            logits.clear();
            match self.feed(&[], Logits::Last, out(greedy, &mut logits, &mut pick)) {
                Ok(()) => {}
                Err(Error::Cancelled) => {
                    stats.stop_reason = StopReason::Cancelled;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if matches!(stats.stop_reason, StopReason::Limit | StopReason::Eos) {
            // Whatever was held back (a partial character, a possible stop-string prefix).
            let rest = stops.finish(&decoder.flush());
            emit(&rest, self.pending.unwrap_or(0), on_piece);
        }
        stats.generate_seconds = t1.elapsed().as_secs_f64();
        Ok(stats)
    }
}
