//! Generated pieces with their log-probabilities: the push form with a piece callback and the
//! pull form with a piece struct. (`llorch_token_callback` and `llorch_session_next` stay as
//! they were: these are added beside them.)

use super::{
    arg, call, check_buf, llorch_error, llorch_generate_params, llorch_generate_stats,
    llorch_session, llorch_status, lock, out, pull, run_generate,
};
use crate::session::{Piece, TokenLogprob};
use crate::Error;
use std::ffi::{c_char, c_void};

/// One alternative at a position: a token and its log-probability.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_top_logprob {
    pub token: i32,
    pub logprob: f32,
}

/// A generated token's log-probability (natural log, from the raw logits: see
/// `llorch_generate_params.logprobs`) and the most likely tokens at its position, most likely
/// first (ties to the lower id); the generated token is among them only if it ranks there.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_token_logprob {
    pub token: i32,
    pub logprob: f32,
    /// `n_top` alternatives (`min(params.logprobs, vocabulary size)`).
    pub top: *const llorch_top_logprob,
    pub n_top: usize,
}

/// A piece of generated text with what produced it. From the library, valid only during the
/// callback (push form) or until the next call on the session (pull form).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_piece {
    /// sizeof(llorch_piece): set by the library for a callback; by the caller for
    /// `llorch_session_next_piece` (fields beyond it are not written).
    pub struct_size: usize,
    /// `len` bytes of whole UTF-8 characters, not NUL-terminated.
    pub text: *const c_char,
    pub len: usize,
    /// The token that completed the text.
    pub token: i32,
    /// With `params.logprobs` > 0: the tokens sampled since the previous piece, in order
    /// (those whose text this piece completes); else NULL and 0. The end-of-generation token
    /// and tokens cut by a stop string are reported in no piece.
    pub logprobs: *const llorch_token_logprob,
    pub n_logprobs: usize,
}

const PIECE_MIN: usize = std::mem::offset_of!(llorch_piece, n_logprobs) + 8;

/// Receives one piece (as `llorch_token_callback`, with log-probabilities); return false to
/// stop. Called on the thread that called `llorch_session_generate_pieces`.
pub type llorch_piece_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, piece: *const llorch_piece) -> bool>;

/// The C arrays of one piece's log-probabilities. The pointers in `tokens` point into `tops`,
/// which is not changed while they are handed out.
#[derive(Default)]
pub(crate) struct LogprobArrays {
    tops: Vec<llorch_top_logprob>,
    tokens: Vec<llorch_token_logprob>,
}

// SAFETY: the raw pointers point into the struct's own heap data (`tops`), moved with it.
unsafe impl Send for LogprobArrays {}

impl LogprobArrays {
    /// Fills the arrays from `lps`; the returned pointer and count describe them (NULL, 0 for
    /// none) until the next `set`.
    fn set(&mut self, lps: &[TokenLogprob]) -> (*const llorch_token_logprob, usize) {
        self.tops.clear();
        self.tokens.clear();
        for lp in lps {
            self.tops
                .extend(lp.top.iter().map(|&(token, logprob)| llorch_top_logprob {
                    token: token as i32,
                    logprob,
                }));
        }
        // `tops` is complete: its buffer no longer moves.
        let mut at = 0;
        for lp in lps {
            self.tokens.push(llorch_token_logprob {
                token: lp.token as i32,
                logprob: lp.logprob,
                top: if lp.top.is_empty() {
                    std::ptr::null()
                } else {
                    self.tops[at..].as_ptr()
                },
                n_top: lp.top.len(),
            });
            at += lp.top.len();
        }
        if self.tokens.is_empty() {
            (std::ptr::null(), 0)
        } else {
            (self.tokens.as_ptr(), self.tokens.len())
        }
    }
}

/// As `llorch_session_generate`, but `on_piece` (may be NULL) receives a `llorch_piece`: the
/// text, its token and, with `params->logprobs` > 0, the log-probabilities of the tokens it
/// completes. Same statuses, stats and thread-safety.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_generate_pieces(
    session: *mut llorch_session,
    prompt: *const c_char,
    params: *const llorch_generate_params,
    on_piece: llorch_piece_callback,
    user_data: *mut c_void,
    stats: *mut llorch_generate_stats,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let mut arrays = LogprobArrays::default();
        let mut each = |p: &Piece| {
            let Some(cb) = on_piece else { return true };
            let (logprobs, n_logprobs) = arrays.set(&p.logprobs);
            let piece = llorch_piece {
                struct_size: std::mem::size_of::<llorch_piece>(),
                text: p.text.as_ptr() as *const c_char,
                len: p.text.len(),
                token: p.token as i32,
                logprobs,
                n_logprobs,
            };
            cb(user_data, &piece)
        };
        run_generate(session, prompt, params, stats, &mut each)
    })
}

/// As `llorch_session_next`, filling `*out_piece` (its `struct_size` set by the caller; only
/// fields within it are written): `text` points at `buf` (`len` bytes), `token`, and the
/// log-probabilities of the tokens the piece completes, which stay valid until the next call
/// on this session. A piece longer than `cap` comes in parts; its log-probabilities come with
/// the first part. At the end `*out_done` is true and `*out_piece` is not written. Same
/// statuses and thread-safety as `llorch_session_next`.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_next_piece(
    session: *mut llorch_session,
    buf: *mut c_char,
    cap: usize,
    out_piece: *mut llorch_piece,
    out_done: *mut bool,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        check_buf(buf, cap)?;
        let size = out(out_piece, "out_piece")?.struct_size;
        if size < PIECE_MIN {
            return Err(Error::InvalidArgument(format!(
                "out_piece->struct_size is {size}, smaller than sizeof(llorch_piece) of the \
                 first version ({PIECE_MIN} bytes); set it to sizeof(llorch_piece)"
            )));
        }
        let out_done = out(out_done, "out_done")?;
        let mut guard = lock(arg(session as *const llorch_session, "session")?)?;
        let e = &mut *guard;
        match pull(e, buf, cap)? {
            None => *out_done = true,
            Some((len, token, lps)) => {
                let (logprobs, n_logprobs) = e.logprobs.set(&lps);
                *out_piece = llorch_piece {
                    struct_size: size.min(std::mem::size_of::<llorch_piece>()),
                    text: buf,
                    len,
                    token: token as i32,
                    logprobs,
                    n_logprobs,
                };
                *out_done = false;
            }
        }
        Ok(())
    })
}
