//! The committed include/llorch.h must equal what cbindgen generates from src/ffi now.

#[path = "../build/header.rs"]
mod header;

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_header_is_up_to_date() {
    let fresh = header::render(&root()).expect("cbindgen failed");
    let path = root().join("include/llorch.h");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b);
        panic!(
            "include/llorch.h is stale (first difference at line {}).\n\
             Update it with:\n    cargo test --release --test ffi_header -- --ignored update_header\n\
             and commit the result.",
            line.map_or("end".to_string(), |l| (l + 1).to_string())
        );
    }
}

#[test]
fn header_declares_the_api() {
    let h = header::render(&root()).expect("cbindgen failed");
    for name in [
        "#define LLORCH_ABI_VERSION 1",
        "llorch_abi_version(void)",
        "llorch_version(void)",
        "LLORCH_ERR_CANCELLED = 5",
        "typedef struct llorch_session llorch_session;",
        "llorch_session_generate(",
        "llorch_session_cancel(",
        "llorch_session_begin(",
        "llorch_session_next(",
        "llorch_session_stats(",
        "LLORCH_STOP_CONTEXT_FULL = 4",
        "llorch_generate_params_init(",
        "llorch_set_log_callback(",
        "llorch_model_apply_chat_template(",
        "uint32_t logprobs;",
        "llorch_session_generate_pieces(",
        "llorch_session_next_piece(",
        "llorch_session_save(",
        "llorch_session_restore(",
        "llorch_session_fork(",
        "llorch_session_rewind(",
        "llorch_model_special_tokens(",
        "llorch_model_token_text(",
        "llorch_model_token_is_special(",
    ] {
        assert!(h.contains(name), "the header lacks {name:?}");
    }
}

#[test]
fn header_carries_the_cargo_version() {
    let h = header::render(&root()).expect("cbindgen failed");
    let want = [
        format!(
            "#define LLORCH_VERSION_MAJOR {}\n",
            env!("CARGO_PKG_VERSION_MAJOR")
        ),
        format!(
            "#define LLORCH_VERSION_MINOR {}\n",
            env!("CARGO_PKG_VERSION_MINOR")
        ),
        format!(
            "#define LLORCH_VERSION_PATCH {}\n",
            env!("CARGO_PKG_VERSION_PATCH")
        ),
        format!(
            "#define LLORCH_VERSION_STRING \"{}\"\n",
            env!("CARGO_PKG_VERSION")
        ),
    ];
    for line in &want {
        assert!(h.contains(line.as_str()), "the header lacks {line:?}");
    }
    // Just before the ABI version macro.
    let abi = h.find("#define LLORCH_ABI_VERSION").expect("no ABI macro");
    let string = h.find("#define LLORCH_VERSION_STRING").unwrap();
    assert!(
        string < abi && h[string..abi].lines().count() < 6,
        "version macros not beside the ABI macro"
    );
}

/// Writes the fresh header to include/llorch.h (run on purpose, with --ignored).
#[test]
#[ignore]
fn update_header() {
    let fresh = header::render(&root()).expect("cbindgen failed");
    std::fs::write(root().join("include/llorch.h"), fresh).unwrap();
}
