//! `llorch run`: generate text from a prompt, streamed as it is produced.

use super::common;
use llorch::sampling::SamplingParams;
use llorch::session::{GenerateParams, Session, SessionOptions, StopReason};
use llorch::tokenizer::chat::ChatMessage;
use std::io::Write;

const USAGE: &str = "usage: llorch run [-m MODEL] -p PROMPT [options]
Generate text, streamed to stdout; statistics go to stderr.
  -p, --prompt TEXT      the prompt
      --chat             wrap the prompt as a user message in the model's chat template
      --special          match special tokens (<|im_start|> ...) written in the prompt
  -n, --max-tokens N     most tokens to generate (default 256)
      --temp T           temperature (default 0: greedy)
      --top-k K          (default 0: off)
      --top-p P          (default 1: off)
      --min-p M          (default 0: off)
      --repeat-penalty R (default 1: off)
      --seed S           RNG seed (default 0)
  -c, --ctx N            context length (default: the model's, at most 4096)
      --stop TEXT        stop before this text (repeatable)";

pub fn run(args: &[String]) -> Result<(), String> {
    let a = common::parse(
        args,
        &["--chat", "--special"],
        &[
            "-p",
            "--prompt",
            "-n",
            "--max-tokens",
            "--temp",
            "--top-k",
            "--top-p",
            "--min-p",
            "--repeat-penalty",
            "--seed",
            "-c",
            "--ctx",
            "--stop",
        ],
    )?;
    if a.help {
        println!("{USAGE}\n{}", common::MODEL_HELP);
        return Ok(());
    }
    let prompt = a
        .value(&["-p", "--prompt"])
        .map(String::from)
        .ok_or("a prompt is required (-p TEXT)")?;
    let chat = a.flag("--chat");
    let stop: Vec<String> = a
        .values(&["--stop"])
        .into_iter()
        .map(String::from)
        .collect();
    let params = GenerateParams {
        max_tokens: a.parsed(&["-n", "--max-tokens"], 256u32)?,
        sampling: SamplingParams {
            temperature: a.parsed(&["--temp"], 0.0f32)?,
            top_k: a.parsed(&["--top-k"], 0u32)?,
            top_p: a.parsed(&["--top-p"], 1.0f32)?,
            min_p: a.parsed(&["--min-p"], 0.0f32)?,
            repeat_penalty: a.parsed(&["--repeat-penalty"], 1.0f32)?,
            ..SamplingParams::default()
        },
        constraint: None,
        stop,
        parse_special: chat || a.flag("--special"),
        ..Default::default()
    };
    let seed = a.parsed(&["--seed"], 0u64)?;
    let n_ctx = a.parsed(&["-c", "--ctx"], 0u32)?;
    let model = common::load(&a)?;
    a.expect_positional(0, "no positional arguments")?;
    let text = if chat {
        let msgs = [ChatMessage {
            role: "user".into(),
            content: prompt,
        }];
        model
            .apply_chat_template(&msgs, true, None)
            .map_err(|e| e.to_string())?
    } else {
        prompt
    };
    let mut session =
        Session::new(model, SessionOptions { n_ctx, seed }).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let stats = session
        .generate(&text, &params, &mut |piece, _| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
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
