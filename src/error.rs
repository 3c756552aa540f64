//! The crate-wide error type. Every variant maps to one C status code (see `ffi`).

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A caller passed a bad argument (NULL, out of range, invalid UTF-8 …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The model file is malformed or inconsistent.
    #[error("bad model: {0}")]
    BadModel(String),
    /// The model uses something this build does not implement (architecture, tensor type …).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Host or device memory (or a configured budget) is exhausted.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// The session's context (KV cache) cannot hold the requested tokens.
    #[error("context full: {0}")]
    ContextFull(String),
    /// The requested device is not available.
    #[error("no device: {0}")]
    NoDevice(String),
    /// An I/O error, with the path or operation it concerns.
    #[error("i/o error: {0}")]
    Io(String),
    /// The context's memory budget is held by other sessions' KV caches right now, and the
    /// caller asked not to wait (or nothing in flight could free it): try again later.
    #[error("busy: {0}")]
    Busy(String),
    /// A bug in llorch (a caught panic, a broken invariant).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::gguf::GgufError> for Error {
    fn from(e: crate::gguf::GgufError) -> Self {
        match e {
            crate::gguf::GgufError::Io(msg) => Error::Io(msg),
            other => Error::BadModel(other.to_string()),
        }
    }
}
