//! Bad input to the engine gets a clear error naming the problem, never a panic: an
//! unsupported architecture or tensor type, a missing tensor, a wrong shape, a prompt longer
//! than the context, invalid sampling values; for a mixture of experts (GPT-OSS) an expert
//! count the tensors do not have, more experts per token than there are, an MXFP4 tensor
//! whose rows are not whole blocks. Models are small synthetic files, rewritten with one
//! defect each.

mod common;

use llorch::backend::{Context, ContextOptions};
use llorch::gguf::{Gguf, GgufWriter, Value};
use llorch::model::synth::{build, SynthSpec, TypeMix};
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

/// A tiny synthetic GPT-OSS (2 layers, 64 wide, 4 experts of 256, 2 per token, window 8).
fn tiny_gpt_oss() -> Vec<u8> {
    let spec = SynthSpec {
        arch: "gpt-oss".into(),
        head_dim: 16,
        sliding_window: Some(8),
        mix: TypeMix::GptOss,
        experts: 4,
        experts_used: 2,
        ..common::tiny_synth_spec(64)
    };
    build(&spec, 7).unwrap().to_bytes()
}

/// A copy of the tiny model with metadata replaced by `meta` and tensors passed through `t`.
fn rewrite(
    meta: impl Fn(&str, Value<'_>) -> Option<(String, Value<'static>)>,
    t: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
) -> PathBuf {
    rewrite_of(tiny(), meta, t)
}

/// A copy of the model `src` with metadata replaced by `meta` and tensors passed through `t`.
fn rewrite_of(
    src: Vec<u8>,
    meta: impl Fn(&str, Value<'_>) -> Option<(String, Value<'static>)>,
    t: impl Fn(&str, &[u64], GgmlType, &[u8]) -> Option<(Vec<u64>, GgmlType, Vec<u8>)>,
) -> PathBuf {
    let g = Gguf::from_bytes(src).unwrap();
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

/// `meta` with the integer `key` set to `v`.
fn set_u32(
    key: &'static str,
    v: u32,
) -> impl Fn(&str, Value<'_>) -> Option<(String, Value<'static>)> {
    move |k, val| {
        if k == key {
            Some((k.into(), Value::U32(v)))
        } else {
            keep_meta(k, val)
        }
    }
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
    let mut s = Session::new(
        m.clone(),
        SessionOptions {
            n_ctx: 16,
            seed: 0,
            ..Default::default()
        },
    )
    .unwrap();
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
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[test]
fn the_tiny_gpt_oss_loads_and_generates() {
    let m = load(&rewrite_of(tiny_gpt_oss(), keep_meta, keep_tensor)).unwrap();
    assert_eq!(m.architecture(), "gpt-oss");
    let mut s = Session::new(m, SessionOptions::default()).unwrap();
    let p = GenerateParams {
        max_tokens: 20,
        ..Default::default()
    };
    let stats = s.generate("hi there", &p, &mut |_, _| true).unwrap();
    assert!(stats.generated_tokens >= 1);
}

#[test]
fn expert_count_that_the_tensors_do_not_have() {
    let p = rewrite_of(
        tiny_gpt_oss(),
        set_u32("gpt-oss.expert_count", 8),
        keep_tensor,
    );
    let e = expect_err(
        load(&p),
        &["blk.0.ffn_gate_inp.weight", "'gpt-oss.expert_count' = 8"],
    );
    assert!(matches!(e, Error::BadModel(_)), "{e:?}");
    // One stacked tensor with 3 experts where the others have 4.
    let p = rewrite_of(tiny_gpt_oss(), keep_meta, |n, d, ty, b| {
        if n == "blk.1.ffn_up_exps.weight" {
            Some((vec![d[0], d[1], 3], ty, b[..b.len() / 4 * 3].to_vec()))
        } else {
            Some((d.to_vec(), ty, b.to_vec()))
        }
    });
    let e = expect_err(
        load(&p),
        &["blk.1.ffn_up_exps.weight", "'gpt-oss.expert_count' = 4"],
    );
    assert!(matches!(e, Error::BadModel(_)), "{e:?}");
}

#[test]
fn more_experts_per_token_than_experts() {
    for used in [5, 0] {
        let p = rewrite_of(
            tiny_gpt_oss(),
            set_u32("gpt-oss.expert_used_count", used),
            keep_tensor,
        );
        let e = expect_err(load(&p), &["gpt-oss.expert_used_count", "1 to 4"]);
        assert!(matches!(e, Error::BadModel(_)), "{e:?}");
    }
}

#[test]
fn missing_expert_tensor() {
    let p = rewrite_of(tiny_gpt_oss(), keep_meta, |n, d, ty, b| {
        (n != "blk.1.ffn_down_exps.weight").then(|| (d.to_vec(), ty, b.to_vec()))
    });
    expect_err(load(&p), &["missing tensor", "blk.1.ffn_down_exps.weight"]);
}

/// An MXFP4 tensor whose rows are not whole 32-value blocks: the writer refuses to make
/// one, so a valid file's descriptor is patched (first dimension 64 -> 48).
#[test]
fn mxfp4_rows_not_whole_blocks() {
    let name = "blk.0.ffn_gate_exps.weight";
    let p = rewrite_of(tiny_gpt_oss(), keep_meta, |n, d, ty, b| {
        assert!(
            n != name || ty == GgmlType::MXFP4,
            "synthetic experts are MXFP4"
        );
        Some((d.to_vec(), ty, b.to_vec()))
    });
    let mut bytes = std::fs::read(&p).unwrap();
    // The descriptor: name (u64 length + bytes), n_dims (u32), dims (u64 each), type.
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("descriptor")
        + key.len();
    assert_eq!(bytes[at..at + 4], 3u32.to_le_bytes());
    assert_eq!(bytes[at + 4..at + 12], 64u64.to_le_bytes());
    bytes[at + 4..at + 12].copy_from_slice(&48u64.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let e = expect_err(
        load(&p),
        &[name, "48", "not a multiple of the MXFP4 block size 32"],
    );
    assert!(matches!(e, Error::BadModel(_)), "{e:?}");
}
