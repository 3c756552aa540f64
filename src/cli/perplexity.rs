//! `llorch perplexity`: perplexity of a text file (method of tests/golden/README.md).

use super::common::ModelArgs;
use llorch::session::perplexity::perplexity;

/// Perplexity of a text file
///
/// Tokenize the text without BOS, cut it into windows, run each from an empty cache, and score
/// the second half of each window. Prints the perplexity. --bos puts the BOS token in place of
/// the first token of each window; it is the default when the model's tokenizer adds a BOS
/// (tokenizer.ggml.add_bos_token), --no-bos turns it off.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The text file
    #[arg(short, long, value_name = "TEXT_FILE")]
    file: String,
    /// Tokens per window
    #[arg(long, value_name = "N", default_value_t = 512)]
    window: usize,
    /// Most windows scored
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_windows: usize,
    /// BOS first in each window (default: when the tokenizer adds one)
    #[arg(long, conflicts_with = "no_bos")]
    bos: bool,
    /// No BOS first in each window
    #[arg(long)]
    no_bos: bool,
    /// The KV cache's element type: auto (f32 on the CPU, f16 on a GPU), f16 or f32
    #[arg(long, value_name = "TYPE", default_value = "auto", value_parser = super::common::parse_kv_type)]
    kv_type: llorch::session::KvType,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: Args) -> Result<(), String> {
    let (file, window, max_windows) = (a.file, a.window, a.max_windows);
    let model = a.model.load()?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    let tokens = model
        .tokenizer()
        .encode(&text, false, false)
        .map_err(|e| e.to_string())?;
    let tok = model.tokenizer();
    let bos = match (a.bos, a.no_bos) {
        (true, _) => Some(tok.bos_id().ok_or("--bos: the model has no BOS token")?),
        (false, true) => None,
        (false, false) => tok.bos_id().filter(|_| tok.adds_bos()),
    };
    let t0 = std::time::Instant::now();
    let p = perplexity(&model, &tokens, window, max_windows, bos, a.kv_type)
        .map_err(|e| e.to_string())?;
    println!(
        "perplexity: {:.5} ({} windows of {window}{}, {} scored tokens, text {} tokens, {:.1} s)",
        p.ppl,
        p.windows,
        if bos.is_some() { ", BOS first" } else { "" },
        p.scored_tokens,
        tokens.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
