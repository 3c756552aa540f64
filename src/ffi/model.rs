//! llorch_model: loaded weights with tokenizer and metadata, shared by sessions.

use super::{
    arg, c_str, call, guard, llorch_context, llorch_error, llorch_status, malloc_bytes, out,
};
use crate::model::Model;
use crate::tokenizer::chat::ChatMessage;
use crate::Error;
use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::Arc;

/// A loaded model. Reference counted: every session created from it holds a reference, so the
/// model may be freed while its sessions still use it; the memory goes with the last one.
/// Thread-safety: a model may be used by several threads at once (it is read-only).
pub struct llorch_model {
    pub(crate) model: Arc<Model>,
    architecture: CString,
    chat_template: Option<CString>,
}

/// Load progress: `fraction` in [0, 1]; return false to cancel the load
/// (`llorch_model_load` then returns `LLORCH_ERR_CANCELLED`). Called on the loading thread.
pub type llorch_progress_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, fraction: f32) -> bool>;

/// One chat message for `llorch_model_apply_chat_template`: NUL-terminated UTF-8 strings.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_chat_message {
    /// "system", "user", "assistant" …
    pub role: *const c_char,
    pub content: *const c_char,
}

fn to_cstring(s: &str, what: &str) -> crate::Result<CString> {
    CString::new(s).map_err(|_| Error::BadModel(format!("the model's {what} contains a NUL byte")))
}

/// Loads a GGUF model file into `context`. `progress` may be NULL; it is called on this thread
/// with `progress_user_data`. On success `*out_model` receives the handle. Errors:
/// `LLORCH_ERR_IO` (cannot read the file), `LLORCH_ERR_BAD_MODEL`, `LLORCH_ERR_UNSUPPORTED`,
/// `LLORCH_ERR_OUT_OF_MEMORY`, `LLORCH_ERR_CANCELLED` (progress returned false).
/// Thread-safety: any thread; several loads may run at once.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_load(
    context: *const llorch_context,
    path: *const c_char,
    progress: llorch_progress_callback,
    progress_user_data: *mut c_void,
    out_model: *mut *mut llorch_model,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let context = arg(context, "context")?;
        let path = c_str(path, "path")?;
        let out_model = out(out_model, "out_model")?;
        let mut on_progress = |f: f32| match progress {
            Some(cb) => cb(progress_user_data, f),
            None => true,
        };
        super::log::emit(
            super::llorch_log_level::LLORCH_LOG_INFO,
            &format!("loading model {path}"),
        );
        let model = Model::load(&context.ctx, Path::new(path), Some(&mut on_progress))?;
        let architecture = to_cstring(model.architecture(), "architecture")?;
        let chat_template = model
            .chat_template()
            .map(|t| to_cstring(t, "chat template"))
            .transpose()?;
        *out_model = Box::into_raw(Box::new(llorch_model {
            model,
            architecture,
            chat_template,
        }));
        Ok(())
    })
}

/// Releases the caller's reference to the model. Sessions created from it keep working.
/// NULL is ignored. Thread-safety: any thread, but not while another call uses this handle.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_free(model: *mut llorch_model) {
    guard(
        |_| (),
        || {
            if !model.is_null() {
                drop(Box::from_raw(model));
            }
        },
    )
}

/// The architecture name from the metadata ("qwen2", "llama", "gemma3" …) into `*out`: a
/// string owned by the model handle, valid until `llorch_model_free(model)`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_architecture(
    model: *const llorch_model,
    out_name: *mut *const c_char,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = arg(model, "model")?;
        *out(out_name, "out_name")? = m.architecture.as_ptr();
        Ok(())
    })
}

/// The training context length (tokens) from the metadata. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_context_length(
    model: *const llorch_model,
    out_length: *mut u32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = arg(model, "model")?;
        let o = out(out_length, "out_length")?;
        *o = m.model.context_length();
        Ok(())
    })
}

/// The vocabulary size (number of token ids). Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_vocab_size(
    model: *const llorch_model,
    out_size: *mut u32,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = arg(model, "model")?;
        let o = out(out_size, "out_size")?;
        *o = u32::try_from(m.model.vocab_size())
            .map_err(|_| Error::Internal("vocabulary larger than u32".into()))?;
        Ok(())
    })
}

/// The model's Jinja chat template into `*out` (NULL if the metadata has none): owned by the
/// model handle, valid until `llorch_model_free(model)`. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_chat_template(
    model: *const llorch_model,
    out_template: *mut *const c_char,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = arg(model, "model")?;
        *out(out_template, "out_template")? = m
            .chat_template
            .as_ref()
            .map_or(std::ptr::null(), |t| t.as_ptr());
        Ok(())
    })
}

/// Renders `n_messages` messages with the model's chat template (or `template_override` if it
/// is not NULL). `add_generation_prompt` appends the assistant turn's opening. On success
/// `*out_text` receives a NUL-terminated UTF-8 string to free with `llorch_string_free`.
/// `messages` may be NULL only when `n_messages` is 0. `LLORCH_ERR_UNSUPPORTED` if the model
/// has no template and none is given. A template that does not parse, fails or passes a render
/// limit (instructions, string and list sizes, nesting, time: the error names it) is
/// `LLORCH_ERR_BAD_MODEL` when it is the model's, `LLORCH_ERR_INVALID_ARGUMENT` when it is
/// `template_override`; it renders on a thread of its own, so the caller's stack may be small.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_apply_chat_template(
    model: *const llorch_model,
    messages: *const llorch_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
    template_override: *const c_char,
    out_text: *mut *mut c_char,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let m = arg(model, "model")?;
        let out_text = out(out_text, "out_text")?;
        let msgs: &[llorch_chat_message] = if n_messages == 0 {
            &[]
        } else {
            if messages.is_null() {
                return Err(Error::InvalidArgument(format!(
                    "messages is NULL but n_messages is {n_messages}"
                )));
            }
            std::slice::from_raw_parts(messages, n_messages)
        };
        let mut list = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            list.push(ChatMessage {
                role: c_str(msg.role, &format!("messages[{i}].role"))?.to_string(),
                content: c_str(msg.content, &format!("messages[{i}].content"))?.to_string(),
            });
        }
        let template = if template_override.is_null() {
            None
        } else {
            Some(c_str(template_override, "template_override")?)
        };
        let text = m
            .model
            .apply_chat_template(&list, add_generation_prompt, template)?;
        *out_text = malloc_bytes(text.as_bytes())?;
        Ok(())
    })
}

/// Tokenizes NUL-terminated UTF-8 `text`. `add_bos`: prepend BOS if the model asks for it;
/// `parse_special`: special tokens written in the text (`<|im_start|>` …) become single tokens.
/// On success `*out_tokens` receives a buffer of `*out_n` ids to free with `llorch_tokens_free`
/// (NULL when `*out_n` is 0). Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_tokenize(
    model: *const llorch_model,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    out_tokens: *mut *mut i32,
    out_n: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        tokenize_with(
            &arg(model, "model")?.model,
            text,
            add_bos,
            parse_special,
            out_tokens,
            out_n,
        )
    })
}

pub(crate) unsafe fn tokenize_with(
    m: &Model,
    text: *const c_char,
    add_bos: bool,
    parse_special: bool,
    out_tokens: *mut *mut i32,
    out_n: *mut usize,
) -> crate::Result<()> {
    let text = c_str(text, "text")?;
    let out_tokens = out(out_tokens, "out_tokens")?;
    let out_n = out(out_n, "out_n")?;
    let ids = m.tokenizer().encode(text, parse_special, add_bos)?;
    let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
    *out_tokens = malloc_tokens(&ids)?;
    *out_n = ids.len();
    Ok(())
}

/// Copies token ids into a malloc'd buffer (freed by `llorch_tokens_free`); NULL for none.
pub(crate) fn malloc_tokens(ids: &[i32]) -> crate::Result<*mut i32> {
    if ids.is_empty() {
        return Ok(std::ptr::null_mut());
    }
    unsafe {
        let p = libc::malloc(std::mem::size_of_val(ids)) as *mut i32;
        if p.is_null() {
            return Err(Error::OutOfMemory(format!(
                "allocating {} token ids",
                ids.len()
            )));
        }
        std::ptr::copy_nonoverlapping(ids.as_ptr(), p, ids.len());
        Ok(p)
    }
}

/// Frees a token buffer from `llorch_model_tokenize`. NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_tokens_free(tokens: *mut i32) {
    guard(|_| (), || libc::free(tokens as *mut c_void))
}

/// Detokenizes `n_tokens` ids into bytes: `*out_text` receives a NUL-terminated buffer of
/// `*out_len` bytes (not counting the NUL) to free with `llorch_string_free`. The bytes may
/// end inside a UTF-8 character when the ids cut one. `tokens` may be NULL only when
/// `n_tokens` is 0; an id outside the vocabulary is `LLORCH_ERR_INVALID_ARGUMENT`.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_model_detokenize(
    model: *const llorch_model,
    tokens: *const i32,
    n_tokens: usize,
    out_text: *mut *mut c_char,
    out_len: *mut usize,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        detokenize_with(
            &arg(model, "model")?.model,
            tokens,
            n_tokens,
            out_text,
            out_len,
        )
    })
}

pub(crate) unsafe fn detokenize_with(
    m: &Model,
    tokens: *const i32,
    n_tokens: usize,
    out_text: *mut *mut c_char,
    out_len: *mut usize,
) -> crate::Result<()> {
    let out_text = out(out_text, "out_text")?;
    let out_len = out(out_len, "out_len")?;
    let ids: &[i32] = if n_tokens == 0 {
        &[]
    } else {
        if tokens.is_null() {
            return Err(Error::InvalidArgument(format!(
                "tokens is NULL but n_tokens is {n_tokens}"
            )));
        }
        std::slice::from_raw_parts(tokens, n_tokens)
    };
    let vocab = m.vocab_size();
    let mut list = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(Error::InvalidArgument(format!(
                "tokens[{i}] = {id} is outside the vocabulary (0..{vocab})"
            )));
        }
        list.push(id as u32);
    }
    let bytes = m.tokenizer().decode(&list)?;
    *out_text = malloc_bytes(&bytes)?;
    *out_len = bytes.len();
    Ok(())
}
