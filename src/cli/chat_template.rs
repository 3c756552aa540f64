//! `llorch chat-template -m MODEL [--no-generation-prompt] [--template FILE]`: render a JSON
//! message list (standard input) with the model's chat template.

use super::print_out;
use super::tokenize::{open_tokenizer, TokenizerModel};
use llorch::tokenizer::chat::{self, ChatMessage, TemplateOrigin};
use std::io::Read;

/// Render JSON messages (stdin) with the model's chat template
///
/// Read a JSON list of messages ([{"role": "user", "content": "Hi"}, …]) from standard input
/// and print them rendered with the model's chat template (tokenizer.chat_template).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: TokenizerModel,
    /// Do not open the assistant's turn at the end
    #[arg(long)]
    no_generation_prompt: bool,
    /// Use this Jinja template instead of the model's
    #[arg(long, value_name = "FILE")]
    template: Option<String>,
}

#[derive(serde::Deserialize)]
struct Msg {
    role: String,
    content: String,
}

pub fn run(a: Args) -> Result<(), String> {
    let path = a.model.path()?;
    let (g, tok) = open_tokenizer(path)?;
    let (origin, template) = match &a.template {
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
        !a.no_generation_prompt,
        &text_of(tok.bos_id()),
        &text_of(tok.eos_id()),
    )
    .map_err(|e| e.to_string())?;
    print_out(&out)
}
