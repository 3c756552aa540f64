//! Sampling: determinism, greedy, the drawn distribution against softmax (chi-square),
//! top-k / top-p / min-p sets, penalties and logit bias by exact amounts, validation errors.

use llorch::sampling::{argmax, Rng, Sampler, SamplingParams};
use llorch::Error;

const QWEN_VOCAB: usize = 151_936;

/// Deterministic pseudo-random logits in [-scale, scale).
fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| ((r.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect()
}

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        ..Default::default()
    }
}

fn draw_n(p: &SamplingParams, seed: u64, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = Sampler::new(p.clone(), seed);
    (0..n)
        .map(|_| s.sample(&mut logits.to_vec(), &[]))
        .collect()
}

fn softmax(xs: &[f32], t: f64) -> Vec<f64> {
    let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = xs.iter().map(|&x| ((x as f64 - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Pearson chi-square of observed counts against expected probabilities (over the tokens with
/// p > 0; a draw of a token with p = 0 is an outright failure).
fn chi_square(counts: &[u64], probs: &[f64], n: u64) -> f64 {
    let mut chi = 0.0;
    for (i, (&c, &p)) in counts.iter().zip(probs).enumerate() {
        if p == 0.0 {
            assert_eq!(c, 0, "token {i} has probability 0 but was drawn {c} times");
            continue;
        }
        let e = p * n as f64;
        assert!(e >= 5.0, "expected count {e} too small for chi-square");
        chi += (c as f64 - e).powi(2) / e;
    }
    chi
}

fn counts_of(draws: &[u32], n: usize) -> Vec<u64> {
    let mut c = vec![0u64; n];
    for &d in draws {
        c[d as usize] += 1;
    }
    c
}

#[test]
fn rng_matches_reference_vectors() {
    // splitmix64(0) gives e220a8397b1dcdaf 6e789e6aa1b965f4 06c45d188009454f f88bb8a8724c81ec
    // (published vectors); xoshiro256** from that state, computed by hand from the algorithm:
    let mut r = Rng::new(0);
    assert_eq!(r.next_u64(), 0x99ec5f36cb75f2b4);
    assert_eq!(r.next_u64(), 0xbf6e1f784956452a);
    assert_eq!(r.next_u64(), 0x1a5f849d4933e6e0);
    // next_f64 lies in [0, 1) and is not stuck.
    let xs: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
    assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    // sd of the mean of 10k U(0,1) = 0.2887/100 = 0.0029; 6 sd = 0.017.
    assert!((mean - 0.5).abs() < 0.017, "mean {mean}");
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let logits = random_logits(QWEN_VOCAB, 7, 4.0);
    let cases = [
        params(1.0), // fast path (temperature only)
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.02,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.2,
            top_p: 0.9,
            ..Default::default()
        },
    ];
    for p in &cases {
        let a = draw_n(p, 42, &logits, 200);
        let b = draw_n(p, 42, &logits, 200);
        assert_eq!(a, b, "same seed must repeat: {p:?}");
        let c = draw_n(p, 43, &logits, 200);
        // With >= 40 comparable candidates, 200 equal draws by chance is impossible in practice.
        assert_ne!(a, c, "different seeds gave identical draws: {p:?}");
    }
}

#[test]
fn greedy_is_argmax_and_top_k_1_is_greedy() {
    for seed in 0..20 {
        let logits = random_logits(QWEN_VOCAB, seed, 10.0);
        let want = argmax(&logits);
        let mut s = Sampler::new(params(0.0), seed);
        assert_eq!(s.sample(&mut logits.clone(), &[]), want);
        let mut k1 = Sampler::new(
            SamplingParams {
                temperature: 1.5,
                top_k: 1,
                ..Default::default()
            },
            seed,
        );
        for _ in 0..5 {
            assert_eq!(k1.sample(&mut logits.clone(), &[]), want);
        }
    }
    // argmax: first on ties, NaN never wins.
    assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    assert_eq!(argmax(&[f32::NAN, 0.5, 2.0, f32::NAN]), 2);
}

// Chi-square critical values at a false-alarm probability of 1e-6 (the quantile of the
// regularized incomplete gamma function, computed once): df 1 -> 23.93, df 2 -> 27.63,
// df 3 -> 30.66, df 4 -> 33.38, df 19 -> 63.68 (k categories have k - 1 degrees of freedom).
// The draws are seeded, so each test is deterministic; a real mistake in the distribution
// (wrong temperature, an off-by-one in the scan, a missing renormalization) gives a chi-square
// in the hundreds or thousands with 100k draws (see the wrong-temperature check below).
const CHI2_DF1: f64 = 23.93;
const CHI2_DF2: f64 = 27.63;
const CHI2_DF3: f64 = 30.66;
const CHI2_DF4: f64 = 33.38;
const CHI2_DF19: f64 = 63.68;

#[test]
fn temperature_draws_match_softmax() {
    let n = 100_000u64;
    // 20 logits in [-2, 2): every expected count is well above 5.
    let logits = random_logits(20, 3, 2.0);
    for (t, forced_general) in [(1.0f32, false), (1.0, true), (0.7, false), (1.6, true)] {
        // min_p = 1e-9 removes nothing here (the smallest p/pmax is ~e^-6.7) but sends the draw
        // through the filtered path, so both paths are checked against the same softmax.
        let p = SamplingParams {
            temperature: t,
            min_p: if forced_general { 1e-9 } else { 0.0 },
            ..Default::default()
        };
        let draws = draw_n(&p, 1234, &logits, n as usize);
        let chi = chi_square(&counts_of(&draws, 20), &softmax(&logits, t as f64), n);
        eprintln!("chi2 = {chi:.2} (line {})", line!());
        assert!(
            chi < CHI2_DF19,
            "T={t} general={forced_general}: chi2 {chi}"
        );
    }
    // A distribution at the wrong temperature must fail the same test (the test has power).
    let draws = draw_n(&params(1.0), 1234, &logits, n as usize);
    let chi = chi_square(&counts_of(&draws, 20), &softmax(&logits, 1.1), n);
    eprintln!("chi2 = {chi:.2} (line {})", line!());
    assert!(
        chi > CHI2_DF19,
        "wrong temperature not detected: chi2 {chi}"
    );
}

#[test]
fn top_k_draws_match_renormalized_softmax() {
    let n = 100_000u64;
    let logits = random_logits(50, 11, 1.5);
    let mut order: Vec<usize> = (0..50).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut masked = vec![f32::NEG_INFINITY; 50];
    for &i in &order[..5] {
        masked[i] = logits[i];
    }
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 5,
        ..Default::default()
    };
    let draws = draw_n(&p, 99, &logits, n as usize);
    let chi = chi_square(&counts_of(&draws, 50), &softmax(&masked, 1.0), n);
    eprintln!("chi2 = {chi:.2} (line {})", line!());
    assert!(chi < CHI2_DF4, "top-5: chi2 {chi}");
}

/// logits = ln p for p = [0.05, 0.5, 0.1, 0.2, 0.15] (shuffled so that order matters).
fn five() -> Vec<f32> {
    [0.05f32, 0.5, 0.1, 0.2, 0.15]
        .iter()
        .map(|p| p.ln())
        .collect()
}

#[test]
fn top_p_keeps_smallest_set_reaching_p() {
    let n = 100_000u64;
    let logits = five();
    // Sorted: 0.5 (tok 1), 0.2 (tok 3), 0.15 (tok 4), 0.1 (tok 2), 0.05 (tok 0).
    // Cumulative 0.5, 0.7, 0.85, 0.95, 1.0.
    for (top_p, kept) in [
        (0.3f32, vec![1u32]),
        (0.69, vec![1, 3]),
        (0.71, vec![1, 3, 4]),
        (0.9, vec![1, 3, 4, 2]),
    ] {
        let p = SamplingParams {
            temperature: 1.0,
            top_p,
            ..Default::default()
        };
        let draws = draw_n(&p, 5, &logits, n as usize);
        let counts = counts_of(&draws, 5);
        let mut masked = vec![f32::NEG_INFINITY; 5];
        for &k in &kept {
            masked[k as usize] = logits[k as usize];
        }
        let probs = softmax(&masked, 1.0);
        // chi_square asserts that no dropped token was drawn.
        let chi = chi_square(&counts, &probs, n);
        eprintln!("chi2 = {chi:.2} (line {})", line!());
        let df_crit = [0.0, CHI2_DF1, CHI2_DF2, CHI2_DF3][kept.len() - 1];
        if kept.len() > 1 {
            assert!(chi < df_crit, "top_p {top_p}: chi2 {chi}");
        }
        for &k in &kept {
            assert!(
                counts[k as usize] > 0,
                "top_p {top_p}: kept token {k} never drawn"
            );
        }
    }
}

#[test]
fn top_p_on_full_vocab_matches_naive_nucleus() {
    // Flat-ish logits over the full vocab: the nucleus of p = 0.5 holds tens of thousands of
    // tokens, which exercises the growing partial sort.
    let logits = random_logits(QWEN_VOCAB, 21, 1.0);
    let probs = softmax(&logits, 1.0);
    let mut order: Vec<usize> = (0..QWEN_VOCAB).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut acc = 0.0;
    let mut in_nucleus = vec![false; QWEN_VOCAB];
    for &i in &order {
        in_nucleus[i] = true;
        acc += probs[i];
        if acc >= 0.5 {
            break;
        }
    }
    let size = in_nucleus.iter().filter(|&&b| b).count();
    assert!(size > 10_000, "nucleus only {size}");
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.5,
        ..Default::default()
    };
    let draws = draw_n(&p, 8, &logits, 300);
    for d in draws {
        assert!(in_nucleus[d as usize], "token {d} outside the nucleus");
    }
}

#[test]
fn min_p_drops_tokens_below_fraction_of_max() {
    let n = 100_000u64;
    let logits = five();
    // pmax = 0.5; min_p 0.25 -> floor 0.125: keeps 0.5, 0.2, 0.15 (tokens 1, 3, 4).
    let p = SamplingParams {
        temperature: 1.0,
        min_p: 0.25,
        ..Default::default()
    };
    let draws = draw_n(&p, 17, &logits, n as usize);
    let mut masked = vec![f32::NEG_INFINITY; 5];
    for k in [1, 3, 4] {
        masked[k] = logits[k];
    }
    let chi = chi_square(&counts_of(&draws, 5), &softmax(&masked, 1.0), n);
    eprintln!("chi2 = {chi:.2} (line {})", line!());
    assert!(chi < CHI2_DF2, "min_p: chi2 {chi}");
}

#[test]
fn penalties_change_the_right_logits_by_the_right_amounts() {
    // Greedy so the draw is irrelevant; `sample` leaves the penalized logits in place.
    let base = vec![3.0f32, -3.0, 2.0, -1.0, 0.5, 4.0, 1.0];
    // Window of the last 5: [1, 2, 2, 2, 6]; token 5 (first) is outside it, token 4 never seen.
    let history = [5u32, 1, 2, 2, 2, 6];
    let p = SamplingParams {
        repeat_penalty: 1.5,
        penalty_last_n: 5,
        ..Default::default()
    };
    let mut l = base.clone();
    Sampler::new(p, 0).sample(&mut l, &history);
    assert_eq!(l, vec![3.0, -4.5, 2.0 / 1.5, -1.0, 0.5, 4.0, 1.0 / 1.5]);

    let p = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        penalty_last_n: 5,
        ..Default::default()
    };
    let mut l = base.clone();
    Sampler::new(p, 0).sample(&mut l, &history);
    // token 1: once -> -(0.25 + 0.5); token 2: three times -> -(0.75 + 0.5); token 6: once.
    assert_eq!(l, vec![3.0, -3.75, 0.75, -1.0, 0.5, 4.0, 0.25]);

    // All three together: repetition first, then presence/frequency.
    let p = SamplingParams {
        repeat_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        penalty_last_n: 5,
        ..Default::default()
    };
    let mut l = base.clone();
    Sampler::new(p, 0).sample(&mut l, &history);
    assert_eq!(l, vec![3.0, -6.75, -0.25, -1.0, 0.5, 4.0, -0.25]);

    // penalty_last_n = 0: no penalty at all. History tokens outside the vocab are ignored.
    let p = SamplingParams {
        repeat_penalty: 2.0,
        presence_penalty: 1.0,
        penalty_last_n: 0,
        ..Default::default()
    };
    let mut l = base.clone();
    Sampler::new(p, 0).sample(&mut l, &history);
    assert_eq!(l, base);
    let p = SamplingParams {
        presence_penalty: 1.0,
        ..Default::default()
    };
    let mut l = base.clone();
    Sampler::new(p, 0).sample(&mut l, &[1_000_000, 0]);
    assert_eq!(l[0], 2.0);
}

#[test]
fn penalty_changes_the_greedy_choice() {
    let base = vec![1.0f32, 5.0, 4.5];
    let p = SamplingParams {
        repeat_penalty: 1.3, // 5.0 / 1.3 = 3.85 < 4.5
        ..Default::default()
    };
    let mut s = Sampler::new(p, 0);
    assert_eq!(s.sample(&mut base.clone(), &[]), 1);
    assert_eq!(s.sample(&mut base.clone(), &[1]), 2);
}

#[test]
fn logit_bias_adds_and_neg_inf_bans() {
    let logits = random_logits(1000, 4, 3.0);
    let best = argmax(&logits);
    let p = SamplingParams {
        logit_bias: vec![(best, f32::NEG_INFINITY), (7, 0.5)],
        ..Default::default()
    };
    let mut l = logits.clone();
    let got = Sampler::new(p.clone(), 0).sample(&mut l, &[]);
    assert_ne!(got, best);
    assert_eq!(l[7], logits[7] + 0.5);
    assert_eq!(got, argmax(&l));
    // Sampling at a high temperature never draws the banned token.
    for (top_k, top_p) in [(0, 1.0), (50, 1.0), (0, 0.9)] {
        let p = SamplingParams {
            temperature: 2.0,
            top_k,
            top_p,
            ..p.clone()
        };
        assert!(draw_n(&p, 1, &logits, 5000).iter().all(|&t| t != best));
    }
    // A big positive bias forces a token.
    let p = SamplingParams {
        temperature: 1.0,
        logit_bias: vec![(3, 100.0)],
        ..Default::default()
    };
    assert!(draw_n(&p, 2, &logits, 100).iter().all(|&t| t == 3));
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let mut s = Sampler::new(params(1.0), 0);
    assert_eq!(s.sample(&mut [], &[]), 0);
    let mut all_banned = vec![f32::NEG_INFINITY; 10];
    assert!(s.sample(&mut all_banned, &[]) < 10);
    let mut nan = vec![f32::NAN, 1.0, f32::NAN];
    assert_eq!(s.sample(&mut nan, &[]), 1);
    let mut tiny_t = Sampler::new(
        SamplingParams {
            temperature: 1e-30,
            top_k: 3,
            ..Default::default()
        },
        0,
    );
    assert_eq!(tiny_t.sample(&mut [0.0, 2.0, 1.0, -5.0], &[]), 1);
    let mut tiny_fast = Sampler::new(params(1e-30), 0);
    assert_eq!(tiny_fast.sample(&mut [0.0, 2.0, 1.0, -5.0], &[]), 1);
}

fn invalid_field(p: SamplingParams, vocab: usize) -> String {
    match p.validate(vocab) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument for {p:?}, got {other:?}"),
    }
}

#[test]
fn validate_names_the_bad_field() {
    let ok = SamplingParams::default();
    ok.validate(100).unwrap();
    SamplingParams {
        temperature: 0.7,
        top_k: 40,
        top_p: 1.0,
        min_p: 1.0,
        repeat_penalty: 1.1,
        logit_bias: vec![(99, f32::NEG_INFINITY), (0, -3.0)],
        ..ok.clone()
    }
    .validate(100)
    .unwrap();
    let cases: Vec<(SamplingParams, &str)> = vec![
        (
            SamplingParams {
                temperature: -0.1,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..ok.clone()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..ok.clone()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.01,
                ..ok.clone()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: f32::NAN,
                ..ok.clone()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: -0.01,
                ..ok.clone()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: 1.5,
                ..ok.clone()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: f32::NAN,
                ..ok.clone()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repeat_penalty: 0.0,
                ..ok.clone()
            },
            "repeat_penalty",
        ),
        (
            SamplingParams {
                repeat_penalty: -1.0,
                ..ok.clone()
            },
            "repeat_penalty",
        ),
        (
            SamplingParams {
                repeat_penalty: f32::INFINITY,
                ..ok.clone()
            },
            "repeat_penalty",
        ),
        (
            SamplingParams {
                presence_penalty: f32::NAN,
                ..ok.clone()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..ok.clone()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                logit_bias: vec![(100, 1.0)],
                ..ok.clone()
            },
            "logit_bias",
        ),
        (
            SamplingParams {
                logit_bias: vec![(5, f32::NAN)],
                ..ok.clone()
            },
            "logit_bias",
        ),
        (
            SamplingParams {
                logit_bias: vec![(5, f32::INFINITY)],
                ..ok.clone()
            },
            "logit_bias",
        ),
    ];
    for (p, field) in cases {
        let msg = invalid_field(p, 100);
        assert!(
            msg.starts_with(field),
            "message {msg:?} should name {field}"
        );
    }
}

#[test]
fn full_vocab_filters_keep_draws_inside_top_k() {
    // The usual chat setting on a real-sized vocab: every draw is one of the 40 best.
    let logits = random_logits(QWEN_VOCAB, 13, 8.0);
    let mut order: Vec<u32> = (0..QWEN_VOCAB as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let top40 = &order[..40];
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        repeat_penalty: 1.1,
        ..Default::default()
    };
    let mut s = Sampler::new(p, 77);
    let start = std::time::Instant::now();
    for _ in 0..200 {
        let t = s.sample(&mut logits.clone(), &[]);
        assert!(top40.contains(&t), "token {t} not in the top 40");
    }
    eprintln!(
        "200 filtered draws over 151,936 logits: {:?}",
        start.elapsed()
    );
}

/// `is_greedy` holds exactly when `sample` is the plain argmax (the backend then picks the
/// token itself): greedy settings sample the argmax; bias, penalties or a temperature do not
/// count as greedy.
#[test]
fn is_greedy_means_argmax() {
    let logits = random_logits(QWEN_VOCAB, 7, 5.0);
    let greedy = SamplingParams::default();
    let mut s = Sampler::new(greedy.clone(), 1);
    assert!(s.is_greedy());
    assert_eq!(s.sample(&mut logits.clone(), &[1, 2, 3]), argmax(&logits));
    let nan_t = SamplingParams {
        temperature: f32::NAN,
        ..greedy.clone()
    };
    assert!(Sampler::new(nan_t, 1).is_greedy());
    let warm = SamplingParams {
        temperature: 0.7,
        ..greedy.clone()
    };
    let biased = SamplingParams {
        logit_bias: vec![(5, 2.0)],
        ..greedy.clone()
    };
    let penalized = SamplingParams {
        repeat_penalty: 1.1,
        ..greedy.clone()
    };
    // A penalty over no history window changes nothing: still greedy.
    let no_window = SamplingParams {
        repeat_penalty: 1.1,
        penalty_last_n: 0,
        ..greedy
    };
    assert!(Sampler::new(no_window, 1).is_greedy());
    for p in [warm, biased, penalized] {
        assert!(!Sampler::new(p, 1).is_greedy());
    }
}
