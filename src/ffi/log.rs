//! The log callback: one process-wide sink, set from C.

use super::guard;
use std::ffi::{c_char, c_void, CString};
use std::sync::RwLock;

/// Severity of a log message; higher is more severe.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum llorch_log_level {
    LLORCH_LOG_DEBUG = 0,
    LLORCH_LOG_INFO = 1,
    LLORCH_LOG_WARN = 2,
    LLORCH_LOG_ERROR = 3,
}

/// Receives one log message: `level` is a `llorch_log_level`, `message` a NUL-terminated UTF-8
/// line valid only during the call.
pub type llorch_log_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char)>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, i32, *const c_char),
    user_data: *mut c_void,
    min_level: i32,
}
// The caller promises (in the header) that user_data may be used from any thread.
unsafe impl Send for Sink {}
unsafe impl Sync for Sink {}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Sends `message` to the log callback, if one is set and `level` reaches its minimum.
/// For use anywhere in the crate.
pub fn emit(level: llorch_log_level, message: &str) {
    let Ok(sink) = SINK.read() else { return };
    if let Some(s) = sink.as_ref() {
        if level as i32 >= s.min_level {
            let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
            unsafe { (s.callback)(s.user_data, level as i32, text.as_ptr()) };
        }
    }
}

/// Sets the process-wide log callback, receiving messages of `min_level` (a `llorch_log_level`)
/// and above; NULL turns logging off (the default). Replaces any previous callback; once this
/// returns the previous one is no longer called.
///
/// Which thread calls it: the thread that emits the message — any thread that is inside a
/// llorch call, or an engine worker thread. So the callback and `user_data` must be safe to
/// use from any thread, and the callback must not call llorch_set_log_callback itself.
/// Thread-safety of this function: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_set_log_callback(
    callback: llorch_log_callback,
    user_data: *mut c_void,
    min_level: i32,
) {
    guard(
        |_| (),
        || {
            let sink = callback.map(|callback| Sink {
                callback,
                user_data,
                min_level,
            });
            match SINK.write() {
                Ok(mut g) => *g = sink,
                Err(poisoned) => *poisoned.into_inner() = sink,
            }
        },
    )
}
