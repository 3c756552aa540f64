//! Hyper-parameters read from `<arch>.*` metadata. Never constants.

use crate::gguf::Gguf;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rope_dims: usize,
    pub norm_eps: f32,
    pub vocab: usize,
    /// `<arch>.attention.sliding_window`: the window of the layers that have one.
    pub sliding_window: Option<usize>,
    /// Mixture-of-experts layers: `<arch>.expert_count`, `<arch>.expert_used_count` (the
    /// experts each token uses) and `<arch>.expert_feed_forward_length` (an expert's width,
    /// default `n_ff`); none for a dense model.
    pub moe: Option<MoeParams>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeParams {
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_expert: usize,
}

fn required(g: &Gguf, key: &str) -> Result<u64> {
    g.get_u64(key)?
        .ok_or_else(|| Error::BadModel(format!("missing metadata key '{key}'")))
}

fn usize_in(key: &str, v: u64, lo: u64, hi: u64) -> Result<usize> {
    if v < lo || v > hi {
        return Err(Error::BadModel(format!(
            "metadata '{key}' = {v} is outside {lo}..={hi}"
        )));
    }
    Ok(v as usize)
}

impl HParams {
    /// Read the common transformer hyper-parameters of architecture `arch`; `vocab` is the
    /// tokenizer's vocabulary size.
    pub fn from_gguf(g: &Gguf, arch: &str, vocab: usize) -> Result<Self> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_embd = usize_in(
            &k("embedding_length"),
            required(g, &k("embedding_length"))?,
            1,
            1 << 16,
        )?;
        let n_layer = usize_in(&k("block_count"), required(g, &k("block_count"))?, 1, 1024)?;
        let n_head = usize_in(
            &k("attention.head_count"),
            required(g, &k("attention.head_count"))?,
            1,
            1024,
        )?;
        let n_head_kv = match g.get_u64(&k("attention.head_count_kv"))? {
            Some(v) => usize_in(&k("attention.head_count_kv"), v, 1, n_head as u64)?,
            None => n_head,
        };
        if n_head % n_head_kv != 0 {
            return Err(Error::BadModel(format!(
                "{n_head} query heads cannot share {n_head_kv} KV heads evenly"
            )));
        }
        let head_dim = match g.get_u64(&k("attention.key_length"))? {
            Some(v) => usize_in(&k("attention.key_length"), v, 2, 1024)?,
            None => {
                if n_embd % n_head != 0 {
                    return Err(Error::BadModel(format!(
                        "embedding {n_embd} is not a multiple of {n_head} heads"
                    )));
                }
                n_embd / n_head
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::BadModel(format!("head size {head_dim} is odd")));
        }
        let n_ff = usize_in(
            &k("feed_forward_length"),
            required(g, &k("feed_forward_length"))?,
            1,
            1 << 20,
        )?;
        let n_ctx_train = usize_in(
            &k("context_length"),
            required(g, &k("context_length"))?,
            1,
            1 << 24,
        )?;
        let rope_base = g.get_f32(&k("rope.freq_base"))?.unwrap_or(10000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(Error::BadModel(format!(
                "rope base {rope_base} is not a number > 1"
            )));
        }
        let rope_dims = match g.get_u64(&k("rope.dimension_count"))? {
            Some(v) => usize_in(&k("rope.dimension_count"), v, 2, head_dim as u64)?,
            None => head_dim,
        };
        let norm_eps = g
            .get_f32(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        if !(norm_eps.is_finite() && norm_eps > 0.0 && norm_eps < 1.0) {
            return Err(Error::BadModel(format!(
                "RMSNorm epsilon {norm_eps} is not in (0, 1)"
            )));
        }
        let sliding_window = match g.get_u64(&k("attention.sliding_window"))? {
            Some(v) => Some(usize_in(&k("attention.sliding_window"), v, 1, 1 << 24)?),
            None => None,
        };
        let moe = match g.get_u64(&k("expert_count"))? {
            None | Some(0) => None,
            Some(v) => {
                let n_expert = usize_in(&k("expert_count"), v, 1, 4096)?;
                let used_key = k("expert_used_count");
                let used = required(g, &used_key)?;
                if used == 0 || used > n_expert as u64 {
                    return Err(Error::BadModel(format!(
                        "metadata '{used_key}' = {used}: a token must use 1 to {n_expert} \
                         experts ('{}' = {n_expert})",
                        k("expert_count")
                    )));
                }
                let n_ff_expert = match g.get_u64(&k("expert_feed_forward_length"))? {
                    Some(v) => usize_in(&k("expert_feed_forward_length"), v, 1, 1 << 20)?,
                    None => n_ff,
                };
                Some(MoeParams {
                    n_expert,
                    n_expert_used: used as usize,
                    n_ff_expert,
                })
            }
        };
        Ok(HParams {
            arch: arch.to_string(),
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            n_ctx_train,
            rope_base,
            rope_dims,
            norm_eps,
            vocab,
            sliding_window,
            moe,
        })
    }

    /// The sizes the backends allocate for.
    pub fn dims(&self) -> crate::backend::Dims {
        crate::backend::Dims {
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim: self.head_dim,
            n_ff: self.n_ff,
            vocab: self.vocab,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// The position scale of `<arch>.rope.scaling.type = linear` (1 / factor); 1 when there is no
/// scaling. Other scaling types belong to the architectures that define them.
pub fn linear_rope_scale(g: &Gguf, arch: &str) -> Result<f32> {
    match g.get_str(&format!("{arch}.rope.scaling.type"))? {
        None | Some("none") => Ok(1.0),
        Some("linear") => {
            let key = format!("{arch}.rope.scaling.factor");
            let f = g.get_f32(&key)?.unwrap_or(1.0);
            if !(f.is_finite() && f >= 1.0) {
                return Err(Error::BadModel(format!(
                    "metadata '{key}' = {f} is not a number >= 1"
                )));
            }
            Ok(1.0 / f)
        }
        Some(other) => Err(Error::Unsupported(format!(
            "{arch}: rope scaling type '{other}'"
        ))),
    }
}
