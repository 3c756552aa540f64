//! `llorch bench`: prompt-processing and decoding speed, like a standard pp/tg table.

use super::common::ModelArgs;
use llorch::backend::Logits;
use llorch::session::{GenerateParams, KvType, Session, SessionOptions};
use std::time::Instant;

/// Prompt-processing and decoding speed (tokens/s)
///
/// Measures prompt processing (pp: -p tokens in one call from an empty cache) and decoding
/// (tg: -n given tokens one at a time, each step's logits row to the host, as llama-bench
/// does; "tg greedy": a greedy generation of -n tokens, the way applications decode, where
/// the backend may pick the token itself and run ahead; "pp cached": the pp prompt again in
/// a fresh session, its whole blocks from the prefix cache, as prompt tokens over the time to
/// the first token), -r repetitions each after one warm-up; prints the median tokens/s and
/// the spread (min-max), and the KV memory the pp test's session holds (the model's pool
/// counter).
/// --parallel N,...: instead, the aggregate decoding speed of N sessions generating at once
/// (continuous batching), each after a -p token prompt (default 32 here), for each N.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Prompt tokens (0: no pp test) [default: 512; 32 with --parallel]
    #[arg(short = 'p', long, value_name = "N")]
    prompt_tokens: Option<usize>,
    /// Generated tokens (0: no tg test)
    #[arg(short = 'n', long, value_name = "N", default_value_t = 128)]
    gen_tokens: usize,
    /// Repetitions of each test, after one warm-up
    #[arg(short, long, value_name = "N", default_value_t = 3)]
    repetitions: usize,
    /// Session counts for the batched test, e.g. 1,8,32,128
    #[arg(long, value_name = "N,...", value_parser = parse_count, value_delimiter = ',')]
    parallel: Option<Vec<usize>>,
    /// The KV cache's element type of the pp/tg test: auto (f32 on the CPU, f16 on a GPU),
    /// f16 or f32 (exact)
    #[arg(long, value_name = "TYPE", default_value = "auto", value_parser = super::common::parse_kv_type)]
    kv_type: KvType,
    #[command(flatten)]
    model: ModelArgs,
}

/// A count of sessions for --parallel (1 or more).
fn parse_count(x: &str) -> Result<usize, String> {
    match x.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("not a count of sessions (1 or more)".into()),
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn run(a: Args) -> Result<(), String> {
    let (tg, reps) = (a.gen_tokens, a.repetitions.max(1));
    let model = a.model.load()?;
    if let Some(counts) = a.parallel {
        return run_parallel(&model, &counts, a.prompt_tokens.unwrap_or(32), tg, reps);
    }
    let pp = a.prompt_tokens.unwrap_or(512);
    // Deterministic pseudo-random tokens: the work is the same as for text.
    let tokens = llorch::session::bench::bench_tokens(pp.max(tg) + 1, model.vocab_size(), 0);
    let n_ctx = (pp.max(tg + 2) as u32).max(16);
    let mut session = Session::new(
        model.clone(),
        SessionOptions {
            n_ctx,
            seed: 0,
            kv_type: a.kv_type,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut pp_rates = Vec::new();
    let mut tg_rates = Vec::new();
    let mut greedy_rates = Vec::new();
    let mut kv_bytes = 0;
    for rep in 0..=reps {
        if pp > 0 {
            session.reset();
            let t = Instant::now();
            session
                .eval(&tokens[..pp], Logits::Last)
                .map_err(|e| e.to_string())?;
            if rep > 0 {
                pp_rates.push(pp as f64 / t.elapsed().as_secs_f64());
            }
            kv_bytes = kv_bytes.max(model.kv_stats().held_bytes);
        }
        if tg > 0 {
            session.reset();
            let t = Instant::now();
            for &tok in &tokens[..tg] {
                session
                    .eval(&[tok], Logits::Last)
                    .map_err(|e| e.to_string())?;
            }
            if rep > 0 {
                tg_rates.push(tg as f64 / t.elapsed().as_secs_f64());
            }
            session.reset();
            let params = GenerateParams {
                max_tokens: tg as u32,
                ignore_eos: true,
                ..Default::default()
            };
            let st = session
                .generate_tokens(&tokens[..1], &params, &mut |_, _| true)
                .map_err(|e| e.to_string())?;
            // The decoding phase: the forward steps after the prompt's (one per token but
            // the first, which the prompt's step gave).
            if rep > 0 && st.generated_tokens > 1 && st.generate_seconds > 0.0 {
                greedy_rates.push((st.generated_tokens - 1) as f64 / st.generate_seconds);
            }
        }
    }
    // Time to the first token of the pp prompt again in a fresh session, its whole blocks
    // from the prefix cache (the warm-up run put them there), as prompt tokens per second.
    let mut cached_rates = Vec::new();
    let mut cached = 0;
    if pp > 1 {
        let params = GenerateParams {
            max_tokens: 1,
            ignore_eos: true,
            ..Default::default()
        };
        for rep in 0..=reps {
            let mut s = Session::new(
                model.clone(),
                SessionOptions {
                    n_ctx: (pp as u32 + 1).max(16),
                    seed: 0,
                    kv_type: a.kv_type,
                },
            )
            .map_err(|e| e.to_string())?;
            let st = s
                .generate_tokens(&tokens[..pp], &params, &mut |_, _| true)
                .map_err(|e| e.to_string())?;
            if rep > 0 && st.prompt_seconds > 0.0 {
                cached_rates.push(pp as f64 / st.prompt_seconds);
                cached = st.prompt_cached;
            }
        }
    }
    let hp = model.hparams();
    let size: u64 = model.gguf().tensors().iter().map(|t| t.size).sum();
    println!("| model | size | backend | threads | test | t/s (median) | min - max |");
    println!("|---|---|---|---|---|---|---|");
    let name = format!("{} {}L {}d", hp.arch, hp.n_layer, hp.n_embd);
    let threads = model.context().threads();
    let dev = format!("{:?}", model.context().options.device).to_lowercase();
    let rows = [
        (format!("pp{pp}"), pp_rates),
        (format!("tg{tg}"), tg_rates),
        (format!("tg{tg} greedy"), greedy_rates),
        (
            format!("pp{pp} cached ({cached} from the prefix cache)"),
            cached_rates,
        ),
    ];
    for (label, rates) in rows {
        if rates.is_empty() {
            continue;
        }
        let (med, lo, hi) = stats(rates);
        println!(
            "| {name} | {:.1} MiB | {dev} | {threads} | {label} | {med:.2} | {lo:.2} - {hi:.2} |",
            size as f64 / (1 << 20) as f64
        );
    }
    if kv_bytes > 0 {
        println!(
            "\nKV cache after pp{pp}: {kv_bytes} bytes ({:.1} MiB) of {} values",
            kv_bytes as f64 / (1 << 20) as f64,
            session.kv_elem().name()
        );
    }
    Ok(())
}

/// The batched benchmark: aggregate decoding tokens/s for each session count.
fn run_parallel(
    model: &std::sync::Arc<llorch::model::Model>,
    counts: &[usize],
    pp: usize,
    tg: usize,
    reps: usize,
) -> Result<(), String> {
    let hp = model.hparams();
    let name = format!("{} {}L {}d", hp.arch, hp.n_layer, hp.n_embd);
    let dev = format!("{:?}", model.context().options.device).to_lowercase();
    let threads = model.context().threads();
    println!("| model | backend | threads | sessions | test | aggregate t/s (median) | per session | mean batch | step ms | in steps |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &n in counts {
        let mut runs = Vec::new();
        for rep in 0..=reps {
            let r = llorch::session::bench::parallel_decode(model, n, pp, tg)
                .map_err(|e| e.to_string())?;
            if rep > 0 {
                runs.push(r);
            }
        }
        runs.sort_by(|a, b| a.decode_tps.total_cmp(&b.decode_tps));
        let med = &runs[runs.len() / 2];
        println!(
            "| {name} | {dev} | {threads} | {n} | pp{pp}+tg{tg} | {:.2} | {:.2} | {:.2} | {:.3} | {:.0}% |",
            med.decode_tps,
            med.decode_tps / n as f64,
            med.mean_batch,
            med.step_ms,
            100.0 * med.busy
        );
    }
    Ok(())
}
