//! `llorch perplexity`: perplexity of a text file (method of tests/golden/README.md).

use super::common;
use llorch::session::perplexity::perplexity;

const USAGE: &str =
    "usage: llorch perplexity [-m MODEL] -f TEXT_FILE [--window 512] [--max-windows 8] [--bos | --no-bos]
Tokenize the text without BOS, cut it into windows, run each from an empty cache, and score
the second half of each window. Prints the perplexity. --bos puts the BOS token in place of
the first token of each window; it is the default when the model's tokenizer adds a BOS
(tokenizer.ggml.add_bos_token), --no-bos turns it off.";

pub fn run(args: &[String]) -> Result<(), String> {
    let a = common::parse(
        args,
        &["--bos", "--no-bos"],
        &["-f", "--file", "--window", "--max-windows"],
    )?;
    if a.help {
        println!("{USAGE}\n{}", common::MODEL_HELP);
        return Ok(());
    }
    let file = a
        .value(&["-f", "--file"])
        .map(String::from)
        .ok_or("a text file is required (-f FILE)")?;
    let window = a.parsed(&["--window"], 512usize)?;
    let max_windows = a.parsed(&["--max-windows"], 8usize)?;
    let model = common::load(&a)?;
    a.expect_positional(0, "no positional arguments")?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    let tokens = model
        .tokenizer()
        .encode(&text, false, false)
        .map_err(|e| e.to_string())?;
    let tok = model.tokenizer();
    let bos = match (a.flag("--bos"), a.flag("--no-bos")) {
        (true, true) => return Err("--bos and --no-bos contradict each other".into()),
        (true, false) => Some(tok.bos_id().ok_or("--bos: the model has no BOS token")?),
        (false, true) => None,
        (false, false) => tok.bos_id().filter(|_| tok.adds_bos()),
    };
    let t0 = std::time::Instant::now();
    let p = perplexity(&model, &tokens, window, max_windows, bos).map_err(|e| e.to_string())?;
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
