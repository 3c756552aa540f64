//! Misuse of the C ABI, called as C would call it: NULL pointers, wrong struct sizes, invalid
//! UTF-8, messages. None of these needs a model, so they run before the engine exists.

use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use std::ffi::{c_char, CStr};
use std::ptr::{null, null_mut};

/// Takes the error object of a call: checks status and message, frees it.
unsafe fn expect(status: llorch_status, err: *mut llorch_error, want: llorch_status, needle: &str) {
    assert_eq!(status, want, "message: {}", msg(err));
    assert!(!err.is_null(), "a failed call must give an error object");
    assert_eq!(llorch_error_status(err), want);
    let m = msg(err);
    assert!(
        m.contains(needle),
        "message {m:?} should mention {needle:?}"
    );
    llorch_error_free(err);
}

unsafe fn msg(err: *const llorch_error) -> String {
    CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned()
}

const BAD_UTF8: &[u8] = b"caf\xc3(\0"; // 0xC3 starts a 2-byte sequence; '(' is not a continuation

fn c(s: &CStr) -> *const c_char {
    s.as_ptr()
}

unsafe fn cpu_context() -> *mut llorch_context {
    let mut ctx = null_mut();
    let mut err = null_mut();
    assert_eq!(llorch_context_new(null(), &mut ctx, &mut err), LLORCH_OK);
    assert!(err.is_null(), "success sets *err to NULL");
    assert!(!ctx.is_null());
    ctx
}

#[test]
fn version_and_abi() {
    unsafe {
        let v = CStr::from_ptr(llorch_version()).to_str().unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        assert_eq!(llorch_abi_version(), LLORCH_ABI_VERSION);
    }
}

#[test]
fn status_messages_are_static_and_total() {
    unsafe {
        assert_eq!(
            CStr::from_ptr(llorch_status_message(0)).to_str().unwrap(),
            "ok"
        );
        assert_eq!(
            CStr::from_ptr(llorch_status_message(LLORCH_ERR_CANCELLED as i32))
                .to_str()
                .unwrap(),
            "cancelled"
        );
        assert_eq!(
            CStr::from_ptr(llorch_status_message(9)).to_str().unwrap(),
            "internal error"
        );
        for bad in [-1, 11, i32::MAX, i32::MIN] {
            assert_eq!(
                CStr::from_ptr(llorch_status_message(bad)).to_str().unwrap(),
                "unknown status"
            );
        }
        // Every status has its own message.
        let all: Vec<_> = (0..11)
            .map(|s| CStr::from_ptr(llorch_status_message(s)).to_owned())
            .collect();
        let mut dedup = all.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), 11);
    }
}

#[test]
fn error_object_accessors_accept_null() {
    unsafe {
        assert_eq!(CStr::from_ptr(llorch_error_message(null())).to_bytes(), b"");
        assert_eq!(llorch_error_status(null()), LLORCH_OK);
        llorch_error_free(null_mut());
        llorch_string_free(null_mut());
        llorch_tokens_free(null_mut());
        llorch_context_free(null_mut());
        llorch_model_free(null_mut());
        llorch_session_free(null_mut());
        llorch_context_params_init(null_mut());
        llorch_session_params_init(null_mut());
        llorch_generate_params_init(null_mut());
        llorch_generate_stats_init(null_mut());
    }
}

#[test]
fn err_may_be_null() {
    unsafe {
        // Without an error object the status alone still comes back (and nothing leaks).
        assert_eq!(
            llorch_context_new(null(), null_mut(), null_mut()),
            LLORCH_ERR_INVALID_ARGUMENT
        );
    }
}

#[test]
fn context_null_and_sizes() {
    unsafe {
        let mut err = null_mut();
        expect(
            llorch_context_new(null(), null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_context is NULL",
        );

        let mut p = std::mem::zeroed::<llorch_context_params>();
        llorch_context_params_init(&mut p);
        assert_eq!(p.struct_size, std::mem::size_of::<llorch_context_params>());
        assert_eq!(p.device_type, llorch_device_type::LLORCH_DEVICE_CPU as i32);
        let mut ctx = null_mut();
        for size in [0, 4, p.struct_size - 1] {
            p.struct_size = size;
            expect(
                llorch_context_new(&p, &mut ctx, &mut err),
                err,
                LLORCH_ERR_INVALID_ARGUMENT,
                "struct_size",
            );
            assert!(ctx.is_null(), "outputs are written only on success");
        }
        p.struct_size = std::mem::size_of::<llorch_context_params>();
        p.device_type = 7;
        expect(
            llorch_context_new(&p, &mut ctx, &mut err),
            err,
            LLORCH_ERR_UNSUPPORTED,
            "device_type 7",
        );

        // A larger size (a newer caller) is accepted: the known fields are read.
        #[repr(C)]
        struct Newer {
            p: llorch_context_params,
            extra: u64,
        }
        let mut n = Newer {
            p: std::mem::zeroed(),
            extra: 0,
        };
        llorch_context_params_init(&mut n.p);
        n.p.struct_size = std::mem::size_of::<Newer>();
        assert_eq!(
            llorch_context_new(&n.p, &mut ctx, &mut err),
            LLORCH_OK,
            "{}",
            msg(err)
        );
        llorch_context_free(ctx);
    }
}

#[test]
fn model_load_null_and_utf8() {
    unsafe {
        let ctx = cpu_context();
        let mut model = null_mut();
        let mut err = null_mut();
        let path = c"/nonexistent.gguf";
        expect(
            llorch_model_load(null(), c(path), None, null_mut(), &mut model, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "context is NULL",
        );
        expect(
            llorch_model_load(ctx, null(), None, null_mut(), &mut model, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "path is NULL",
        );
        expect(
            llorch_model_load(ctx, c(path), None, null_mut(), null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_model is NULL",
        );
        expect(
            llorch_model_load(
                ctx,
                BAD_UTF8.as_ptr() as *const c_char,
                None,
                null_mut(),
                &mut model,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "path is not valid UTF-8 (at byte 3)",
        );
        assert!(model.is_null());
        llorch_context_free(ctx);
    }
}

#[test]
fn model_queries_null() {
    unsafe {
        let mut err = null_mut();
        let mut s: *const c_char = null();
        let mut n = 0u32;
        let mut owned: *mut c_char = null_mut();
        let mut toks: *mut i32 = null_mut();
        let mut len = 0usize;
        expect(
            llorch_model_architecture(null(), &mut s, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_context_length(null(), &mut n, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_vocab_size(null(), &mut n, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_chat_template(null(), &mut s, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_apply_chat_template(null(), null(), 0, true, null(), &mut owned, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_tokenize(null(), c(c"x"), true, true, &mut toks, &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_model_detokenize(null(), null(), 0, &mut owned, &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        assert!(owned.is_null() && toks.is_null() && s.is_null() && n == 0 && len == 0);
    }
}

#[test]
fn session_null_sizes_and_utf8() {
    unsafe {
        let mut err = null_mut();
        let mut session = null_mut();
        expect(
            llorch_session_new(null(), null(), &mut session, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "model is NULL",
        );
        expect(
            llorch_session_new(null(), null(), null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "out_session is NULL",
        );
        let mut sp = std::mem::zeroed::<llorch_session_params>();
        llorch_session_params_init(&mut sp);
        sp.struct_size = 0;
        expect(
            llorch_session_new(null(), &sp, &mut session, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "struct_size is 0",
        );

        let mut gp = std::mem::zeroed::<llorch_generate_params>();
        llorch_generate_params_init(&mut gp);
        assert_eq!(
            gp.struct_size,
            std::mem::size_of::<llorch_generate_params>()
        );
        assert_eq!(
            (gp.max_tokens, gp.temperature, gp.top_p, gp.parse_special),
            (256, 0.0, 1.0, true)
        );
        let mut stats = std::mem::zeroed::<llorch_generate_stats>();
        llorch_generate_stats_init(&mut stats);
        let prompt = c(c"Hello");

        // Each argument check, in order; the session is checked last.
        expect(
            llorch_session_generate(
                null_mut(),
                null(),
                &gp,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "prompt is NULL",
        );
        expect(
            llorch_session_generate(
                null_mut(),
                BAD_UTF8.as_ptr() as *const c_char,
                &gp,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "prompt is not valid UTF-8",
        );
        // A lone continuation byte and a truncated 4-byte sequence are invalid too.
        for bad in [&b"\x80\0"[..], &b"ok \xf0\x9f\x98\0"[..]] {
            expect(
                llorch_session_generate(
                    null_mut(),
                    bad.as_ptr() as *const c_char,
                    &gp,
                    None,
                    null_mut(),
                    null_mut(),
                    &mut err,
                ),
                err,
                LLORCH_ERR_INVALID_ARGUMENT,
                "UTF-8",
            );
        }
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                null(),
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "params is NULL",
        );
        for size in [0usize, 1, 8, 11] {
            let mut small = gp;
            small.struct_size = size;
            expect(
                llorch_session_generate(
                    null_mut(),
                    prompt,
                    &small,
                    None,
                    null_mut(),
                    &mut stats,
                    &mut err,
                ),
                err,
                LLORCH_ERR_INVALID_ARGUMENT,
                "struct_size",
            );
        }
        let mut bad_stop = gp;
        bad_stop.n_stop = 2;
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &bad_stop,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "params->stop is NULL but params->n_stop is 2",
        );
        let stops = [c(c"\n\n"), BAD_UTF8.as_ptr() as *const c_char];
        bad_stop.stop = stops.as_ptr();
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &bad_stop,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "params->stop[1] is not valid UTF-8",
        );
        let stops = [c(c"")];
        bad_stop.stop = stops.as_ptr();
        bad_stop.n_stop = 1;
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &bad_stop,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "params->stop[0] is empty",
        );
        let mut bad_bias = gp;
        let biases = [llorch_logit_bias {
            token: -3,
            bias: 1.0,
        }];
        bad_bias.logit_bias = biases.as_ptr();
        bad_bias.n_logit_bias = 1;
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &bad_bias,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "logit_bias[0]",
        );

        let mut bad_stats = stats;
        bad_stats.struct_size = 3;
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &gp,
                None,
                null_mut(),
                &mut bad_stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "stats->struct_size is 3",
        );

        // An older, smaller params struct (only max_tokens) passes the size check: the error
        // is then the NULL session, checked after the params.
        let mut old = gp;
        old.struct_size = std::mem::offset_of!(llorch_generate_params, max_tokens) + 4;
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &old,
                None,
                null_mut(),
                &mut stats,
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
        expect(
            llorch_session_generate(
                null_mut(),
                prompt,
                &gp,
                None,
                null_mut(),
                null_mut(),
                &mut err,
            ),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
        assert_eq!(stats.generated_tokens, 0, "no stats written on failure");

        assert_eq!(llorch_session_cancel(null()), LLORCH_ERR_INVALID_ARGUMENT);
        expect(
            llorch_session_reset(null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
        expect(
            llorch_session_context_usage(null(), null_mut(), null_mut(), &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
        let mut toks: *mut i32 = null_mut();
        let mut len = 0usize;
        let mut owned: *mut c_char = null_mut();
        expect(
            llorch_session_tokenize(null(), prompt, true, true, &mut toks, &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
        expect(
            llorch_session_detokenize(null(), null(), 0, &mut owned, &mut len, &mut err),
            err,
            LLORCH_ERR_INVALID_ARGUMENT,
            "session is NULL",
        );
    }
}

static LOGGED: std::sync::Mutex<Vec<(i32, String)>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn log_sink(
    user_data: *mut std::ffi::c_void,
    level: i32,
    message: *const c_char,
) {
    assert_eq!(user_data as usize, 42);
    LOGGED.lock().unwrap().push((
        level,
        CStr::from_ptr(message).to_string_lossy().into_owned(),
    ));
}

#[test]
fn log_callback_with_level() {
    unsafe {
        llorch_set_log_callback(
            Some(log_sink),
            42 as *mut _,
            llorch_log_level::LLORCH_LOG_INFO as i32,
        );
        llorch::ffi::emit(llorch_log_level::LLORCH_LOG_DEBUG, "below the level");
        llorch::ffi::emit(llorch_log_level::LLORCH_LOG_WARN, "a warning");
        llorch_set_log_callback(None, null_mut(), 0);
        llorch::ffi::emit(llorch_log_level::LLORCH_LOG_ERROR, "after removal");
        let got = LOGGED.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![(
                llorch_log_level::LLORCH_LOG_WARN as i32,
                "a warning".to_string()
            )]
        );
    }
}
