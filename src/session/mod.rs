//! The generation loop: prefill, decode, stop conditions, cancellation, streaming of whole
//! UTF-8 characters. A session owns its KV cache. (Agreed interface.)

use crate::model::Model;
use crate::sampling::SamplingParams;
use crate::Result;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// KV cache length in tokens; 0 = the model's training context (capped by the engine).
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
        GenerateParams { max_tokens: 256, sampling: SamplingParams::default(), stop: Vec::new(), parse_special: true }
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
    _todo: (),
}

impl Session {
    pub fn new(_model: Arc<Model>, _options: SessionOptions) -> Result<Session> {
        todo!()
    }
    pub fn model(&self) -> &Arc<Model> {
        todo!()
    }
    /// A flag that, set from any thread, stops generation (also prefill) within one token.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        todo!()
    }
    /// Forget the conversation (empty the KV cache).
    pub fn reset(&mut self) {
        todo!()
    }
    /// Tokens in the KV cache.
    pub fn n_past(&self) -> u32 {
        todo!()
    }
    pub fn n_ctx(&self) -> u32 {
        todo!()
    }
    /// Append `prompt` to the conversation and generate. Each piece passed to `on_piece` is
    /// whole UTF-8; returning false stops (stop reason `Cancelled`). A cancelled generation
    /// returns Ok with `StopReason::Cancelled` and leaves the session usable.
    pub fn generate(
        &mut self,
        _prompt: &str,
        _params: &GenerateParams,
        _on_piece: &mut dyn FnMut(&str, u32) -> bool,
    ) -> Result<GenerateStats> {
        todo!()
    }
}
