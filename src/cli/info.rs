//! `llorch info MODEL.gguf [--tensors] [--metadata]`: what a GGUF file holds.

use super::{human_bytes, print_out};
use llorch::gguf::{Gguf, GgufError, Value};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Show a GGUF file: version, architecture, hyper-parameters, tokenizer, tensors
///
/// Show a GGUF file: version, architecture, name, hyper-parameters (<arch>.* keys),
/// tokenizer, tensor counts by type and total tensor bytes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file
    #[arg(value_name = "MODEL.gguf")]
    file: String,
    /// Also list every tensor: name, type, shape, offset
    #[arg(long)]
    tensors: bool,
    /// Also list every metadata key with its value (long values abbreviated)
    #[arg(long)]
    metadata: bool,
}

pub fn run(a: Args) -> Result<(), String> {
    let path = &a.file;
    // Io errors already name the path; the others say where in the file.
    let g = Gguf::open(Path::new(path)).map_err(|e| match e {
        GgufError::Io(msg) => msg,
        other => format!("{path}: {other}"),
    })?;
    print_out(&report(&g, path, a.tensors, a.metadata))
}

/// A value for display: arrays as their length (plus a preview), long strings abbreviated.
fn show(v: &Value<'_>) -> String {
    match v {
        Value::Array(items) if items.len() > 8 => format!("{} items {v}", items.len()),
        _ => v.to_string(),
    }
}

fn report(g: &Gguf, path: &str, tensors: bool, metadata: bool) -> String {
    let mut s = String::new();
    let arch = g
        .get_str("general.architecture")
        .ok()
        .flatten()
        .unwrap_or("?");
    let _ = writeln!(s, "file:           {path} ({})", human_bytes(g.file_size()));
    let _ = writeln!(s, "GGUF version:   {}", g.version());
    let _ = writeln!(s, "alignment:      {}", g.alignment());
    let _ = writeln!(s, "architecture:   {arch}");
    if let Ok(Some(name)) = g.get_str("general.name") {
        let _ = writeln!(s, "name:           {name}");
    }
    let _ = writeln!(s, "metadata keys:  {}", g.keys().count());

    // general.* other than what is shown above.
    let skip = ["general.architecture", "general.name", "general.alignment"];
    let general: Vec<&str> = g
        .keys()
        .filter(|k| k.starts_with("general.") && !skip.contains(k))
        .collect();
    if !general.is_empty() {
        let _ = writeln!(s, "\ngeneral:");
        for k in general {
            if let Some(v) = g.get(k) {
                let _ = writeln!(s, "  {:<40} {}", &k["general.".len()..], show(&v));
            }
        }
    }

    // Hyper-parameters: every <arch>.* key, whatever the architecture defines.
    let prefix = format!("{arch}.");
    let hparams: Vec<&str> = g.keys().filter(|k| k.starts_with(&prefix)).collect();
    let _ = writeln!(s, "\nhyper-parameters ({prefix}*):");
    if hparams.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for k in hparams {
        if let Some(v) = g.get(k) {
            let _ = writeln!(s, "  {:<40} {}", &k[prefix.len()..], show(&v));
        }
    }

    // Tokenizer: scalars shown, arrays and the chat template by size.
    let _ = writeln!(s, "\ntokenizer:");
    let vocab = g.array_len("tokenizer.ggml.tokens");
    let _ = writeln!(
        s,
        "  {:<40} {}",
        "vocabulary size",
        vocab.map_or("(no tokens)".into(), |n| n.to_string())
    );
    for k in g
        .keys()
        .filter(|k| k.starts_with("tokenizer.") && *k != "tokenizer.ggml.tokens")
    {
        let short = &k["tokenizer.".len()..];
        let shown = match (g.array_len(k), g.get_str(k)) {
            (Some(n), _) => format!("{n} items"),
            (None, Ok(Some(t))) if t.len() > 80 || t.contains('\n') => format!("{} bytes", t.len()),
            _ => g.get(k).map_or(String::new(), |v| show(&v)),
        };
        let _ = writeln!(s, "  {short:<40} {shown}");
    }

    // Tensors by type.
    let total: u64 = g.tensors().iter().map(|t| t.size).sum();
    let total_params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    let mut by_type: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in g.tensors() {
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    let _ = writeln!(
        s,
        "\ntensors:        {} ({} parameters, {} bytes = {})",
        g.tensors().len(),
        total_params,
        total,
        human_bytes(total)
    );
    for (ty, (n, bytes)) in &by_type {
        let _ = writeln!(
            s,
            "  {ty:<8} {n:>5} tensors {bytes:>14} bytes ({})",
            human_bytes(*bytes)
        );
    }

    if tensors {
        let _ = writeln!(
            s,
            "\ntensor list (offsets from the data section at byte {}):",
            g.data_offset()
        );
        let _ = writeln!(
            s,
            "  {:<40} {:<6} {:<24} {:>14} {:>12}",
            "name", "type", "shape", "offset", "bytes"
        );
        for t in g.tensors() {
            let shape = format!("{:?}", t.dims);
            let _ = writeln!(
                s,
                "  {:<40} {:<6} {:<24} {:>14} {:>12}",
                t.name,
                t.ty.name(),
                shape,
                t.offset,
                t.size
            );
        }
    }

    if metadata {
        let _ = writeln!(s, "\nmetadata:");
        for (k, v) in g.metadata() {
            let _ = writeln!(s, "  {k:<48} {:<6} {}", v.value_type().name(), show(&v));
        }
    }
    s
}
