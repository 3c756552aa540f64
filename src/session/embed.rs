//! Embeddings: one vector per input text, the model's final hidden state (after the final
//! norm) pooled over the input's tokens, optionally L2-normalized.
//!
//! The hidden rows come through the taps every backend records (the last layer's output, all
//! rows, recorded before the step keeps only the last row for the logits), so this works on
//! the CPU and on CUDA with no mode of its own in the backends; the final RMSNorm (the model's
//! `output_norm`) is applied here. An input runs in pieces of at most [`PIECE`] tokens, so the
//! taps held at once stay bounded whatever the input's length.
//!
//! Pooling "as the model says": GGUF `<arch>.pooling_type` when the file has a mean, CLS or
//! last pooling; otherwise (decoder language models carry none) last-token pooling: in a causal
//! model only the last position has attended to the whole input.

use super::{Session, SessionOptions};
use crate::backend::Logits;
use crate::model::Model;
use crate::{Error, Result};
use std::sync::Arc;

/// Tokens fed at once (the CPU's prefill chunk): bounds the taps held at a time.
const PIECE: usize = 256;

/// How the token rows of an input become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of every position's row.
    Mean,
    /// The first position's row (CLS).
    Cls,
    /// The last position's row.
    Last,
}

impl Pooling {
    /// The GGUF `<arch>.pooling_type` value (the `gguf` package's `PoolingType`: 0 none,
    /// 1 mean, 2 CLS, 3 last, 4 rank); None for those that do not pool a sentence vector.
    pub fn from_gguf(v: u32) -> Option<Pooling> {
        match v {
            1 => Some(Pooling::Mean),
            2 => Some(Pooling::Cls),
            3 => Some(Pooling::Last),
            _ => None,
        }
    }

    /// "mean", "cls" or "last".
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Last => "last",
        }
    }

    /// Parse "mean", "cls" or "last".
    pub fn parse(s: &str) -> Result<Pooling> {
        [Pooling::Mean, Pooling::Cls, Pooling::Last]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("unknown pooling '{s}' (mean, cls or last)"))
            })
    }

    /// The model's pooling: its `<arch>.pooling_type`, else last-token (see the module doc).
    pub fn of_model(model: &Model) -> Result<Pooling> {
        let key = format!("{}.pooling_type", model.architecture());
        let given = model.gguf().get_u32(&key)?;
        Ok(given.and_then(Pooling::from_gguf).unwrap_or(Pooling::Last))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedOptions {
    /// None: as the model says ([`Pooling::of_model`]).
    pub pooling: Option<Pooling>,
    /// Scale each vector to unit L2 norm.
    pub normalize: bool,
}

/// The vectors of a batch of inputs.
#[derive(Debug, Clone)]
pub struct Embeddings {
    /// Values per vector (the model's embedding width).
    pub dim: usize,
    /// The pooling used.
    pub pooling: Pooling,
    /// `inputs × dim` values, one row per input in order.
    pub data: Vec<f32>,
}

impl Embeddings {
    /// The vector of input `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Embed each text (tokenized as for generation: BOS where the model's metadata asks for it,
/// special tokens written in the text stay plain text).
pub fn embed(model: &Arc<Model>, texts: &[&str], options: &EmbedOptions) -> Result<Embeddings> {
    let tokens = texts
        .iter()
        .map(|t| model.tokenizer().encode(t, false, true))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    embed_tokens(model, &refs, options)
}

/// Embed each token sequence. An empty input, or one longer than the model's context, is an
/// error that names it; nothing is computed then.
pub fn embed_tokens(
    model: &Arc<Model>,
    inputs: &[&[u32]],
    options: &EmbedOptions,
) -> Result<Embeddings> {
    let limit = model.context_length() as usize;
    for (i, t) in inputs.iter().enumerate() {
        if t.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "input {i} is empty (no tokens)"
            )));
        }
        if t.len() > limit {
            return Err(Error::InvalidArgument(format!(
                "input {i} has {} tokens, more than the model's context of {limit}",
                t.len()
            )));
        }
    }
    let pooling = match options.pooling {
        Some(p) => p,
        None => Pooling::of_model(model)?,
    };
    let dim = model.hparams().n_embd;
    let mut data = Vec::new();
    data.try_reserve_exact(inputs.len().saturating_mul(dim))
        .map_err(|_| Error::OutOfMemory(format!("{} embeddings of {dim}", inputs.len())))?;
    let longest = inputs.iter().map(|t| t.len()).max().unwrap_or(1);
    let mut session = Session::new(
        model.clone(),
        SessionOptions {
            n_ctx: longest as u32,
            seed: 0,
        },
    )?;
    let norm = FinalNorm::of(model)?;
    for t in inputs {
        let mut v = pooled(&mut session, t, pooling, &norm)?;
        if options.normalize {
            l2_normalize(&mut v);
        }
        data.extend(v.iter().map(|&x| x as f32));
    }
    Ok(Embeddings { dim, pooling, data })
}

/// The model's final RMSNorm, applied on the host to the tapped hidden rows.
struct FinalNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl FinalNorm {
    fn of(model: &Model) -> Result<FinalNorm> {
        let r = &model.recipe;
        let t = r
            .tensors
            .get(r.output_norm.w.0 as usize)
            .ok_or_else(|| Error::Internal("the output norm's weight is not bound".into()))?;
        Ok(FinalNorm {
            weight: t.to_f32(t.data(&model.gguf)?)?,
            eps: r.output_norm.eps,
        })
    }

    /// `x / sqrt(mean(x²) + eps) * weight`, in f64.
    fn apply(&self, x: &[f32]) -> Vec<f64> {
        let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (ms + self.eps as f64).sqrt();
        x.iter()
            .zip(&self.weight)
            .map(|(&v, &w)| v as f64 * scale * w as f64)
            .collect()
    }
}

/// Run one input from an empty cache and pool its normed last-layer rows.
fn pooled(
    session: &mut Session,
    tokens: &[u32],
    pooling: Pooling,
    norm: &FinalNorm,
) -> Result<Vec<f64>> {
    let dim = norm.weight.len();
    let last_layer = session.model().hparams().n_layer.checked_sub(1);
    session.reset();
    session.set_taps(true);
    let mut acc = vec![0f64; dim];
    let mut seen = 0usize;
    let result = (|| -> Result<()> {
        for piece in tokens.chunks(PIECE) {
            session.eval(piece, Logits::Last)?;
            // One tap per forward step: several if the backend cut the piece in smaller steps.
            let taps = session.take_taps();
            let rows: Vec<&[f32]> = taps
                .iter()
                .filter(|t| t.name == "layer" && t.layer == last_layer)
                .flat_map(|t| t.data.chunks_exact(dim))
                .collect();
            if rows.len() != piece.len() {
                return Err(Error::Internal(format!(
                    "{} rows of the last layer recorded for {} tokens",
                    rows.len(),
                    piece.len()
                )));
            }
            for row in rows {
                let keep = match pooling {
                    Pooling::Mean => true,
                    Pooling::Cls => seen == 0,
                    Pooling::Last => seen + 1 == tokens.len(),
                };
                if keep {
                    for (a, v) in acc.iter_mut().zip(norm.apply(row)) {
                        *a += v;
                    }
                }
                seen += 1;
            }
        }
        Ok(())
    })();
    session.set_taps(false);
    result?;
    if pooling == Pooling::Mean {
        acc.iter_mut().for_each(|a| *a /= tokens.len() as f64);
    }
    Ok(acc)
}

fn l2_normalize(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_names_and_gguf_values() {
        for p in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
            assert_eq!(Pooling::parse(p.name()).unwrap(), p);
        }
        assert!(Pooling::parse("max")
            .unwrap_err()
            .to_string()
            .contains("'max'"));
        assert_eq!(Pooling::from_gguf(1), Some(Pooling::Mean));
        assert_eq!(Pooling::from_gguf(2), Some(Pooling::Cls));
        assert_eq!(Pooling::from_gguf(3), Some(Pooling::Last));
        assert_eq!(Pooling::from_gguf(0), None);
        assert_eq!(Pooling::from_gguf(4), None);
    }
}
