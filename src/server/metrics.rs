//! The server's counters and histograms, rendered in the Prometheus text format (0.0.4).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram over fixed bucket bounds (upper bounds, ascending; `+Inf` is implied).
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative), the `+Inf` bucket last; the sum of observations.
    data: Mutex<(Vec<u64>, f64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            data: Mutex::new((vec![0; bounds.len() + 1], 0.0)),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b);
        let mut d = self.data.lock();
        d.0[i.unwrap_or(self.bounds.len())] += 1;
        d.1 += v;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let (counts, sum) = self.data.lock().clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in counts.iter().enumerate() {
            total += c;
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0,
];
const RATE_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

pub struct Metrics {
    /// Requests answered, by route and HTTP status.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Request arrival to its first piece of text.
    pub ttft: Histogram,
    /// Each request's generated tokens per second after its prompt.
    pub decode_rate: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            cancelled: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            decode_rate: Histogram::new(RATE_BOUNDS),
        }
    }
}

/// Gauges read at render time.
pub struct Gauges {
    pub queue_depth: usize,
    pub running: usize,
    pub max_parallel: usize,
    /// The batcher's forward steps so far and the sequences they carried.
    pub steps: u64,
    pub step_seqs: u64,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP llorch_requests_total HTTP requests answered, by route and status.\n\
             # TYPE llorch_requests_total counter"
        );
        for ((route, code), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "llorch_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "llorch_requests_cancelled_total",
            "Generations cancelled (client gone, or shutdown).",
            load(&self.cancelled),
        );
        counter(
            &mut out,
            "llorch_prompt_tokens_total",
            "Prompt tokens processed.",
            load(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "llorch_generated_tokens_total",
            "Tokens generated.",
            load(&self.generated_tokens),
        );
        gauge(
            &mut out,
            "llorch_queue_depth",
            "Requests waiting for a sequence slot.",
            g.queue_depth,
        );
        gauge(
            &mut out,
            "llorch_batch_size",
            "Sequences generating now.",
            g.running,
        );
        counter(
            &mut out,
            "llorch_forward_steps_total",
            "Forward steps run (continuous batching: one step carries every ready sequence).",
            g.steps,
        );
        counter(
            &mut out,
            "llorch_forward_step_sequences_total",
            "Sequences those steps carried (divided by the steps: the mean batch size).",
            g.step_seqs,
        );
        gauge(
            &mut out,
            "llorch_max_parallel_sequences",
            "Sequences that may generate at once.",
            g.max_parallel,
        );
        self.ttft.render(
            &mut out,
            "llorch_time_to_first_token_seconds",
            "Seconds from a request's arrival to its first piece of text.",
        );
        self.decode_rate.render(
            &mut out,
            "llorch_decode_tokens_per_second",
            "Each request's decoding speed: generated tokens per second after its prompt.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"2\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_sum 6\nx_count 4\n"), "{s}");
    }
}
