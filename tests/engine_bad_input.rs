//! Bad input to the engine gets a clear error naming the problem, never a panic: an
//! unsupported architecture or tensor type, a missing tensor, a wrong shape, a prompt longer
//! than the context, invalid sampling values. Models are small synthetic files, rewritten
//! with one defect each.

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::gguf::{Gguf, GgufWriter, Value};
use llorch::model::synth::build;
use llorch::model::Model;
use llorch::quant::GgmlType;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Session, SessionOptions};
use llorch::Error;
use std::path::PathBuf;
use std::sync::Arc;

fn tiny() -> Vec<u8> {
    build(&common::tiny_synth_spec(64), 7).unwrap().to_bytes()
}

/// A copy of the tiny model with metadata replaced by `meta` and tensors passed through `t`.
fn rewrite(
    meta: impl Fn(&str, Value<'_>) -> Option<(String, Value<'static>)>,
    t: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
) -> PathBuf {
    let g = Gguf::from_bytes(tiny()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if let Some((k, v)) = meta(k, v) {
            w.add(&k, &v).unwrap();
        }
    }
    for info in g.tensors() {
        if let Some((dims, ty, data)) = t(&info.name, &info.dims, info.ty, g.tensor_data(info)) {
            w.add_tensor(&info.name, &dims, ty, data).unwrap();
        }
    }
    let path = std::env::temp_dir().join(format!(
        "llorch-bad-{}-{}.gguf",
        std::process::id(),
        rand_suffix()
    ));
    w.write_file(&path).unwrap();
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn owned(v: Value<'_>) -> Value<'static> {
    match v {
        Value::Str(s) => Value::Str(Box::leak(s.to_string().into_boxed_str())),
        Value::Array(a) => Value::Array(a.into_iter().map(owned).collect()),
        Value::U8(x) => Value::U8(x),
        Value::I8(x) => Value::I8(x),
        Value::U16(x) => Value::U16(x),
        Value::I16(x) => Value::I16(x),
        Value::U32(x) => Value::U32(x),
        Value::I32(x) => Value::I32(x),
        Value::F32(x) => Value::F32(x),
        Value::Bool(x) => Value::Bool(x),
        Value::U64(x) => Value::U64(x),
        Value::I64(x) => Value::I64(x),
        Value::F64(x) => Value::F64(x),
    }
}

fn keep_meta(k: &str, v: Value<'_>) -> Option<(String, Value<'static>)> {
    Some((k.to_string(), owned(v)))
}

fn keep_tensor(
    _: &str,
    d: &[u64],
    ty: GgmlType,
    b: &[u8],
) -> Option<(Vec<u64>, GgmlType, Vec<u8>)> {
    Some((d.to_vec(), ty, b.to_vec()))
}

fn load(path: &PathBuf) -> Result<Arc<Model>, Error> {
    let ctx = Context::new(ContextOptions {
        threads: 1,
        ..Default::default()
    })
    .unwrap();
    let r = Model::load(&ctx, path, None);
    let _ = std::fs::remove_file(path);
    r
}

fn expect_err(r: Result<Arc<Model>, Error>, want: &[&str]) -> Error {
    let e = r.err().expect("the model must not load");
    let msg = e.to_string();
    for w in want {
        assert!(msg.contains(w), "error {msg:?} does not mention {w:?}");
    }
    e
}

#[test]
fn the_tiny_model_itself_loads_and_generates() {
    let m = load(&rewrite(keep_meta, keep_tensor)).unwrap();
    let mut s = Session::new(m, SessionOptions::default()).unwrap();
    let stats = s
        .generate(
            "hi",
            &GenerateParams {
                max_tokens: 3,
                ..Default::default()
            },
            &mut |_, _| true,
        )
        .unwrap();
    assert!(stats.generated_tokens >= 1);
}

#[test]
fn unsupported_architecture() {
    let p = rewrite(
        |k, v| {
            if k == "general.architecture" {
                Some((k.into(), Value::Str("gptj")))
            } else {
                keep_meta(k, v)
            }
        },
        keep_tensor,
    );
    let e = expect_err(load(&p), &["architecture", "gptj"]);
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

#[test]
fn missing_tensor() {
    let p = rewrite(keep_meta, |n, d, ty, b| {
        (n != "blk.1.ffn_up.weight").then(|| (d.to_vec(), ty, b.to_vec()))
    });
    let e = expect_err(load(&p), &["missing tensor", "blk.1.ffn_up.weight"]);
    assert!(matches!(e, Error::BadModel(_)), "{e:?}");
}

#[test]
fn wrong_tensor_shape() {
    // attn_q as 64 x 32 instead of 64 x 64 (same type, half the rows).
    let p = rewrite(keep_meta, |n, d, ty, b| {
        if n == "blk.0.attn_q.weight" {
            Some((vec![d[0], d[1] / 2], ty, b[..b.len() / 2].to_vec()))
        } else {
            Some((d.to_vec(), ty, b.to_vec()))
        }
    });
    let e = expect_err(load(&p), &["blk.0.attn_q.weight", "shape"]);
    assert!(matches!(e, Error::BadModel(_)), "{e:?}");
}

#[test]
fn unsupported_tensor_type() {
    // Q8_K (an activation format) has no dot product as a weight. Its rows are whole
    // 256-value blocks: the 256-wide ffn_down.
    let p = rewrite(keep_meta, |n, d, ty, b| {
        if n == "blk.0.ffn_down.weight" {
            let blocks = (d[0] * d[1] / 256) as usize;
            Some((
                d.to_vec(),
                GgmlType::Q8_K,
                vec![0u8; blocks * GgmlType::Q8_K.type_size()],
            ))
        } else {
            Some((d.to_vec(), ty, b.to_vec()))
        }
    });
    let e = expect_err(load(&p), &["blk.0.ffn_down.weight", "Q8_K"]);
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
}

#[test]
fn prompt_longer_than_the_context_and_bad_sampling() {
    let m = load(&rewrite(keep_meta, keep_tensor)).unwrap();
    let mut s = Session::new(m.clone(), SessionOptions { n_ctx: 16, seed: 0 }).unwrap();
    let long = "x ".repeat(40);
    let e = s
        .generate(&long, &GenerateParams::default(), &mut |_, _| true)
        .unwrap_err();
    assert!(matches!(e, Error::ContextFull(_)), "{e:?}");
    assert!(e.to_string().contains("context of 16"), "{e}");
    for (sampling, field) in [
        (
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                logit_bias: vec![(100_000, 1.0)],
                ..Default::default()
            },
            "logit_bias",
        ),
    ] {
        let p = GenerateParams {
            sampling,
            ..Default::default()
        };
        let e = s.generate("hi", &p, &mut |_, _| true).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(_)) && e.to_string().contains(field),
            "{e}"
        );
    }
    // Nothing was lost: the session still generates.
    s.generate(
        "hi",
        &GenerateParams {
            max_tokens: 2,
            ..Default::default()
        },
        &mut |_, _| true,
    )
    .unwrap();
    // A session longer than the model's training context is refused.
    let e = Session::new(
        m,
        SessionOptions {
            n_ctx: 1 << 20,
            seed: 0,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}
