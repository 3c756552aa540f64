//! GGUF v2/v3 reader over a memory map, validated so a hostile file is harmless.
//! (Agreed interface; the implementation fills in the bodies.)
//!
//! `Gguf::open` maps the file and validates everything before returning: header, every
//! metadata value, every tensor descriptor, the alignment, and that each tensor's data lies
//! inside the data section without overlapping another. After that, accessors cannot fail
//! on the file's account. (A file truncated by another process *while mapped* can still
//! fault on access; that is inherent to memory maps.)

mod reader;
mod value;
mod writer;

pub use reader::{DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_ARRAY_DEPTH};
pub use value::ValueType;
pub use writer::GgufWriter;

use crate::quant::GgmlType;
use std::collections::HashMap;
use std::path::Path;
use value::{Node, Span};

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
    bytes: Backing,
    version: u32,
    alignment: u64,
    kvs: Vec<(Span, Node)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

/// The file's bytes: a read-only map, or an owned copy aligned to 64 bytes so tensor data
/// is as aligned in memory as in the file (up to 64).
enum Backing {
    Map(memmap2::Mmap),
    Owned(AlignedBuf),
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

struct AlignedBuf {
    chunks: Vec<Chunk>,
    len: usize,
}

impl AlignedBuf {
    fn new(bytes: &[u8]) -> Self {
        let mut chunks = vec![Chunk([0; 64]); bytes.len().div_ceil(64)];
        for (c, b) in chunks.iter_mut().zip(bytes.chunks(64)) {
            c.0[..b.len()].copy_from_slice(b);
        }
        AlignedBuf {
            chunks,
            len: bytes.len(),
        }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `Chunk` is 64 plain bytes with no padding, the chunks are contiguous and
        // hold at least `len` bytes, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.chunks.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Backing {
    fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(b) => b.as_slice(),
        }
    }
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("version", &self.version)
            .field("metadata", &self.kvs.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Open `path` for reading if it is a regular file. Opening a FIFO blocks until a writer
/// comes (forever, for a path given by mistake) and a device never ends, so the type is checked
/// before opening; the open does not block (`O_NONBLOCK`) and the type is checked again on the
/// open file, so a FIFO swapped in between is refused as well.
fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), GgufError> {
    let io = |e: std::io::Error| GgufError::Io(format!("{}: {e}", path.display()));
    let refuse = |meta: &std::fs::Metadata| {
        GgufError::Io(format!(
            "{}: not a regular file but {}",
            path.display(),
            file_kind(meta)
        ))
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(&meta));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(&meta));
    }
    Ok((file, meta))
}

/// What a non-regular file is, in words.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "a special file"
    }
}

impl Gguf {
    /// Open and map the model file at `path`, which must be a regular file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |e: std::io::Error| GgufError::Io(format!("{}: {e}", path.display()));
        let (file, meta) = open_regular(path)?;
        if meta.len() == 0 {
            // Mapping an empty file fails on some systems; report it as what it is.
            return Self::from_bytes(Vec::new());
        }
        // SAFETY: the map is read-only; we never hand out mutable access. Another process
        // truncating the file while it is mapped is outside what any reader can prevent.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_backing(Backing::Map(map))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_backing(Backing::Owned(AlignedBuf::new(&bytes)))
    }

    fn from_backing(bytes: Backing) -> Result<Self, GgufError> {
        let p = reader::parse(bytes.as_slice())?;
        Ok(Gguf {
            bytes,
            version: p.version,
            alignment: p.alignment,
            kvs: p.kvs,
            key_index: p.key_index,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
            data_offset: p.data_offset,
        })
    }

    fn buf(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Byte offset of the data section in the file (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Length of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.buf().len() as u64
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> Vec<(&str, Value<'_>)> {
        let buf = self.buf();
        self.kvs
            .iter()
            .map(|(k, n)| (k.str(buf), n.to_value(buf)))
            .collect()
    }
    /// Metadata keys in file order (cheap: decodes no values).
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        let buf = self.buf();
        self.kvs.iter().map(move |(k, _)| k.str(buf))
    }
    /// Number of elements of an array value (cheap), None if absent or not an array.
    pub fn array_len(&self, key: &str) -> Option<usize> {
        match self.node(key)? {
            Node::PodArray(_, n, _) => Some(*n),
            Node::StrArray(v) => Some(v.len()),
            Node::ArrArray(v) => Some(v.len()),
            Node::Scalar(..) | Node::Str(_) => None,
        }
    }

    fn node(&self, key: &str) -> Option<&Node> {
        self.key_index.get(key).map(|&i| &self.kvs[i].1)
    }

    pub fn get(&self, key: &str) -> Option<Value<'_>> {
        self.node(key).map(|n| n.to_value(self.buf()))
    }

    fn wrong_type(&self, key: &str, want: &str, node: &Node) -> GgufError {
        GgufError::Key {
            key: key.into(),
            msg: format!("expected {want}, found {}", node.type_name()),
        }
    }

    fn get_int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<Option<T>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        let v = node.to_value(self.buf());
        let i = v
            .as_i128()
            .ok_or_else(|| self.wrong_type(key, want, node))?;
        T::try_from(i).map(Some).map_err(|_| GgufError::Key {
            key: key.into(),
            msg: format!("value {i} does not fit in {want}"),
        })
    }

    /// Typed accessors: Ok(None) when absent, Err when present with the wrong type.
    /// Integer accessors accept any integer type whose value fits.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get_int(key, "u32")
    }
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_int(key, "u64")
    }
    /// Accepts f32, and f64 (rounded to f32).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        match node.to_value(self.buf()) {
            Value::F32(v) => Ok(Some(v)),
            Value::F64(v) => Ok(Some(v as f32)),
            _ => Err(self.wrong_type(key, "f32", node)),
        }
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        match node.to_value(self.buf()) {
            Value::Bool(v) => Ok(Some(v)),
            _ => Err(self.wrong_type(key, "bool", node)),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        match node {
            Node::Str(s) => Ok(Some(s.str(self.buf()))),
            _ => Err(self.wrong_type(key, "string", node)),
        }
    }
    /// An array of strings. An empty array of any element type is accepted as empty.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        let buf = self.buf();
        match node {
            Node::StrArray(v) => Ok(Some(v.iter().map(|s| s.str(buf)).collect())),
            _ if self.array_len(key) == Some(0) => Ok(Some(Vec::new())),
            _ => Err(self.wrong_type(key, "array of string", node)),
        }
    }
    /// An array of f32. An empty array of any element type is accepted as empty.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        match node {
            Node::PodArray(ValueType::F32, n, off) => {
                let buf = self.buf();
                let f = |i: usize| match value::scalar(buf, ValueType::F32, off + 4 * i) {
                    Value::F32(x) => x,
                    _ => 0.0, // unreachable: the type was checked above
                };
                Ok(Some((0..*n).map(f).collect()))
            }
            _ if self.array_len(key) == Some(0) => Ok(Some(Vec::new())),
            _ => Err(self.wrong_type(key, "array of f32", node)),
        }
    }
    /// An array of integers that all fit in i32 (any integer element type).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        let Some(node) = self.node(key) else {
            return Ok(None);
        };
        let is_int = |t: &ValueType| {
            use ValueType::*;
            matches!(t, U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64)
        };
        match node {
            Node::PodArray(t, n, off) if is_int(t) => {
                let (buf, size) = (self.buf(), t.fixed_size().unwrap_or(1));
                let mut out = Vec::with_capacity(*n);
                for i in 0..*n {
                    let v = value::scalar(buf, *t, off + i * size);
                    let x = v.as_i128().and_then(|x| i32::try_from(x).ok());
                    out.push(x.ok_or_else(|| GgufError::Key {
                        key: key.into(),
                        msg: format!("element {i} ({v}) does not fit in i32"),
                    })?);
                }
                Ok(Some(out))
            }
            _ if self.array_len(key) == Some(0) => Ok(Some(Vec::new())),
            _ => Err(self.wrong_type(key, "array of integers", node)),
        }
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The bytes of a tensor, borrowed from the map: exactly `t.size` bytes for a tensor of
    /// this file. A descriptor that is not from this file and points outside it gets an
    /// empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(s), Some(e)) => self.buf().get(s as usize..e as usize).unwrap_or(&[]),
            _ => &[],
        }
    }
}

// The reader is shared across threads (model, sessions).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Gguf>();
};
