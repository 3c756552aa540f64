//! llorch_session: one conversation with its KV cache; generation, cancellation.

mod pieces;
mod state;

pub use pieces::*;
pub use state::*;

use super::model::{detokenize_with, tokenize_with};
use super::{
    arg, c_str, call, check_struct_size, guard, llorch_error, llorch_model, llorch_status, out,
    read_sized_fields,
};
use crate::backend::KvType;
use crate::grammar::Constraint;
use crate::session::{
    Event, GenerateParams, GenerateStats, Piece, Session, SessionOptions, StopReason, TokenLogprob,
};
use crate::Error;
use parking_lot::Mutex;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One conversation: a KV cache over a model, and a sampler. Belongs to its creator; holds a
/// reference to its model. Thread-safety: use a session from one thread at a time (a second
/// concurrent call fails with `LLORCH_ERR_INVALID_ARGUMENT`, "session is busy"), except
/// `llorch_session_cancel`, which any thread may call at any time.
pub struct llorch_session {
    /// Locked by generate/next/reset/…; `cancel` below is reachable without it.
    engine: Mutex<Engine>,
    /// The session's cancel flag, which only the session clears.
    cancel: Arc<AtomicBool>,
}

/// What a session handle guards: the session, and what the pull form keeps between calls.
struct Engine {
    session: Session,
    /// The rest of a piece that did not fit the caller's buffer, and its token.
    unread: Option<(String, u32)>,
    /// The stats of the last generation that ended.
    last_stats: Option<GenerateStats>,
    /// The log-probabilities `llorch_session_next_piece` last handed out (kept until the
    /// next call on the session).
    logprobs: pieces::LogprobArrays,
}

/// The element type of a session's KV cache (`llorch_session_params.kv_type`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum llorch_kv_type {
    /// The device's choice: f32 on the CPU, f16 on a GPU (half the memory and bandwidth).
    LLORCH_KV_AUTO = 0,
    /// f16 keys and values, rounded to nearest-even as they are written: half the memory of
    /// f32 (on the CPU and on a GPU).
    LLORCH_KV_F16 = 1,
    /// f32 keys and values: exact (on a GPU, twice the cache memory of f16).
    LLORCH_KV_F32 = 2,
}

/// Parameters of `llorch_session_new`. Fill with `llorch_session_params_init` first.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_session_params {
    /// sizeof(llorch_session_params), set by llorch_session_params_init.
    pub struct_size: usize,
    /// KV cache length in tokens; 0 = the model's training context, capped by the engine
    /// (default 0).
    pub n_ctx: u32,
    /// Seed of the sampler's random numbers (default 0). Same seed and input, same tokens.
    pub seed: u64,
    /// A `llorch_kv_type` value: the KV cache's element type (default `LLORCH_KV_AUTO`).
    pub kv_type: i32,
    /// When the model's KV memory (the context's memory budget) is held by other sessions:
    /// true = a generation (or restore) fails at once with `LLORCH_ERR_BUSY`; false (the
    /// default) = it waits in line until a generation in flight frees enough.
    pub fail_when_busy: bool,
}

const SESSION_PARAMS_MIN: usize = std::mem::offset_of!(llorch_session_params, seed) + 8;

fn session_params_default() -> llorch_session_params {
    let d = SessionOptions::default();
    llorch_session_params {
        struct_size: std::mem::size_of::<llorch_session_params>(),
        n_ctx: d.n_ctx,
        seed: d.seed,
        kv_type: llorch_kv_type::LLORCH_KV_AUTO as i32,
        fail_when_busy: false,
    }
}

fn kv_type_of(v: i32) -> crate::Result<KvType> {
    Ok(match v {
        0 => KvType::Auto,
        1 => KvType::F16,
        2 => KvType::F32,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "params->kv_type is {v}, not a llorch_kv_type value (0 to 2)"
            )))
        }
    })
}

/// One logit bias: `bias` is added to the logit of `token` before sampling.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_logit_bias {
    pub token: i32,
    pub bias: f32,
}

/// Parameters of `llorch_session_generate`, passed by pointer. Fill with
/// `llorch_generate_params_init` first, then set fields. `struct_size` lets later versions
/// append fields: a caller built against an older, smaller struct keeps working (missing fields
/// take their defaults); a size smaller than the first version is `LLORCH_ERR_INVALID_ARGUMENT`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_generate_params {
    /// sizeof(llorch_generate_params), set by llorch_generate_params_init.
    pub struct_size: usize,
    /// Most tokens to generate (default 256).
    pub max_tokens: u32,
    /// 0 = greedy (the default). Must be >= 0 and finite.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off (default).
    pub top_k: u32,
    /// Nucleus sampling in (0, 1]; 1 = off (default).
    pub top_p: f32,
    /// Drop tokens below min_p times the best probability, in [0, 1]; 0 = off (default).
    pub min_p: f32,
    /// Repetition penalty > 0; 1 = off (default).
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of any token seen (default 0).
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of a token seen (default 0).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at (default 64).
    pub penalty_last_n: u32,
    /// Stop strings (NUL-terminated UTF-8): generation stops before any of them would be
    /// emitted, and none of it is emitted. NULL when `n_stop` is 0 (default).
    pub stop: *const *const c_char,
    pub n_stop: usize,
    /// Logit biases; NULL when `n_logit_bias` is 0 (default).
    pub logit_bias: *const llorch_logit_bias,
    pub n_logit_bias: usize,
    /// Special tokens written in the prompt (`<|im_start|>` …) become single tokens
    /// (default true, as chat templates need).
    pub parse_special: bool,
    /// Log-probabilities: each generated token's, and this many most likely alternatives,
    /// reported to `llorch_session_generate_pieces`' callback and by
    /// `llorch_session_next_piece`; 0 = off (default), which costs nothing. They are taken
    /// from the model's raw logits: before logit bias, penalties, temperature and
    /// top-k/top-p/min-p (what OpenAI's API reports; what evaluation wants).
    pub logprobs: u32,
    /// Constrained output: a JSON Schema (NUL-terminated JSON text) the output must validate
    /// against, or NULL (default). Generation ends when the JSON value is complete (stop reason
    /// `LLORCH_STOP_EOS`); one that reaches `max_tokens` first ends incomplete
    /// (`LLORCH_STOP_LIMIT`). An unsupported keyword or bad JSON is
    /// `LLORCH_ERR_INVALID_ARGUMENT` naming it. Set at most one of `json_schema` and `grammar`.
    /// Greedy decoding under a constraint reads the logits row (no on-device pick).
    pub json_schema: *const c_char,
    /// Constrained output: a GBNF-like grammar (NUL-terminated; start rule `root`) the output
    /// must match, or NULL (default). A syntax error is `LLORCH_ERR_INVALID_ARGUMENT` with its
    /// line and column.
    pub grammar: *const c_char,
}

const GENERATE_PARAMS_MIN: usize = std::mem::offset_of!(llorch_generate_params, max_tokens) + 4;

fn generate_params_default() -> llorch_generate_params {
    let d = GenerateParams::default();
    let s = d.sampling;
    llorch_generate_params {
        struct_size: std::mem::size_of::<llorch_generate_params>(),
        max_tokens: d.max_tokens,
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        penalty_last_n: s.penalty_last_n,
        stop: std::ptr::null(),
        n_stop: 0,
        logit_bias: std::ptr::null(),
        n_logit_bias: 0,
        parse_special: d.parse_special,
        logprobs: d.logprobs,
        json_schema: std::ptr::null(),
        grammar: std::ptr::null(),
    }
}

/// Why a generation stopped.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum llorch_stop_reason {
    /// An end-of-generation token.
    LLORCH_STOP_EOS = 0,
    /// `max_tokens` reached.
    LLORCH_STOP_LIMIT = 1,
    /// A stop string matched.
    LLORCH_STOP_STRING = 2,
    /// `llorch_session_cancel` was called, or the token callback returned false.
    LLORCH_STOP_CANCELLED = 3,
    /// The session's context filled up (the call returned `LLORCH_ERR_CONTEXT_FULL`).
    LLORCH_STOP_CONTEXT_FULL = 4,
}

/// Statistics of one generation, written by `llorch_session_generate` and
/// `llorch_session_stats`. The caller sets
/// `struct_size` (use `llorch_generate_stats_init`); only fields that fit in it are written.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_generate_stats {
    /// sizeof(llorch_generate_stats), set by llorch_generate_stats_init.
    pub struct_size: usize,
    /// Prompt tokens processed (prefill).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// Seconds spent on the prompt.
    pub prompt_seconds: f64,
    /// Seconds spent generating.
    pub generate_seconds: f64,
    /// A `llorch_stop_reason` value.
    pub stop_reason: i32,
}

const GENERATE_STATS_MIN: usize = std::mem::offset_of!(llorch_generate_stats, stop_reason) + 4;

/// Receives one piece of generated text: `len` bytes at `text` (whole UTF-8 characters, NOT
/// NUL-terminated, valid only during the call) and the token id that completed it (a piece
/// may hold bytes of several tokens). Return false to stop generation: `llorch_session_generate`
/// then returns `LLORCH_ERR_CANCELLED`. Called on the thread that called generate.
pub type llorch_token_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        text: *const c_char,
        len: usize,
        token: i32,
    ) -> bool,
>;

/// Fills `params` with the defaults and its struct_size. NULL is ignored. Thread-safety: any.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_params_init(params: *mut llorch_session_params) {
    guard(
        |_| (),
        || {
            if let Some(p) = params.as_mut() {
                *p = session_params_default();
            }
        },
    )
}

/// Fills `params` with the defaults (greedy, 256 tokens, no stop strings) and its
/// struct_size. NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_generate_params_init(params: *mut llorch_generate_params) {
    guard(
        |_| (),
        || {
            if let Some(p) = params.as_mut() {
                *p = generate_params_default();
            }
        },
    )
}

/// Zeroes `stats` and sets its struct_size. NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_generate_stats_init(stats: *mut llorch_generate_stats) {
    guard(
        |_| (),
        || {
            if let Some(s) = stats.as_mut() {
                *s = llorch_generate_stats {
                    struct_size: std::mem::size_of::<llorch_generate_stats>(),
                    prompt_tokens: 0,
                    generated_tokens: 0,
                    prompt_seconds: 0.0,
                    generate_seconds: 0.0,
                    stop_reason: 0,
                };
            }
        },
    )
}

/// Creates a session on `model` with its own KV cache (`params` may be NULL for the defaults).
/// The session holds a reference to the model: `llorch_model_free` may come first.
/// The KV cache takes memory as the context fills, in blocks of the model's pool (see
/// `LLORCH_ERR_BUSY`), not at creation. On a GPU the session holds a cache for its first 256
/// positions, grown (at least doubled, up to `n_ctx`) when a generation may write past
/// them: at the generation's start, waiting for memory held by other sessions as above, or
/// failing with `LLORCH_ERR_OUT_OF_MEMORY` (nothing generated, nothing lost) when the device
/// cannot hold the larger cache even alone.
/// Thread-safety: any thread; several sessions of one model may be created and used at once.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_new(
    model: *const llorch_model,
    params: *const llorch_session_params,
    out_session: *mut *mut llorch_session,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let out_session = out(out_session, "out_session")?;
        let mut p = session_params_default();
        if !params.is_null() {
            let size = arg(params, "params")?.struct_size;
            check_struct_size(size, SESSION_PARAMS_MIN, "params")?;
            read_sized_fields!(params, size, p: llorch_session_params { n_ctx, seed, kv_type, fail_when_busy });
        }
        let m = arg(model, "model")?;
        let mut session = Session::new(
            m.model.clone(),
            SessionOptions {
                n_ctx: p.n_ctx,
                seed: p.seed,
                kv_type: kv_type_of(p.kv_type)?,
            },
        )?;
        session.set_fail_when_busy(p.fail_when_busy);
        *out_session = into_handle(session);
        Ok(())
    })
}

/// A new handle owning `session`.
fn into_handle(session: Session) -> *mut llorch_session {
    let cancel = session.cancel_flag();
    Box::into_raw(Box::new(llorch_session {
        engine: Mutex::new(Engine {
            session,
            unread: None,
            last_stats: None,
            logprobs: Default::default(),
        }),
        cancel,
    }))
}

/// Frees a session (and its reference to the model). NULL is ignored. Must not race with
/// another call on the same session (finish or cancel a generation first).
#[no_mangle]
pub unsafe extern "C" fn llorch_session_free(session: *mut llorch_session) {
    guard(
        |_| (),
        || {
            if !session.is_null() {
                drop(Box::from_raw(session));
            }
        },
    )
}

/// The session, locked for one call; a concurrent call is an error rather than a deadlock
/// (a token callback that calls back into its own session would otherwise hang).
fn lock(s: &llorch_session) -> crate::Result<parking_lot::MutexGuard<'_, Engine>> {
    s.engine.try_lock().ok_or_else(|| {
        Error::InvalidArgument(
            "session is busy: another call is using it (one call at a time per session)".into(),
        )
    })
}

/// Reads a params struct whose size the caller declared, into engine parameters.
unsafe fn generate_params(params: *const llorch_generate_params) -> crate::Result<GenerateParams> {
    let size = arg(params, "params")?.struct_size;
    check_struct_size(size, GENERATE_PARAMS_MIN, "params")?;
    let mut p = generate_params_default();
    read_sized_fields!(params, size, p: llorch_generate_params {
        max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, presence_penalty,
        frequency_penalty, penalty_last_n, stop, n_stop, logit_bias, n_logit_bias, parse_special,
        logprobs,
        json_schema, grammar
    });
    let mut g = GenerateParams {
        max_tokens: p.max_tokens,
        parse_special: p.parse_special,
        logprobs: p.logprobs,
        ..Default::default()
    };
    let s = &mut g.sampling;
    s.temperature = p.temperature;
    s.top_k = p.top_k;
    s.top_p = p.top_p;
    s.min_p = p.min_p;
    s.repeat_penalty = p.repeat_penalty;
    s.presence_penalty = p.presence_penalty;
    s.frequency_penalty = p.frequency_penalty;
    s.penalty_last_n = p.penalty_last_n;
    if p.n_stop > 0 {
        if p.stop.is_null() {
            return Err(Error::InvalidArgument(format!(
                "params->stop is NULL but params->n_stop is {}",
                p.n_stop
            )));
        }
        for (i, &sp) in std::slice::from_raw_parts(p.stop, p.n_stop)
            .iter()
            .enumerate()
        {
            let text = c_str(sp, &format!("params->stop[{i}]"))?;
            if text.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "params->stop[{i}] is empty"
                )));
            }
            g.stop.push(text.to_string());
        }
    }
    if p.n_logit_bias > 0 {
        if p.logit_bias.is_null() {
            return Err(Error::InvalidArgument(format!(
                "params->logit_bias is NULL but params->n_logit_bias is {}",
                p.n_logit_bias
            )));
        }
        for (i, b) in std::slice::from_raw_parts(p.logit_bias, p.n_logit_bias)
            .iter()
            .enumerate()
        {
            if b.token < 0 || !b.bias.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "params->logit_bias[{i}] = {{{}, {}}}: the token must be >= 0 and the bias finite",
                    b.token, b.bias
                )));
            }
            g.sampling.logit_bias.push((b.token as u32, b.bias));
        }
    }
    g.constraint = match (p.json_schema.is_null(), p.grammar.is_null()) {
        (true, true) => None,
        (false, true) => Some(Constraint::json_schema(c_str(
            p.json_schema,
            "params->json_schema",
        )?)?),
        (true, false) => Some(Constraint::grammar(c_str(p.grammar, "params->grammar")?)?),
        (false, false) => {
            return Err(Error::InvalidArgument(
                "params->json_schema and params->grammar are both set: set one".into(),
            ))
        }
    };
    Ok(g)
}

unsafe fn write_stats(stats: *mut llorch_generate_stats, st: &GenerateStats) {
    if stats.is_null() {
        return;
    }
    let size = (*stats).struct_size;
    let mut v = *stats; // a copy to read field sizes from; nothing is read from beyond `size`
    v.prompt_tokens = st.prompt_tokens;
    v.generated_tokens = st.generated_tokens;
    v.prompt_seconds = st.prompt_seconds;
    v.generate_seconds = st.generate_seconds;
    v.stop_reason = stop_reason(st.stop_reason) as i32;
    macro_rules! put {
        ($($f:ident),*) => {$(
            if std::mem::offset_of!(llorch_generate_stats, $f) + std::mem::size_of_val(&v.$f) <= size {
                std::ptr::addr_of_mut!((*stats).$f).write_unaligned(v.$f);
            }
        )*};
    }
    put!(
        prompt_tokens,
        generated_tokens,
        prompt_seconds,
        generate_seconds,
        stop_reason
    );
}

fn stop_reason(r: StopReason) -> llorch_stop_reason {
    match r {
        StopReason::Eos => llorch_stop_reason::LLORCH_STOP_EOS,
        StopReason::Limit => llorch_stop_reason::LLORCH_STOP_LIMIT,
        StopReason::StopString => llorch_stop_reason::LLORCH_STOP_STRING,
        StopReason::Cancelled => llorch_stop_reason::LLORCH_STOP_CANCELLED,
        StopReason::ContextFull => llorch_stop_reason::LLORCH_STOP_CONTEXT_FULL,
    }
}

/// The status a generation's end gives: OK, or the error its stop reason stands for.
fn end_status(st: &GenerateStats) -> crate::Result<()> {
    match st.stop_reason {
        StopReason::Cancelled => Err(Error::Cancelled),
        StopReason::ContextFull => Err(Error::ContextFull(format!(
            "the session's context filled up after {} generated tokens",
            st.generated_tokens
        ))),
        StopReason::Eos | StopReason::Limit | StopReason::StopString => Ok(()),
    }
}

/// Appends the NUL-terminated UTF-8 `prompt` to the conversation and generates, streaming
/// pieces to `on_token` (may be NULL) with `user_data`. `params` is required (see
/// `llorch_generate_params_init`); `stats` may be NULL, else its struct_size must be set.
///
/// Returns `LLORCH_OK` when generation ends by EOS, the token limit or a stop string;
/// `LLORCH_ERR_CANCELLED` when `llorch_session_cancel` was called or `on_token` returned
/// false (the stats are written, stop reason `LLORCH_STOP_CANCELLED`; the tokens so far stay
/// in the conversation and the session stays usable);
/// `LLORCH_ERR_BUSY` when the KV memory is held by other sessions (see that status; nothing
/// is generated, the stats are not written);
/// `LLORCH_ERR_CONTEXT_FULL` when the KV cache cannot hold the prompt (nothing is generated,
/// the stats are not written), or when it fills up during generation: then the stats are
/// written (stop reason `LLORCH_STOP_CONTEXT_FULL`) and the conversation is left as it was
/// before the call, so the session stays usable with a shorter turn;
/// `LLORCH_ERR_INVALID_ARGUMENT` for NULL, a bad struct_size, invalid UTF-8 or bad sampling.
/// The same stats can be read afterwards with `llorch_session_stats`.
///
/// Thread-safety: one call at a time per session (a concurrent call on the same session fails
/// with "session is busy"); different sessions may generate in parallel, even on one model.
/// The callback runs on the calling thread and must not call into this session (except cancel).
#[no_mangle]
pub unsafe extern "C" fn llorch_session_generate(
    session: *mut llorch_session,
    prompt: *const c_char,
    params: *const llorch_generate_params,
    on_token: llorch_token_callback,
    user_data: *mut c_void,
    stats: *mut llorch_generate_stats,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let mut on_piece = |p: &Piece| match on_token {
            Some(cb) => cb(
                user_data,
                p.text.as_ptr() as *const c_char,
                p.text.len(),
                p.token as i32,
            ),
            None => true,
        };
        run_generate(session, prompt, params, stats, &mut on_piece)
    })
}

/// The push form of `llorch_session_generate` and `llorch_session_generate_pieces`: checks
/// the arguments, generates, writes the stats.
unsafe fn run_generate(
    session: *mut llorch_session,
    prompt: *const c_char,
    params: *const llorch_generate_params,
    stats: *mut llorch_generate_stats,
    on_piece: &mut dyn FnMut(&Piece) -> bool,
) -> crate::Result<()> {
    // The arguments are checked before the session so each check can be tested alone.
    let prompt = c_str(prompt, "prompt")?;
    let gp = generate_params(params)?;
    if !stats.is_null() {
        check_struct_size((*stats).struct_size, GENERATE_STATS_MIN, "stats")?;
    }
    let mut e = lock(arg(session as *const llorch_session, "session")?)?;
    e.unread = None;
    let st = e.session.generate_pieces(prompt, &gp, on_piece)?;
    write_stats(stats, &st);
    let status = end_status(&st);
    e.last_stats = Some(st);
    status
}

/// The pull form, step 1: appends the NUL-terminated UTF-8 `prompt` to the conversation and
/// begins a generation with `params` (required); then call `llorch_session_next` for each
/// piece. Nothing is computed yet (the first `llorch_session_next` feeds the prompt). Errors
/// change nothing: `LLORCH_ERR_INVALID_ARGUMENT` (NULL, bad struct_size, invalid UTF-8, bad
/// sampling), `LLORCH_ERR_CONTEXT_FULL` (the prompt cannot fit). A generation still in
/// progress on this session is abandoned (its tokens stay in the conversation, as after a
/// cancel), and so is the unread rest of its last piece.
///
/// Thread-safety: one call at a time per session ("session is busy" otherwise); the calls of
/// one generation may come from different threads one after another (a session is not tied to
/// a thread). `llorch_session_cancel` works as with `llorch_session_generate`.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_begin(
    session: *mut llorch_session,
    prompt: *const c_char,
    params: *const llorch_generate_params,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let prompt = c_str(prompt, "prompt")?;
        let gp = generate_params(params)?;
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        e.unread = None;
        e.session.begin(prompt, &gp)
    })
}

/// The pull form, step 2: runs the generation begun by `llorch_session_begin` until the next
/// piece of text, and copies it into `buf` (`cap` bytes, at least 4; not NUL-terminated):
/// `*out_len` bytes of whole UTF-8 characters, `*out_token` (may be NULL) the token that
/// completed them, `*out_done` false. A piece longer than `cap` comes in parts, one per call,
/// each cut between characters. The pieces are the same as `llorch_session_generate` passes
/// to its callback; the first call also feeds the prompt, so it takes longest.
///
/// The end: `LLORCH_OK` with `*out_done` true and `*out_len` 0 when the generation ended by
/// EOS, the token limit or a stop string; `LLORCH_ERR_CANCELLED` when it was cancelled
/// (`llorch_session_cancel`); `LLORCH_ERR_CONTEXT_FULL` when the context filled up (the
/// conversation is then left as it was before `llorch_session_begin`); any other error also
/// ends it (the conversation as before `llorch_session_begin`). After the end,
/// `llorch_session_stats` gives the generation's statistics, and a further call returns
/// `LLORCH_ERR_INVALID_ARGUMENT` (no generation in progress). Bad arguments (NULL `buf`,
/// `out_len` or `out_done`, `cap` < 4) return `LLORCH_ERR_INVALID_ARGUMENT` and do not end
/// the generation.
///
/// Thread-safety: as `llorch_session_begin`. To stop early, call `llorch_session_cancel`
/// (from any thread) and then this once more, or begin another generation.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_next(
    session: *mut llorch_session,
    buf: *mut c_char,
    cap: usize,
    out_len: *mut usize,
    out_token: *mut i32,
    out_done: *mut bool,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        check_buf(buf, cap)?;
        let out_len = out(out_len, "out_len")?;
        let out_done = out(out_done, "out_done")?;
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        match pull(&mut e, buf, cap)? {
            None => {
                *out_len = 0;
                *out_done = true;
            }
            Some((len, token, _)) => {
                *out_len = len;
                if let Some(t) = out_token.as_mut() {
                    *t = token as i32;
                }
                *out_done = false;
            }
        }
        Ok(())
    })
}

/// Checks the pull form's buffer arguments.
fn check_buf(buf: *mut c_char, cap: usize) -> crate::Result<()> {
    if buf.is_null() {
        return Err(Error::InvalidArgument("buf is NULL".into()));
    }
    if cap < 4 {
        return Err(Error::InvalidArgument(format!(
            "cap is {cap}: the buffer must hold at least 4 bytes (one UTF-8 character)"
        )));
    }
    Ok(())
}

/// One pull: the next piece (or the unread rest of the last) copied into `buf` (`cap` >= 4
/// bytes): its length, token and log-probabilities (those come with a piece's first part);
/// None at the end of the generation (its stats kept).
unsafe fn pull(
    e: &mut Engine,
    buf: *mut c_char,
    cap: usize,
) -> crate::Result<Option<(usize, u32, Vec<TokenLogprob>)>> {
    let (text, token, logprobs) = match e.unread.take() {
        Some((rest, token)) => (rest, token, Vec::new()),
        None => match e.session.next_event()? {
            Event::Piece(p) => (p.text, p.token, p.logprobs),
            Event::Done(st) => {
                let status = end_status(&st);
                e.last_stats = Some(st);
                status?;
                return Ok(None);
            }
        },
    };
    // The longest prefix of whole characters that fits.
    let cut = (0..=cap.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, cut);
    if cut < text.len() {
        e.unread = Some((text[cut..].to_string(), token));
    }
    Ok(Some((cut, token, logprobs)))
}

/// Writes the statistics of the session's last ended generation (by `llorch_session_generate`
/// or `llorch_session_next`) into `stats` (required; its struct_size set). A generation that
/// ended by cancellation or a full context has stats too. `LLORCH_ERR_INVALID_ARGUMENT` if no
/// generation has ended on this session yet. Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_stats(
    session: *const llorch_session,
    stats: *mut llorch_generate_stats,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let size = out(stats, "stats")?.struct_size;
        check_struct_size(size, GENERATE_STATS_MIN, "stats")?;
        let e = lock(arg(session, "session")?)?;
        let st = e.last_stats.as_ref().ok_or_else(|| {
            Error::InvalidArgument("no generation has ended on this session yet".into())
        })?;
        write_stats(stats, st);
        Ok(())
    })
}

/// Asks the generation running on `session` to stop; it stops within one token, also during
/// the prompt's prefill, and returns `LLORCH_ERR_CANCELLED` (`llorch_session_generate`, or
/// the next `llorch_session_next`). If no generation is running, the next one on this session
/// is cancelled at once without changing the conversation: a cancel is never lost, whenever
/// it comes (only the session clears the request, when a generation acts on it, or
/// `llorch_session_reset`); cancelling twice before it is acted on is the same as once.
/// Returns `LLORCH_ERR_INVALID_ARGUMENT` only for NULL.
/// Thread-safety: any thread, at any time, also while another thread is in
/// `llorch_session_generate` or `llorch_session_next` on this session (it only sets a flag).
#[no_mangle]
pub unsafe extern "C" fn llorch_session_cancel(session: *const llorch_session) -> llorch_status {
    call(std::ptr::null_mut(), || {
        arg(session, "session")?
            .cancel
            .store(true, Ordering::SeqCst);
        Ok(())
    })
}

/// Forgets the conversation (empties the KV cache), ends a pull-form generation in progress
/// and drops a pending cancel.
/// Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_reset(
    session: *mut llorch_session,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let mut e = lock(arg(session as *const llorch_session, "session")?)?;
        e.session.reset();
        e.unread = None;
        Ok(())
    })
}

/// Tokens in the session's KV cache (`*out_n_past`) and its capacity (`*out_n_ctx`); either
/// out-pointer may be NULL. Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_context_usage(
    session: *const llorch_session,
    out_n_past: *mut u32,
    out_n_ctx: *mut u32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let g = lock(arg(session, "session")?)?;
        if let Some(o) = out_n_past.as_mut() {
            *o = g.session.n_past();
        }
        if let Some(o) = out_n_ctx.as_mut() {
            *o = g.session.n_ctx();
        }
        Ok(())
    })
}

/// `llorch_model_tokenize` with the session's model (usable after `llorch_model_free`).
/// Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_tokenize(
    session: *const llorch_session,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    out_tokens: *mut *mut i32,
    out_n: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let model = lock(arg(session, "session")?)?.session.model().clone();
        tokenize_with(&model, text, add_bos, parse_special, out_tokens, out_n)
    })
}

/// `llorch_model_detokenize` with the session's model (usable after `llorch_model_free`).
/// Thread-safety: one call at a time per session.
#[no_mangle]
pub unsafe extern "C" fn llorch_session_detokenize(
    session: *const llorch_session,
    tokens: *const i32,
    n_tokens: usize,
    out_text: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let model = lock(arg(session, "session")?)?.session.model().clone();
        detokenize_with(&model, tokens, n_tokens, out_text, out_len)
    })
}
