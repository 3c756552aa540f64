//! Embeddings through the C ABI: `llorch_model_embed` (src/session/embed.rs).

use super::{
    arg, c_str, call, check_struct_size, guard, llorch_error, llorch_model, llorch_status,
};
use super::{out, read_sized_fields};
use crate::session::embed::{embed, EmbedOptions, Pooling};
use crate::Error;
use std::ffi::c_char;

/// How an embedding pools the rows of its input's tokens. The values are GGUF's
/// `<arch>.pooling_type` numbers.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum llorch_pooling {
    /// As the model says: its `<arch>.pooling_type` when the file has a mean, CLS or last
    /// pooling, else last-token pooling (decoder language models carry none; in a causal
    /// model only the last position has attended to the whole input).
    LLORCH_POOLING_MODEL = 0,
    /// The mean of every position's final hidden state (after the final norm).
    LLORCH_POOLING_MEAN = 1,
    /// The first position's (CLS).
    LLORCH_POOLING_CLS = 2,
    /// The last position's.
    LLORCH_POOLING_LAST = 3,
}

/// Parameters of `llorch_model_embed`. Fill with `llorch_embed_params_init` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_embed_params {
    /// sizeof(llorch_embed_params), set by llorch_embed_params_init.
    pub struct_size: usize,
    /// A `llorch_pooling` value (default `LLORCH_POOLING_MODEL`).
    pub pooling: i32,
    /// Scale each vector to unit L2 norm (default false).
    pub normalize: bool,
}

const EMBED_PARAMS_MIN: usize = std::mem::offset_of!(llorch_embed_params, normalize) + 1;

fn embed_params_default() -> llorch_embed_params {
    llorch_embed_params {
        struct_size: std::mem::size_of::<llorch_embed_params>(),
        pooling: llorch_pooling::LLORCH_POOLING_MODEL as i32,
        normalize: false,
    }
}

fn pooling_of(v: i32) -> crate::Result<Option<Pooling>> {
    match v {
        0 => Ok(None),
        _ => u32::try_from(v)
            .ok()
            .and_then(Pooling::from_gguf)
            .map(Some)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "params->pooling is {v}, not a llorch_pooling value (0 to 3)"
                ))
            }),
    }
}

fn c_pooling(p: Pooling) -> llorch_pooling {
    match p {
        Pooling::Mean => llorch_pooling::LLORCH_POOLING_MEAN,
        Pooling::Cls => llorch_pooling::LLORCH_POOLING_CLS,
        Pooling::Last => llorch_pooling::LLORCH_POOLING_LAST,
    }
}

/// Fills `params` with the defaults (the model's pooling, not normalized) and its
/// struct_size. NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_embed_params_init(params: *mut llorch_embed_params) {
    guard(
        |_| (),
        || {
            if let Some(p) = params.as_mut() {
                *p = embed_params_default();
            }
        },
    )
}

/// The size of the model's embeddings (values per vector) into `*out_dim`, and the pooling
/// `LLORCH_POOLING_MODEL` stands for (a `llorch_pooling` value other than MODEL) into
/// `*out_pooling` (may be NULL). Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_embedding_info(
    model: *const llorch_model,
    out_dim: *mut u32,
    out_pooling: *mut i32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = &arg(model, "model")?.model;
        let out_dim = out(out_dim, "out_dim")?;
        let dim = u32::try_from(m.hparams().n_embd)
            .map_err(|_| Error::Internal("embedding width larger than u32".into()))?;
        let pooling = Pooling::of_model(m)?;
        *out_dim = dim;
        if let Some(p) = out_pooling.as_mut() {
            *p = c_pooling(pooling) as i32;
        }
        Ok(())
    })
}

/// Embeds `n_texts` NUL-terminated UTF-8 texts (tokenized as for generation: BOS where the
/// model's metadata asks for it; special tokens in the text stay plain text), each from an
/// empty cache: its final hidden state (after the final norm) pooled as `params` says
/// (`params` may be NULL for the defaults). Vector `i` goes to `out[i*dim .. (i+1)*dim]`
/// (`dim` from `llorch_model_embedding_info`); `out_len` is the buffer's length in floats and
/// must be at least `n_texts * dim`. `texts` may be NULL only when `n_texts` is 0. An empty
/// text, or one longer than the model's context, is `LLORCH_ERR_INVALID_ARGUMENT` naming its
/// index, and nothing is written. It runs on the calling thread; it cannot be cancelled.
/// Thread-safety: any thread; several calls on one model may run at once.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_embed(
    model: *const llorch_model,
    texts: *const *const c_char,
    n_texts: usize,
    params: *const llorch_embed_params,
    out_vectors: *mut f32,
    out_len: usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = &arg(model, "model")?.model;
        let mut p = embed_params_default();
        if !params.is_null() {
            let size = arg(params, "params")?.struct_size;
            check_struct_size(size, EMBED_PARAMS_MIN, "params")?;
            read_sized_fields!(params, size, p: llorch_embed_params { pooling, normalize });
        }
        let options = EmbedOptions {
            pooling: pooling_of(p.pooling)?,
            normalize: p.normalize,
        };
        let strs: Vec<&str> = if n_texts == 0 {
            Vec::new()
        } else {
            let texts = std::slice::from_raw_parts(arg(texts, "texts")?, n_texts);
            texts
                .iter()
                .enumerate()
                .map(|(i, &t)| c_str(t, &format!("texts[{i}]")))
                .collect::<crate::Result<_>>()?
        };
        let need = n_texts
            .checked_mul(m.hparams().n_embd)
            .ok_or_else(|| Error::InvalidArgument(format!("{n_texts} texts is too many")))?;
        if out_len < need {
            return Err(Error::InvalidArgument(format!(
                "out_len is {out_len}: {n_texts} vectors of {} need {need} floats",
                m.hparams().n_embd
            )));
        }
        if need > 0 && out_vectors.is_null() {
            return Err(Error::InvalidArgument("out_vectors is NULL".into()));
        }
        let e = embed(m, &strs, &options)?;
        if need > 0 {
            std::slice::from_raw_parts_mut(out_vectors, need).copy_from_slice(&e.data);
        }
        Ok(())
    })
}
