//! The `llorch` binary: `--help`, `info` on the real models and on every bad fixture.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn llorch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llorch"))
        .args(args)
        .output()
        .expect("cannot run llorch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_commands_and_errors_exit_1() {
    // Every command has a help that exits 0 and starts with its one-line description.
    for cmd in [
        "info",
        "run",
        "serve",
        "perplexity",
        "bench",
        "synth",
        "tokenize",
        "embed",
        "chat-template",
    ] {
        let out = llorch(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd}");
        let s = text(&out.stdout);
        assert!(s.contains(&format!("Usage: llorch {cmd} ")), "{cmd}: {s}");
    }
    let out = llorch(&["--help"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("Usage: llorch <COMMAND>") && s.contains("  info ") && s.contains("  tokenize "),
        "{s}"
    );

    let out = llorch(&["info", "--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("Usage: llorch info [OPTIONS] <MODEL.gguf>"));
    // `help CMD` is the same help.
    assert_eq!(llorch(&["help", "info"]).stdout, out.stdout);

    for (args, msg) in [
        (&[][..], "no command given"),
        (&["frobnicate"][..], "unknown command 'frobnicate'"),
        (
            &["info"][..],
            "the following required arguments were not provided: <MODEL.gguf> (see llorch info --help)",
        ),
        (&["info", "a", "b"][..], "unexpected argument 'b' found"),
        (
            &["info", "x.gguf", "--bogus"][..],
            "unexpected argument '--bogus' found",
        ),
        (
            &["info", "/nonexistent/x.gguf"][..],
            "/nonexistent/x.gguf: No such file",
        ),
        (
            &["run", "-p", "x", "-n", "abc"][..],
            "invalid value 'abc' for '--max-tokens <N>'",
        ),
        (
            &["serve", "--device", "gpu"][..],
            "invalid value 'gpu' for '--device <DEV>': unknown device 'gpu' (cpu or cuda:N)",
        ),
        (
            &["perplexity", "--bos", "--no-bos", "-f", "x"][..],
            "the argument '--bos' cannot be used with '--no-bos'",
        ),
    ] {
        let out = llorch(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("llorch: error: {msg}")),
            "{args:?}: {err}"
        );
        // One line, except that no command also prints the help.
        assert!(args.is_empty() || err.lines().count() == 1, "{args:?}: {err}");
    }
}

#[test]
fn info_on_real_models() {
    for (name, arch, n_tensors, vocab) in [
        (common::QWEN_05B, "qwen2", 291, 151936),
        (common::SMOLLM2, "llama", 272, 49152),
        (common::GEMMA3, "gemma3", 236, 262144),
    ] {
        let path = common::model_path(name);
        let out = llorch(&["info", path.to_str().unwrap(), "--tensors"]);
        let s = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(s.contains("GGUF version:   3"), "{name}:\n{s}");
        assert!(
            s.contains(&format!("architecture:   {arch}\n")),
            "{name}:\n{s}"
        );
        assert!(
            s.contains(&format!("hyper-parameters ({arch}.*):")),
            "{name}"
        );
        for key in [
            "context_length",
            "embedding_length",
            "block_count",
            "feed_forward_length",
            "attention.head_count",
        ] {
            assert!(s.contains(&format!("\n  {key} ")), "{name}: no {key}:\n{s}");
        }
        assert!(
            s.contains(&format!(
                "vocabulary size                          {vocab}\n"
            )),
            "{name}:\n{s}"
        );
        assert!(
            s.contains(&format!("tensors:        {n_tensors} (")),
            "{name}:\n{s}"
        );
        assert!(s.contains("ggml.model "), "{name}");
        // --tensors: one line per tensor, each naming its type.
        let listed = s
            .lines()
            .filter(|l| l.contains(".weight ") || l.contains(".bias "))
            .count();
        assert_eq!(listed, n_tensors, "{name}");
        assert!(s.contains("token_embd.weight"), "{name}");
    }
}

#[test]
fn info_metadata_flag_lists_every_key() {
    let path = common::model_path(common::SMOLLM2);
    let out = llorch(&["info", path.to_str().unwrap(), "--metadata"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    let g = llorch::gguf::Gguf::open(&path).unwrap();
    let section = s.split("\nmetadata:\n").nth(1).expect("metadata section");
    assert_eq!(section.lines().count(), g.keys().count());
    assert!(section.contains("tokenizer.ggml.tokens"));
}

#[test]
fn info_on_every_bad_fixture_fails_with_the_readers_error() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("gguf") {
            continue;
        }
        let expected = std::fs::read_to_string(p.with_extension("txt")).unwrap();
        let out = llorch(&["info", p.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {err}", p.display());
        assert!(out.stdout.is_empty(), "{}", p.display());
        assert!(err.starts_with("llorch: error: "), "{}: {err}", p.display());
        assert!(
            err.contains(expected.trim_end()),
            "{}: expected '{}' in {err}",
            p.display(),
            expected.trim_end()
        );
        assert_eq!(err.lines().count(), 1, "{}: {err}", p.display());
        n += 1;
    }
    assert!(n >= 40, "only {n} fixtures");
}
