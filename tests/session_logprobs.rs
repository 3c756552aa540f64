//! Log-probabilities of generated tokens (`GenerateParams::logprobs`) against an independent
//! log-softmax of the logits `Session::eval` gives for the same conversation, fed the same
//! way. Real model: SmolLM2-135M.

mod common;

use llorch::backend::Logits;
use llorch::model::Model;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Piece, Session, TokenLogprob};
use std::sync::Arc;

fn smollm2() -> Arc<Model> {
    common::cpu_model(common::SMOLLM2)
}

const PROMPT: &str = "The three primary colors are";

fn session(m: &Arc<Model>, seed: u64) -> Session {
    common::session(m, 512, seed)
}

/// Every piece of one generation, and the per-token log-probabilities in order.
fn generate(m: &Arc<Model>, p: &GenerateParams, seed: u64) -> (Vec<Piece>, Vec<TokenLogprob>) {
    let mut s = session(m, seed);
    let mut pieces = Vec::new();
    s.generate_pieces(PROMPT, p, &mut |piece| {
        pieces.push(piece.clone());
        true
    })
    .unwrap();
    let lps = pieces.iter().flat_map(|p| p.logprobs.clone()).collect();
    (pieces, lps)
}

/// log_softmax of a row in f64, computed here, not by the library.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let z: f64 = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - z).collect()
}

/// The reported log-probabilities of `lps` against log_softmax of the logits a fresh session
/// gives when fed the prompt, then each generated token alone (the steps generation took).
fn check_against_eval(m: &Arc<Model>, lps: &[TokenLogprob], n_top: usize, greedy: bool) {
    let ids = m.tokenizer().encode(PROMPT, true, true).unwrap();
    let mut s = session(m, 0);
    let mut row = s.eval(&ids, Logits::Last).unwrap();
    // Tolerance: the library takes the same f32 logits and sums in f64 too; what is left is
    // the f32 rounding of its result (|logprob| < 40 here: 40 * 2^-24 = 2.4e-6), with margin.
    let tol = 1e-4;
    for (i, lp) in lps.iter().enumerate() {
        let want = log_softmax(&row);
        let got = lp.logprob as f64;
        assert!(
            (got - want[lp.token as usize]).abs() < tol,
            "token {i} ({}): logprob {got} vs log_softmax {}",
            lp.token,
            want[lp.token as usize]
        );
        if greedy {
            assert_eq!(lp.token, llorch::sampling::argmax(&row), "token {i}");
            assert_eq!(lp.top[0].0, lp.token, "token {i}: greedy picks the top one");
        }
        // The top N: as many as asked, each value right, sorted, and no token outside them
        // more likely than the last one.
        assert_eq!(lp.top.len(), n_top);
        for w in lp.top.windows(2) {
            assert!(w[0].1 >= w[1].1, "token {i}: top not sorted: {:?}", lp.top);
        }
        for &(t, v) in &lp.top {
            assert!(
                (v as f64 - want[t as usize]).abs() < tol,
                "token {i}: top {t}"
            );
        }
        let last = lp.top.last().unwrap().1 as f64;
        let better = want.iter().filter(|&&v| v > last + tol).count();
        assert!(
            better < n_top,
            "token {i}: {better} tokens beat the top list's last"
        );
        let mass: f64 = lp.top.iter().map(|&(_, v)| (v as f64).exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "token {i}: top mass {mass}");
        row = s.eval(&[lp.token], Logits::Last).unwrap();
    }
}

#[test]
fn greedy_logprobs_are_the_log_softmax_of_the_logits() {
    let m = smollm2();
    let p = GenerateParams {
        max_tokens: 12,
        logprobs: 5,
        ..Default::default()
    };
    let (pieces, lps) = generate(&m, &p, 0);
    assert!(lps.len() >= 10, "{} tokens reported", lps.len());
    check_against_eval(&m, &lps, 5, true);
    // The same tokens and text as without log-probabilities (the pick on the device).
    let (plain, none) = generate(
        &m,
        &GenerateParams {
            logprobs: 0,
            ..p.clone()
        },
        0,
    );
    assert!(none.is_empty() && plain.iter().all(|p| p.logprobs.is_empty()));
    let text = |v: &[Piece]| v.iter().map(|p| p.text.clone()).collect::<String>();
    assert_eq!(text(&plain), text(&pieces));
    let toks: Vec<u32> = lps.iter().map(|l| l.token).collect();
    let mut s = session(&m, 0);
    s.generate(PROMPT, &p, &mut |_, _| true).unwrap();
    let all = s.tokens();
    assert_eq!(&all[all.len() - toks.len()..], &toks[..]);
}

#[test]
fn sampled_logprobs_are_taken_before_temperature_and_penalties() {
    let m = smollm2();
    let p = GenerateParams {
        max_tokens: 10,
        logprobs: 3,
        sampling: SamplingParams {
            temperature: 1.3,
            top_p: 0.9,
            repeat_penalty: 1.2,
            ..Default::default()
        },
        ..Default::default()
    };
    let (_, lps) = generate(&m, &p, 42);
    assert!(!lps.is_empty());
    // Compared with the raw logits' log_softmax: a value after temperature 1.3 would differ.
    check_against_eval(&m, &lps, 3, false);
}
