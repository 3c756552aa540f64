//! `llorch embed`: embedding vectors of texts (src/session/embed.rs).

use super::common::ModelArgs;
use super::print_out;
use llorch::session::embed::{embed, EmbedOptions, Pooling};
use std::io::Read;

/// Embedding vectors of texts
///
/// Print one vector per input: the model's final hidden state (after the final norm) pooled
/// over the input's tokens. The inputs are the TEXT arguments, or else the lines of standard
/// input (empty lines skipped). Plain output is one line per input, its values separated by
/// spaces; --json prints {"model", "dim", "pooling", "normalized", "embeddings": [[...], ...]}.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The texts (none: one per line of standard input)
    #[arg(value_name = "TEXT")]
    texts: Vec<String>,
    /// mean, cls (first token) or last (default: the model's <arch>.pooling_type, else last)
    #[arg(long, value_name = "POOLING", value_parser = parse_pooling)]
    pooling: Option<Pooling>,
    /// Scale each vector to unit L2 norm
    #[arg(long)]
    normalize: bool,
    /// Print JSON instead of plain lines
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    Pooling::parse(s).map_err(|_| "expected mean, cls or last".to_string())
}

pub fn run(a: Args) -> Result<(), String> {
    let texts = if a.texts.is_empty() {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| format!("reading standard input: {e}"))?;
        input
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else {
        a.texts
    };
    if texts.is_empty() {
        return Err("no input: give TEXT arguments or lines on standard input".into());
    }
    let model = a.model.load()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EmbedOptions {
        pooling: a.pooling,
        normalize: a.normalize,
    };
    let e = embed(&model, &refs, &options).map_err(|e| e.to_string())?;
    let rows = e.data.chunks_exact(e.dim.max(1));
    let out = if a.json {
        let name = model.gguf().get_str("general.name").ok().flatten();
        // A struct, not json!(): json! widens the f32 values to f64 and prints 17 digits.
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            model: &'a str,
            dim: usize,
            pooling: &'a str,
            normalized: bool,
            embeddings: Vec<&'a [f32]>,
        }
        let doc = Doc {
            model: name.unwrap_or(model.architecture()),
            dim: e.dim,
            pooling: e.pooling.name(),
            normalized: a.normalize,
            embeddings: rows.collect(),
        };
        serde_json::to_string(&doc).map_err(|e| e.to_string())? + "\n"
    } else {
        // Rust's shortest representation of each f32 reads back to the same value.
        rows.map(|r| {
            let values: Vec<String> = r.iter().map(f32::to_string).collect();
            values.join(" ") + "\n"
        })
        .collect()
    };
    print_out(&out)
}
