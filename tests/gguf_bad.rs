//! Hostile files: one crafted file per validation rule, each asserting its specific error
//! (kind, place and message), plus every truncation of valid files.
//!
//! The corpus is also kept on disk in tests/fixtures/gguf/bad/ (NAME.gguf + NAME.txt holding
//! the expected message fragment) for the CLI test. Regenerate with
//! `LLORCH_REGEN_FIXTURES=1 cargo test --test gguf_bad`; otherwise a stale fixture fails.

use llorch::gguf::{Gguf, GgufError, GgufWriter};
use llorch::quant::GgmlType;
use std::path::PathBuf;

/// Little-endian byte builder for hand-made files.
#[derive(Clone, Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A length-prefixed string of raw bytes.
    fn str(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64).bytes(b)
    }
    /// A key and a value type id; the caller appends the value.
    fn key(&mut self, k: &[u8], ty: u32) -> &mut Self {
        self.str(k).u32(ty)
    }
    fn tensor(&mut self, name: &[u8], dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `a`, then `n` data bytes.
    fn data(&mut self, a: usize, n: usize) -> &mut Self {
        let len = self.0.len().next_multiple_of(a);
        self.0.resize(len + n, 0);
        self
    }
    fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

const U8: u32 = 0;
const U32: u32 = 4;
const BOOL: u32 = 7;
const STR: u32 = 8;
const ARR: u32 = 9;
const U64: u32 = 10;
const F32: u32 = 0; // tensor type id
const Q4_0: u32 = 2;

/// Where an error must point.
#[derive(Debug)]
enum At {
    /// Malformed at this byte offset.
    Byte(u64),
    Key(&'static str),
    Tensor(&'static str),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    at: At,
    msg: &'static str,
}

/// A file with one kv "k" of type `ty`, `value` appended: the value starts at byte 37.
fn one_kv(ty: u32, value: &[u8]) -> Vec<u8> {
    Raw::header(3, 0, 1).key(b"k", ty).bytes(value).done()
}

/// A file with one tensor descriptor and `data` bytes of data section.
fn one_tensor(name: &[u8], dims: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
    Raw::header(3, 1, 0)
        .tensor(name, dims, ty, offset)
        .data(32, data)
        .done()
}

fn corpus() -> Vec<Case> {
    let le = |v: u64| v.to_le_bytes().to_vec();
    let cat = |parts: &[&[u8]]| parts.concat();
    let mut c = vec![
        // --- header ---
        Case { name: "empty", bytes: vec![], at: At::Byte(0), msg: "file too short for a GGUF header (0 bytes)" },
        Case {
            name: "short_header",
            bytes: b"GGUF\x03\x00".to_vec(),
            at: At::Byte(4),
            msg: "unexpected end of file reading version",
        },
        Case {
            name: "bad_magic",
            bytes: { let mut b = Raw::header(3, 0, 0).done(); b[..4].copy_from_slice(b"GGML"); b },
            at: At::Byte(0),
            msg: "bad magic",
        },
        Case { name: "version_1", bytes: Raw::header(1, 0, 0).done(), at: At::Byte(4), msg: "GGUF version 1" },
        Case {
            name: "big_endian",
            bytes: cat(&[b"GGUF", &3u32.to_be_bytes(), &0u64.to_be_bytes(), &0u64.to_be_bytes()]),
            at: At::Byte(4),
            msg: "big-endian GGUF (version 3 stored big-endian) is not supported",
        },
        Case {
            name: "version_99",
            bytes: Raw::header(99, 0, 0).done(),
            at: At::Byte(4),
            msg: "unsupported GGUF version 99",
        },
        Case {
            name: "kv_count_huge",
            bytes: Raw::header(3, 0, u64::MAX / 2).bytes(&[0; 100]).done(),
            at: At::Byte(16),
            msg: "metadata key-value count 9223372036854775807 is impossible: 100 bytes left hold at most 7",
        },
        Case {
            name: "tensor_count_huge",
            bytes: Raw::header(3, 1 << 40, 0).done(),
            at: At::Byte(8),
            msg: "tensor count 1099511627776 is impossible",
        },
        // --- metadata keys ---
        Case {
            name: "key_length_past_end",
            bytes: Raw::header(3, 0, 1).u64(1_000_000).bytes(&[b'a'; 20]).done(),
            at: At::Byte(24),
            msg: "metadata key #0 length 1000000 exceeds the 20 bytes left",
        },
        Case {
            name: "key_not_utf8",
            bytes: Raw::header(3, 0, 1).key(b"k\xff", U8).u8(1).done(),
            at: At::Byte(33),
            msg: "metadata key #0 is not valid UTF-8",
        },
        Case {
            name: "key_empty",
            bytes: Raw::header(3, 0, 1).key(b"", U8).u8(1).bytes(&[0; 4]).done(),
            at: At::Byte(24),
            msg: "metadata key #0 is empty",
        },
        Case {
            name: "duplicate_key",
            bytes: Raw::header(3, 0, 2).key(b"k", U8).u8(1).key(b"k", U8).u8(2).done(),
            at: At::Byte(38),
            msg: "duplicate metadata key 'k'",
        },
        // --- metadata values ---
        Case { name: "value_type_unknown", bytes: one_kv(13, &[0; 8]), at: At::Byte(33), msg: "key 'k': unknown value type 13" },
        Case {
            name: "value_truncated",
            bytes: one_kv(U64, &[1, 2, 3]),
            at: At::Byte(37),
            msg: "unexpected end of file reading value of key 'k': need 8 bytes, 3 left",
        },
        Case {
            name: "string_value_not_utf8",
            bytes: one_kv(STR, &cat(&[&le(3), b"a\xc3\x28"])),
            at: At::Byte(46),
            msg: "value of key 'k' is not valid UTF-8",
        },
        Case {
            name: "string_length_past_end",
            bytes: one_kv(STR, &cat(&[&le(u64::MAX), b"abc"])),
            at: At::Byte(37),
            msg: "value of key 'k' length 18446744073709551615 exceeds the 3 bytes left",
        },
        Case { name: "bool_invalid", bytes: one_kv(BOOL, &[2]), at: At::Byte(37), msg: "key 'k': invalid bool byte 2" },
        Case {
            name: "bool_array_invalid",
            bytes: one_kv(ARR, &cat(&[&BOOL.to_le_bytes(), &le(3), &[1, 0, 7]])),
            at: At::Byte(51),
            msg: "key 'k': invalid bool byte 7",
        },
        // --- arrays: an array of n u32 needs 4n bytes ---
        Case {
            name: "array_count_past_end",
            bytes: one_kv(ARR, &cat(&[&U32.to_le_bytes(), &le(3), &[0; 8]])),
            at: At::Byte(41),
            msg: "key 'k': array length 3 is impossible: 8 bytes left hold at most 2",
        },
        Case {
            name: "array_count_overflow",
            bytes: one_kv(ARR, &cat(&[&U64.to_le_bytes(), &le(u64::MAX / 4), &[0; 8]])),
            at: At::Byte(41),
            msg: "key 'k': array length 4611686018427387903 is impossible",
        },
        Case {
            name: "string_array_count_huge",
            bytes: one_kv(ARR, &cat(&[&STR.to_le_bytes(), &le(1 << 60), &le(1), b"x"])),
            at: At::Byte(41),
            msg: "key 'k': array length 1152921504606846976 is impossible: 9 bytes left hold at most 1",
        },
        Case {
            name: "string_in_array_not_utf8",
            bytes: one_kv(ARR, &cat(&[&STR.to_le_bytes(), &le(2), &le(1), b"x", &le(1), b"\x80"])),
            at: At::Byte(66),
            msg: "string in array of key 'k' is not valid UTF-8",
        },
        Case {
            name: "array_type_unknown",
            bytes: one_kv(ARR, &cat(&[&77u32.to_le_bytes(), &le(1), &[0; 8]])),
            at: At::Byte(37),
            msg: "key 'k': unknown array element type 77",
        },
        Case {
            name: "array_nesting_too_deep",
            // Five nested arrays of one element each, the innermost of one u8.
            bytes: one_kv(ARR, &{
                let mut v = Vec::new();
                for _ in 0..4 {
                    v.extend(cat(&[&ARR.to_le_bytes(), &le(1)]));
                }
                v.extend(cat(&[&U8.to_le_bytes(), &le(1), &[9]]));
                v
            }),
            at: At::Byte(37 + 4 * 12),
            msg: "key 'k': arrays nested deeper than 4 levels",
        },
        // --- alignment ---
        Case {
            name: "alignment_zero",
            bytes: Raw::header(3, 0, 1).key(b"general.alignment", U32).u32(0).done(),
            at: At::Key("general.alignment"),
            msg: "alignment 0 is not a power of two",
        },
        Case {
            name: "alignment_not_power_of_two",
            bytes: Raw::header(3, 0, 1).key(b"general.alignment", U32).u32(48).done(),
            at: At::Key("general.alignment"),
            msg: "alignment 48 is not a power of two",
        },
        Case {
            name: "alignment_too_big",
            bytes: Raw::header(3, 0, 1).key(b"general.alignment", U32).u32(1 << 21).done(),
            at: At::Key("general.alignment"),
            msg: "alignment 2097152 is not a power of two between 1 and 1048576",
        },
        Case {
            name: "alignment_not_integer",
            bytes: Raw::header(3, 0, 1).key(b"general.alignment", STR).str(b"32").done(),
            at: At::Key("general.alignment"),
            msg: "must be an integer, found string",
        },
        // --- tensor descriptors ---
        Case {
            name: "tensor_type_unknown",
            bytes: one_tensor(b"t", &[32], 4, 0, 18),
            at: At::Tensor("t"),
            msg: "unknown tensor type 4 (descriptor at byte 24)",
        },
        Case { name: "tensor_zero_dims", bytes: one_tensor(b"t", &[], F32, 0, 4), at: At::Tensor("t"), msg: "0 dimensions" },
        Case {
            name: "tensor_five_dims",
            bytes: one_tensor(b"t", &[1; 5], F32, 0, 4),
            at: At::Tensor("t"),
            msg: "5 dimensions (must be 1 to 4)",
        },
        Case {
            name: "tensor_zero_dimension",
            bytes: one_tensor(b"t", &[4, 0], F32, 0, 16),
            at: At::Tensor("t"),
            msg: "zero dimension in shape [4, 0]",
        },
        Case {
            name: "tensor_elements_overflow",
            bytes: one_tensor(b"t", &[1 << 32, 1 << 32, 1 << 32], F32, 0, 4),
            at: At::Tensor("t"),
            msg: "element count of shape [4294967296, 4294967296, 4294967296] overflows",
        },
        Case {
            name: "tensor_bytes_overflow",
            bytes: one_tensor(b"t", &[1 << 62, 2], F32, 0, 4),
            at: At::Tensor("t"),
            msg: "byte size of shape [4611686018427387904, 2] overflows",
        },
        Case {
            name: "tensor_not_whole_blocks",
            bytes: one_tensor(b"t", &[33, 32], Q4_0, 0, 18 * 33),
            at: At::Tensor("t"),
            msg: "first dimension 33 is not a multiple of the Q4_0 block size 32",
        },
        Case {
            name: "tensor_offset_misaligned",
            bytes: one_tensor(b"t", &[4], F32, 4, 20),
            at: At::Tensor("t"),
            msg: "data offset 4 is not a multiple of the alignment 32",
        },
        Case {
            name: "tensor_past_end",
            bytes: one_tensor(b"t", &[8], F32, 0, 16),
            at: At::Tensor("t"),
            msg: "data at offset 0 size 32 runs past the end of the data section (16 bytes",
        },
        Case {
            name: "tensor_offset_overflow",
            bytes: one_tensor(b"t", &[8], F32, u64::MAX - 31, 32),
            at: At::Tensor("t"),
            msg: "runs past the end of the data section",
        },
        Case {
            name: "tensors_overlap",
            bytes: Raw::header(3, 2, 0)
                .tensor(b"a", &[16], F32, 0)
                .tensor(b"b", &[16], F32, 32)
                .data(32, 96)
                .done(),
            at: At::Tensor("b"),
            msg: "data [32, 96) overlaps tensor 'a' [0, 64)",
        },
        Case {
            name: "tensor_name_duplicate",
            bytes: Raw::header(3, 2, 0).tensor(b"a", &[8], F32, 0).tensor(b"a", &[8], F32, 32).data(32, 64).done(),
            at: At::Tensor("a"),
            msg: "duplicate tensor name",
        },
        Case {
            name: "tensor_name_not_utf8",
            bytes: one_tensor(b"\xfe", &[8], F32, 0, 32),
            at: At::Byte(32),
            msg: "tensor name #0 is not valid UTF-8",
        },
        Case { name: "tensor_name_empty", bytes: one_tensor(b"", &[8], F32, 0, 32), at: At::Byte(24), msg: "tensor name #0 is empty" },
        Case {
            name: "tensor_descriptor_truncated",
            // A complete descriptor but for its offset (33 bytes: just enough for the count).
            bytes: Raw::header(3, 1, 0).str(b"t").u32(2).u64(4).u64(1).u32(F32).done(),
            at: At::Byte(57),
            msg: "unexpected end of file reading tensor data offset",
        },
        Case {
            name: "data_section_past_end",
            // Descriptors end at byte 57; the data section would start at 64 > 57.
            bytes: Raw::header(3, 1, 0).tensor(b"t", &[1], F32, 0).done(),
            at: At::Byte(57),
            msg: "data section starts at byte 64, past the end of the file (57 bytes)",
        },
    ];
    // A valid file with one byte flipped in a tensor type: from the writer, not by hand.
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "x");
    w.add_tensor("w", &[32], GgmlType::Q8_0, vec![0u8; 34])
        .unwrap();
    let mut b = w.to_bytes();
    let n = b.len();
    b.truncate(n - 1);
    c.push(Case {
        name: "writer_file_short_by_one",
        bytes: b,
        at: At::Tensor("w"),
        msg: "data at offset 0 size 34 runs past the end of the data section (33 bytes",
    });
    c
}

fn check(case: &Case, e: &GgufError) {
    let ok_place = match (&case.at, e) {
        (At::Byte(o), GgufError::Malformed { offset, .. }) => o == offset,
        (At::Key(k), GgufError::Key { key, .. }) => k == key,
        (At::Tensor(t), GgufError::Tensor { name, .. }) => t == name,
        _ => false,
    };
    assert!(
        ok_place,
        "{}: expected an error at {:?}, got {e:?}",
        case.name, case.at
    );
    assert!(
        e.to_string().contains(case.msg),
        "{}: expected '{}' in '{e}'",
        case.name,
        case.msg
    );
}

#[test]
fn every_bad_file_gives_its_specific_error() {
    let cases = corpus();
    for case in &cases {
        match Gguf::from_bytes(case.bytes.clone()) {
            Ok(_) => panic!("{}: accepted", case.name),
            Err(e) => check(case, &e),
        }
    }
    // Names are unique (they become file names).
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf/bad")
}

#[test]
fn fixtures_on_disk_match_the_corpus() {
    let dir = fixture_dir();
    let cases = corpus();
    if std::env::var_os("LLORCH_REGEN_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for c in &cases {
            std::fs::write(dir.join(format!("{}.gguf", c.name)), &c.bytes).unwrap();
            std::fs::write(dir.join(format!("{}.txt", c.name)), format!("{}\n", c.msg)).unwrap();
        }
    }
    for c in &cases {
        let p = dir.join(format!("{}.gguf", c.name));
        let bytes = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate the fixtures)", p.display()));
        assert!(
            bytes == c.bytes,
            "{} is stale (regenerate the fixtures)",
            p.display()
        );
        let msg = std::fs::read_to_string(dir.join(format!("{}.txt", c.name))).unwrap();
        assert_eq!(msg.trim_end(), c.msg);
        // Through the file path (memory map) too.
        check(c, &Gguf::open(&p).unwrap_err());
    }
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        2 * cases.len(),
        "unexpected files in {}",
        dir.display()
    );
}

/// Small valid files exercising every part of the format.
fn valid_files() -> Vec<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama");
    w.add_u32("llama.block_count", 2);
    w.add_str_array("tokenizer.ggml.tokens", &["<s>", "a", "bc"]);
    w.add_f32_array("tokenizer.ggml.scores", &[0.0, -1.0, -2.0]);
    w.add_tensor("a", &[8, 2], GgmlType::F32, vec![1u8; 64])
        .unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0, vec![2u8; 34])
        .unwrap();
    let one = w.to_bytes();
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_bool("x.flag", true);
    w.add(
        "x.nested",
        &llorch::gguf::Value::Array(vec![llorch::gguf::Value::Array(vec![
            llorch::gguf::Value::I16(-3),
        ])]),
    )
    .unwrap();
    w.add_tensor("only", &[256], GgmlType::Q6_K, vec![3u8; 210])
        .unwrap();
    vec![one, w.to_bytes()]
}

#[test]
fn every_truncation_is_an_error() {
    for (i, file) in valid_files().iter().enumerate() {
        Gguf::from_bytes(file.clone()).unwrap_or_else(|e| panic!("valid file {i}: {e}"));
        for len in 0..file.len() {
            let r = std::panic::catch_unwind(|| Gguf::from_bytes(file[..len].to_vec()).map(|_| ()));
            match r {
                Err(_) => panic!("file {i} truncated to {len} bytes: panic"),
                Ok(Ok(())) => panic!(
                    "file {i} truncated to {len} of {} bytes: accepted",
                    file.len()
                ),
                Ok(Err(_)) => {}
            }
        }
    }
}
