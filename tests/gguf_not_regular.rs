//! A model path that is not a regular file (a FIFO, a directory, a device) is refused at once
//! with an error naming the path and what it is, through the Rust API and the C API. Before, a
//! FIFO blocked `open` forever (until some writer came).

use llorch::ffi::llorch_status::*;
use llorch::ffi::*;
use llorch::gguf::{Gguf, GgufError};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A regression would block: each open runs on a thread of its own, and the test fails (leaving
/// that thread behind) when it has not answered by then.
const AT_ONCE: Duration = Duration::from_secs(1);

fn fifo(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("llorch-fifo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path
}

fn directory(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("llorch-dir-{tag}-{}.gguf", std::process::id()));
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// `f(path)` on a thread: its answer, or a failure if it blocks.
fn at_once<T: Send + 'static>(path: &Path, f: fn(PathBuf) -> T) -> T {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    let t0 = Instant::now();
    std::thread::spawn(move || tx.send(f(p)).unwrap());
    let r = rx
        .recv_timeout(AT_ONCE)
        .unwrap_or_else(|_| panic!("opening {} blocked", path.display()));
    assert!(t0.elapsed() < AT_ONCE);
    r
}

/// The paths (made for test `tag`) and what the error must call them.
fn cases(tag: &str) -> Vec<(PathBuf, &'static str)> {
    vec![
        (fifo(tag), "a FIFO"),
        (directory(tag), "a directory"),
        (PathBuf::from("/dev/zero"), "a character device"),
    ]
}

#[test]
fn rust_api_refuses_at_once() {
    for (path, kind) in cases("rust") {
        let r = at_once(&path, |p| Gguf::open(&p).map(|_| ()));
        match r {
            Err(GgufError::Io(m)) => assert!(
                m.contains(path.to_str().unwrap())
                    && m.contains(&format!("not a regular file but {kind}")),
                "{m}"
            ),
            other => panic!("{}: {other:?}", path.display()),
        }
        if kind != "a character device" {
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
        }
    }
}

#[test]
fn c_api_refuses_at_once() {
    for (path, kind) in cases("c") {
        let (status, msg) = at_once(&path, |p| unsafe {
            let (mut ctx, mut model, mut err) = (null_mut(), null_mut(), null_mut());
            assert_eq!(llorch_context_new(null(), &mut ctx, &mut err), LLORCH_OK);
            let c = CString::new(p.to_str().unwrap()).unwrap();
            let status = llorch_model_load(ctx, c.as_ptr(), None, null_mut(), &mut model, &mut err);
            let msg = CStr::from_ptr(llorch_error_message(err))
                .to_string_lossy()
                .into_owned();
            llorch_error_free(err);
            assert!(model.is_null());
            llorch_context_free(ctx);
            (status, msg)
        });
        assert_eq!(status, LLORCH_ERR_IO, "{msg}");
        assert!(
            msg.contains(path.to_str().unwrap()) && msg.contains(kind),
            "{msg}"
        );
        if kind != "a character device" {
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
        }
    }
}
