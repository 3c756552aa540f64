//! GGUF reader cases: files generated from the format's structure (random metadata of every
//! type, nested arrays, tensors of every block type) and mutations of valid files (bit flips,
//! byte overwrites, "interesting" counts and offsets, insertions, deletions, duplications).
//! Property: `Gguf::from_bytes` answers Ok or Err, never panics; an accepted file is fully
//! usable (every accessor, every tensor's data in bounds), and so is the tokenizer built from it
//! when its metadata makes one.

use crate::rng::Rng;
use llorch::gguf::{Gguf, GgufWriter, Value};
use llorch::quant::GgmlType;
use llorch::tokenizer::{StreamDecoder, Tokenizer};

/// One case: parse `bytes` and use everything the result offers; whether the reader accepted
/// it. Panics on a broken property.
pub fn check(bytes: &[u8]) -> bool {
    let Ok(g) = Gguf::from_bytes(bytes.to_vec()) else {
        return false;
    };
    exercise(&g);
    if let Ok(tok) = Tokenizer::from_gguf(&g) {
        let text = "Hello, wörld! <|im_start|> 12345\n\t€";
        for parse_special in [false, true] {
            if let Ok(ids) = tok.encode(text, parse_special, true) {
                assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
                let bytes = tok.decode(&ids).expect("decoding ids the tokenizer made");
                let mut d = StreamDecoder::new();
                let mut streamed = String::new();
                for &id in &ids {
                    streamed.push_str(&d.push(&tok.token_bytes(id).unwrap()));
                }
                streamed.push_str(&d.flush());
                assert_eq!(streamed, String::from_utf8_lossy(&bytes));
            }
        }
    }
    true
}

/// Use everything an accepted file offers; returns a checksum so nothing is optimized out.
pub fn exercise(g: &Gguf) -> usize {
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

/// Three small valid files covering every scalar type, arrays, alignment and block types.
pub fn valid_files() -> Vec<Vec<u8>> {
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

/// Keys a reader looks up, so generated files reach the code behind them.
const KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "general.name",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.chat_template",
    "llama.block_count",
    "llama.context_length",
];

const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::MXFP4,
];

/// A string of random length and content: ASCII, token-like pieces or any UTF-8.
fn string(rng: &mut Rng) -> String {
    let n = if rng.one_in(20) {
        rng.below(300)
    } else {
        rng.below(12)
    };
    (0..n)
        .map(|_| match rng.below(4) {
            0 => *rng.pick(&['Ġ', '▁', '<', '>', '|', 'a', ' ', '\n', 'é', '€']),
            1 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'),
            _ => (b'a' + rng.below(26) as u8) as char,
        })
        .collect()
}

/// A random metadata value; arrays nest up to `depth` more levels.
/// Strings come from `pool`.
fn value<'a>(rng: &mut Rng, pool: &'a [String], depth: usize) -> Value<'a> {
    let kind = rng.below(if depth > 0 { 13 } else { 12 });
    if kind < 12 {
        return scalar(rng, pool, kind);
    }
    // An array holds one type: scalars of one kind, or arrays.
    let n = if rng.one_in(10) {
        rng.below(2000)
    } else {
        rng.below(6)
    };
    let inner = rng.below(if depth > 1 { 13 } else { 12 });
    Value::Array(
        (0..n)
            .map(|_| match inner {
                12 => value(rng, pool, depth - 1),
                k => scalar(rng, pool, k),
            })
            .filter(|v| inner != 12 || matches!(v, Value::Array(_)))
            .collect(),
    )
}

/// A random scalar of kind `k` (0..12), edge values often.
fn scalar<'a>(rng: &mut Rng, pool: &'a [String], k: usize) -> Value<'a> {
    match k {
        0 => Value::U8(rng.next_u64() as u8),
        1 => Value::I8(rng.next_u64() as i8),
        2 => Value::U16(rng.next_u64() as u16),
        3 => Value::I16(rng.next_u64() as i16),
        4 => {
            let any = rng.next_u64() as u32;
            Value::U32(*rng.pick(&[0, 1, 2, 3, 7, 256, u32::MAX, any]))
        }
        5 => Value::I32(rng.next_u64() as i32),
        6 => Value::F32(*rng.pick(&[0.0, -1.0, f32::NAN, f32::INFINITY, 1e-6, 1e30])),
        7 => Value::Bool(rng.one_in(2)),
        8 => {
            let any = rng.next_u64();
            Value::U64(*rng.pick(&[0, 1, u64::MAX, 1 << 40, any]))
        }
        9 => Value::I64(rng.next_u64() as i64),
        10 => Value::F64(f64::from_bits(rng.next_u64())),
        _ => Value::Str(pool[rng.below(pool.len())].as_str()),
    }
}

/// A file generated from the format's structure: random metadata (known keys among them, of
/// right and wrong types), random alignment and tensors of random types and shapes.
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut w = GgufWriter::new();
    if rng.one_in(4) {
        let _ = w.set_alignment(1 << rng.below(21));
    }
    let pool: Vec<String> = (0..16).map(|_| string(rng)).collect();
    for _ in 0..rng.below(12) {
        let key = if rng.one_in(2) {
            rng.pick(KEYS).to_string()
        } else {
            string(rng)
        };
        let v = value(rng, &pool, 2);
        if !key.is_empty() {
            let _ = w.add(&key, &v);
        }
    }
    for i in 0..rng.below(5) {
        let ty = *rng.pick(TYPES);
        let cols = ty.block_size() as u64 * (1 + rng.below(3) as u64);
        let mut dims = vec![cols];
        for _ in 0..rng.below(4) {
            dims.push(1 + rng.below(3) as u64);
        }
        let n: u64 = dims.iter().product();
        let bytes = ty.bytes_for(n).unwrap_or(0) as usize;
        let _ = w.add_tensor(&format!("t{i}"), &dims, ty, rng.bytes(bytes));
    }
    let bytes = w.to_bytes();
    if rng.one_in(2) {
        mutate(rng, bytes)
    } else {
        bytes
    }
}

/// Values that tend to hit edge cases when written over a count, length or offset.
fn interesting(rng: &mut Rng, file_len: usize) -> u64 {
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
        rng.next_u64() % 64,
    ];
    choices[rng.below(choices.len())]
}

/// One to three random edits of `b`.
pub fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
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
                b[p] = [0, 1, 0x7f, 0x80, 0xff, rng.next_u64() as u8][rng.below(6)];
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
                let ins = rng.bytes(n);
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

/// A copy of `g`'s metadata (a real model's vocabulary, merges, template) with one tiny tensor:
/// a valid small file whose mutations reach the tokenizer's loading.
pub fn with_real_metadata(g: &Gguf) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != "general.alignment" {
            w.add(k, &v).unwrap();
        }
    }
    w.add_tensor("t", &[32], GgmlType::F32, vec![0u8; 128])
        .unwrap();
    w.to_bytes()
}
