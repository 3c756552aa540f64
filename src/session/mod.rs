//! The generation loop: prefill, decode, stop conditions, cancellation, streaming of whole
//! UTF-8 characters. A session owns its KV cache.

pub mod batch;
pub mod bench;
pub mod logprobs;
pub mod perplexity;
mod state_file;
mod stop;

// Embeddings: the final hidden state, pooled (through the taps).
pub mod embed;
mod kv_memory;

use crate::backend::kvpool::Grant;
pub use crate::backend::KvType;
use crate::backend::{Logits, Out, State, Tap};
use crate::grammar::{Constraint, TokenMatcher};
use crate::model::recipe::forward;
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use batch::{Feed, Member, Produced, Want};
pub use kv_memory::usable_prefix;
pub use logprobs::TokenLogprob;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// The KV cache's element type ([`KvType::Auto`]: f32 on the CPU, f16 on a GPU).
    pub kv_type: KvType,
}

#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    pub sampling: SamplingParams,
    /// The output must match this grammar or JSON Schema: each step masks the tokens that
    /// cannot continue it, and the generation ends (stop reason `Eos`) once it is complete.
    pub constraint: Option<Constraint>,
    /// Generation stops before any of these strings would be emitted; none of it is emitted.
    pub stop: Vec<String>,
    /// Match special tokens (`<|im_start|>` …) written in the prompt text.
    pub parse_special: bool,
    /// Keep generating past end-of-generation tokens (until `max_tokens` or a stop string):
    /// for benchmarks, which need a fixed number of tokens.
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many most likely alternatives
    /// (in [`Piece::logprobs`]); 0 = off, at no cost. See [`logprobs`] for which logits.
    pub logprobs: u32,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            constraint: None,
            stop: Vec::new(),
            parse_special: true,
            ignore_eos: false,
            logprobs: 0,
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
    /// The cancel flag was set, or the callback returned false.
    Cancelled,
    /// The context (KV cache) filled up. The conversation is left as it was before the
    /// generation, so the session stays usable with a shorter turn.
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct GenerateStats {
    pub prompt_tokens: u32,
    /// Prompt tokens whose keys and values came from the prefix cache (not computed).
    pub prompt_cached: u32,
    pub generated_tokens: u32,
    pub prompt_seconds: f64,
    pub generate_seconds: f64,
    pub stop_reason: StopReason,
}

/// One conversation with its KV cache. `Send`; not shared between threads except its
/// cancel flag.
pub struct Session {
    model: Arc<Model>,
    /// Shared with the model's batcher, which steps it while this session waits.
    state: Arc<Mutex<State>>,
    n_ctx: usize,
    /// Fail with `Error::Busy` rather than wait for KV memory.
    fail_when_busy: bool,
    /// Tokens whose keys and values are in the cache.
    history: Vec<u32>,
    /// A sampled token not yet fed to the model (fed first by the next call).
    pending: Option<u32>,
    /// Set from any thread to stop the generation; only the session clears it, when a
    /// generation acts on it (so no cancel is ever lost between two generations).
    cancel: Arc<AtomicBool>,
    seed: u64,
    /// The KV cache's element type it was made with (a fork's too).
    kv_type: KvType,
    /// Generations begun so far (varies the sampler's seed from one to the next).
    generation: u64,
    /// The generation in progress, between `begin` and its `Event::Done`.
    running: Option<Generation>,
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
        // (The KV memory comes as the context fills: see `kv_memory`.)
        let state = model
            .weights
            .new_state(&dims, n_ctx, options.kv_type, &model.kv_pool)?;
        Ok(Session {
            model,
            state: Arc::new(Mutex::new(state)),
            n_ctx,
            fail_when_busy: false,
            history: Vec::new(),
            pending: None,
            cancel: Arc::new(AtomicBool::new(false)),
            seed: options.seed,
            kv_type: options.kv_type,
            generation: 0,
            running: None,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// A flag that, set from any thread, stops generation (also prefill) within one token.
    /// Set while no generation runs, it cancels the next one before it changes anything. The
    /// session clears it when it acts on it, and nothing else does (except [`reset`]).
    ///
    /// [`reset`]: Self::reset
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Use `flag` as the cancel flag from now on (one the caller made before the session,
    /// e.g. for a request that may be cancelled while it waits in a queue).
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = flag;
    }

    /// When the model's KV memory (the context's budget) is taken by other sessions: fail at
    /// once with `Error::Busy` (true) instead of waiting in line for it (false, the default).
    pub fn set_fail_when_busy(&mut self, fail: bool) {
        self.fail_when_busy = fail;
    }

    /// The seed of the sampler's random numbers from now on (as `SessionOptions::seed`).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Forget the conversation (empty the KV cache), any generation in progress and a
    /// pending cancel.
    pub fn reset(&mut self) {
        self.state.lock().kv_truncate(0);
        self.history.clear();
        self.pending = None;
        self.generation = 0;
        self.running = None;
        self.cancel.store(false, Ordering::SeqCst);
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
        self.state.lock().set_taps(on);
    }

    /// The intermediate values recorded since taps were turned on.
    pub fn take_taps(&mut self) -> Vec<Tap> {
        self.state.lock().take_taps()
    }

    /// Feed tokens to the model (appending them to the conversation) and return the logits of
    /// the last one, or of every one with `Logits::All` (`tokens.len()` rows of the vocabulary).
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let start = self.history.len();
        let end = start + self.pending.is_some() as usize + tokens.len();
        let mut grant = self.kv_admit(start, end)?;
        let mut out = Vec::new();
        let grown = self.state.lock().kv_grow(start, end, grant.as_mut());
        let fed = grown.and_then(|()| self.feed(tokens, which, Out::Logits(&mut out)));
        if let Err(e) = fed {
            // Blocks past what was fed go back.
            self.state.lock().kv_truncate(self.history.len());
            return Err(e);
        }
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
        let pending = self.pending.take();
        let mut all: Vec<u32> = pending.into_iter().collect();
        all.extend_from_slice(tokens);
        let cancel = self.cancel.clone();
        let cancelled = move || cancel.load(Ordering::Relaxed);
        let recipe = &self.model.recipe;
        let n_ctx = self.n_ctx;
        let mut state = self.state.lock();
        let chunks: Vec<&[u32]> = all.chunks(state.prefill_chunk()).collect();
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
            if let Err(e) = state.step(chunk, pos0, mode, &mut run, want) {
                if i == 0 {
                    // The token not yet fed stays the conversation's.
                    self.pending = pending;
                }
                return Err(e);
            }
            self.history.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// As `feed(tokens, Logits::Last, out)`, through the model's batcher where the backend
    /// batches (a generation's steps: batched with the model's other generating sessions).
    /// Prompt chunks are cut at positions `origin + k * chunk` (the feed's start, or 0 for a
    /// prompt resumed after cached blocks: see `kv_memory`).
    fn feed_batched(&mut self, tokens: &[u32], origin: usize, out: Out) -> Result<()> {
        let batchable = {
            let st = self.state.lock();
            st.batchable() && !st.taps_on()
        };
        if !batchable {
            return self.feed(tokens, Logits::Last, out);
        }
        self.check_tokens(tokens)?;
        let pending = self.pending.take();
        let mut all: Vec<u32> = pending.into_iter().collect();
        all.extend_from_slice(tokens);
        let want = match out {
            Out::Nothing => Want::Nothing,
            Out::Argmax(_) => Want::Argmax,
            Out::Logits(_) => Want::Logits,
        };
        let feed = Feed {
            state: self.state.clone(),
            tokens: all,
            pos0: self.history.len(),
            chunk_origin: origin.min(self.history.len()),
            n_ctx: self.n_ctx,
            want,
            cancel: self.cancel.clone(),
        };
        let model = self.model.clone();
        let all_tokens = feed.tokens.clone();
        let fed = model.batcher.run(feed, &model.recipe);
        self.history.extend_from_slice(&all_tokens[..fed.fed]);
        match (fed.result, out) {
            (Err(e), _) => {
                if fed.fed == 0 {
                    // The token not yet fed stays the conversation's.
                    self.pending = pending;
                }
                Err(e)
            }
            (Ok(Produced::Argmax(id)), Out::Argmax(p)) => {
                *p = Some(id);
                Ok(())
            }
            (Ok(Produced::Logits(row)), Out::Logits(v)) => {
                v.extend_from_slice(&row);
                Ok(())
            }
            (Ok(_), _) => Ok(()),
        }
    }

    /// Append `prompt` to the conversation and generate. Each piece passed to `on_piece` is
    /// whole UTF-8; returning false stops (stop reason `Cancelled`). A cancelled generation
    /// returns Ok with `StopReason::Cancelled` and leaves the session usable; so does one that
    /// fills the context (`StopReason::ContextFull`, the conversation as before the call).
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        self.begin(prompt, params)?;
        self.drive(on_piece)
    }

    /// As [`generate`](Self::generate), with the prompt already tokenized.
    ///
    /// A call that fails (a prompt that does not fit, a backend error) leaves the
    /// conversation as it was before the call, so the session stays usable; text already
    /// streamed is not taken back.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        self.begin_tokens(prompt, params)?;
        self.drive(on_piece)
    }

    /// As [`generate`](Self::generate), handing over whole [`Piece`]s (with their
    /// log-probabilities when `params.logprobs` asks for them).
    pub fn generate_pieces(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_piece: &mut dyn FnMut(&Piece) -> bool,
    ) -> Result<GenerateStats> {
        self.begin(prompt, params)?;
        self.drive_pieces(on_piece)
    }

    /// The push form: pulls every piece and hands it to `on_piece`.
    fn drive(&mut self, on_piece: &mut dyn FnMut(&str, u32) -> bool) -> Result<GenerateStats> {
        self.drive_pieces(&mut |p| on_piece(&p.text, p.token))
    }

    fn drive_pieces(&mut self, on_piece: &mut dyn FnMut(&Piece) -> bool) -> Result<GenerateStats> {
        loop {
            match self.next_event()? {
                Event::Piece(p) => {
                    if !on_piece(&p) {
                        return Ok(self.stop_by_caller());
                    }
                }
                Event::Done(stats) => return Ok(stats),
            }
        }
    }

    /// Start a generation from `prompt` (appended to the conversation); then call
    /// [`next_event`](Self::next_event) until it returns `Event::Done`. Nothing is computed
    /// yet: errors here are bad parameters or a prompt that cannot fit, and change nothing.
    /// A generation still in progress is abandoned (its tokens stay in the conversation, as
    /// after a cancel).
    pub fn begin(&mut self, prompt: &str, params: &GenerateParams) -> Result<()> {
        self.running = None;
        let add_bos = self.history.is_empty() && self.pending.is_none();
        let ids = self
            .model
            .tokenizer()
            .encode(prompt, params.parse_special, add_bos)?;
        self.begin_tokens(&ids, params)
    }

    /// As [`begin`](Self::begin), with the prompt already tokenized.
    pub fn begin_tokens(&mut self, prompt: &[u32], params: &GenerateParams) -> Result<()> {
        self.running = None;
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
        self.generation += 1;
        let sampler = Sampler::new(
            params.sampling.clone(),
            self.seed ^ self.generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let constraint = match &params.constraint {
            Some(c) => Some(c.matcher(self.model.vocab_trie()?)),
            None => None,
        };
        let mut history = self.tokens();
        history.extend_from_slice(prompt);
        self.running = Some(Generation {
            max_tokens: params.max_tokens,
            ignore_eos: params.ignore_eos,
            greedy: sampler.is_greedy(),
            logprobs: params.logprobs as usize,
            reported: Vec::new(),
            sampler,
            logits: Vec::new(),
            pick: None,
            decoder: StreamDecoder::new(),
            constraint,
            stops: StopMatcher::new(params.stop.clone()),
            history,
            stats: GenerateStats {
                prompt_tokens: prompt.len() as u32,
                prompt_cached: 0,
                generated_tokens: 0,
                prompt_seconds: 0.0,
                generate_seconds: 0.0,
                stop_reason: StopReason::Limit,
            },
            started: Instant::now(),
            decode_started: None,
            before: (self.history.len(), self.pending),
            phase: Phase::Prefill(prompt.to_vec()),
            grant: None,
            cacheable: false,
            _member: self.model.batcher.join(),
        });
        Ok(())
    }

    /// The pull form: runs the generation begun by [`begin`](Self::begin) until it has a
    /// piece of text (whole UTF-8 characters, never empty) or ends. The first call feeds the
    /// prompt. After `Event::Done` (or an error) no generation is in progress.
    ///
    /// An error (a backend failure) ends the generation and restores the conversation to
    /// what it was before `begin`.
    pub fn next_event(&mut self) -> Result<Event> {
        let mut g = self.running.take().ok_or_else(|| {
            Error::InvalidArgument(
                "no generation in progress: begin one first (the last one has ended)".into(),
            )
        })?;
        loop {
            match self.step(&mut g) {
                Ok(None) => {}
                Ok(Some(Event::Done(stats))) => return Ok(Event::Done(stats)),
                Ok(Some(piece)) => {
                    self.running = Some(g);
                    return Ok(piece);
                }
                Err(e) => {
                    self.restore(g.before);
                    return Err(e);
                }
            }
        }
    }

    /// Whether a generation was begun and has not ended.
    pub fn is_generating(&self) -> bool {
        self.running.is_some()
    }

    /// Ends the generation in progress because its caller stopped reading (stop reason
    /// `Cancelled`, unless it had already ended); its stats.
    fn stop_by_caller(&mut self) -> GenerateStats {
        let Some(mut g) = self.running.take() else {
            return GenerateStats::cancelled();
        };
        if !matches!(g.phase, Phase::Flushed) {
            g.stats.stop_reason = StopReason::Cancelled;
        }
        g.finish_stats();
        g.stats
    }

    /// Takes a cancel request, if there is one.
    fn take_cancel(&self) -> bool {
        self.cancel.swap(false, Ordering::SeqCst)
    }

    fn restore(&mut self, (n_past, pending): (usize, Option<u32>)) {
        self.history.truncate(n_past);
        self.state.lock().kv_truncate(n_past);
        self.pending = pending;
    }

    /// One unit of work of a generation: the prompt's prefill, one token's forward pass, one
    /// sampled token, or the end. Returns the event it produced, if any.
    fn step(&mut self, g: &mut Generation) -> Result<Option<Event>> {
        let model = self.model.clone();
        let tok = model.tokenizer();
        match std::mem::replace(&mut g.phase, Phase::Flushed) {
            Phase::Prefill(prompt) => {
                g.phase = Phase::Sample;
                if self.take_cancel() {
                    g.phase = Phase::Ending(StopReason::Cancelled);
                    return Ok(None);
                }
                let skip = match self.kv_prepare(g, &prompt) {
                    Ok(n) => n,
                    Err(Error::Cancelled) => {
                        self.cancelled(g);
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                };
                g.stats.prompt_cached = skip as u32;
                let origin = if skip > 0 { 0 } else { self.history.len() };
                let out = g.out();
                let fed = self.feed_batched(&prompt[skip..], origin, out);
                g.stats.prompt_seconds = g.started.elapsed().as_secs_f64();
                if fed.is_ok() {
                    self.kv_offer(g);
                }
                match fed {
                    Ok(()) if g.logits.is_empty() && g.pick.is_none() => {
                        // Empty prompt after a turn that ended without feeding: nothing new
                        // to condition on.
                        return Err(Error::InvalidArgument(
                            "nothing to generate from: empty prompt".into(),
                        ));
                    }
                    Ok(()) => g.decode_started = Some(Instant::now()),
                    Err(Error::Cancelled) => self.cancelled(g),
                    Err(e) => return Err(e),
                }
            }
            Phase::Feed => {
                g.phase = Phase::Sample;
                if self.take_cancel() {
                    g.phase = Phase::Ending(StopReason::Cancelled);
                } else if self.history.len() + 1 >= self.n_ctx {
                    g.phase = Phase::Ending(StopReason::ContextFull);
                } else {
                    g.logits.clear();
                    let h = self.history.len();
                    self.state.lock().kv_grow(h, h + 1, g.grant.as_mut())?;
                    let out = g.out();
                    match self.feed_batched(&[], h, out) {
                        Ok(()) => {}
                        Err(Error::Cancelled) => self.cancelled(g),
                        Err(e) => return Err(e),
                    }
                }
            }
            Phase::Sample => {
                if self.take_cancel() {
                    g.phase = Phase::Ending(StopReason::Cancelled);
                    return Ok(None);
                }
                if g.stats.generated_tokens >= g.max_tokens {
                    g.phase = Phase::Ending(StopReason::Limit);
                    return Ok(None);
                }
                return self.sample(g, tok);
            }
            Phase::Ending(reason) => {
                g.stats.stop_reason = reason;
                g.finish_stats();
                if reason == StopReason::ContextFull {
                    self.restore(g.before);
                }
                if matches!(reason, StopReason::Limit | StopReason::Eos) {
                    // Whatever was held back (a partial character, a stop-string prefix).
                    let rest = g.stops.finish(&g.decoder.flush());
                    if !rest.is_empty() {
                        let token = self.pending.unwrap_or(0);
                        let lps = std::mem::take(&mut g.reported);
                        return Ok(Some(Event::piece(rest, token, lps)));
                    }
                }
                return Ok(Some(Event::Done(g.stats.clone())));
            }
            Phase::Flushed => return Ok(Some(Event::Done(g.stats.clone()))),
        }
        Ok(None)
    }

    /// A forward pass stopped by the cancel flag: take the request and end.
    fn cancelled(&self, g: &mut Generation) {
        self.take_cancel();
        g.phase = Phase::Ending(StopReason::Cancelled);
    }

    /// Picks the next token from the last logits and turns it into text.
    fn sample(&mut self, g: &mut Generation, tok: &Tokenizer) -> Result<Option<Event>> {
        let id = match g.pick.take() {
            Some(id) => id,
            None => {
                // The raw row, before the constraint and the sampler transform it in place.
                let raw = (g.logprobs > 0).then(|| g.logits.clone());
                if let Some(c) = &mut g.constraint {
                    c.apply(&mut g.logits)?;
                }
                let id = g.sampler.sample(&mut g.logits, &g.history);
                if let Some(raw) = raw {
                    if !tok.is_eog(id) {
                        g.reported
                            .push(logprobs::token_logprob(&raw, id, g.logprobs));
                    }
                }
                id
            }
        };
        let complete = match &mut g.constraint {
            Some(c) => {
                c.accept(id, &tok.token_bytes(id)?)?;
                c.finished()
            }
            None => false,
        };
        g.stats.generated_tokens += 1;
        g.history.push(id);
        self.pending = Some(id);
        if tok.is_eog(id) && !g.ignore_eos {
            g.phase = Phase::Ending(StopReason::Eos);
            return Ok(None);
        }
        let text = g.decoder.push(&tok.token_bytes(id)?);
        let (ready, hit) = g.stops.push(&text);
        g.phase = if hit {
            Phase::Ending(StopReason::StopString)
        } else if complete {
            Phase::Ending(StopReason::Eos)
        } else if g.stats.generated_tokens >= g.max_tokens {
            Phase::Ending(StopReason::Limit)
        } else {
            Phase::Feed
        };
        if ready.is_empty() {
            return Ok(None);
        }
        Ok(Some(Event::piece(
            ready,
            id,
            std::mem::take(&mut g.reported),
        )))
    }
}

/// A piece of generated text: whole UTF-8 characters, and the token that completed them (a
/// piece may hold bytes of several tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub token: u32,
    /// With `GenerateParams::logprobs` > 0: the tokens sampled since the previous piece, in
    /// order (those whose text this piece completes), each with its log-probability and top
    /// alternatives. The end-of-generation token and tokens cut by a stop string are in no
    /// piece.
    pub logprobs: Vec<TokenLogprob>,
}

/// What [`Session::next_event`] hands back.
#[derive(Debug, Clone)]
pub enum Event {
    /// Generated text, never empty.
    Piece(Piece),
    /// The generation has ended: its statistics (and why it stopped).
    Done(GenerateStats),
}

impl Event {
    fn piece(text: String, token: u32, logprobs: Vec<TokenLogprob>) -> Event {
        Event::Piece(Piece {
            text,
            token,
            logprobs,
        })
    }
}

impl GenerateStats {
    /// The stats of a generation cancelled before it began.
    pub fn cancelled() -> GenerateStats {
        GenerateStats {
            prompt_tokens: 0,
            prompt_cached: 0,
            generated_tokens: 0,
            prompt_seconds: 0.0,
            generate_seconds: 0.0,
            stop_reason: StopReason::Cancelled,
        }
    }
}

/// Where a generation in progress stands: what its next step does.
enum Phase {
    /// Feed the prompt.
    Prefill(Vec<u32>),
    /// Pick a token from the logits (or the backend's pick) at hand.
    Sample,
    /// Feed the token just picked, for the next logits.
    Feed,
    /// Stop: emit what was held back (after `Eos` and `Limit`), then `Done`.
    Ending(StopReason),
    /// Ended, held-back text emitted: `Done` is all that is left.
    Flushed,
}

/// The state of one generation between its steps.
struct Generation {
    max_tokens: u32,
    ignore_eos: bool,
    sampler: Sampler,
    /// Greedy: the backend picks the token where the logits are (on the GPU, 4 bytes come
    /// back instead of the row); otherwise the sampler gets the row.
    greedy: bool,
    /// Alternatives reported per token; 0 = no log-probabilities.
    logprobs: usize,
    /// Log-probabilities of the tokens not yet in a piece.
    reported: Vec<TokenLogprob>,
    logits: Vec<f32>,
    pick: Option<u32>,
    /// The grammar the output must match, if any.
    constraint: Option<TokenMatcher>,
    decoder: StreamDecoder,
    stops: StopMatcher,
    /// The conversation's tokens including those generated (the penalties look at them).
    history: Vec<u32>,
    stats: GenerateStats,
    started: Instant,
    /// When decoding began (after the prefill), if it did.
    decode_started: Option<Instant>,
    /// The conversation before this generation (`history.len()`, `pending`), restored if
    /// the generation fails or fills the context.
    before: (usize, Option<u32>),
    phase: Phase,
    /// The KV memory set aside for it (see `kv_memory`), once its prompt is prepared.
    grant: Option<Grant>,
    /// Whether its prompt's blocks go to the prefix cache (a first turn).
    cacheable: bool,
    /// Counted among the model's generating sessions (the batcher waits for their steps).
    _member: Member,
}

impl Generation {
    /// Where a forward step puts its result: the pick for greedy decoding, else the row
    /// (also for greedy decoding with log-probabilities, which need the whole row, or under
    /// a constraint, which masks it: the backend cannot pick the token then).
    fn out(&mut self) -> Out<'_> {
        if self.greedy && self.logprobs == 0 && self.constraint.is_none() {
            Out::Argmax(&mut self.pick)
        } else {
            Out::Logits(&mut self.logits)
        }
    }

    fn finish_stats(&mut self) {
        self.stats.generate_seconds = self
            .decode_started
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64();
    }
}
