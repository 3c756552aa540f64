//! The weight view the backends bind: rows of one tensor of the file, in its block format.

use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// A weight as the backends see it: `rows` output features of `cols` inputs each, stored in
/// the file's block format. It is rows `row0..row0 + rows` of the file tensor `info`: a whole
/// tensor, or a view into a fused one (Phi-3's `attn_qkv`), bound without a copy.
#[derive(Debug, Clone)]
pub struct WeightTensor {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row0: usize,
    pub info: TensorInfo,
}

impl WeightTensor {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> Result<usize> {
        self.ty
            .bytes_for(self.cols as u64)
            .map(|b| b as usize)
            .ok_or_else(|| {
                Error::BadModel(format!(
                    "tensor '{}': row of {} values",
                    self.name, self.cols
                ))
            })
    }

    /// The view's bytes inside the file, checked against the tensor's size (the table that
    /// made the view checked its shape against the tensor's dims).
    pub fn data<'g>(&self, gguf: &'g Gguf) -> Result<&'g [u8]> {
        let all = gguf.tensor_data(&self.info);
        let rb = self.row_bytes()?;
        let range = rb
            .checked_mul(self.row0)
            .and_then(|a| Some((a, a.checked_add(rb.checked_mul(self.rows)?)?)));
        match range {
            Some((a, b)) if b <= all.len() => Ok(&all[a..b]),
            _ => Err(Error::BadModel(format!(
                "tensor '{}': {} bytes for rows {}..{} of {} values",
                self.name,
                all.len(),
                self.row0,
                self.row0 + self.rows,
                self.cols
            ))),
        }
    }

    /// Bytes of the view (0 when the row size overflows: `data` reports that).
    pub fn view_bytes(&self) -> u64 {
        self.ty
            .bytes_for(self.cols as u64)
            .map_or(0, |rb| rb.saturating_mul(self.rows as u64))
    }

    /// A one-row tensor (norm weight, bias) as f32.
    pub fn to_f32(&self, data: &[u8]) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.cols];
        crate::quant::dequantize(self.ty, data, &mut v)
            .map_err(|e| Error::BadModel(format!("tensor '{}': {e}", self.name)))?;
        Ok(v)
    }
}
