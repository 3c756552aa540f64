//! `llorch_model_embed` through the C ABI on SmolLM2-135M: the same vectors as the Rust API
//! (which tests/session_embed.rs checks against HF transformers), the model's pooling and
//! width, and every bad argument refused with a named error and nothing written.

mod common;

use llorch::ffi::llorch_pooling::*;
use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use llorch::session::embed::{embed, EmbedOptions, Pooling};
use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

/// The message of a call's error (freed), and its status.
unsafe fn status_of(status: llorch_status, err: *mut llorch_error) -> (llorch_status, String) {
    let m = if err.is_null() {
        String::new()
    } else {
        CStr::from_ptr(llorch_error_message(err))
            .to_string_lossy()
            .into_owned()
    };
    llorch_error_free(err);
    (status, m)
}

#[test]
fn c_embeddings_equal_the_rust_api_and_bad_arguments_are_refused() {
    unsafe {
        let mut ctx = null_mut();
        let mut err = null_mut();
        assert_eq!(llorch_context_new(null(), &mut ctx, &mut err), LLORCH_OK);
        let path = common::model_path(common::SMOLLM2);
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        let mut model = null_mut();
        let s = llorch_model_load(ctx, cpath.as_ptr(), None, null_mut(), &mut model, &mut err);
        assert_eq!(s, LLORCH_OK);

        let (mut dim, mut pooling) = (0u32, -1i32);
        let s = llorch_model_embedding_info(model, &mut dim, &mut pooling, &mut err);
        assert_eq!(status_of(s, err).0, LLORCH_OK);
        assert_eq!((dim, pooling), (576, LLORCH_POOLING_LAST as i32));

        let texts = ["The capital of France is Paris.", "fn main() {}", "Hello"];
        let cs: Vec<CString> = texts.iter().map(|t| CString::new(*t).unwrap()).collect();
        let ptrs: Vec<*const c_char> = cs.iter().map(|c| c.as_ptr()).collect();
        let n = dim as usize * texts.len();

        // The Rust API on a model of its own, for each pooling and normalization.
        let ctx_rs = llorch::backend::Context::new(Default::default()).unwrap();
        let rust_model = llorch::model::Model::load(&ctx_rs, &path, None).unwrap();
        for (c_pool, pool) in [
            (LLORCH_POOLING_MODEL, None),
            (LLORCH_POOLING_MEAN, Some(Pooling::Mean)),
            (LLORCH_POOLING_CLS, Some(Pooling::Cls)),
            (LLORCH_POOLING_LAST, Some(Pooling::Last)),
        ] {
            for normalize in [false, true] {
                let mut p = std::mem::zeroed::<llorch_embed_params>();
                llorch_embed_params_init(&mut p);
                assert_eq!(p.pooling, LLORCH_POOLING_MODEL as i32);
                assert!(!p.normalize);
                p.pooling = c_pool as i32;
                p.normalize = normalize;
                let mut got = vec![0f32; n];
                let s = llorch_model_embed(
                    model,
                    ptrs.as_ptr(),
                    texts.len(),
                    &p,
                    got.as_mut_ptr(),
                    got.len(),
                    &mut err,
                );
                let (s, m) = status_of(s, err);
                assert_eq!(s, LLORCH_OK, "{m}");
                let want = embed(
                    &rust_model,
                    &texts,
                    &EmbedOptions {
                        pooling: pool,
                        normalize,
                    },
                )
                .unwrap();
                // The same computation: equal to f32 rounding.
                let e = common::rel_err(&got, &want.data);
                assert!(e < 1e-6, "{c_pool:?} normalize {normalize}: {e}");
            }
        }

        // Bad arguments: a named error, the buffer untouched.
        let bad = CString::new(vec![b'a', 0xff]).unwrap();
        let empty = CString::new("").unwrap();
        let mut p = std::mem::zeroed::<llorch_embed_params>();
        llorch_embed_params_init(&mut p);
        let mut buf = vec![7f32; n];
        let mut call =
            |texts: &[*const c_char], n_texts: usize, p: &llorch_embed_params, len: usize| {
                let mut err = null_mut();
                let t = if texts.is_empty() {
                    null()
                } else {
                    texts.as_ptr()
                };
                let s = llorch_model_embed(model, t, n_texts, p, buf.as_mut_ptr(), len, &mut err);
                status_of(s, err)
            };
        let mut p7 = p;
        p7.pooling = 7;
        let mut small = p;
        small.struct_size = 4;
        for ((s, m), needle) in [
            (call(&ptrs, 3, &p7, n), "params->pooling is 7"),
            (call(&ptrs, 3, &small, n), "struct_size is 4"),
            (call(&ptrs, 3, &p, n - 1), "need 1728 floats"),
            (call(&[], 2, &p, n), "texts is NULL"),
            (
                call(&[ptrs[0], bad.as_ptr()], 2, &p, n),
                "texts[1] is not valid UTF-8",
            ),
            (
                call(&[empty.as_ptr(), ptrs[0]], 2, &p, n),
                "input 0 is empty",
            ),
        ] {
            assert_eq!(s, LLORCH_ERR_INVALID_ARGUMENT, "{m}");
            assert!(m.contains(needle), "{m:?} should mention {needle:?}");
        }
        assert!(buf.iter().all(|&v| v == 7.0), "a failed call wrote");
        // No texts: nothing to do, and NULL buffers are fine.
        let s = llorch_model_embed(model, null(), 0, null(), null_mut(), 0, &mut err);
        assert_eq!(status_of(s, err).0, LLORCH_OK);
        let s = llorch_model_embedding_info(null(), &mut dim, null_mut(), &mut err);
        assert_eq!(status_of(s, err).0, LLORCH_ERR_INVALID_ARGUMENT);

        llorch_model_free(model);
        llorch_context_free(ctx);
    }
}
