//! Generates include/llorch.h from src/ffi with cbindgen. (Owner: the C API work.)

pub fn generate() {}
