//! Parsing and validation of the GGUF header, metadata and tensor descriptors.
//!
//! Rule: nothing is allocated for a count or length until the bytes it implies are known
//! to be in the file, and every offset/size computation is checked.

use super::value::{Node, Span, ValueType};
use super::{GgufError, TensorInfo};
use crate::quant::GgmlType;
use std::collections::HashMap;

/// "GGUF" as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest accepted `general.alignment`: anything larger is surely corrupt.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Largest accepted nesting of arrays (1 = a plain array).
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Largest key or tensor name, in bytes.
pub const MAX_NAME_LEN: u64 = 65535;
pub const MAX_DIMS: u32 = 4;

/// Initial capacity at most this: vectors grow only with entries actually parsed, so a
/// count that is merely plausible never reserves memory up front.
const MAX_PREALLOC: usize = 1 << 16;

/// Smallest encodings, used to bound counts by the bytes left before allocating.
const MIN_KV_BYTES: usize = 8 + 1 + 4 + 1; // key len, 1-byte key, type, 1-byte value
const MIN_TENSOR_BYTES: usize = 8 + 1 + 4 + 8 + 4 + 8; // name len, name, n_dims, 1 dim, type, offset
const MIN_STRING_BYTES: usize = 8;
const MIN_ARRAY_BYTES: usize = 4 + 8;

/// Everything parsed from a file, before it is wrapped in a `Gguf`.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(Span, Node)>,
    pub key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub data_offset: u64,
}

fn malformed(offset: usize, msg: impl Into<String>) -> GgufError {
    GgufError::Malformed {
        offset: offset as u64,
        msg: msg.into(),
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(malformed(
                self.pos,
                format!(
                    "unexpected end of file reading {what}: need {n} bytes, {} left",
                    self.left()
                ),
            ));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_bytes` long: must fit in the bytes left.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = (self.left() / min_bytes.max(1)) as u64;
        if n > max {
            return Err(malformed(
                at,
                format!(
                    "{what} {n} is impossible: {} bytes left hold at most {max}",
                    self.left()
                ),
            ));
        }
        Ok(n as usize)
    }

    /// A length-prefixed UTF-8 string, returned as a span of the buffer.
    fn string(&mut self, what: &str, max_len: u64) -> Result<Span, GgufError> {
        let at = self.pos;
        let len = self.u64(&format!("{what} length"))?;
        if len > self.left() as u64 {
            return Err(malformed(
                at,
                format!("{what} length {len} exceeds the {} bytes left", self.left()),
            ));
        }
        if len > max_len {
            return Err(malformed(
                at,
                format!("{what} length {len} exceeds the limit {max_len}"),
            ));
        }
        let off = self.pos;
        let bytes = self.take(len as usize, what)?;
        if let Err(e) = std::str::from_utf8(bytes) {
            return Err(malformed(
                off + e.valid_up_to(),
                format!(
                    "{what} is not valid UTF-8 (bad byte {} of {len})",
                    e.valid_up_to()
                ),
            ));
        }
        Ok(Span {
            off,
            len: len as usize,
        })
    }
}

pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0 };

    // --- header ---
    let magic = c.take(4, "magic").map_err(|_| {
        malformed(
            0,
            format!("file too short for a GGUF header ({} bytes)", buf.len()),
        )
    })?;
    if magic != MAGIC {
        return Err(malformed(
            0,
            format!("bad magic {magic:02x?}: not a GGUF file"),
        ));
    }
    let vbytes: [u8; 4] = c.array("version")?;
    let version = u32::from_le_bytes(vbytes);
    let version_be = u32::from_be_bytes(vbytes);
    if version == 1 {
        return Err(malformed(
            4,
            "GGUF version 1 (32-bit counts) is not supported; convert to v3",
        ));
    }
    if version != 2 && version != 3 {
        if (1..=3).contains(&version_be) {
            return Err(malformed(
                4,
                format!(
                    "big-endian GGUF (version {version_be} stored big-endian) is not supported"
                ),
            ));
        }
        return Err(malformed(4, format!("unsupported GGUF version {version}")));
    }
    // v2 and v3 share the layout (u64 counts); v3 only added big-endian files.
    let n_tensors = c.count(MIN_TENSOR_BYTES, "tensor count")?;
    let n_kv = c.count(MIN_KV_BYTES, "metadata key-value count")?;

    // --- metadata ---
    let mut kvs = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut key_index = HashMap::with_capacity(n_kv.min(MAX_PREALLOC));
    for i in 0..n_kv {
        let at = c.pos;
        let key_span = c.string(&format!("metadata key #{i}"), MAX_NAME_LEN)?;
        let key = key_span.str(buf);
        if key.is_empty() {
            return Err(malformed(at, format!("metadata key #{i} is empty")));
        }
        let ty_at = c.pos;
        let ty_id = c.u32("value type")?;
        let ty = ValueType::from_id(ty_id)
            .ok_or_else(|| malformed(ty_at, format!("key '{key}': unknown value type {ty_id}")))?;
        let node = read_value(&mut c, ty, 0, key)?;
        if key_index.insert(key.to_string(), kvs.len()).is_some() {
            return Err(malformed(at, format!("duplicate metadata key '{key}'")));
        }
        kvs.push((key_span, node));
    }

    // --- alignment ---
    let alignment = match key_index.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(&i) => {
            let key_err = |msg: String| GgufError::Key {
                key: "general.alignment".into(),
                msg,
            };
            let v = kvs[i].1.to_value(buf);
            let a = v.as_i128().ok_or_else(|| {
                key_err(format!(
                    "must be an integer, found {}",
                    kvs[i].1.type_name()
                ))
            })?;
            if a <= 0 || a > MAX_ALIGNMENT as i128 || (a as u64).count_ones() != 1 {
                return Err(key_err(format!(
                    "alignment {a} is not a power of two between 1 and {MAX_ALIGNMENT}"
                )));
            }
            a as u64
        }
    };

    // --- tensor descriptors ---
    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(MAX_PREALLOC));
    for i in 0..n_tensors {
        let at = c.pos;
        let name_span = c.string(&format!("tensor name #{i}"), MAX_NAME_LEN)?;
        let name = name_span.str(buf).to_string();
        let terr = |msg: String| GgufError::Tensor {
            name: name.clone(),
            msg: format!("{msg} (descriptor at byte {at})"),
        };
        if name.is_empty() {
            return Err(malformed(at, format!("tensor name #{i} is empty")));
        }
        let n_dims = c.u32("tensor dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(terr(format!(
                "{n_dims} dimensions (must be 1 to {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64("tensor dimension")?);
        }
        if dims.contains(&0) {
            return Err(terr(format!("zero dimension in shape {dims:?}")));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| terr(format!("element count of shape {dims:?} overflows")))?;
        let ty_id = c.u32("tensor type")?;
        let ty =
            GgmlType::from_id(ty_id).ok_or_else(|| terr(format!("unknown tensor type {ty_id}")))?;
        let bs = ty.block_size() as u64;
        if dims[0] % bs != 0 {
            return Err(terr(format!(
                "first dimension {} is not a multiple of the {} block size {bs}",
                dims[0],
                ty.name()
            )));
        }
        let size = ty
            .bytes_for(n_elements)
            .ok_or_else(|| terr(format!("byte size of shape {dims:?} overflows")))?;
        let offset = c.u64("tensor data offset")?;
        if offset % alignment != 0 {
            return Err(terr(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(terr("duplicate tensor name".into()));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            size,
        });
    }

    // --- data section ---
    let end_of_infos = c.pos as u64;
    let file_len = buf.len() as u64;
    let data_offset = end_of_infos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| malformed(c.pos, "data section offset overflows"))?;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(malformed(
            c.pos,
            format!("data section starts at byte {data_offset}, past the end of the file ({file_len} bytes)"),
        ));
    }
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.size);
        if end.map_or(true, |e| e > data_len) {
            return Err(GgufError::Tensor {
                name: t.name.clone(),
                msg: format!(
                    "data at offset {} size {} runs past the end of the data section ({data_len} bytes from byte {data_offset})",
                    t.offset, t.size
                ),
            });
        }
    }
    // Overlap: sort by offset, each must end before the next begins.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        // Both ends were checked above, so the sum cannot overflow.
        if a.offset + a.size > b.offset {
            return Err(GgufError::Tensor {
                name: b.name.clone(),
                msg: format!(
                    "data [{}, {}) overlaps tensor '{}' [{}, {})",
                    b.offset,
                    b.offset + b.size,
                    a.name,
                    a.offset,
                    a.offset + a.size
                ),
            });
        }
    }

    Ok(Parsed {
        version,
        alignment,
        kvs,
        key_index,
        tensors,
        tensor_index,
        data_offset,
    })
}

/// Read one value of type `ty`. `depth` is the number of enclosing arrays.
fn read_value(c: &mut Cursor<'_>, ty: ValueType, depth: u32, key: &str) -> Result<Node, GgufError> {
    let at = c.pos;
    match ty {
        ValueType::Str => Ok(Node::Str(
            c.string(&format!("value of key '{key}'"), u64::MAX)?,
        )),
        ValueType::Array => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(malformed(
                    at,
                    format!("key '{key}': arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
                ));
            }
            let ety_id = c.u32("array element type")?;
            let ety = ValueType::from_id(ety_id).ok_or_else(|| {
                malformed(
                    at,
                    format!("key '{key}': unknown array element type {ety_id}"),
                )
            })?;
            let what = format!("key '{key}': array length");
            match ety {
                ValueType::Str => {
                    let n = c.count(MIN_STRING_BYTES, &what)?;
                    let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                    for _ in 0..n {
                        v.push(c.string(&format!("string in array of key '{key}'"), u64::MAX)?);
                    }
                    Ok(Node::StrArray(v))
                }
                ValueType::Array => {
                    let n = c.count(MIN_ARRAY_BYTES, &what)?;
                    let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                    for _ in 0..n {
                        v.push(read_value(c, ValueType::Array, depth + 1, key)?);
                    }
                    Ok(Node::ArrArray(v))
                }
                _ => {
                    let size = ety.fixed_size().unwrap_or(1);
                    let n = c.count(size, &what)?;
                    let off = c.pos;
                    let bytes = c.take(n * size, "array data")?;
                    if ety == ValueType::Bool {
                        check_bools(bytes, off, key)?;
                    }
                    Ok(Node::PodArray(ety, n, off))
                }
            }
        }
        _ => {
            let size = ty.fixed_size().unwrap_or(1);
            let bytes = c.take(size, &format!("value of key '{key}'"))?;
            if ty == ValueType::Bool {
                check_bools(bytes, at, key)?;
            }
            Ok(Node::Scalar(ty, at))
        }
    }
}

/// GGUF booleans are one byte, 0 or 1.
fn check_bools(bytes: &[u8], off: usize, key: &str) -> Result<(), GgufError> {
    match bytes.iter().position(|&b| b > 1) {
        None => Ok(()),
        Some(i) => Err(malformed(
            off + i,
            format!(
                "key '{key}': invalid bool byte {} (must be 0 or 1)",
                bytes[i]
            ),
        )),
    }
}
