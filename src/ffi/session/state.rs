//! A session's KV state through the C ABI: its tokens, rewind, fork, save and restore.

use super::{arg, c_str, call, guard, into_handle, llorch_error, llorch_session, llorch_status};
use super::{lock, out};
use crate::Error;
use std::ffi::{c_char, c_void};
use std::path::Path;

/// The session's conversation so far (the tokens in its KV cache, then a sampled token not
/// yet fed, if any): `*out_n` ids in `*out_tokens`, to free with `llorch_tokens_free` (NULL
/// when there are none). Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_tokens(
    session: *const llorch_session,
    out_tokens: *mut *mut i32,
    out_n: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let out_tokens = out(out_tokens, "out_tokens")?;
        let out_n = out(out_n, "out_n")?;
        let ids = lock(arg(session, "session")?)?.session.tokens();
        let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        *out_tokens = super::super::model::malloc_tokens(&ids)?;
        *out_n = ids.len();
        Ok(())
    })
}

/// Takes the conversation back to its first `n_tokens` tokens (at most as many as
/// `llorch_session_tokens` gives): the next generation continues from there. A pull-form
/// generation in progress ends. A larger `n_tokens` is `LLORCH_ERR_INVALID_ARGUMENT` and
/// changes nothing. The sampler's seed and generation count stay, so a regenerated turn
/// draws new random numbers. Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_rewind(
    session: *mut llorch_session,
    n_tokens: u32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        e.session.rewind(n_tokens)?;
        e.unread = None;
        Ok(())
    })
}

/// A new session (`*out_session`, freed with `llorch_session_free`) on the same model with a
/// copy of `session`'s conversation: tokens, KV cache rows, context length, seed and
/// generation count, so both continue alike from here (a generation in progress is not
/// carried over). The copy takes a KV cache of its own (`LLORCH_ERR_OUT_OF_MEMORY` if it
/// does not fit). Thread-safety: one call at a time on `session`.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_fork(
    session: *const llorch_session,
    out_session: *mut *mut llorch_session,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let out_session = out(out_session, "out_session")?;
        let fork = lock(arg(session, "session")?)?.session.fork()?;
        *out_session = into_handle(fork);
        Ok(())
    })
}

/// Saves the session's conversation (tokens, the KV rows in use, seed and generation count)
/// into a new buffer: `*out_len` bytes at `*out_bytes`, to free with `llorch_bytes_free`. The
/// format is versioned and names the model (a hash of its tensor table and vocabulary); see
/// src/session/state_file.rs. Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_save(
    session: *const llorch_session,
    out_bytes: *mut *mut u8,
    out_len: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let out_bytes = out(out_bytes, "out_bytes")?;
        let out_len = out(out_len, "out_len")?;
        let bytes = lock(arg(session, "session")?)?.session.save_state()?;
        let p = libc::malloc(bytes.len().max(1)) as *mut u8;
        if p.is_null() {
            return Err(Error::OutOfMemory(format!(
                "allocating a {} byte session state",
                bytes.len()
            )));
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *out_bytes = p;
        *out_len = bytes.len();
        Ok(())
    })
}

/// Frees a buffer from `llorch_session_save`. NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_bytes_free(bytes: *mut u8) {
    guard(|_| (), || libc::free(bytes as *mut c_void))
}

/// Replaces the session's conversation with one saved by `llorch_session_save` (`len` bytes
/// at `bytes`) from a session of the same model, on either device: the next generation
/// continues exactly as the saved session would have (same tokens, greedy or seeded; the
/// seed is restored too). Errors leave the session unchanged: `LLORCH_ERR_INVALID_ARGUMENT`
/// for a state of another model, another format version, a truncated or damaged one (the
/// message says which), `LLORCH_ERR_CONTEXT_FULL` when it holds more tokens than this
/// session's context. A pull-form generation in progress ends. Thread-safety: one call at a
/// time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_restore(
    session: *mut llorch_session,
    bytes: *const u8,
    len: usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        if bytes.is_null() {
            return Err(Error::InvalidArgument("bytes is NULL".into()));
        }
        let data = std::slice::from_raw_parts(bytes, len);
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        e.session.restore_state(data)?;
        e.unread = None;
        Ok(())
    })
}

/// `llorch_session_save` into the file at `path` (UTF-8; created or replaced).
/// `LLORCH_ERR_IO` if it cannot be written. Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_save_file(
    session: *const llorch_session,
    path: *const c_char,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let path = c_str(path, "path")?;
        let e = lock(arg(session, "session")?)?;
        e.session.save_state_file(Path::new(path))
    })
}

/// `llorch_session_restore` from the file at `path` (UTF-8). `LLORCH_ERR_IO` if it cannot be
/// read; the other errors as `llorch_session_restore`, the session unchanged.
/// Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_restore_file(
    session: *mut llorch_session,
    path: *const c_char,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let path = c_str(path, "path")?;
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        e.session.restore_state_file(Path::new(path))?;
        e.unread = None;
        Ok(())
    })
}
