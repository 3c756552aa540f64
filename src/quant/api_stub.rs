//! TEMPORARY stand-ins for the quant API being written on branch `quant` (removed at merge).
#![allow(unused_variables)]
use super::GgmlType;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuantError(pub String);
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    todo!()
}
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    todo!()
}
pub fn vec_dot(ty: GgmlType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    todo!()
}
pub fn vec_dot_multi(ty: GgmlType, row: &[u8], acts: &[BlockQ8], n_cols: usize, out: &mut [f32]) {
    todo!()
}
pub fn vec_dot_f32(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    todo!()
}
pub fn supported_for_dot(ty: GgmlType) -> bool {
    todo!()
}
