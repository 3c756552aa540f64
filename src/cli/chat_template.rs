//! `llorch chat-template -m MODEL [--no-generation-prompt] [--template FILE]`: render a JSON
//! message list (standard input) with the model's chat template.

use super::tokenize::{model_arg, open_tokenizer};
use super::{print_out, Args};
use llorch::tokenizer::chat::{self, ChatMessage, TemplateOrigin};
use std::io::Read;

const USAGE: &str = "\
Usage: llorch chat-template -m MODEL.gguf [--no-generation-prompt] [--template FILE] < messages.json

Read a JSON list of messages ([{\"role\": \"user\", \"content\": \"Hi\"}, …]) from standard input
and print them rendered with the model's chat template (tokenizer.chat_template).

Options:
  -m, --model FILE          the GGUF model
  --no-generation-prompt    do not open the assistant's turn at the end
  --template FILE           use this Jinja template instead of the model's
  -h, --help                show this help
";

#[derive(serde::Deserialize)]
struct Msg {
    role: String,
    content: String,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let a = Args::parse(
        args,
        &["--no-generation-prompt"],
        &["-m", "--model", "--template"],
    )?;
    if a.help {
        return print_out(USAGE);
    }
    a.expect_positional(0, "no positional arguments (messages come on stdin)")?;
    let path = model_arg(&a)?;
    let (g, tok) = open_tokenizer(path)?;
    let (origin, template) = match a.option("--template") {
        Some(f) => (
            TemplateOrigin::Caller,
            std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?,
        ),
        None => (
            TemplateOrigin::Model,
            g.get_str("tokenizer.chat_template")
                .map_err(|e| format!("{path}: {e}"))?
                .ok_or_else(|| {
                    format!("{path} has no chat template; pass one with --template FILE")
                })?
                .to_string(),
        ),
    };
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading messages from standard input: {e}"))?;
    let msgs: Vec<Msg> = serde_json::from_str(&input).map_err(|e| {
        format!("messages on stdin: expected a JSON list of {{role, content}}: {e}")
    })?;
    let messages: Vec<ChatMessage> = msgs
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect();
    let text_of = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
    let out = chat::render_from(
        origin,
        &template,
        &messages,
        !a.flag("--no-generation-prompt"),
        &text_of(tok.bos_id()),
        &text_of(tok.eos_id()),
    )
    .map_err(|e| e.to_string())?;
    print_out(&out)
}
