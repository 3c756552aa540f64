//! GGUF v2/v3 reader over a memory map, validated so a hostile file is harmless.
//! (Agreed interface; the implementation fills in the bodies.)

use crate::quant::GgmlType;
use std::path::Path;

/// What went wrong reading a GGUF file, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(String),
    /// Malformed content: message names the byte offset, key or tensor.
    #[error("malformed GGUF at byte {offset}: {msg}")]
    Malformed { offset: u64, msg: String },
    /// A metadata key is missing or has the wrong type.
    #[error("metadata key '{key}': {msg}")]
    Key { key: String, msg: String },
    /// A tensor descriptor is invalid.
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
}

/// One metadata value. Strings borrow from the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    U64(u64),
    I64(i64),
    F64(f64),
    Array(Vec<Value<'a>>),
}

/// A tensor descriptor. `dims[0]` is the innermost (row) length, as in GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Number of rows (product of all dims but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }
}

/// An open, validated GGUF file.
pub struct Gguf {
    _todo: (),
}

impl Gguf {
    pub fn open(_path: &Path) -> Result<Self, GgufError> {
        todo!()
    }
    pub fn from_bytes(_bytes: Vec<u8>) -> Result<Self, GgufError> {
        todo!()
    }
    pub fn version(&self) -> u32 {
        todo!()
    }
    pub fn alignment(&self) -> u64 {
        todo!()
    }
    /// All metadata in file order.
    pub fn metadata(&self) -> Vec<(&str, Value<'_>)> {
        todo!()
    }
    pub fn get(&self, _key: &str) -> Option<Value<'_>> {
        todo!()
    }
    /// Typed accessors: Ok(None) when absent, Err when present with the wrong type.
    /// Integer accessors accept any integer type whose value fits.
    pub fn get_u32(&self, _key: &str) -> Result<Option<u32>, GgufError> {
        todo!()
    }
    pub fn get_u64(&self, _key: &str) -> Result<Option<u64>, GgufError> {
        todo!()
    }
    pub fn get_f32(&self, _key: &str) -> Result<Option<f32>, GgufError> {
        todo!()
    }
    pub fn get_bool(&self, _key: &str) -> Result<Option<bool>, GgufError> {
        todo!()
    }
    pub fn get_str(&self, _key: &str) -> Result<Option<&str>, GgufError> {
        todo!()
    }
    pub fn get_str_array(&self, _key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        todo!()
    }
    pub fn get_f32_array(&self, _key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        todo!()
    }
    pub fn get_i32_array(&self, _key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        todo!()
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        todo!()
    }
    pub fn tensor(&self, _name: &str) -> Option<&TensorInfo> {
        todo!()
    }
    /// The bytes of a tensor, borrowed from the map.
    pub fn tensor_data(&self, _t: &TensorInfo) -> &[u8] {
        todo!()
    }
}
