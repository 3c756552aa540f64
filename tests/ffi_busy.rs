//! `LLORCH_ERR_BUSY` through the C ABI on a real model (SmolLM2-135M): a context whose
//! memory budget holds the weights and 8 KV blocks; one session's conversation takes most of
//! them; another session made with `fail_when_busy` gets `LLORCH_ERR_BUSY` at once, with a
//! message, its conversation unchanged; after the first is freed it generates.

mod common;

use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use std::ffi::{CStr, CString};
use std::ptr::null_mut;

unsafe fn status(st: llorch_status, err: *mut llorch_error) -> (llorch_status, String) {
    let m = CStr::from_ptr(llorch_error_message(err))
        .to_string_lossy()
        .into_owned();
    llorch_error_free(err);
    (st, m)
}

unsafe fn ok(st: llorch_status, err: *mut llorch_error) {
    let (st, m) = status(st, err);
    assert_eq!(st, LLORCH_OK, "{m}");
}

/// Bytes the weights and one KV block of SmolLM2 take in a context's budget (through the
/// Rust API: the C API has no query for them).
fn weights_and_block() -> (u64, u64) {
    let ctx = llorch::backend::Context::new(Default::default()).unwrap();
    let m = llorch::model::Model::load(&ctx, &common::model_path(common::SMOLLM2), None).unwrap();
    (ctx.used_bytes(), m.kv_stats().block_bytes)
}

unsafe fn session(model: *const llorch_model, fail_when_busy: bool) -> *mut llorch_session {
    let mut p = std::mem::zeroed::<llorch_session_params>();
    llorch_session_params_init(&mut p);
    assert!(!p.fail_when_busy, "waiting is the default");
    p.n_ctx = 512;
    p.fail_when_busy = fail_when_busy;
    let (mut s, mut err) = (null_mut(), null_mut());
    ok(llorch_session_new(model, &p, &mut s, &mut err), err);
    s
}

unsafe fn generate(
    s: *mut llorch_session,
    prompt: &str,
    max_tokens: u32,
) -> (llorch_status, String) {
    let mut p = std::mem::zeroed::<llorch_generate_params>();
    llorch_generate_params_init(&mut p);
    p.max_tokens = max_tokens;
    let prompt = CString::new(prompt).unwrap();
    let mut err = null_mut();
    let st = llorch_session_generate(
        s,
        prompt.as_ptr(),
        &p,
        None,
        null_mut(),
        null_mut(),
        &mut err,
    );
    status(st, err)
}

unsafe fn n_past(s: *const llorch_session) -> u32 {
    let (mut n, mut cap, mut err) = (0u32, 0u32, null_mut());
    ok(
        llorch_session_context_usage(s, &mut n, &mut cap, &mut err),
        err,
    );
    n
}

#[test]
fn busy_through_the_c_abi() {
    unsafe {
        let (weights, block) = weights_and_block();
        let mut cp = std::mem::zeroed::<llorch_context_params>();
        llorch_context_params_init(&mut cp);
        cp.memory_budget = weights + 8 * block;
        let (mut ctx, mut model, mut err) = (null_mut(), null_mut(), null_mut());
        ok(llorch_context_new(&cp, &mut ctx, &mut err), err);
        let path = CString::new(common::model_path(common::SMOLLM2).to_str().unwrap()).unwrap();
        ok(
            llorch_model_load(ctx, path.as_ptr(), None, null_mut(), &mut model, &mut err),
            err,
        );
        let a = session(model, false);
        let story = "Once upon a time, in a small village by the sea, there lived an old \
                     fisherman and his wife, who had a little dog named Pepper.";
        let (st, m) = generate(a, story, 64);
        assert_eq!(st, LLORCH_OK, "{m}");
        let b = session(model, true);
        let (st, m) = generate(b, "Tell me about cats and boats.", 48);
        assert_eq!(st, LLORCH_ERR_BUSY, "{m}");
        assert!(m.starts_with("busy:") && m.contains("KV"), "{m}");
        assert_eq!(
            CStr::from_ptr(llorch_status_message(LLORCH_ERR_BUSY as i32)).to_str(),
            Ok("busy")
        );
        assert_eq!(n_past(b), 0, "the busy session's conversation changed");
        llorch_session_free(a);
        let (st, m) = generate(b, "Tell me about cats and boats.", 48);
        assert_eq!(st, LLORCH_OK, "{m}");
        assert!(n_past(b) > 0);
        llorch_session_free(b);
        llorch_model_free(model);
        llorch_context_free(ctx);
    }
}
