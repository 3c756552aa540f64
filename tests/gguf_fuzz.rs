//! Mutation test: random bit flips, byte overwrites, "interesting" u64 writes, insertions,
//! deletions and duplications applied to valid files. Every result must be Ok or Err, never
//! a panic; an Ok file must then be fully usable (every accessor, every tensor's data).
//! Deterministic (fixed seeds), no extra crates. The mutator and the checks are the fuzz job's
//! (fuzz/src/gguf.rs), which also generates files from the format's structure (tests/fuzz.rs).

#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/gguf.rs"]
mod gguf;
#[allow(dead_code)] // each test binary uses part of the shared cases
#[path = "../fuzz/src/rng.rs"]
mod rng;

use gguf::{exercise, mutate, valid_files};
use llorch::gguf::Gguf;
use rng::Rng;

#[test]
fn mutated_files_never_panic() {
    const SEEDS: u64 = 8;
    const ITERS: usize = 10_000;
    let files = valid_files();
    for f in &files {
        exercise(&Gguf::from_bytes(f.clone()).unwrap());
    }
    let (mut ok, mut err) = (0usize, 0usize);
    for seed in 1..=SEEDS {
        let mut rng = Rng::new(seed);
        for iter in 0..ITERS {
            let base = &files[rng.below(files.len())];
            let bytes = mutate(&mut rng, base.clone());
            let copy = bytes.clone();
            let r = std::panic::catch_unwind(move || match Gguf::from_bytes(copy) {
                Ok(g) => Ok(exercise(&g)),
                Err(e) => Err(e.to_string()),
            });
            match r {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(msg)) => {
                    assert!(!msg.is_empty());
                    err += 1
                }
                Err(_) => panic!("seed {seed} iteration {iter}: panic on input {bytes:02x?}"),
            }
        }
    }
    eprintln!("mutations: {ok} accepted, {err} rejected");
    // Both outcomes must occur: mutations of tensor data keep a file valid, most others
    // break it. Far off either way means the mutator or the reader is broken.
    let total = (SEEDS as usize) * ITERS;
    assert!(
        ok > total / 50,
        "only {ok} of {total} mutated files accepted"
    );
    assert!(
        err > total / 2,
        "only {err} of {total} mutated files rejected"
    );
}
