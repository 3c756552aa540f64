//! The C ABI with a real model (SmolLM2-135M, small enough for 2 shared cores): loading,
//! metadata, templates, tokens, generation, stop strings, cancellation, shared models.

mod common;

use llorch::ffi::llorch_status::*;
use llorch::ffi::llorch_stop_reason::*;
use llorch::ffi::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::{Arc, Barrier};

/// Status + message of a call, freeing the error object.
unsafe fn ok(status: llorch_status, err: *mut llorch_error) {
    let m = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    assert_eq!(status, LLORCH_OK, "{m}");
}

unsafe fn failed(status: llorch_status, err: *mut llorch_error, want: llorch_status, needle: &str) {
    let m = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    assert_eq!(status, want, "{m}");
    assert!(
        m.contains(needle),
        "message {m:?} should mention {needle:?}"
    );
}

struct Loaded {
    ctx: *mut llorch_context,
    model: *mut llorch_model,
}

unsafe fn load() -> Loaded {
    let mut ctx = null_mut();
    let mut err = null_mut();
    ok(llorch_context_new(null(), &mut ctx, &mut err), err);
    let path = CString::new(common::model_path(common::SMOLLM2).to_str().unwrap()).unwrap();
    let mut model = null_mut();
    ok(
        llorch_model_load(ctx, path.as_ptr(), None, null_mut(), &mut model, &mut err),
        err,
    );
    Loaded { ctx, model }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        unsafe {
            llorch_model_free(self.model);
            llorch_context_free(self.ctx);
        }
    }
}

unsafe fn new_session(model: *const llorch_model, n_ctx: u32) -> *mut llorch_session {
    let mut p = std::mem::zeroed::<llorch_session_params>();
    llorch_session_params_init(&mut p);
    p.n_ctx = n_ctx;
    let mut s = null_mut();
    let mut err = null_mut();
    ok(llorch_session_new(model, &p, &mut s, &mut err), err);
    s
}

/// Collects pieces; stops (returns false) after `stop_after` pieces if set.
#[derive(Default)]
struct Collect {
    pieces: Vec<String>,
    tokens: Vec<i32>,
    stop_after: Option<usize>,
    /// Wait on this barrier twice after piece 3 (the cancel test).
    barrier: Option<Arc<Barrier>>,
}

unsafe extern "C" fn on_token(
    user_data: *mut c_void,
    text: *const c_char,
    len: usize,
    token: i32,
) -> bool {
    let c = &mut *(user_data as *mut Collect);
    let bytes = std::slice::from_raw_parts(text as *const u8, len);
    c.pieces.push(
        std::str::from_utf8(bytes)
            .expect("pieces are whole UTF-8")
            .to_string(),
    );
    c.tokens.push(token);
    if c.pieces.len() == 3 {
        if let Some(b) = &c.barrier {
            b.wait(); // tell the other thread to cancel
            b.wait(); // it has cancelled
        }
    }
    c.stop_after.map_or(true, |n| c.pieces.len() < n)
}

unsafe fn generate(
    s: *mut llorch_session,
    prompt: &str,
    p: &llorch_generate_params,
    c: &mut Collect,
) -> (llorch_status, llorch_generate_stats, String) {
    let prompt = CString::new(prompt).unwrap();
    let mut stats = std::mem::zeroed::<llorch_generate_stats>();
    llorch_generate_stats_init(&mut stats);
    let mut err = null_mut();
    let st = llorch_session_generate(
        s,
        prompt.as_ptr(),
        p,
        Some(on_token),
        c as *mut _ as *mut c_void,
        &mut stats,
        &mut err,
    );
    let msg = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    (st, stats, msg)
}

fn params(max_tokens: u32) -> llorch_generate_params {
    unsafe {
        let mut p = std::mem::zeroed::<llorch_generate_params>();
        llorch_generate_params_init(&mut p);
        p.max_tokens = max_tokens;
        p
    }
}

unsafe fn chat(model: *const llorch_model, user: &str) -> String {
    let role = CString::new("user").unwrap();
    let content = CString::new(user).unwrap();
    let msgs = [llorch_chat_message {
        role: role.as_ptr(),
        content: content.as_ptr(),
    }];
    let mut out = null_mut();
    let mut err = null_mut();
    ok(
        llorch_model_apply_chat_template(model, msgs.as_ptr(), 1, true, null(), &mut out, &mut err),
        err,
    );
    let s = CStr::from_ptr(out).to_str().unwrap().to_string();
    llorch_string_free(out);
    s
}

#[test]
fn metadata_template_and_tokens() {
    unsafe {
        let m = load();
        let mut err = null_mut();
        let mut name: *const c_char = null();
        ok(llorch_model_architecture(m.model, &mut name, &mut err), err);
        assert_eq!(CStr::from_ptr(name).to_str().unwrap(), "llama");
        // Values from the file's metadata (read with the Python gguf package).
        let mut n = 0u32;
        ok(llorch_model_context_length(m.model, &mut n, &mut err), err);
        assert_eq!(n, 8192);
        ok(llorch_model_vocab_size(m.model, &mut n, &mut err), err);
        assert_eq!(n, 49152);
        let mut tmpl: *const c_char = null();
        ok(
            llorch_model_chat_template(m.model, &mut tmpl, &mut err),
            err,
        );
        assert!(CStr::from_ptr(tmpl)
            .to_str()
            .unwrap()
            .contains("<|im_start|>"));

        let text = chat(m.model, "Hi there");
        assert!(
            text.contains("<|im_start|>user\nHi there<|im_end|>"),
            "{text:?}"
        );
        assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");

        let hello = CString::new("Hello, wörld!").unwrap();
        let mut toks = null_mut();
        let mut len = 0usize;
        ok(
            llorch_model_tokenize(
                m.model,
                hello.as_ptr(),
                false,
                false,
                &mut toks,
                &mut len,
                &mut err,
            ),
            err,
        );
        assert!((3..=8).contains(&len), "{len} tokens");
        let mut out = null_mut();
        let mut out_len = 0usize;
        ok(
            llorch_model_detokenize(m.model, toks, len, &mut out, &mut out_len, &mut err),
            err,
        );
        assert_eq!(
            std::slice::from_raw_parts(out as *const u8, out_len),
            "Hello, wörld!".as_bytes()
        );
        llorch_string_free(out);
        let bad = [0i32, 49152];
        let st =
            llorch_model_detokenize(m.model, bad.as_ptr(), 2, &mut out, &mut out_len, &mut err);
        failed(st, err, LLORCH_ERR_INVALID_ARGUMENT, "tokens[1] = 49152");
        llorch_tokens_free(toks);
    }
}

unsafe extern "C" fn record_progress(user_data: *mut c_void, f: f32) -> bool {
    let (seen, stop_at) = &mut *(user_data as *mut (Vec<f32>, f32));
    seen.push(f);
    f < *stop_at
}

#[test]
fn load_progress_cancel_and_bad_path() {
    unsafe {
        let mut ctx = null_mut();
        let mut err = null_mut();
        ok(llorch_context_new(null(), &mut ctx, &mut err), err);
        let path = CString::new(common::model_path(common::SMOLLM2).to_str().unwrap()).unwrap();
        let mut model = null_mut();

        let mut state: (Vec<f32>, f32) = (Vec::new(), 2.0f32); // never stops
        ok(
            llorch_model_load(
                ctx,
                path.as_ptr(),
                Some(record_progress),
                &mut state as *mut _ as *mut c_void,
                &mut model,
                &mut err,
            ),
            err,
        );
        assert!(!state.0.is_empty(), "progress was never called");
        assert!(
            state.0.windows(2).all(|w| w[0] <= w[1]),
            "progress goes back: {:?}",
            state.0
        );
        assert!(state.0.iter().all(|f| (0.0..=1.0).contains(f)));
        llorch_model_free(model);

        let mut cancelled: *mut llorch_model = null_mut();
        let mut state: (Vec<f32>, f32) = (Vec::new(), 0.0f32); // stops at the first call
        let st = llorch_model_load(
            ctx,
            path.as_ptr(),
            Some(record_progress),
            &mut state as *mut _ as *mut c_void,
            &mut cancelled,
            &mut err,
        );
        failed(st, err, LLORCH_ERR_CANCELLED, "cancel");
        assert!(cancelled.is_null());
        assert_eq!(state.0.len(), 1, "no progress after the callback said stop");

        let missing = CString::new("/nonexistent/dir/model.gguf").unwrap();
        let st = llorch_model_load(
            ctx,
            missing.as_ptr(),
            None,
            null_mut(),
            &mut cancelled,
            &mut err,
        );
        failed(st, err, LLORCH_ERR_IO, "/nonexistent/dir/model.gguf");
        let not_gguf = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        let st = llorch_model_load(
            ctx,
            not_gguf.as_ptr(),
            None,
            null_mut(),
            &mut cancelled,
            &mut err,
        );
        failed(st, err, LLORCH_ERR_BAD_MODEL, "");
        llorch_context_free(ctx);
    }
}

#[test]
fn generate_stream_stats_and_stop_string() {
    unsafe {
        let m = load();
        let prompt = chat(m.model, "Name three colors.");
        let s = new_session(m.model, 512);
        let mut c = Collect::default();
        let (st, stats, msg) = generate(s, &prompt, &params(24), &mut c);
        assert_eq!(st, LLORCH_OK, "{msg}");
        assert!(stats.prompt_tokens > 5);
        assert!(stats.generated_tokens >= 1 && stats.generated_tokens <= 24);
        let expected_reason = if stats.generated_tokens == 24 {
            LLORCH_STOP_LIMIT
        } else {
            LLORCH_STOP_EOS
        };
        assert_eq!(stats.stop_reason, expected_reason as i32);
        let text: String = c.pieces.concat();
        assert!(!text.is_empty());
        let mut n_past = 0;
        let mut n_ctx = 0;
        let mut err = null_mut();
        ok(
            llorch_session_context_usage(s, &mut n_past, &mut n_ctx, &mut err),
            err,
        );
        assert_eq!(n_ctx, 512);
        assert!(
            n_past >= stats.prompt_tokens && n_past <= stats.prompt_tokens + stats.generated_tokens
        );

        // The same prompt again on a fresh session with a stop string taken from the middle of
        // that output: greedy decoding repeats the text up to just before the stop string.
        let chars: Vec<char> = text.chars().collect();
        assert!(
            chars.len() >= 6,
            "output too short for a stop-string test: {text:?}"
        );
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
        let before = &text[..text.find(&stop).unwrap()];
        let stop_c = CString::new(stop.clone()).unwrap();
        let stops = [stop_c.as_ptr()];
        let mut p = params(24);
        p.stop = stops.as_ptr();
        p.n_stop = 1;
        ok(llorch_session_reset(s, &mut err), err);
        let mut c2 = Collect::default();
        let (st, stats, msg) = generate(s, &prompt, &p, &mut c2);
        assert_eq!(st, LLORCH_OK, "{msg}");
        assert_eq!(stats.stop_reason, LLORCH_STOP_STRING as i32);
        assert_eq!(c2.pieces.concat(), before, "stop string {stop:?}");

        // An older caller's struct that ends after max_tokens: the rest are defaults (greedy).
        ok(llorch_session_reset(s, &mut err), err);
        let mut old = params(4);
        old.struct_size = std::mem::offset_of!(llorch_generate_params, max_tokens) + 4;
        old.temperature = 5.0; // beyond the declared size: must be ignored
        let mut c3 = Collect::default();
        let (st, stats, msg) = generate(s, &prompt, &old, &mut c3);
        assert_eq!(st, LLORCH_OK, "{msg}");
        assert!(stats.generated_tokens <= 4);
        assert!(
            text.starts_with(&c3.pieces.concat()),
            "greedy defaults repeat the first output"
        );
        llorch_session_free(s);
    }
}

#[test]
fn callback_stop_cancel_twice_and_reuse() {
    unsafe {
        let m = load();
        let prompt = chat(m.model, "Count from one to twenty.");
        let s = new_session(m.model, 1024);
        // A callback that stops at once.
        let mut c = Collect {
            stop_after: Some(1),
            ..Default::default()
        };
        let (st, stats, _) = generate(s, &prompt, &params(50), &mut c);
        assert_eq!(st, LLORCH_ERR_CANCELLED);
        assert_eq!(stats.stop_reason, LLORCH_STOP_CANCELLED as i32);
        assert_eq!(c.pieces.len(), 1);

        // The session stays usable: the conversation continues.
        let mut c = Collect::default();
        let (st, stats, msg) = generate(s, " and then", &params(4), &mut c);
        assert_eq!(st, LLORCH_OK, "{msg}");
        assert!(stats.generated_tokens >= 1);

        // Cancelling twice with no generation running: the next one is cancelled at once,
        // without touching the conversation; the one after runs.
        let mut before = 0;
        let mut err = null_mut();
        ok(
            llorch_session_context_usage(s, &mut before, null_mut(), &mut err),
            err,
        );
        assert_eq!(llorch_session_cancel(s), LLORCH_OK);
        assert_eq!(llorch_session_cancel(s), LLORCH_OK);
        let mut c = Collect::default();
        let (st, stats, _) = generate(s, " more", &params(4), &mut c);
        assert_eq!(st, LLORCH_ERR_CANCELLED);
        assert_eq!(
            (stats.generated_tokens, stats.stop_reason),
            (0, LLORCH_STOP_CANCELLED as i32)
        );
        assert!(c.pieces.is_empty());
        let mut after = 0;
        ok(
            llorch_session_context_usage(s, &mut after, null_mut(), &mut err),
            err,
        );
        assert_eq!(before, after);
        let (st, _, msg) = generate(s, " more", &params(4), &mut Collect::default());
        assert_eq!(st, LLORCH_OK, "{msg}");
        llorch_session_free(s);
    }
}

struct SendPtr(*const llorch_session);
unsafe impl Send for SendPtr {}

#[test]
fn cancel_from_another_thread_stops_within_one_token() {
    unsafe {
        let m = load();
        let prompt = chat(m.model, "Write a long story about a lighthouse.");
        let s = new_session(m.model, 2048);
        let barrier = Arc::new(Barrier::new(2));
        let ptr = SendPtr(s);
        let b2 = barrier.clone();
        let canceller = std::thread::spawn(move || {
            let p = ptr;
            b2.wait(); // piece 3 arrived
            assert_eq!(llorch_session_cancel(p.0), LLORCH_OK);
            assert_eq!(llorch_session_cancel(p.0), LLORCH_OK); // twice is once
            b2.wait();
        });
        let mut c = Collect {
            barrier: Some(barrier),
            ..Default::default()
        };
        let (st, stats, msg) = generate(s, &prompt, &params(500), &mut c);
        canceller.join().unwrap();
        assert_eq!(st, LLORCH_ERR_CANCELLED, "{msg}");
        assert_eq!(stats.stop_reason, LLORCH_STOP_CANCELLED as i32);
        // Cancelled while the callback of piece 3 ran: not one more piece.
        assert_eq!(c.pieces.len(), 3);
        // The consumed cancel does not leak into the next generation.
        let (st, _, msg) = generate(s, " Go on.", &params(3), &mut Collect::default());
        assert_eq!(st, LLORCH_OK, "{msg}");
        llorch_session_free(s);
    }
}

#[test]
fn cancel_during_prefill() {
    unsafe {
        let m = load();
        let long = "The quick brown fox jumps over the lazy dog. ".repeat(120); // ~1200 tokens
        let s = new_session(m.model, 4096);
        // Time a full prefill first (1 token generated).
        let t = std::time::Instant::now();
        let (st, stats, msg) = generate(s, &long, &params(1), &mut Collect::default());
        let full = t.elapsed();
        assert_eq!(st, LLORCH_OK, "{msg}");
        assert!(stats.prompt_tokens > 600);
        let mut err = null_mut();
        ok(llorch_session_reset(s, &mut err), err);

        let ptr = SendPtr(s);
        let delay = full / 10;
        let canceller = std::thread::spawn(move || {
            let p = ptr;
            std::thread::sleep(delay);
            assert_eq!(llorch_session_cancel(p.0), LLORCH_OK);
        });
        // Another first block (the same prompt would come from the prefix cache, fed at once).
        let other = format!("Once more: {long}");
        let t = std::time::Instant::now();
        let (st, stats, _) = generate(s, &other, &params(1), &mut Collect::default());
        let cancelled = t.elapsed();
        canceller.join().unwrap();
        assert_eq!(st, LLORCH_ERR_CANCELLED);
        assert_eq!(
            stats.generated_tokens, 0,
            "cancelled before the first token"
        );
        // Stopped well before a full prefill (cancelled at 10%; half leaves room for noise).
        assert!(
            cancelled < full / 2,
            "cancelled prefill took {cancelled:?}, full {full:?}"
        );
        ok(llorch_session_reset(s, &mut err), err);
        let (st, _, msg) = generate(s, "Hello", &params(2), &mut Collect::default());
        assert_eq!(st, LLORCH_OK, "{msg}");
        llorch_session_free(s);
    }
}

#[test]
fn model_freed_before_sessions_and_parallel_sessions() {
    unsafe {
        let m = load();
        let prompt = chat(m.model, "What is a GPU?");
        let a = new_session(m.model, 512);
        let b = new_session(m.model, 512);
        // Free the caller's model and context now: the sessions hold what they need.
        drop(m);
        let run = |s: *mut llorch_session| {
            let p = SendPtr(s);
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let p = p;
                let mut c = Collect::default();
                let (st, _, msg) = generate(p.0 as *mut _, &prompt, &params(12), &mut c);
                assert_eq!(st, LLORCH_OK, "{msg}");
                c.pieces.concat()
            })
        };
        let (ta, tb) = (run(a), run(b));
        let (xa, xb) = (ta.join().unwrap(), tb.join().unwrap());
        assert!(!xa.is_empty());
        assert_eq!(
            xa, xb,
            "greedy decoding of one prompt must agree across sessions"
        );
        // The session still tokenizes with its own reference to the model.
        let mut toks = null_mut();
        let mut n = 0;
        let mut err = null_mut();
        let text = CString::new("GPU").unwrap();
        ok(
            llorch_session_tokenize(a, text.as_ptr(), false, false, &mut toks, &mut n, &mut err),
            err,
        );
        assert!(n >= 1);
        llorch_tokens_free(toks);
        llorch_session_free(a);
        llorch_session_free(b);
    }
}

#[test]
fn context_full() {
    unsafe {
        let m = load();
        let s = new_session(m.model, 16);
        let long =
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
        let (st, _, msg) = generate(s, long, &params(4), &mut Collect::default());
        assert_eq!(st, LLORCH_ERR_CONTEXT_FULL, "{msg}");
        let (st, _, msg) = generate(s, "Hi", &params(2), &mut Collect::default());
        assert_eq!(st, LLORCH_OK, "the session stays usable: {msg}");
        llorch_session_free(s);
    }
}

/// `kv_type`: f32, f16 and auto make sessions on the CPU, a value out of the enum is refused
/// by name, and a caller built before the field (its struct_size ends before it) gets the
/// default.
#[test]
fn session_kv_type() {
    unsafe {
        let m = load();
        let with = |kv_type: i32, size: Option<usize>| {
            let mut p = std::mem::zeroed::<llorch_session_params>();
            llorch_session_params_init(&mut p);
            assert_eq!(p.kv_type, llorch_kv_type::LLORCH_KV_AUTO as i32);
            p.n_ctx = 32;
            p.kv_type = kv_type;
            if let Some(size) = size {
                p.struct_size = size;
            }
            let (mut s, mut err) = (null_mut(), null_mut());
            let st = llorch_session_new(m.model, &p, &mut s, &mut err);
            llorch_session_free(s);
            (st, err)
        };
        let (st, err) = with(llorch_kv_type::LLORCH_KV_F32 as i32, None);
        ok(st, err);
        let (st, err) = with(llorch_kv_type::LLORCH_KV_F16 as i32, None);
        ok(st, err);
        let (st, err) = with(7, None);
        failed(st, err, LLORCH_ERR_INVALID_ARGUMENT, "kv_type");
        let old = std::mem::offset_of!(llorch_session_params, kv_type);
        let (st, err) = with(7, Some(old));
        ok(st, err);
    }
}

/// A generated token as the C API reports it: id, logprob, top (id, logprob) pairs.
type CLogprob = (i32, f32, Vec<(i32, f32)>);

/// Copies the log-probabilities of a piece the library lends.
unsafe fn piece_logprobs(p: &llorch_piece) -> Vec<CLogprob> {
    if p.n_logprobs == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(p.logprobs, p.n_logprobs)
        .iter()
        .map(|lp| {
            let top = std::slice::from_raw_parts(lp.top, lp.n_top);
            let top = top.iter().map(|t| (t.token, t.logprob)).collect();
            (lp.token, lp.logprob, top)
        })
        .collect()
}

unsafe extern "C" fn on_piece(user_data: *mut c_void, piece: *const llorch_piece) -> bool {
    let out = &mut *(user_data as *mut Vec<CLogprob>);
    out.extend(piece_logprobs(&*piece));
    true
}

#[test]
fn logprobs_push_and_pull_agree() {
    unsafe {
        let m = load();
        let s = new_session(m.model, 512);
        let prompt = CString::new("The three primary colors are").unwrap();
        let mut p = params(12);
        p.temperature = 0.8;
        p.logprobs = 4;
        let mut pushed: Vec<CLogprob> = Vec::new();
        let mut err = null_mut();
        ok(
            llorch_session_generate_pieces(
                s,
                prompt.as_ptr(),
                &p,
                Some(on_piece),
                &mut pushed as *mut _ as *mut c_void,
                null_mut(),
                &mut err,
            ),
            err,
        );
        assert!(!pushed.is_empty());
        for (token, lp, top) in &pushed {
            assert_eq!(top.len(), 4);
            assert!(*lp <= 0.0 && top.windows(2).all(|w| w[0].1 >= w[1].1));
            // A sampled token in the top list has the same value there.
            if let Some(t) = top.iter().find(|t| t.0 == *token) {
                assert_eq!(t.1, *lp);
            }
        }
        // The pull form through a 4-byte buffer, same seed and generation count: the same.
        ok(llorch_session_reset(s, &mut err), err);
        ok(llorch_session_begin(s, prompt.as_ptr(), &p, &mut err), err);
        let mut buf = [0u8; 4];
        let mut piece = std::mem::zeroed::<llorch_piece>();
        let mut done = false;
        let mut next = |piece: &mut llorch_piece, done: &mut bool, err: &mut *mut llorch_error| {
            let b = buf.as_mut_ptr() as *mut c_char;
            (llorch_session_next_piece(s, b, 4, piece, done, err), b)
        };
        // A piece struct without its size is refused.
        let (st, _) = next(&mut piece, &mut done, &mut err);
        failed(
            st,
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_piece->struct_size",
        );
        let mut pulled = Vec::new();
        loop {
            piece.struct_size = std::mem::size_of::<llorch_piece>();
            let (st, b) = next(&mut piece, &mut done, &mut err);
            ok(st, err);
            if done {
                break;
            }
            assert!(piece.len <= 4 && std::ptr::eq(piece.text, b));
            pulled.extend(piece_logprobs(&piece));
        }
        assert_eq!(pulled, pushed);
        llorch_session_free(s);
    }
}

#[test]
fn state_and_vocab_calls_check_their_arguments() {
    unsafe {
        let m = load();
        let s = new_session(m.model, 512);
        let mut err = null_mut();
        let mut c = Collect::default();
        let (st, _, msg) = generate(s, "Hello", &params(4), &mut c);
        assert_eq!(st, LLORCH_OK, "{msg}");
        let (mut bytes, mut len) = (null_mut(), 0usize);
        failed(
            llorch_session_save(s, null_mut(), &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_bytes is NULL",
        );
        ok(llorch_session_save(s, &mut bytes, &mut len, &mut err), err);
        failed(
            llorch_session_restore(s, null(), 5, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "bytes is NULL",
        );
        failed(
            llorch_session_restore(
                s,
                [b'G', b'G', b'U', b'F', 3, 0, 0, 0, 0, 0, 0, 0].as_ptr(),
                12,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "not a llorch session state",
        );
        let missing = CString::new("/nonexistent/llorch.state").unwrap();
        failed(
            llorch_session_restore_file(s, missing.as_ptr(), &mut err),
            err,
            LLORCH_ERR_IO,
            "/nonexistent/llorch.state",
        );
        failed(
            llorch_session_save_file(s, missing.as_ptr(), &mut err),
            err,
            LLORCH_ERR_IO,
            "/nonexistent/llorch.state",
        );
        let (mut toks, mut n) = (null_mut(), 0usize);
        ok(llorch_session_tokens(s, &mut toks, &mut n, &mut err), err);
        llorch_tokens_free(toks);
        failed(
            llorch_session_rewind(s, n as u32 + 1, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "cannot rewind",
        );
        failed(
            llorch_session_fork(s, null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_session is NULL",
        );
        // Nothing above changed the session: its state saves to the same bytes.
        let (mut again, mut len2) = (null_mut(), 0usize);
        ok(llorch_session_save(s, &mut again, &mut len2, &mut err), err);
        assert_eq!(
            std::slice::from_raw_parts(bytes, len),
            std::slice::from_raw_parts(again, len2)
        );
        llorch_bytes_free(bytes);
        llorch_bytes_free(again);

        // Tokenizer queries: NULL outs are skipped; bad ids and buffers are named.
        ok(
            llorch_model_special_tokens(m.model, null_mut(), null_mut(), null_mut(), &mut err),
            err,
        );
        failed(
            llorch_model_token_text(m.model, 1, null_mut(), 8, &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "buf is NULL but cap is 8",
        );
        let mut special = false;
        failed(
            llorch_model_token_is_special(m.model, -1, &mut special, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "token -1 is outside the vocabulary",
        );
        // A buffer shorter than the token: the length in full, the bytes cut.
        let (mut bos, mut eos) = (0, 0);
        ok(
            llorch_model_special_tokens(m.model, &mut bos, &mut eos, null_mut(), &mut err),
            err,
        );
        let mut two = [0u8; 2];
        ok(
            llorch_model_token_text(
                m.model,
                eos,
                two.as_mut_ptr() as *mut c_char,
                2,
                &mut len,
                &mut err,
            ),
            err,
        );
        assert_eq!((len, &two), (10, b"<|"), "EOS of SmolLM2 is <|im_end|>");
        llorch_session_free(s);
    }
}
