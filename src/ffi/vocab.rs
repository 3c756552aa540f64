//! Tokenizer queries on a model: its special ids, a token's bytes, whether it is special.
//! (The vocabulary size is `llorch_model_vocab_size`.)

use super::{arg, call, llorch_error, llorch_model, llorch_status, out};
use crate::tokenizer::{TokenType, Tokenizer};
use crate::Error;
use std::ffi::c_char;

/// The model's beginning-of-sequence, end-of-sequence and end-of-turn token ids, each -1
/// when the model's tokenizer has none. Any out-pointer may be NULL. (Generation also stops
/// at the model's other end-of-generation tokens, e.g. `<|im_end|>`.)
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_special_tokens(
    model: *const llorch_model,
    out_bos: *mut i32,
    out_eos: *mut i32,
    out_eot: *mut i32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let tok = arg(model, "model")?.model.tokenizer();
        for (o, id) in [
            (out_bos, tok.bos_id()),
            (out_eos, tok.eos_id()),
            (out_eot, tok.eot_id()),
        ] {
            if let Some(o) = o.as_mut() {
                *o = id.map_or(-1, |t| t as i32);
            }
        }
        Ok(())
    })
}

/// The bytes `token` stands for (a control token's are its text, e.g. `<|im_end|>`; a byte
/// token's its one byte; they may be part of a UTF-8 character). `*out_len` receives their
/// length; the first `min(cap, length)` bytes are copied to `buf` (not NUL-terminated), so a
/// call with `buf` NULL and `cap` 0 asks for the length. A token outside the vocabulary is
/// `LLORCH_ERR_INVALID_ARGUMENT`. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_token_text(
    model: *const llorch_model,
    token: i32,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let tok = arg(model, "model")?.model.tokenizer();
        let out_len = out(out_len, "out_len")?;
        if buf.is_null() && cap > 0 {
            return Err(Error::InvalidArgument(format!(
                "buf is NULL but cap is {cap}"
            )));
        }
        let bytes = tok.token_bytes(token_id(tok, token)?)?;
        let n = bytes.len().min(cap);
        if n > 0 {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, n);
        }
        *out_len = bytes.len();
        Ok(())
    })
}

/// Whether `token` is special: a control token (`<|im_start|>`, `<|endoftext|>` …) or a
/// user-defined one, i.e. one that prompt text matches only with `parse_special`.
/// A token outside the vocabulary is `LLORCH_ERR_INVALID_ARGUMENT`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_token_is_special(
    model: *const llorch_model,
    token: i32,
    out_special: *mut bool,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let tok = arg(model, "model")?.model.tokenizer();
        let o = out(out_special, "out_special")?;
        let ty = tok.token_type(token_id(tok, token)?);
        *o = matches!(ty, Some(TokenType::Control | TokenType::UserDefined));
        Ok(())
    })
}

/// `token` as an id of `tok`'s vocabulary, or an error naming the range.
fn token_id(tok: &Tokenizer, token: i32) -> crate::Result<u32> {
    let n = tok.vocab_size();
    if token < 0 || token as usize >= n {
        return Err(Error::InvalidArgument(format!(
            "token {token} is outside the vocabulary (0..{n})"
        )));
    }
    Ok(token as u32)
}
