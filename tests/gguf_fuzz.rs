//! Mutation test: random bit flips, byte overwrites, "interesting" u64 writes, insertions,
//! deletions and duplications applied to valid files. Every result must be Ok or Err, never
//! a panic; an Ok file must then be fully usable (every accessor, every tensor's data).
//! Deterministic (xorshift64, fixed seeds), no extra crates.

use llorch::gguf::{Gguf, GgufWriter, Value};
use llorch::quant::GgmlType;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn valid_files() -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama");
    w.add_str("general.name", "tiny");
    w.add_u32("llama.block_count", 2);
    w.add_f32("llama.rope.freq_base", 10000.0);
    w.add_bool("x.flag", true);
    w.add_u64("x.u64", 7);
    w.add_str_array("tokenizer.ggml.tokens", &["<s>", "a", "bc", "Ġd"]);
    w.add_f32_array("tokenizer.ggml.scores", &[0.0, -1.0, -2.0, -3.0]);
    w.add_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1]);
    w.add(
        "x.nested",
        &Value::Array(vec![Value::Array(vec![Value::I16(-3), Value::I16(4)])]),
    )
    .unwrap();
    w.add_tensor("a", &[8, 2], GgmlType::F32, vec![1u8; 64])
        .unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0, vec![2u8; 34])
        .unwrap();
    w.add_tensor("c", &[256, 1, 1, 2], GgmlType::Q4_K, vec![3u8; 288])
        .unwrap();
    let one = w.to_bytes();

    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_i8("y.i8", -1);
    w.add_u16("y.u16", 2);
    w.add_f64("y.f64", 0.5);
    w.add_tensor("only", &[256], GgmlType::Q6_K, vec![4u8; 210])
        .unwrap();
    let two = w.to_bytes();

    let mut w = GgufWriter::new();
    w.add_str_array("t", &["x"; 20]);
    let three = w.to_bytes();
    vec![one, two, three]
}

/// Values that tend to hit edge cases when written over a count, length or offset.
fn interesting(rng: &mut XorShift, file_len: usize) -> u64 {
    let choices = [
        0,
        1,
        2,
        4,
        31,
        32,
        u64::MAX,
        u64::MAX / 2,
        u64::MAX - 31,
        1 << 32,
        1 << 63,
        file_len as u64,
        file_len as u64 + 1,
        rng.next() % 64,
    ];
    choices[rng.below(choices.len())]
}

fn mutate(rng: &mut XorShift, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        let pos = rng.below(len + 1);
        match rng.below(6) {
            0 if len > 0 => {
                let p = rng.below(len);
                b[p] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let p = rng.below(len);
                b[p] = [0, 1, 0x7f, 0x80, 0xff, rng.next() as u8][rng.below(6)];
            }
            2 if len >= 8 => {
                let p = rng.below(len - 7);
                let v = interesting(rng, len);
                // Sometimes a u32 (types, dimension counts), sometimes a u64.
                if rng.below(2) == 0 {
                    b[p..p + 4].copy_from_slice(&(v as u32).to_le_bytes());
                } else {
                    b[p..p + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            3 => {
                let n = 1 + rng.below(8);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(pos..pos, ins);
            }
            4 if len > 0 => {
                let p = rng.below(len);
                let n = (1 + rng.below(8)).min(len - p);
                b.drain(p..p + n);
            }
            5 if len > 0 => {
                let p = rng.below(len);
                let n = (1 + rng.below(16)).min(len - p);
                let chunk = b[p..p + n].to_vec();
                b.splice(pos..pos, chunk);
            }
            _ => {}
        }
    }
    b
}

/// Use everything an accepted file offers; returns a checksum so nothing is optimized out.
fn exercise(g: &Gguf) -> usize {
    let mut sum = g.version() as usize + g.alignment() as usize;
    for (k, v) in g.metadata() {
        sum += k.len() + v.to_string().len();
        sum += g.get_u32(k).is_ok() as usize
            + g.get_u64(k).is_ok() as usize
            + g.get_f32(k).is_ok() as usize
            + g.get_bool(k).is_ok() as usize
            + g.get_str(k).is_ok() as usize
            + g.get_str_array(k)
                .map(|v| v.map_or(0, |v| v.len()))
                .unwrap_or(0)
            + g.get_f32_array(k).is_ok() as usize
            + g.get_i32_array(k).is_ok() as usize
            + g.array_len(k).unwrap_or(0);
    }
    for t in g.tensors() {
        let d = g.tensor_data(t);
        assert_eq!(d.len() as u64, t.size, "tensor {} data", t.name);
        assert!(g.data_offset() + t.offset + t.size <= g.file_size());
        assert!(std::ptr::eq(g.tensor(&t.name).unwrap(), t));
        sum += d.len() + t.n_rows() as usize;
    }
    sum
}

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
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
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
