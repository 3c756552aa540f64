//! `llorch embed` on SmolLM2-135M: its vectors against the HF transformers reference of
//! tests/fixtures/embed (common::EmbedReference) (tolerance as in tests/session_embed.rs: 2e-3 relative, measured
//! 2.5e-4), plain and JSON output, standard input, and errors.

mod common;

use common::*;
use llorch::session::embed::Pooling;

fn parse_plain(out: &str) -> Vec<Vec<f32>> {
    out.lines()
        .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect()
}

#[test]
fn embed_prints_the_reference_vectors() {
    let m = model_path(SMOLLM2);
    let m = m.to_str().unwrap();
    // Plain, TEXT arguments, mean pooling (index 0 in the fixture) and CLS (2).
    let r = EmbedReference::load();
    let (t0, t1) = (r.texts[0].as_str(), r.texts[1].as_str());
    for (pooling, want) in [
        ("mean", r.want(0, Pooling::Mean)),
        ("cls", r.want(1, Pooling::Cls)),
    ] {
        let (ok, out, err) = llorch(&["embed", "-m", m, "--pooling", pooling, t0, t1], b"");
        assert!(ok, "{err}");
        let rows = parse_plain(&out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].len(), 576);
        let got = if pooling == "mean" {
            &rows[0]
        } else {
            &rows[1]
        };
        let e = rel_err(got, want);
        assert!(e <= 2e-3, "{pooling}: {e}");
    }
    // JSON from standard input lines (the empty one skipped), the model's pooling (last, 1),
    // normalized.
    let last0 = r.want(0, Pooling::Last);
    let stdin = format!("{t0}\n\n{t1}\n");
    let (ok, out, err) = llorch(
        &["embed", "-m", m, "--json", "--normalize"],
        stdin.as_bytes(),
    );
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["dim"], 576);
    assert_eq!(doc["pooling"], "last");
    assert_eq!(doc["normalized"], true);
    let rows = doc["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let got: Vec<f32> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let n = last0
        .iter()
        .map(|x| (*x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let want: Vec<f32> = last0.iter().map(|x| (*x as f64 / n) as f32).collect();
    assert!(rel_err(&got, &want) <= 2e-3);
}

#[test]
fn embed_errors_name_the_problem() {
    let m = model_path(SMOLLM2);
    let m = m.to_str().unwrap();
    let (ok, _, err) = llorch(&["embed", "-m", m, "--pooling", "max", "x"], b"");
    assert!(
        !ok && err.contains("'max' for '--pooling <POOLING>'"),
        "{err}"
    );
    let (ok, _, err) = llorch(&["embed", "-m", m], b"\n\n");
    assert!(!ok && err.contains("no input"), "{err}");
    let (ok, _, err) = llorch(&["embed", "-m", m, "fine", ""], b"");
    assert!(!ok && err.contains("input 1 is empty"), "{err}");
}
