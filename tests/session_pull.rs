//! The pull form of generation (`Session::begin`/`next_event`, `llorch_session_begin`/`next`)
//! against the callback form; the cancel flag, which only the session clears (so no cancel is
//! lost between generations); the stats of a generation that fills the context.
//! Real model: SmolLM2-135M; the cancel race runs on a tiny synthetic model for many rounds.

mod common;

use llorch::backend::Context;
use llorch::backend::ContextOptions;
use llorch::ffi::llorch_status::*;
use llorch::ffi::llorch_stop_reason::*;
use llorch::ffi::*;
use llorch::model::synth::build;
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{Event, GenerateParams, StopReason};
use llorch::Error;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn smollm2() -> Arc<Model> {
    common::cpu_model(common::SMOLLM2)
}

type Pieces = Vec<(String, u32)>;

fn push(m: &Arc<Model>, seed: u64, prompt: &str, p: &GenerateParams) -> (Pieces, Vec<u32>) {
    let mut s = common::session(m, 1024, seed);
    let mut pieces = Vec::new();
    let st = s
        .generate(prompt, p, &mut |t, id| {
            pieces.push((t.to_string(), id));
            true
        })
        .unwrap();
    let stats = vec![st.prompt_tokens, st.generated_tokens, st.stop_reason as u32];
    (pieces, stats)
}

fn pull(m: &Arc<Model>, seed: u64, prompt: &str, p: &GenerateParams) -> (Pieces, Vec<u32>) {
    let mut s = common::session(m, 1024, seed);
    s.begin(prompt, p).unwrap();
    let mut pieces = Vec::new();
    loop {
        match s.next_event().unwrap() {
            Event::Piece(piece) => {
                assert!(!piece.text.is_empty(), "a pulled piece is never empty");
                pieces.push((piece.text, piece.token));
            }
            Event::Done(st) => {
                assert!(!s.is_generating());
                let e = s.next_event().unwrap_err();
                assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
                let stats = vec![st.prompt_tokens, st.generated_tokens, st.stop_reason as u32];
                return (pieces, stats);
            }
        }
    }
}

#[test]
fn pull_and_callback_give_the_same_pieces_and_stats() {
    let m = smollm2();
    let prompt = common::user_turn(
        &m,
        "Name three French cheeses and say what makes each special.",
    );
    let cases = [
        GenerateParams {
            max_tokens: 48,
            ..Default::default()
        },
        // A stop string: text is held back while it could become one.
        GenerateParams {
            max_tokens: 64,
            stop: vec![". ".into(), "\n\n".into()],
            ..Default::default()
        },
        // Sampling: same seed, same draws in both forms.
        GenerateParams {
            max_tokens: 32,
            sampling: SamplingParams {
                temperature: 0.9,
                top_p: 0.95,
                ..Default::default()
            },
            ..Default::default()
        },
    ];
    for (i, p) in cases.iter().enumerate() {
        let (a, sa) = push(&m, 7, &prompt, p);
        let (b, sb) = pull(&m, 7, &prompt, p);
        assert!(!a.is_empty(), "case {i}: no text");
        assert_eq!(a, b, "case {i}: the pieces differ");
        assert_eq!(sa, sb, "case {i}: the stats differ");
        if i == 1 {
            assert_eq!(
                sa[2],
                StopReason::StopString as u32,
                "case 1 stops on its string"
            );
        }
    }
}

#[test]
fn a_cancel_raised_before_a_generation_cancels_it_and_changes_nothing() {
    let m = smollm2();
    let mut s = common::session(&m, 256, 0);
    let p = |n| GenerateParams {
        max_tokens: n,
        ..Default::default()
    };
    s.generate("Hello", &p(3), &mut |_, _| true).unwrap();
    let before = s.tokens();
    let flag = s.cancel_flag();
    flag.store(true, Ordering::SeqCst);
    let mut pieces = 0;
    let st = s
        .generate(" more", &p(5), &mut |_, _| {
            pieces += 1;
            true
        })
        .unwrap();
    assert_eq!(
        (st.stop_reason, st.generated_tokens, pieces),
        (StopReason::Cancelled, 0, 0)
    );
    assert_eq!(s.tokens(), before, "the conversation is unchanged");
    assert!(!flag.load(Ordering::SeqCst), "the session took the request");
    let st = s.generate(" more", &p(2), &mut |_, _| true).unwrap();
    assert_eq!(st.stop_reason, StopReason::Limit);

    // Pull form: a cancel between begin and the first call, and one between two calls.
    s.begin(" again", &p(20)).unwrap();
    flag.store(true, Ordering::SeqCst);
    match s.next_event().unwrap() {
        Event::Done(st) => assert_eq!(st.stop_reason, StopReason::Cancelled),
        e => panic!("expected the end, got {e:?}"),
    }
    s.begin(" again", &p(20)).unwrap();
    assert!(matches!(s.next_event().unwrap(), Event::Piece(_)));
    flag.store(true, Ordering::SeqCst);
    match s.next_event().unwrap() {
        Event::Done(st) => assert_eq!(st.stop_reason, StopReason::Cancelled),
        e => panic!("expected the end, got {e:?}"),
    }

    // A flag handed over already set (a request cancelled while it waited) cancels too.
    let queued = Arc::new(AtomicBool::new(true));
    s.set_cancel_flag(queued.clone());
    let st = s.generate(" x", &p(5), &mut |_, _| true).unwrap();
    assert_eq!(st.stop_reason, StopReason::Cancelled);
    assert!(!queued.load(Ordering::SeqCst));
}

// ---------------------------------------------------------------------------------------------
// Through the C ABI.

unsafe fn message(err: *mut llorch_error) -> String {
    let m = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    m
}

unsafe fn ok(status: llorch_status, err: *mut llorch_error) {
    let m = message(err);
    assert_eq!(status, LLORCH_OK, "{m}");
}

struct Handles {
    ctx: *mut llorch_context,
    model: *mut llorch_model,
    session: *mut llorch_session,
}

impl Drop for Handles {
    fn drop(&mut self) {
        unsafe {
            llorch_session_free(self.session);
            llorch_model_free(self.model);
            llorch_context_free(self.ctx);
        }
    }
}

unsafe fn open(path: &std::path::Path, threads: u32, n_ctx: u32) -> Handles {
    let mut cp = std::mem::zeroed::<llorch_context_params>();
    llorch_context_params_init(&mut cp);
    cp.threads = threads;
    let mut h = Handles {
        ctx: null_mut(),
        model: null_mut(),
        session: null_mut(),
    };
    let mut err = null_mut();
    ok(llorch_context_new(&cp, &mut h.ctx, &mut err), err);
    let path = CString::new(path.to_str().unwrap()).unwrap();
    ok(
        llorch_model_load(
            h.ctx,
            path.as_ptr(),
            None,
            null_mut(),
            &mut h.model,
            &mut err,
        ),
        err,
    );
    let mut sp = std::mem::zeroed::<llorch_session_params>();
    llorch_session_params_init(&mut sp);
    sp.n_ctx = n_ctx;
    ok(
        llorch_session_new(h.model, &sp, &mut h.session, &mut err),
        err,
    );
    h
}

fn params(max_tokens: u32) -> llorch_generate_params {
    unsafe {
        let mut p = std::mem::zeroed::<llorch_generate_params>();
        llorch_generate_params_init(&mut p);
        p.max_tokens = max_tokens;
        p
    }
}

fn new_stats() -> llorch_generate_stats {
    unsafe {
        let mut s = std::mem::zeroed::<llorch_generate_stats>();
        llorch_generate_stats_init(&mut s);
        s
    }
}

unsafe extern "C" fn collect(ud: *mut c_void, text: *const c_char, len: usize, _: i32) -> bool {
    let out = &mut *(ud as *mut Vec<u8>);
    out.extend_from_slice(std::slice::from_raw_parts(text as *const u8, len));
    true
}

/// Generates with the callback form: status, stats, text.
unsafe fn generate(
    s: *mut llorch_session,
    prompt: &str,
    p: &llorch_generate_params,
) -> (llorch_status, llorch_generate_stats, Vec<u8>) {
    let prompt = CString::new(prompt).unwrap();
    let mut stats = new_stats();
    let mut text = Vec::new();
    let mut err = null_mut();
    let st = llorch_session_generate(
        s,
        prompt.as_ptr(),
        p,
        Some(collect),
        &mut text as *mut _ as *mut c_void,
        &mut stats,
        &mut err,
    );
    llorch_error_free(err);
    (st, stats, text)
}

/// Pulls to the end through a `cap`-byte buffer: the final status, and the text.
unsafe fn pull_all(s: *mut llorch_session, cap: usize) -> (llorch_status, Vec<u8>) {
    let mut buf = vec![0u8; cap];
    let mut text = Vec::new();
    loop {
        let (mut len, mut token, mut done) = (0usize, -1i32, false);
        let mut err = null_mut();
        let st = llorch_session_next(
            s,
            buf.as_mut_ptr() as *mut c_char,
            cap,
            &mut len,
            &mut token,
            &mut done,
            &mut err,
        );
        llorch_error_free(err);
        if st != LLORCH_OK || done {
            return (st, text);
        }
        assert!(len > 0 && len <= cap && token >= 0);
        std::str::from_utf8(&buf[..len]).expect("each part is whole UTF-8");
        text.extend_from_slice(&buf[..len]);
    }
}

#[test]
fn c_pull_form_in_small_parts_and_its_misuse() {
    unsafe {
        let h = open(&common::model_path(common::SMOLLM2), 0, 512);
        let s = h.session;
        let prompt = "Les fromages français les plus connus sont";
        let (st, pushed_stats, pushed) = generate(s, prompt, &params(40));
        assert_eq!(st, LLORCH_OK);
        let mut err = null_mut();
        ok(llorch_session_reset(s, &mut err), err);

        // Next before any begin: refused.
        let mut buf = [0u8; 16];
        let (mut len, mut done) = (0usize, false);
        let st = llorch_session_next(
            s,
            buf.as_mut_ptr() as *mut c_char,
            16,
            &mut len,
            null_mut(),
            &mut done,
            &mut err,
        );
        assert_eq!(st, LLORCH_ERR_INVALID_ARGUMENT);
        assert!(message(err).contains("no generation in progress"));

        let c = CString::new(prompt).unwrap();
        ok(
            llorch_session_begin(s, c.as_ptr(), &params(40), &mut err),
            err,
        );
        // Bad arguments do not end the generation.
        for (b, cap, what) in [
            (null_mut(), 16, "buf is NULL"),
            (buf.as_mut_ptr() as *mut c_char, 3, "cap is 3"),
        ] {
            let st = llorch_session_next(s, b, cap, &mut len, null_mut(), &mut done, &mut err);
            assert_eq!(st, LLORCH_ERR_INVALID_ARGUMENT);
            let m = message(err);
            assert!(m.contains(what), "{m}");
        }
        let (st, pulled) = pull_all(s, 4);
        assert_eq!(st, LLORCH_OK);
        assert_eq!(
            String::from_utf8(pulled).unwrap(),
            String::from_utf8(pushed).unwrap()
        );
        let mut stats = new_stats();
        ok(llorch_session_stats(s, &mut stats, &mut err), err);
        assert_eq!(
            (
                stats.generated_tokens,
                stats.prompt_tokens,
                stats.stop_reason
            ),
            (
                pushed_stats.generated_tokens,
                pushed_stats.prompt_tokens,
                pushed_stats.stop_reason
            )
        );
    }
}

#[test]
fn a_generation_that_fills_the_context_returns_its_stats() {
    unsafe {
        let path = common::model_path(common::SMOLLM2);
        let eos = {
            let ctx = Context::new(ContextOptions::default()).unwrap();
            let m = Model::load(&ctx, &path, None).unwrap();
            let t = m.tokenizer();
            [t.eos_id(), t.eot_id()]
        };
        let h = open(&path, 0, 48);
        let s = h.session;
        // End-of-generation tokens banned, so the context fills.
        let bans: Vec<llorch_logit_bias> = eos
            .iter()
            .flatten()
            .map(|&id| llorch_logit_bias {
                token: id as i32,
                bias: -1e30,
            })
            .collect();
        let mut p = params(500);
        p.logit_bias = bans.as_ptr();
        p.n_logit_bias = bans.len();

        let (st, stats, text) = generate(s, "Once upon a time", &p);
        assert_eq!(st, LLORCH_ERR_CONTEXT_FULL);
        assert_eq!(stats.stop_reason, LLORCH_STOP_CONTEXT_FULL as i32);
        assert!(
            !text.is_empty(),
            "text was streamed before the context filled"
        );
        // The prompt and the generated tokens fill the 48 positions (the last one sampled
        // needs a position of its own to be fed).
        assert_eq!(
            stats.prompt_tokens + stats.generated_tokens,
            48,
            "{stats:?}"
        );
        let mut err = null_mut();
        let mut n_past = u32::MAX;
        ok(
            llorch_session_context_usage(s, &mut n_past, null_mut(), &mut err),
            err,
        );
        assert_eq!(n_past, 0, "the conversation is as before the call");
        let mut again = new_stats();
        ok(llorch_session_stats(s, &mut again, &mut err), err);
        assert_eq!(
            (again.generated_tokens, again.stop_reason),
            (stats.generated_tokens, stats.stop_reason)
        );

        // The pull form ends the same way.
        let c = CString::new("Once upon a time").unwrap();
        ok(llorch_session_begin(s, c.as_ptr(), &p, &mut err), err);
        let (st, pulled) = pull_all(s, 64);
        assert_eq!(st, LLORCH_ERR_CONTEXT_FULL);
        assert_eq!(pulled, text);
        ok(llorch_session_stats(s, &mut again, &mut err), err);
        assert_eq!(again.stop_reason, LLORCH_STOP_CONTEXT_FULL as i32);

        // Still usable.
        let (st, _, _) = generate(s, "Hi", &params(2));
        assert_eq!(st, LLORCH_OK);
    }
}

struct SendPtr(*mut llorch_session);
unsafe impl Send for SendPtr {}

/// A tiny synthetic model (2 layers, 64 wide): a generation takes tens of microseconds, so
/// many rounds of the race fit in a second.
fn tiny_model_file() -> std::path::PathBuf {
    let spec = common::tiny_synth_spec(4096);
    let path = std::env::temp_dir().join(format!("llorch-race-{}.gguf", std::process::id()));
    std::fs::write(&path, build(&spec, 3).unwrap().to_bytes()).unwrap();
    path
}

/// A cancel raised at any moment around a generation is acted on: by that generation, or (if
/// it came after the generation's last look) by the next one, at once. Each round raises one
/// cancel from another thread at a random moment from just before the call to just after
/// its end; a lost cancel shows as a round where neither generation was cancelled.
#[test]
fn no_cancel_is_lost_whenever_it_comes() {
    const ROUNDS: usize = 1500;
    unsafe {
        let path = tiny_model_file();
        let h = open(&path, 1, 4096);
        let _ = std::fs::remove_file(&path);
        let s = h.session;
        let p = params(1);
        let prompt = "a";
        // How long one generation takes, to spread the cancels over it.
        let t = Instant::now();
        for _ in 0..20 {
            assert_eq!(generate(s, prompt, &p).0, LLORCH_OK);
        }
        let call = t.elapsed() / 20;
        let mut err = null_mut();
        ok(llorch_session_reset(s, &mut err), err);

        let barrier = Arc::new(Barrier::new(2));
        // Set by this thread just before each call, so that the canceller can aim at its start.
        let calling = Arc::new(AtomicBool::new(false));
        let (b, c, ptr) = (barrier.clone(), calling.clone(), SendPtr(s));
        let canceller = std::thread::spawn(move || {
            let ptr = ptr;
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            for _ in 0..ROUNDS {
                b.wait();
                while !c.swap(false, Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
                // xorshift: half of the rounds cancel within 20 us of the call's start (where
                // the old code cleared the flag twice, losing a cancel that came between: this
                // caught it in about one run of two), the others anywhere in [0, 4 x call) (a
                // call takes longer while this thread spins).
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let span = if x % 2 == 0 {
                    call * 4
                } else {
                    Duration::from_micros(20)
                };
                let delay = span.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64);
                let t = Instant::now();
                while t.elapsed() < delay {
                    std::hint::spin_loop();
                }
                assert_eq!(llorch_session_cancel(ptr.0), LLORCH_OK);
                b.wait();
            }
        });
        let (mut in_call, mut at_next) = (0, 0);
        for round in 0..ROUNDS {
            barrier.wait();
            calling.store(true, Ordering::SeqCst);
            let (st, _, _) = generate(s, prompt, &p);
            barrier.wait(); // the cancel has been raised
            match st {
                LLORCH_ERR_CANCELLED => in_call += 1,
                LLORCH_OK => {
                    let (st, stats, text) = generate(s, prompt, &p);
                    assert_eq!(
                        st, LLORCH_ERR_CANCELLED,
                        "round {round}: the cancel was lost"
                    );
                    assert_eq!((stats.generated_tokens, text.len()), (0, 0));
                    at_next += 1;
                }
                other => panic!("round {round}: status {other:?}"),
            }
            let mut n_past = 0;
            ok(
                llorch_session_context_usage(s, &mut n_past, null_mut(), &mut err),
                err,
            );
            if n_past > 4000 {
                ok(llorch_session_reset(s, &mut err), err); // no cancel is pending here
            }
        }
        canceller.join().unwrap();
        eprintln!(
            "{ROUNDS} cancels (one generation {call:?}): {in_call} acted on by the running \
             generation, {at_next} by the next"
        );
        // Whatever the spread, every cancel was acted on by one of the two.
        assert_eq!(in_call + at_next, ROUNDS);
    }
}

#[test]
fn null_and_bad_arguments_of_the_pull_calls() {
    unsafe {
        let mut err = null_mut();
        let mut stats = new_stats();
        assert_eq!(
            llorch_session_stats(null(), &mut stats, &mut err),
            LLORCH_ERR_INVALID_ARGUMENT
        );
        assert!(message(err).contains("session is NULL"));
        let st = llorch_session_begin(null_mut(), c"x".as_ptr(), &params(1), &mut err);
        assert_eq!(st, LLORCH_ERR_INVALID_ARGUMENT);
        assert!(message(err).contains("session"));
    }
}
