//! The real models the targets draw on (tokenizers, chat templates): the GGUF files in
//! `$LLORCH_MODEL_DIR` (default `~/.cache/llorch/models`, where `scripts/fetch-model` puts them).

use llorch::gguf::Gguf;
use std::path::PathBuf;

/// Every model there, opened (memory-mapped: cheap), in name order. Panics with the way to get
/// them when there are none: a target without its inputs would fuzz nothing.
pub fn open_all() -> Vec<Gguf> {
    let dir = std::env::var_os("LLORCH_MODEL_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/llorch/models")))
        .expect("set LLORCH_MODEL_DIR");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|e| e == "gguf"));
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no models in {}: run scripts/fetch-model smollm2-135m (and others)",
        dir.display()
    );
    paths
        .iter()
        .map(|p| Gguf::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}
