//! A GGUF v3 writer: metadata of every type, tensors with alignment padding.
//! Used by tests and by the synthetic-model generator.

use super::reader::{DEFAULT_ALIGNMENT, MAGIC, MAX_ALIGNMENT, MAX_DIMS};
use super::{GgufError, Value, ValueType};
use crate::quant::GgmlType;
use std::io::Write;
use std::path::Path;

/// Builds a GGUF v3 file in memory.
///
/// Metadata is encoded as it is added; adding a key that already exists replaces its value
/// in place (so a file never gets duplicate keys). Tensors are laid out in the order added,
/// each at an offset that is a multiple of the alignment.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    alignment: u64,
    kvs: Vec<(String, Vec<u8>)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encode a value's payload (without its type id). Arrays must be homogeneous.
fn encode(out: &mut Vec<u8>, v: &Value<'_>) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(items) => {
            // An empty array carries no element type; it is written as an array of u8.
            let ety = items.first().map_or(ValueType::U8, |v| v.value_type());
            out.extend_from_slice(&ety.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for (i, item) in items.iter().enumerate() {
                if item.value_type() != ety {
                    return Err(format!(
                        "array element {i} is {}, element 0 is {}",
                        item.value_type().name(),
                        ety.name()
                    ));
                }
                encode(out, item)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Set the data alignment (a power of two up to 1 MiB); also writes `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<(), GgufError> {
        if alignment == 0 || !alignment.is_power_of_two() || alignment > MAX_ALIGNMENT {
            return Err(GgufError::Key {
                key: "general.alignment".into(),
                msg: format!(
                    "alignment {alignment} is not a power of two between 1 and {MAX_ALIGNMENT}"
                ),
            });
        }
        self.alignment = alignment;
        self.add_u32("general.alignment", alignment as u32);
        Ok(())
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Add (or replace) a metadata value of any type. Fails only for a heterogeneous array.
    pub fn add(&mut self, key: &str, value: &Value<'_>) -> Result<(), GgufError> {
        let mut bytes = value.value_type().id().to_le_bytes().to_vec();
        encode(&mut bytes, value).map_err(|msg| GgufError::Key {
            key: key.into(),
            msg,
        })?;
        self.put_raw(key, bytes);
        Ok(())
    }

    /// Store an encoded (type id + payload) value under `key`, replacing any earlier one.
    fn put_raw(&mut self, key: &str, bytes: Vec<u8>) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = bytes,
            None => self.kvs.push((key.to_string(), bytes)),
        }
    }

    fn add_scalar(&mut self, key: &str, v: Value<'_>) {
        let mut bytes = v.value_type().id().to_le_bytes().to_vec();
        // Scalars never fail to encode.
        let _ = encode(&mut bytes, &v);
        self.put_raw(key, bytes);
    }

    pub fn add_u8(&mut self, key: &str, v: u8) {
        self.add_scalar(key, Value::U8(v))
    }
    pub fn add_i8(&mut self, key: &str, v: i8) {
        self.add_scalar(key, Value::I8(v))
    }
    pub fn add_u16(&mut self, key: &str, v: u16) {
        self.add_scalar(key, Value::U16(v))
    }
    pub fn add_i16(&mut self, key: &str, v: i16) {
        self.add_scalar(key, Value::I16(v))
    }
    pub fn add_u32(&mut self, key: &str, v: u32) {
        self.add_scalar(key, Value::U32(v))
    }
    pub fn add_i32(&mut self, key: &str, v: i32) {
        self.add_scalar(key, Value::I32(v))
    }
    pub fn add_u64(&mut self, key: &str, v: u64) {
        self.add_scalar(key, Value::U64(v))
    }
    pub fn add_i64(&mut self, key: &str, v: i64) {
        self.add_scalar(key, Value::I64(v))
    }
    pub fn add_f32(&mut self, key: &str, v: f32) {
        self.add_scalar(key, Value::F32(v))
    }
    pub fn add_f64(&mut self, key: &str, v: f64) {
        self.add_scalar(key, Value::F64(v))
    }
    pub fn add_bool(&mut self, key: &str, v: bool) {
        self.add_scalar(key, Value::Bool(v))
    }
    pub fn add_str(&mut self, key: &str, v: &str) {
        self.add_scalar(key, Value::Str(v))
    }

    /// A typed array of fixed-size elements, given as their little-endian bytes.
    fn add_pod_array(&mut self, key: &str, ety: ValueType, n: usize, payload: &[u8]) {
        let mut bytes = ValueType::Array.id().to_le_bytes().to_vec();
        bytes.extend_from_slice(&ety.id().to_le_bytes());
        bytes.extend_from_slice(&(n as u64).to_le_bytes());
        bytes.extend_from_slice(payload);
        self.put_raw(key, bytes);
    }

    /// An array of strings (keeps its element type even when empty).
    pub fn add_str_array<S: AsRef<str>>(&mut self, key: &str, items: &[S]) {
        let mut bytes = ValueType::Array.id().to_le_bytes().to_vec();
        bytes.extend_from_slice(&ValueType::Str.id().to_le_bytes());
        bytes.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            put_str(&mut bytes, s.as_ref());
        }
        self.put_raw(key, bytes);
    }
    pub fn add_f32_array(&mut self, key: &str, items: &[f32]) {
        let payload: Vec<u8> = items.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_pod_array(key, ValueType::F32, items.len(), &payload)
    }
    pub fn add_i32_array(&mut self, key: &str, items: &[i32]) {
        let payload: Vec<u8> = items.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_pod_array(key, ValueType::I32, items.len(), &payload)
    }
    pub fn add_u32_array(&mut self, key: &str, items: &[u32]) {
        let payload: Vec<u8> = items.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_pod_array(key, ValueType::U32, items.len(), &payload)
    }

    /// Add a tensor. `dims[0]` is the innermost length; `data` must be exactly the bytes
    /// of that shape in type `ty`.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), GgufError> {
        let err = |msg: String| GgufError::Tensor {
            name: name.into(),
            msg,
        };
        if name.is_empty() {
            return Err(err("empty tensor name".into()));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(err("duplicate tensor name".into()));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS as usize || dims.contains(&0) {
            return Err(err(format!(
                "bad shape {dims:?}: 1 to {MAX_DIMS} dimensions, each > 0"
            )));
        }
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = n
            .filter(|_| dims[0] % ty.block_size() as u64 == 0)
            .and_then(|n| ty.bytes_for(n))
            .ok_or_else(|| err(format!("shape {dims:?} is not whole {} blocks", ty.name())))?;
        let data = data.into();
        if data.len() as u64 != want {
            return Err(err(format!(
                "{} data bytes, shape {dims:?} needs {want}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        Ok(())
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Write the file to `path`, streaming the tensor data (no second copy in memory).
    pub fn write_file(&self, path: &Path) -> Result<(), GgufError> {
        let io = |e: std::io::Error| GgufError::Io(format!("{}: {e}", path.display()));
        let f = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        self.write_to(&mut w).map_err(io)?;
        w.flush().map_err(io)
    }

    /// Write the file to any sink.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut head, k);
            head.extend_from_slice(v);
        }
        let a = self.alignment;
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&(t.ty as u32).to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(a);
        }
        w.write_all(&head)?;
        // Without tensors there is no data section, hence no padding.
        let mut pos = head.len() as u64;
        for t in &self.tensors {
            let pad = pos.next_multiple_of(a) - pos;
            w.write_all(&vec![0u8; pad as usize])?;
            w.write_all(&t.data)?;
            pos += pad + t.data.len() as u64;
        }
        Ok(())
    }
}
