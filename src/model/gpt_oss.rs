//! GPT-OSS: biases on Q/K/V and the attention output, learned attention sinks per head,
//! layers alternating a sliding window (even layers) and full attention, YaRN-scaled RoPE
//! (NeoX pairing), and a mixture-of-experts feed-forward: a biased router picks each token's
//! top-k experts, weighted by the softmax of their logits; each expert is a gated
//! feed-forward with biases and a clamped SwiGLU. The FFN's input norm is stored as
//! `post_attention_norm.weight`.

use super::hparams::HParams;
use super::recipe::{build_decoder, DecoderOptions, LayerAttention, Recipe};
use crate::backend::{Activation, Rope, RopeStyle};
use crate::gguf::Gguf;
use crate::{Error, Result};

/// Layer `i` attends through the sliding window when `i % 2 == 0`, fully otherwise (the
/// reference's `layer_types`; not in the metadata).
const SLIDING_EVERY: usize = 2;
/// The experts' clamped SwiGLU constants (the reference's `alpha` and `limit`; not in the
/// metadata).
const SWIGLU_ALPHA: f32 = 1.702;
const SWIGLU_LIMIT: f32 = 7.0;
/// YaRN's defaults where the file gives no `yarn_beta_fast` / `yarn_beta_slow`.
const YARN_BETA_FAST: f32 = 32.0;
const YARN_BETA_SLOW: f32 = 1.0;

pub fn build(g: &Gguf, hp: HParams) -> Result<Recipe> {
    let window = hp.sliding_window.ok_or_else(|| {
        Error::BadModel(format!(
            "{0}: missing metadata key '{0}.attention.sliding_window'",
            hp.arch
        ))
    })?;
    let rope = rope(g, &hp)?;
    let layers = (0..hp.n_layer)
        .map(|i| LayerAttention {
            window: (i % SLIDING_EVERY == 0).then_some(window),
            ..LayerAttention::global(rope.clone())
        })
        .collect();
    let opts = DecoderOptions {
        layers,
        qkv_bias: true,
        ffn_norm: "post_attention_norm.weight",
        attn_sinks: true,
        experts: true,
        act: Activation::ClampedSwiglu {
            alpha: SWIGLU_ALPHA,
            limit: SWIGLU_LIMIT,
        },
        ..DecoderOptions::standard(&hp, rope.clone())
    };
    build_decoder(g, hp, opts)
}

/// The rotary embedding: NeoX pairing, YaRN when `<arch>.rope.scaling.type` says so.
fn rope(g: &Gguf, hp: &HParams) -> Result<Rope> {
    let plain = Rope::plain(RopeStyle::Neox, hp.rope_dims, hp.rope_base);
    let k = |s: &str| format!("{}.rope.scaling.{s}", hp.arch);
    match g.get_str(&k("type"))? {
        None | Some("none") => Ok(plain),
        Some("yarn") => {
            let positive = |key: String, v: Option<f32>| -> Result<Option<f32>> {
                match v {
                    Some(f) if !(f.is_finite() && f > 0.0) => Err(Error::BadModel(format!(
                        "metadata '{key}' = {f} is not a positive number"
                    ))),
                    _ => Ok(v),
                }
            };
            let factor = positive(k("factor"), g.get_f32(&k("factor"))?)?.ok_or_else(|| {
                Error::BadModel(format!("missing metadata key '{}'", k("factor")))
            })?;
            let original = g
                .get_u64(&k("original_context_length"))?
                .filter(|&v| v > 0)
                .ok_or_else(|| {
                    Error::BadModel(format!(
                        "missing or zero metadata key '{}'",
                        k("original_context_length")
                    ))
                })?;
            let fast = positive(k("yarn_beta_fast"), g.get_f32(&k("yarn_beta_fast"))?)?;
            let slow = positive(k("yarn_beta_slow"), g.get_f32(&k("yarn_beta_slow"))?)?;
            let attn_factor = positive(k("attn_factor"), g.get_f32(&k("attn_factor"))?)?;
            let yarn = Yarn {
                factor,
                original: original as f64,
                beta_fast: fast.unwrap_or(YARN_BETA_FAST),
                beta_slow: slow.unwrap_or(YARN_BETA_SLOW),
            };
            let (divisors, mscale) = yarn.divisors_and_factor(hp.rope_dims, hp.rope_base);
            Ok(Rope {
                freq_factors: Some(divisors.into()),
                mscale: attn_factor.unwrap_or(mscale),
                ..plain
            })
        }
        Some(other) => Err(Error::Unsupported(format!(
            "{}: rope scaling type '{other}'",
            hp.arch
        ))),
    }
}

/// YaRN's settings.
struct Yarn {
    factor: f32,
    /// The context the model was trained at before the extension.
    original: f64,
    beta_fast: f32,
    beta_slow: f32,
}

impl Yarn {
    /// Per-pair frequency divisors and the attention factor, as Hugging Face's
    /// `_compute_yarn_parameters` makes them with `truncate = false` (GPT-OSS): pairs that
    /// turn more than `beta_fast` times over the original context keep their frequency, those
    /// that turn fewer than `beta_slow` times are divided by `factor`, with a linear ramp
    /// between (the correction range is not rounded to whole dimensions). The reference
    /// blends frequencies, `f * ((1 - e) / factor + e)` with `e` the extrapolation share: as a
    /// divisor that is `1 / ((1 - e) / factor + e)`. Attention factor `0.1 ln(factor) + 1`.
    fn divisors_and_factor(&self, dims: usize, base: f32) -> (Vec<f32>, f32) {
        let (d, b) = (dims as f64, base as f64);
        // The dimension whose pair turns `rot` times over the original context.
        let dim_of = |rot: f32| {
            d * (self.original / (rot as f64 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * b.ln())
        };
        let low = dim_of(self.beta_fast).max(0.0);
        let mut high = dim_of(self.beta_slow).min(d - 1.0);
        if low == high {
            high += 0.001; // as the reference, against a division by zero
        }
        // The reference computes the ramp in f32 (a tensor of the pair indices), the range's
        // ends and width in f64 (Python floats).
        let (low, span) = (low as f32, (high - low) as f32);
        let divisors = (0..dims / 2)
            .map(|i| {
                let ramp = ((i as f32 - low) / span).clamp(0.0, 1.0);
                let extrapolate = 1.0 - ramp;
                1.0 / ((1.0 - extrapolate) / self.factor + extrapolate)
            })
            .collect();
        let mscale = if self.factor <= 1.0 {
            1.0
        } else {
            0.1 * self.factor.ln() + 1.0
        };
        (divisors, mscale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our YaRN against the inverse frequencies and cos/sin factor Hugging Face used for the
    /// tiny GPT-OSS reference (transformers 5.25: head 64, theta 150000, factor 32, original
    /// context 4096, beta 32/1, truncate false; `rope_hf` of its reference.json). The blend
    /// of the reference and our divisor round differently: within 1 f32 ulp measured (1e-7
    /// relative); bound 2 ulps (2.4e-7).
    #[test]
    fn yarn_matches_hugging_face() {
        const HF_INV_FREQ: [f32; 32] = [
            1.0,
            0.689_044_3,
            0.474_782_05,
            0.327_145_87,
            0.225_418,
            0.155_322_98,
            0.107_024_42,
            0.073_744_565,
            0.050_813_273,
            0.031_705_696,
            0.019_335,
            0.011_592_049,
            0.006_794_959_3,
            0.003_860_359,
            0.002_093_792_7,
            0.001_052_602_2,
            0.000_456_483_92,
            0.000_129_318_7,
            3.830_881e-5,
            2.639_646_8e-5,
            1.818_833_7e-5,
            1.253_257e-5,
            8.635_496e-6,
            5.950_239_5e-6,
            4.099_978_5e-6,
            2.825_066_8e-6,
            1.946_596_3e-6,
            1.341_291e-6,
            9.242_09e-7,
            6.368_209e-7,
            4.387_978_5e-7,
            3.023_511_4e-7,
        ];
        const HF_ATTENTION_SCALING: f32 = 1.346_573_6;
        let yarn = Yarn {
            factor: 32.0,
            original: 4096.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        let (div, mscale) = yarn.divisors_and_factor(64, 150_000.0);
        let rope = Rope {
            freq_factors: Some(div.into()),
            mscale,
            ..Rope::plain(RopeStyle::Neox, 64, 150_000.0)
        };
        for (i, (got, want)) in rope.inv_freq().iter().zip(HF_INV_FREQ).enumerate() {
            let rel = ((got - want) / want).abs();
            assert!(rel <= 2.4e-7, "pair {i}: {got} vs HF {want} ({rel:.1e})");
        }
        assert!((mscale - HF_ATTENTION_SCALING).abs() <= 1e-6, "{mscale}");
        // The ramp spans pairs 8..17: below it the frequencies are kept, above divided by 32.
        assert_eq!(rope.freq_factors.as_ref().unwrap()[..9], [1.0; 9]);
        assert_eq!(rope.freq_factors.as_ref().unwrap()[18..], [32.0; 14]);
    }
}
