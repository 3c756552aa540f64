//! Llama family (SmolLM2, Llama 3): no biases; RoPE on adjacent pairs, because GGUF stores
//! llama Q/K rows permuted for it; output tied to the token embedding when `output.weight`
//! is absent.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, Recipe};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::Result;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let rope = Rope::plain(RopeStyle::Normal, hp.rope_dims, hp.rope_base);
    let opts = DecoderOptions::standard(&hp, rope);
    build_decoder(g, hp, opts)
}
