//! Log-probabilities of generated tokens and their most likely alternatives.
//!
//! They come from the model's raw logits (after the model's own final soft-capping, before
//! logit bias, penalties, temperature and top-k/top-p/min-p): the distribution the model
//! itself gives, as OpenAI's API reports it and as evaluation wants it, whatever the
//! sampler then does with it.

/// The log-probability of one generated token and the top alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// `ln p(token)` under the raw logits.
    pub logprob: f32,
    /// The `n` most likely tokens (n asked per generation), most likely first; ties go to
    /// the lower token id. The generated token is among them only if it ranks there.
    pub top: Vec<(u32, f32)>,
}

/// `log_softmax(logits)[token]` and the `n` best `(id, logprob)` of `logits`. The
/// exponentials are f32 (within an ulp or two), summed in f64 per block so that a 150k-entry
/// vocabulary loses none of the small terms. A NaN logit ranks last and counts as
/// probability 0.
pub fn token_logprob(logits: &[f32], token: u32, n: usize) -> TokenLogprob {
    // `v > m` is false for NaN, which so drops out; `max(0.0)` turns its NaN term into 0.
    let max = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let sum: f64 = logits
        .chunks(256)
        .map(|c| c.iter().map(|&v| (v - max).exp().max(0.0)).sum::<f32>() as f64)
        .sum();
    let log_z = max as f64 + sum.ln();
    let lp = |v: f32| (v as f64 - log_z) as f32;
    let at = |i: usize| logits.get(i).copied().unwrap_or(f32::NAN);
    TokenLogprob {
        token,
        logprob: lp(at(token as usize)),
        top: top_n(logits, n)
            .into_iter()
            .map(|i| (i as u32, lp(logits[i])))
            .collect(),
    }
}

/// Indices of the `n` largest logits, largest first, ties to the lower index, NaN last.
fn top_n(logits: &[f32], n: usize) -> Vec<usize> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let key = |i: usize| {
        let v = logits[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    // Larger logit first; on equal logits the lower index.
    let order = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    if n <= SMALL_TOP {
        // One pass keeping the best n in order: a new index enters only if it beats the
        // last kept one (so an equal logit at a higher index stays out).
        let mut best: Vec<usize> = Vec::with_capacity(n + 1);
        for i in 0..logits.len() {
            if best.len() == n && best.last().map_or(true, |&w| order(&i, &w).is_ge()) {
                continue;
            }
            let at = best.partition_point(|b| order(b, &i).is_lt());
            best.insert(at, i);
            best.truncate(n);
        }
        return best;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if n < idx.len() {
        idx.select_nth_unstable_by(n - 1, order);
        idx.truncate(n);
    }
    idx.sort_unstable_by(order);
    idx
}

/// Up to this many alternatives are kept in one pass over the row; more are selected.
const SMALL_TOP: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_sorted_with_ties_to_the_lower_id() {
        let l = [1.0, 3.0, 3.0, f32::NAN, 2.0, -1.0];
        let t = token_logprob(&l, 4, 4);
        let ids: Vec<u32> = t.top.iter().map(|p| p.0).collect();
        assert_eq!(ids, [1, 2, 4, 0]);
        // The one-pass and the selecting paths agree, on a row with many ties.
        let row: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 101) as f32).collect();
        let all = top_n(&row, 200);
        for n in [0, 1, 5, SMALL_TOP] {
            assert_eq!(top_n(&row, n), all[..n]);
        }
        // Probabilities of the finite entries sum to 1.
        let z: f64 = [1.0f64, 3.0, 3.0, 2.0, -1.0].iter().map(|v| v.exp()).sum();
        assert!((t.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
    }
}
