//! `llorch run`: generate text from a prompt, streamed as it is produced.

use super::common::ModelArgs;
use llorch::grammar::Constraint;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, KvType, Session, SessionOptions, StopReason};
use llorch::tokenizer::chat::ChatMessage;
use std::io::Write;

/// Generate text from a prompt, streamed
///
/// Generate text, streamed to stdout; statistics go to stderr.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The prompt
    #[arg(short, long, value_name = "TEXT", allow_hyphen_values = true)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template
    #[arg(long)]
    chat: bool,
    /// Match special tokens (<|im_start|> ...) written in the prompt
    #[arg(long)]
    special: bool,
    /// Most tokens to generate
    #[arg(short = 'n', long, value_name = "N", default_value_t = 256)]
    max_tokens: u32,
    /// Temperature (0: greedy)
    #[arg(
        long,
        value_name = "T",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    temp: f32,
    /// Top-k (0: off)
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: u32,
    /// Top-p (1: off)
    #[arg(
        long,
        value_name = "P",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    top_p: f32,
    /// Min-p (0: off)
    #[arg(
        long,
        value_name = "M",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    min_p: f32,
    /// Repetition penalty (1: off)
    #[arg(
        long,
        value_name = "R",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    repeat_penalty: f32,
    /// RNG seed
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Context length (0: the model's, at most 4096)
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    ctx: u32,
    /// The KV cache's element type: auto (f32 on the CPU, f16 on a GPU), f16 or f32 (exact)
    #[arg(long, value_name = "TYPE", default_value = "auto", value_parser = super::common::parse_kv_type)]
    kv_type: KvType,
    /// Stop before this text (repeatable)
    #[arg(long, value_name = "TEXT", allow_hyphen_values = true)]
    stop: Vec<String>,
    /// Print each generated token's log-probability and its N most likely alternatives
    /// (from the raw logits) to stderr (0: off)
    #[arg(long, value_name = "N", default_value_t = 0)]
    logprobs: u32,
    /// Constrain the output to JSON valid against the JSON Schema in FILE
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    json_schema: Option<std::path::PathBuf>,
    /// Constrain the output to the GBNF-like grammar in FILE (start rule root)
    #[arg(long, value_name = "FILE")]
    grammar: Option<std::path::PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: Args) -> Result<(), String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let constraint = match (&a.json_schema, &a.grammar) {
        (Some(f), _) => Some(Constraint::json_schema(&read(f)?).map_err(|e| e.to_string())?),
        (None, Some(f)) => Some(Constraint::grammar(&read(f)?).map_err(|e| e.to_string())?),
        (None, None) => None,
    };
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            ..SamplingParams::default()
        },
        stop: a.stop,
        parse_special: a.chat || a.special,
        logprobs: a.logprobs,
        constraint,
        ..Default::default()
    };
    let model = a.model.load()?;
    let text = if a.chat {
        let msgs = [ChatMessage {
            role: "user".into(),
            content: a.prompt,
        }];
        model
            .apply_chat_template(&msgs, true, None)
            .map_err(|e| e.to_string())?
    } else {
        a.prompt
    };
    let mut session = Session::new(
        model,
        SessionOptions {
            n_ctx: a.ctx,
            seed: a.seed,
            kv_type: a.kv_type,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let m = session.model().clone();
    let show = |t: u32| {
        let b = m.tokenizer().token_bytes(t).unwrap_or_default();
        format!("{:?}", String::from_utf8_lossy(&b))
    };
    let stats = session
        .generate_pieces(&text, &params, &mut |piece| {
            let _ = out.write_all(piece.text.as_bytes());
            let _ = out.flush();
            for lp in &piece.logprobs {
                let top: Vec<String> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| format!("{} {l:.4}", show(t)))
                    .collect();
                eprintln!(
                    "[logprob] {} {:.4} | {}",
                    show(lp.token),
                    lp.logprob,
                    top.join(", ")
                );
            }
            true
        })
        .map_err(|e| e.to_string())?;
    println!();
    let reason = match stats.stop_reason {
        StopReason::Eos => "end of generation",
        StopReason::Limit => "token limit",
        StopReason::StopString => "stop string",
        StopReason::Cancelled => "cancelled",
        StopReason::ContextFull => "context full",
    };
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tok/s); generated: {} tokens in {:.2} s ({:.1} tok/s); stop: {reason}",
        stats.prompt_tokens,
        stats.prompt_seconds,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.generate_seconds,
        stats.generated_tokens as f64 / stats.generate_seconds.max(1e-9),
    );
    Ok(())
}
