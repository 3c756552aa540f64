//! The C ABI. Only handle casts, pointer checks, the panic boundary, status codes and strings
//! live here; everything it calls is safe Rust.
//!
//! Every exported function goes through [`guard`] (the one `catch_unwind`), and every
//! status-returning one through [`call`] on top of it, so a panic never crosses into C.
//! The contracts of the raw pointers (what may be NULL, lifetimes, threads) are written in each
//! function's doc comment, which cbindgen copies into include/llorch.h.
#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)] // the contracts are the doc comments of the header

pub mod context;
pub mod embed;
pub mod log;
pub mod model;
pub mod session;
pub mod vocab;

pub use context::*;
pub use embed::*;
pub use log::*;
pub use model::*;
pub use session::*;
pub use vocab::*;

use crate::Error;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// The ABI version of this header. Bindings compare it with `llorch_abi_version()` at load and
/// refuse a library with a different value. Bumped on any incompatible change.
pub const LLORCH_ABI_VERSION: u32 = 1;

/// Status of a fallible call. `LLORCH_OK` is 0; every other value is an error whose reason in
/// words comes through the call's `llorch_error **err` out-parameter.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum llorch_status {
    /// Success.
    LLORCH_OK = 0,
    /// A bad argument: a NULL pointer, a wrong struct size, invalid UTF-8, a value out of range.
    LLORCH_ERR_INVALID_ARGUMENT = 1,
    /// The model file is malformed or inconsistent.
    LLORCH_ERR_BAD_MODEL = 2,
    /// Something this build does not implement (an architecture, a tensor type, a device kind).
    LLORCH_ERR_UNSUPPORTED = 3,
    /// Host or device memory, or the context's memory budget, is exhausted.
    LLORCH_ERR_OUT_OF_MEMORY = 4,
    /// Cancelled: by `llorch_session_cancel`, a token callback returning false, or a load
    /// progress callback returning false.
    LLORCH_ERR_CANCELLED = 5,
    /// The session's context cannot hold the prompt and the tokens to generate.
    LLORCH_ERR_CONTEXT_FULL = 6,
    /// The requested device is not available.
    LLORCH_ERR_NO_DEVICE = 7,
    /// Reading a file failed.
    LLORCH_ERR_IO = 8,
    /// A bug in llorch (a caught panic, a broken invariant). The message says where.
    LLORCH_ERR_INTERNAL = 9,
    /// The model's KV memory (the context's budget) is held by other sessions now and the
    /// session was made with `fail_when_busy`, or nothing in flight could free it (idle
    /// sessions hold it): nothing changed; try again later, or free, reset or rewind a
    /// session.
    LLORCH_ERR_BUSY = 10,
}

use llorch_status::*;

impl llorch_status {
    pub fn of(e: &Error) -> llorch_status {
        match e {
            Error::InvalidArgument(_) => LLORCH_ERR_INVALID_ARGUMENT,
            Error::BadModel(_) => LLORCH_ERR_BAD_MODEL,
            Error::Unsupported(_) => LLORCH_ERR_UNSUPPORTED,
            Error::OutOfMemory(_) => LLORCH_ERR_OUT_OF_MEMORY,
            Error::Cancelled => LLORCH_ERR_CANCELLED,
            Error::ContextFull(_) => LLORCH_ERR_CONTEXT_FULL,
            Error::NoDevice(_) => LLORCH_ERR_NO_DEVICE,
            Error::Io(_) => LLORCH_ERR_IO,
            Error::Internal(_) => LLORCH_ERR_INTERNAL,
            Error::Busy(_) => LLORCH_ERR_BUSY,
        }
    }
}

/// The reason of a failed call: a status and a message. Created by the library for the
/// caller's `llorch_error **err`, owned by the caller, freed with `llorch_error_free`.
pub struct llorch_error {
    status: llorch_status,
    message: std::ffi::CString,
}

impl llorch_error {
    fn new(status: llorch_status, message: String) -> llorch_error {
        // An interior NUL would truncate the C string; replace it rather than lose the message.
        let message = std::ffi::CString::new(message.replace('\0', "\\0")).unwrap_or_default();
        llorch_error { status, message }
    }
}

// ---------------------------------------------------------------------------------------------
// The boundary.

/// Text of a panic payload (`panic!` gives a &str or a String).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

/// The one panic boundary: runs `f`; a panic becomes `on_panic(message)` and is logged.
fn guard<R>(on_panic: impl FnOnce(String) -> R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = panic_message(&*payload);
            log::emit(
                llorch_log_level::LLORCH_LOG_ERROR,
                &format!("caught a panic: {msg}"),
            );
            on_panic(msg)
        }
    }
}

/// A status-returning export: runs `f` inside [`guard`], maps its error to a status and, when
/// `err` is not NULL, stores the reason there (NULL on success).
unsafe fn call(
    err: *mut *mut llorch_error,
    f: impl FnOnce() -> crate::Result<()>,
) -> llorch_status {
    let result = guard(
        |m| Err(Error::Internal(format!("panic inside llorch: {m}"))),
        f,
    );
    let (status, error) = match result {
        Ok(()) => (LLORCH_OK, ptr::null_mut()),
        Err(e) => {
            let status = llorch_status::of(&e);
            (
                status,
                Box::into_raw(Box::new(llorch_error::new(status, e.to_string()))),
            )
        }
    };
    if err.is_null() {
        if !error.is_null() {
            drop(Box::from_raw(error));
        }
    } else {
        *err = error;
    }
    status
}

fn null_arg(name: &str) -> Error {
    Error::InvalidArgument(format!("{name} is NULL"))
}

/// A required input pointer.
unsafe fn arg<'a, T>(p: *const T, name: &str) -> crate::Result<&'a T> {
    p.as_ref().ok_or_else(|| null_arg(name))
}

/// A required output pointer.
unsafe fn out<'a, T>(p: *mut T, name: &str) -> crate::Result<&'a mut T> {
    p.as_mut().ok_or_else(|| null_arg(name))
}

/// A required NUL-terminated UTF-8 string.
unsafe fn c_str<'a>(p: *const c_char, name: &str) -> crate::Result<&'a str> {
    if p.is_null() {
        return Err(null_arg(name));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        Error::InvalidArgument(format!(
            "{name} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

/// Copies `bytes` into a malloc'd, NUL-terminated buffer (freed by `llorch_string_free`).
fn malloc_bytes(bytes: &[u8]) -> crate::Result<*mut c_char> {
    unsafe {
        let p = libc::malloc(bytes.len() + 1) as *mut u8;
        if p.is_null() {
            return Err(Error::OutOfMemory(format!(
                "allocating a {} byte string",
                bytes.len() + 1
            )));
        }
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        Ok(p as *mut c_char)
    }
}

/// Reads the fields of a versioned params struct (first field `struct_size`) that lie wholly
/// inside `struct_size` bytes, leaving the defaults in `$dst` for the others. New fields must
/// only ever be appended after the previous version's `sizeof`.
macro_rules! read_sized_fields {
    ($src:expr, $size:expr, $dst:ident : $T:ty { $($f:ident),* $(,)? }) => {$(
        if std::mem::offset_of!($T, $f) + std::mem::size_of_val(&$dst.$f) <= $size {
            $dst.$f = std::ptr::addr_of!((*$src).$f).read_unaligned();
        }
    )*};
}
pub(crate) use read_sized_fields;

/// Checks the `struct_size` of a versioned params struct: at least `min`.
fn check_struct_size(size: usize, min: usize, name: &str) -> crate::Result<()> {
    if size < min {
        return Err(Error::InvalidArgument(format!(
            "{name}->struct_size is {size}, smaller than the smallest known version ({min} bytes); \
             initialize it with its llorch_*_init function"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Exports: version, status, errors, strings.

/// The library version, e.g. "0.1.0". A static string; never NULL.
/// Thread-safety: any thread, any time.
#[no_mangle]
pub extern "C" fn llorch_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr() as *const c_char
}

/// The ABI version of the loaded library; equal to the header's `LLORCH_ABI_VERSION` when
/// they match. Thread-safety: any thread, any time.
#[no_mangle]
pub extern "C" fn llorch_abi_version() -> u32 {
    LLORCH_ABI_VERSION
}

/// A static English description of a status ("ok", "invalid argument" …); "unknown status"
/// for a value that is not a status. Never NULL. Thread-safety: any thread, any time.
#[no_mangle]
pub extern "C" fn llorch_status_message(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "ok\0",
        1 => "invalid argument\0",
        2 => "bad model\0",
        3 => "unsupported\0",
        4 => "out of memory\0",
        5 => "cancelled\0",
        6 => "context full\0",
        7 => "no device\0",
        8 => "i/o error\0",
        9 => "internal error\0",
        10 => "busy\0",
        _ => "unknown status\0",
    };
    s.as_ptr() as *const c_char
}

/// The message of an error: what failed and why. Valid until `llorch_error_free(err)`.
/// Returns "" for NULL. Thread-safety: any thread; an error object is not shared state.
#[no_mangle]
pub unsafe extern "C" fn llorch_error_message(err: *const llorch_error) -> *const c_char {
    guard(
        |_| c"".as_ptr(),
        || match err.as_ref() {
            Some(e) => e.message.as_ptr(),
            None => c"".as_ptr(),
        },
    )
}

/// The status of an error (`LLORCH_OK` for NULL). Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_error_status(err: *const llorch_error) -> llorch_status {
    guard(
        |_| LLORCH_ERR_INTERNAL,
        || err.as_ref().map_or(LLORCH_OK, |e| e.status),
    )
}

/// Frees an error object. NULL is accepted and ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_error_free(err: *mut llorch_error) {
    guard(
        |_| (),
        || {
            if !err.is_null() {
                drop(Box::from_raw(err));
            }
        },
    )
}

/// Frees a string returned by llorch (chat template rendering, detokenization). NULL is
/// accepted and ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_string_free(s: *mut c_char) {
    guard(|_| (), || libc::free(s as *mut libc::c_void))
}
