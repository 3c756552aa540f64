//! Logits → token: greedy, temperature, top-k, top-p, min-p, penalties, logit bias,
//! and a seeded RNG so the same seed and input give the same tokens.
//! (Agreed interface; the implementation fills in the bodies.)
//!
//! Order of operations: logit bias → penalties (repetition, presence, frequency) → greedy
//! (temperature 0: argmax) → temperature → top-k → softmax → top-p → min-p → draw.

use crate::{Error, Result};
use std::cmp::Ordering;

/// Sampling settings. Defaults are greedy decoding with every filter off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax). Must be >= 0 and finite.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// In (0, 1]; 1 = off.
    pub top_p: f32,
    /// In [0, 1]; 0 = off.
    pub min_p: f32,
    /// > 0; 1 = off. Applied to the last `penalty_last_n` tokens.
    pub repeat_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub penalty_last_n: u32,
    /// Added to the logit of a token before anything else.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// `Error::InvalidArgument` naming the bad field.
    ///
    /// A bias of `-inf` is allowed (it bans the token); NaN and `+inf` are not.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::InvalidArgument(format!("{field}: {why}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                format!("{} is not finite and >= 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is not in [0, 1]", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(
                "repeat_penalty",
                format!("{} is not finite and > 0", self.repeat_penalty),
            );
        }
        if !self.presence_penalty.is_finite() {
            return bad(
                "presence_penalty",
                format!("{} is not finite", self.presence_penalty),
            );
        }
        if !self.frequency_penalty.is_finite() {
            return bad(
                "frequency_penalty",
                format!("{} is not finite", self.frequency_penalty),
            );
        }
        for (i, &(tok, b)) in self.logit_bias.iter().enumerate() {
            if tok as usize >= vocab_size {
                return bad(
                    "logit_bias",
                    format!("entry {i}: token id {tok} >= vocab size {vocab_size}"),
                );
            }
            if b.is_nan() || b == f32::INFINITY {
                return bad(
                    "logit_bias",
                    format!("entry {i}: bias {b} for token {tok} (only finite values or -inf)"),
                );
            }
        }
        Ok(())
    }

    /// True when any penalty would change a logit.
    fn penalties_on(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through splitmix64: small, fast, and good
/// enough statistically for sampling; exactly reproducible from the seed on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads any seed (0 included) into a state that is never all zero.
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler with its own seeded RNG.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused buffers: candidates (token, scaled logit, then probability) and the penalty window.
    cand: Vec<(u32, f32)>,
    window: Vec<u32>,
    /// Reused buffer of the temperature-only path.
    weights: Vec<f32>,
}

/// Descending by value, ascending by token on ties: a total order, so the result never depends
/// on how the sort/select algorithm treats equal keys.
fn by_value_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    /// `params` should have passed [`SamplingParams::validate`]; invalid values do not panic
    /// (a temperature that is not > 0 means greedy, filters always keep at least one token).
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Sampler {
            params,
            rng: Rng::new(seed),
            cand: Vec::new(),
            window: Vec::new(),
            weights: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether [`sample`](Self::sample) is the plain argmax of the logits (no temperature, bias
    /// or penalties): the backend may then pick the token itself, without handing the logits
    /// over.
    pub fn is_greedy(&self) -> bool {
        let t = self.params.temperature;
        (t.is_nan() || t <= 0.0) && self.params.logit_bias.is_empty() && !self.params.penalties_on()
    }

    /// Choose the next token. `logits` may be modified in place; `history` is the tokens so far.
    ///
    /// Returns 0 for an empty `logits`. If every logit is `-inf` or NaN (all tokens banned),
    /// returns the argmax, i.e. token 0 — there is nothing better to give.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        for &(tok, b) in &self.params.logit_bias {
            if let Some(x) = logits.get_mut(tok as usize) {
                *x += b;
            }
        }
        if self.params.penalties_on() {
            self.apply_penalties(logits, history);
        }
        let t = self.params.temperature;
        if t.is_nan() || t <= 0.0 {
            return argmax(logits);
        }
        let p = &self.params;
        let filtered =
            (p.top_k > 0 && (p.top_k as usize) < logits.len()) || p.top_p < 1.0 || p.min_p > 0.0;
        if !filtered {
            return self.sample_full(logits, t);
        }
        self.sample_filtered(logits, t)
    }

    /// Repetition penalty (divide positive logits, multiply negative ones) and OpenAI-style
    /// presence/frequency penalties: `logit -= count * frequency + (count > 0) * presence`,
    /// once per distinct token of the last `penalty_last_n` tokens.
    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let n = (self.params.penalty_last_n as usize).min(history.len());
        self.window.clear();
        self.window.extend_from_slice(&history[history.len() - n..]);
        self.window.sort_unstable();
        let (rp, pp, fp) = (
            self.params.repeat_penalty,
            self.params.presence_penalty,
            self.params.frequency_penalty,
        );
        let mut i = 0;
        while i < self.window.len() {
            let tok = self.window[i];
            let mut j = i;
            while j < self.window.len() && self.window[j] == tok {
                j += 1;
            }
            let count = (j - i) as f32;
            i = j;
            let Some(x) = logits.get_mut(tok as usize) else {
                continue; // a history token outside the vocab has no logit to penalize
            };
            if rp != 1.0 {
                *x = if *x > 0.0 { *x / rp } else { *x * rp };
            }
            *x -= count * fp + pp;
        }
    }

    /// Temperature only: one softmax pass over the whole vocab and a cumulative scan, no sort.
    fn sample_full(&mut self, logits: &[f32], t: f32) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max.is_infinite() {
            // All banned, or a +inf logit that wins at any temperature.
            return argmax(logits);
        }
        let inv_t = 1.0 / t as f64;
        // exp((x - max) / T), computed once into a reused buffer; NaN and -inf weigh nothing.
        let weights = &mut self.weights;
        weights.clear();
        weights.extend(logits.iter().map(|&x| {
            let e = ((x - max) as f64 * inv_t).exp() as f32;
            if e.is_nan() {
                0.0
            } else {
                e
            }
        }));
        let total: f64 = weights.iter().map(|&e| e as f64).sum();
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        let mut last_positive = argmax(logits);
        for (i, &e) in weights.iter().enumerate() {
            if e > 0.0 {
                acc += e as f64;
                last_positive = i as u32;
                if acc > u {
                    return i as u32;
                }
            }
        }
        // Rounding left u just above the sum: the last token with weight is the right answer.
        last_positive
    }

    /// top-k → softmax → top-p → min-p → draw, over a candidate list.
    fn sample_filtered(&mut self, logits: &[f32], t: f32) -> u32 {
        let p = self.params.clone();
        let cand = &mut self.cand;
        cand.clear();
        let xmax = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if xmax.is_infinite() {
            // All banned, or a +inf logit that wins at any temperature.
            return argmax(logits);
        }
        // Temperature, relative to the max so that a tiny temperature gives -inf (probability 0),
        // never inf - inf. -inf and NaN logits are never candidates.
        let inv_t = 1.0 / t as f64;
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, &x)| x > f32::NEG_INFINITY)
                .map(|(i, &x)| (i as u32, ((x - xmax) as f64 * inv_t) as f32)),
        );
        // Top-k: select the k best in O(n), then sort only those.
        let mut sorted = false;
        if p.top_k > 0 && (p.top_k as usize) < cand.len() {
            let k = p.top_k as usize;
            cand.select_nth_unstable_by(k - 1, by_value_desc);
            cand.truncate(k);
            cand.sort_unstable_by(by_value_desc);
            sorted = true;
        }
        // Softmax over the candidates, left unnormalized: weights exp(x) with the max at x = 0
        // (so exp cannot overflow), their sum in f64 (151,936 terms). top-p compares mass
        // against p * sum, min-p is a ratio and the draw scales by the sum, so no divide pass.
        let mut sum = 0.0f64;
        for c in cand.iter_mut() {
            c.1 = c.1.exp();
            sum += c.1 as f64;
        }
        // Top-p: the smallest set of most likely tokens whose mass reaches p.
        if p.top_p < 1.0 {
            let need = p.top_p as f64 * sum;
            let keep = if sorted {
                let mut acc = 0.0f64;
                let mut keep = cand.len(); // rounding left the whole list short of p: keep all
                for (i, c) in cand.iter().enumerate() {
                    acc += c.1 as f64;
                    if acc >= need {
                        keep = i + 1;
                        break;
                    }
                }
                keep
            } else {
                nucleus_unsorted(cand, need)
            };
            cand.truncate(keep);
        }
        // Min-p: drop tokens less likely than min_p times the most likely one.
        if p.min_p > 0.0 {
            let pmax = cand.iter().map(|c| c.1).fold(0.0f32, f32::max);
            let floor = p.min_p * pmax;
            cand.retain(|c| c.1 >= floor);
            if cand.is_empty() {
                return argmax(logits);
            }
        }
        let total: f64 = cand.iter().map(|c| c.1 as f64).sum();
        let u = self.rng.next_f64() * total;
        let mut acc = 0.0f64;
        for c in cand.iter() {
            acc += c.1 as f64;
            if acc > u {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Top-p without a prior sort: a weighted quickselect for mass `need` (in the units of the
/// unnormalized weights). Halves the range around its median
/// (select_nth, O(n)); if the upper half already holds the mass still needed, recurse into it,
/// otherwise keep it whole and look for the rest in the lower half. About 2n comparisons
/// instead of an n log n sort of 151,936 entries. Returns how many leading entries of `cand`
/// (reordered, not sorted) form the nucleus.
fn nucleus_unsorted(cand: &mut [(u32, f32)], need: f64) -> usize {
    let (mut lo, mut hi, mut need) = (0usize, cand.len(), need);
    while hi - lo > 64 {
        let mid = lo + (hi - lo) / 2;
        cand[lo..hi].select_nth_unstable_by(mid - lo, by_value_desc);
        let mass: f64 = cand[lo..mid].iter().map(|c| c.1 as f64).sum();
        if mass >= need {
            hi = mid;
        } else {
            need -= mass;
            lo = mid;
        }
    }
    cand[lo..hi].sort_unstable_by(by_value_desc);
    let mut acc = 0.0f64;
    for (i, c) in cand[lo..hi].iter().enumerate() {
        acc += c.1 as f64;
        if acc >= need {
            return lo + i + 1;
        }
    }
    hi // rounding: the mass was just short of `need`; keep the whole range
}

/// Index of the largest value (first on ties).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        // NaN never wins, not even from position 0.
        if x > xs[best] || (xs[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}
