//! The CPU's f16 KV cache against its f32 one, interleaved in one process so that a shared
//! machine's load falls on both alike: prompts of N tokens alternated (f32, f16, f32, ...),
//! then decoding at that context one token each in turn. Prints medians and the ratio.
//! Run: `cargo bench --bench kv_types [-- MODEL [PROMPT_TOKENS [ROUNDS]]]`
//! (default smollm2-135m 2048 3; MODEL a scripts/fetch-model name).

#[path = "../tests/common/mod.rs"]
mod common;

use llorch::backend::Logits;
use llorch::session::{KvType, Session, SessionOptions};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let name = args.first().map_or(common::SMOLLM2, |s| s.as_str());
    let n: usize = args
        .get(1)
        .map_or(2048, |s| s.parse().expect("prompt tokens"));
    let rounds: usize = args.get(2).map_or(3, |s| s.parse().expect("rounds"));
    let decode = 64;
    let model = common::cpu_model(name);
    let tokens = llorch::session::bench::bench_tokens(n + decode, model.vocab_size(), 0);
    let types = [KvType::F32, KvType::F16];
    let mut sessions: Vec<Session> = types
        .iter()
        .map(|&kv_type| {
            let o = SessionOptions {
                n_ctx: (n + decode) as u32,
                seed: 0,
                kv_type,
            };
            Session::new(model.clone(), o).unwrap()
        })
        .collect();
    let (mut pp, mut tg) = ([vec![], vec![]], [vec![], vec![]]);
    for round in 0..=rounds {
        for (i, s) in sessions.iter_mut().enumerate() {
            s.reset();
            let t = Instant::now();
            s.eval(&tokens[..n], Logits::Last).unwrap();
            if round > 0 {
                pp[i].push(n as f64 / t.elapsed().as_secs_f64());
            }
        }
        for &tok in &tokens[n..] {
            for (i, s) in sessions.iter_mut().enumerate() {
                let t = Instant::now();
                s.eval(&[tok], Logits::Last).unwrap();
                if round > 0 {
                    tg[i].push(t.elapsed().as_secs_f64());
                }
            }
        }
    }
    println!(
        "{name}, {rounds} rounds after a warm-up, load {}",
        loadavg()
    );
    println!(
        "| kv | pp{n} t/s (median) | decode at {n}..{} t/s (median token) |",
        n + decode
    );
    println!("|---|---|---|");
    let mut rates = [(0.0, 0.0); 2];
    for (i, kv) in types.iter().enumerate() {
        rates[i] = (median(pp[i].clone()), 1.0 / median(tg[i].clone()));
        println!("| {} | {:.1} | {:.2} |", kv.name(), rates[i].0, rates[i].1);
    }
    println!(
        "f16 / f32: prompt {:.3}, decode {:.3}",
        rates[1].0 / rates[0].0,
        rates[1].1 / rates[0].1
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
