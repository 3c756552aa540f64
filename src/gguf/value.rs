//! Metadata value types and their compact, file-borrowing storage.

use super::Value;
use std::fmt;

/// A metadata value type as numbered in GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// Encoded size of a fixed-size type; None for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            Str | Array => None,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A byte range of the file (a validated UTF-8 string).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub off: usize,
    pub len: usize,
}

impl Span {
    /// The string at this span. Spans are validated when the file is opened, so the
    /// fallback never happens; it only avoids `unsafe` and panics.
    pub fn str(self, buf: &[u8]) -> &str {
        buf.get(self.off..self.off + self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

/// A stored metadata value. Scalars are decoded; strings and arrays point into the
/// file so a 151k-entry token list costs one (offset, len) pair per entry.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A fixed-size scalar: its type and the offset of its bytes.
    Scalar(ValueType, usize),
    Str(Span),
    /// An array of fixed-size scalars: element type, count, offset of the first.
    PodArray(ValueType, usize, usize),
    StrArray(Vec<Span>),
    /// An array of arrays (each element is itself an array node).
    ArrArray(Vec<Node>),
}

/// Decode one fixed-size scalar of type `ty` at `off` (bounds were checked at open).
pub(crate) fn scalar<'a>(buf: &'a [u8], ty: ValueType, off: usize) -> Value<'a> {
    fn arr<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(b) = buf.get(off..off + N) {
            a.copy_from_slice(b);
        }
        a
    }
    use ValueType as T;
    match ty {
        T::U8 => Value::U8(arr::<1>(buf, off)[0]),
        T::I8 => Value::I8(arr::<1>(buf, off)[0] as i8),
        T::Bool => Value::Bool(arr::<1>(buf, off)[0] != 0),
        T::U16 => Value::U16(u16::from_le_bytes(arr(buf, off))),
        T::I16 => Value::I16(i16::from_le_bytes(arr(buf, off))),
        T::U32 => Value::U32(u32::from_le_bytes(arr(buf, off))),
        T::I32 => Value::I32(i32::from_le_bytes(arr(buf, off))),
        T::F32 => Value::F32(f32::from_le_bytes(arr(buf, off))),
        T::U64 => Value::U64(u64::from_le_bytes(arr(buf, off))),
        T::I64 => Value::I64(i64::from_le_bytes(arr(buf, off))),
        T::F64 => Value::F64(f64::from_le_bytes(arr(buf, off))),
        // Never stored as scalars.
        T::Str | T::Array => Value::Array(Vec::new()),
    }
}

impl Node {
    pub fn to_value<'a>(&self, buf: &'a [u8]) -> Value<'a> {
        match self {
            Node::Scalar(ty, off) => scalar(buf, *ty, *off),
            Node::Str(s) => Value::Str(s.str(buf)),
            Node::PodArray(ty, n, off) => {
                let size = ty.fixed_size().unwrap_or(1);
                Value::Array((0..*n).map(|i| scalar(buf, *ty, off + i * size)).collect())
            }
            Node::StrArray(v) => Value::Array(v.iter().map(|s| Value::Str(s.str(buf))).collect()),
            Node::ArrArray(v) => Value::Array(v.iter().map(|n| n.to_value(buf)).collect()),
        }
    }

    /// A short description of the stored type, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Node::Scalar(ty, _) => ty.name().to_string(),
            Node::Str(_) => "string".into(),
            Node::PodArray(ty, ..) => format!("array of {}", ty.name()),
            Node::StrArray(_) => "array of string".into(),
            Node::ArrArray(_) => "array of array".into(),
        }
    }
}

impl Value<'_> {
    /// The value as an integer, if it is one (any width or sign).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The GGUF type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }
}

/// Human-readable form; long arrays and strings are abbreviated.
impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) => {
                const MAX: usize = 60;
                if s.chars().count() > MAX {
                    let head: String = s.chars().take(MAX).collect();
                    write!(f, "{:?}… ({} bytes)", head, s.len())
                } else {
                    write!(f, "{s:?}")
                }
            }
            Value::Array(items) => {
                const SHOW: usize = 5;
                write!(f, "[")?;
                for (i, v) in items.iter().take(SHOW).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() > SHOW {
                    write!(f, ", … ({} items)", items.len())?;
                }
                write!(f, "]")
            }
        }
    }
}
