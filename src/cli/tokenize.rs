//! `llorch tokenize -m MODEL [--no-special] [--bos] [--pieces] [TEXT]`: the token ids of a text.

use super::{print_out, Args};
use llorch::gguf::Gguf;
use llorch::tokenizer::Tokenizer;
use std::io::Read;
use std::path::Path;

const USAGE: &str = "\
Usage: llorch tokenize -m MODEL.gguf [--no-special] [--bos] [--pieces] [TEXT]

Print the token ids of TEXT (or of standard input when TEXT is absent or '-') as a JSON
array, using only the tokenizer in the model's metadata.

Options:
  -m, --model FILE  the GGUF model
  --no-special      special tokens written in the text (<|im_start|> …) stay plain text
  --bos             add BOS (and EOS) where the model's metadata asks for them
  --pieces          also print a second JSON array: the text of each token
  -h, --help        show this help
";

/// Open a model's tokenizer, with errors that name the file.
pub fn open_tokenizer(path: &str) -> Result<(Gguf, Tokenizer), String> {
    let g = Gguf::open(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    let t = Tokenizer::from_gguf(&g).map_err(|e| format!("{path}: {e}"))?;
    Ok((g, t))
}

/// The model path from -m/--model.
pub fn model_arg(a: &Args) -> Result<&str, String> {
    a.option("-m")
        .or(a.option("--model"))
        .ok_or_else(|| "no model given (-m MODEL.gguf)".to_string())
}

pub fn run(args: &[String]) -> Result<(), String> {
    let a = Args::parse(
        args,
        &["--no-special", "--bos", "--pieces"],
        &["-m", "--model"],
    )?;
    if a.help {
        return print_out(USAGE);
    }
    let path = model_arg(&a)?;
    let text: Vec<u8> = match a.positional.as_slice() {
        [] => read_stdin()?,
        [t] if t == "-" => read_stdin()?,
        [t] => t.clone().into_bytes(),
        _ => return Err("expected one TEXT argument (quote it), or the text on stdin".into()),
    };
    let (_g, tok) = open_tokenizer(path)?;
    let ids = tok
        .encode_bytes(&text, !a.flag("--no-special"), a.flag("--bos"))
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::to_string(&ids).map_err(|e| e.to_string())?;
    out.push('\n');
    if a.flag("--pieces") {
        let pieces: Vec<String> = ids.iter().map(|&i| tok.token_text(i)).collect();
        out += &serde_json::to_string(&pieces).map_err(|e| e.to_string())?;
        out.push('\n');
    }
    print_out(&out)
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading standard input: {e}"))?;
    Ok(buf)
}
