//! `llorch embed` on SmolLM2-135M: its vectors against the HF transformers reference of
//! tests/fixtures/embed (tolerance as in tests/session_embed.rs: 2e-3 relative, measured
//! 2.5e-4), plain and JSON output, standard input, and errors.

mod common;

use common::*;

fn reference(input: usize, pooling: usize) -> (String, Vec<f32>) {
    let dir = repo_root().join("tests/fixtures/embed");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("smollm2-135m.json")).unwrap())
            .unwrap();
    let dim = index["n_embd"].as_u64().unwrap() as usize;
    let data = read_f32(&dir.join("smollm2-135m.bin"));
    let at = (input * 3 + pooling) * dim;
    (
        index["inputs"][input]["text"].as_str().unwrap().to_string(),
        data[at..at + dim].to_vec(),
    )
}

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
    let (t0, mean0) = reference(0, 0);
    let (t1, cls1) = reference(1, 2);
    for (pooling, want) in [("mean", &mean0), ("cls", &cls1)] {
        let (ok, out, err) = llorch(&["embed", "-m", m, "--pooling", pooling, &t0, &t1], b"");
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
    let (_, last0) = reference(0, 1);
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
