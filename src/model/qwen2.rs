//! Qwen2 / Qwen2.5: biases on Q, K and V; NeoX-style RoPE; separate output matrix.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, Recipe};
use crate::backend::{Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::Result;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let rope = Rope {
        style: RopeStyle::Neox,
        dims: hp.rope_dims,
        base: hp.rope_base,
    };
    build_decoder(
        g,
        hp,
        DecoderOptions {
            rope,
            qkv_bias: true,
        },
    )
}
