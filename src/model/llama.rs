//! Llama family (SmolLM2, Llama 3): no biases; RoPE on adjacent pairs, because GGUF stores
//! llama Q/K rows permuted for it; output tied to the token embedding when `output.weight`
//! is absent. Llama 3.1+ frequency scaling comes as a `rope_freqs.weight` tensor of
//! per-pair divisors; linear scaling as `llama.rope.scaling.*`.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, Recipe, TensorTable};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::Result;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let mut rope = Rope::plain(RopeStyle::Normal, hp.rope_dims, hp.rope_base);
    rope.freq_factors = TensorTable::new(g)
        .values("rope_freqs.weight", hp.rope_dims / 2)?
        .map(Into::into);
    rope.pos_scale = super::hparams::linear_rope_scale(g, &hp.arch)?;
    let opts = DecoderOptions::standard(&hp, rope);
    build_decoder(g, hp, opts)
}
