//! The memory manager: every device allocation, accounted against an optional budget.

use super::device::{CudaDevice, Inner};
use super::drv;
use crate::{Error, Result};
use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdeviceptr, CUresult};
use std::sync::Arc;

/// What an allocation is for (reported separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    Weights = 0,
    KvCache = 1,
    Scratch = 2,
    /// f16 copies of quantized weights (src/backend/cuda/model/f16_weights.rs): optional,
    /// made when they take a small share of the card or budget.
    WeightCopies = 3,
}

impl MemKind {
    fn name(self) -> &'static str {
        match self {
            MemKind::Weights => "weights",
            MemKind::KvCache => "KV cache",
            MemKind::Scratch => "scratch",
            MemKind::WeightCopies => "f16 weight copies",
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Accounting {
    used: [u64; 4],
}

impl Accounting {
    fn total(&self) -> u64 {
        self.used.iter().sum()
    }
}

/// Device memory as the context sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes held by live buffers, all kinds.
    pub used: u64,
    pub weights: u64,
    pub kv_cache: u64,
    pub scratch: u64,
    /// The f16 copies of quantized weights (not in `weights`).
    pub weight_copies: u64,
    /// The budget (0 = none).
    pub budget: u64,
    /// What the driver reports free on the card (all processes).
    pub device_free: u64,
    pub device_total: u64,
    /// What a new allocation may take: the card's free memory, capped by what is left of the
    /// budget.
    pub available: u64,
}

/// A device allocation. Frees its memory and its accounting on drop.
pub struct DeviceBuffer {
    ptr: CUdeviceptr,
    bytes: usize,
    kind: MemKind,
    dev: Arc<Inner>,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer({} bytes, {})",
            self.bytes,
            self.kind.name()
        )
    }
}

impl DeviceBuffer {
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }
    pub fn kind(&self) -> MemKind {
        self.kind
    }
    pub(super) fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }
    /// Checks that the buffer belongs to `dev` and holds at least `bytes` (for `what`).
    pub(super) fn check(&self, dev: &CudaDevice, bytes: u64, what: &str) -> Result<()> {
        if !Arc::ptr_eq(&self.dev, &dev.inner) {
            return Err(Error::InvalidArgument(format!(
                "{what}: buffer belongs to another device"
            )));
        }
        if (self.bytes as u64) < bytes {
            return Err(Error::InvalidArgument(format!(
                "{what}: buffer holds {} bytes, {bytes} needed",
                self.bytes
            )));
        }
        Ok(())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr != 0 {
            let _ = self.dev.bind();
            // A failed free (a dead context) cannot be acted on here; the accounting still
            // returns the bytes so that budgets stay consistent.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
        self.dev.acct.lock().used[self.kind as usize] -= self.bytes as u64;
    }
}

/// Page-locked host memory (`cuMemHostAlloc`): the GPU copies into it by DMA at the link's
/// full speed, where a copy into ordinary (pageable) memory goes through the driver's staging
/// buffers. Freed on drop.
pub struct PinnedHost {
    ptr: *mut std::ffi::c_void,
    bytes: usize,
    dev: Arc<Inner>,
}

// SAFETY: the buffer is plain host memory owned by this value; the device handle is Sync.
unsafe impl Send for PinnedHost {}
unsafe impl Sync for PinnedHost {}

impl PinnedHost {
    /// The first i32 of the stage (after a copy into it has completed); None for a stage
    /// of fewer than 4 bytes.
    pub fn first_i32(&self) -> Option<i32> {
        // SAFETY: at least 4 bytes (checked); any bit pattern is an i32; the buffer is
        // page-aligned by the driver.
        (self.bytes >= 4).then(|| unsafe { *(self.ptr as *const i32) })
    }

    /// Set i32 `index` of the stage (ignored past its end). No copy from the stage may be in
    /// flight.
    pub fn set_i32(&mut self, index: usize, v: i32) {
        if (index + 1) * 4 <= self.bytes {
            // SAFETY: in bounds (checked), page-aligned buffer, plain data.
            unsafe { *(self.ptr as *mut i32).add(index) = v }
        }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        // A failed free (a dead context) cannot be acted on here.
        let _ = unsafe { result::free_host(self.ptr) };
    }
}

impl CudaDevice {
    /// `bytes` of page-locked host memory (contents undefined), for downloads that happen
    /// every step. [`Error::OutOfMemory`] if the host cannot lock that much.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedHost> {
        self.inner.bind()?;
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(|e| {
            Error::OutOfMemory(format!("{bytes} bytes of page-locked host memory: {e}"))
        })?;
        Ok(PinnedHost {
            ptr,
            bytes,
            dev: self.inner.clone(),
        })
    }

    /// Append the first `n` f32 values of `buf` to `out`, through `stage` (waits for earlier
    /// work): one DMA copy into page-locked memory, one host copy from there.
    pub fn download_f32_into(
        &self,
        buf: &DeviceBuffer,
        n: usize,
        stage: &PinnedHost,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let bytes = n * 4;
        if bytes > stage.bytes {
            // More than the staging buffer holds (all rows of a prompt's logits): directly.
            out.extend_from_slice(&self.download_f32(buf, n)?);
            return Ok(());
        }
        if n == 0 {
            return buf.check(self, 0, "download");
        }
        self.copy_to_pinned(buf, bytes, stage)?;
        self.synchronize()?;
        // SAFETY: the copy above wrote `n` f32 values to the start of the stage, and it has
        // completed (the stream was synchronized).
        let src = unsafe { std::slice::from_raw_parts(stage.ptr as *const f32, n) };
        out.extend_from_slice(src);
        Ok(())
    }

    /// Start copying the first `bytes` of `buf` into `stage` (page-locked), in stream order,
    /// without waiting: the values are there once the stream is synchronized.
    pub fn copy_to_pinned(
        &self,
        buf: &DeviceBuffer,
        bytes: usize,
        stage: &PinnedHost,
    ) -> Result<()> {
        buf.check(self, bytes as u64, "copy to host")?;
        if bytes > stage.bytes {
            return Err(Error::InvalidArgument(format!(
                "copy of {bytes} bytes into a stage of {}",
                stage.bytes
            )));
        }
        self.inner.bind()?;
        unsafe { sys::cuMemcpyDtoHAsync_v2(stage.ptr, buf.ptr, bytes, self.stream.raw).result() }
            .map_err(|e| drv("copy to host (or an earlier kernel failed)", e))
    }

    /// Start copying `n` i32s from i32 `index` of `stage` (page-locked) to the start of
    /// `buf`, in stream order, without waiting; the stage must stay as it is until the stream
    /// has passed the copy.
    pub fn upload_from_pinned(
        &self,
        buf: &mut DeviceBuffer,
        stage: &PinnedHost,
        index: usize,
        n: usize,
    ) -> Result<()> {
        let bytes = n * 4;
        buf.check(self, bytes as u64, "upload")?;
        if (index + n) * 4 > stage.bytes {
            return Err(Error::InvalidArgument(format!(
                "upload of i32s {index}..{} from a stage of {} bytes",
                index + n,
                stage.bytes
            )));
        }
        self.inner.bind()?;
        let src = unsafe { (stage.ptr as *const u8).add(index * 4) } as *const std::ffi::c_void;
        unsafe { sys::cuMemcpyHtoDAsync_v2(buf.ptr, src, bytes, self.stream.raw).result() }
            .map_err(|e| drv("copy to device", e))
    }

    /// Allocate `bytes` of device memory (contents undefined) for `kind`.
    /// [`Error::OutOfMemory`] when the budget or the card cannot hold it; nothing is held then.
    pub fn alloc(&self, bytes: usize, kind: MemKind) -> Result<DeviceBuffer> {
        let d = &self.inner;
        d.bind()?;
        // Reserve under the lock first, so that concurrent allocations cannot overshoot.
        {
            let mut a = d.acct.lock();
            let used = a.total();
            if d.budget > 0 && used + bytes as u64 > d.budget {
                let (free, _) = result::mem_get_info().unwrap_or((0, 0));
                return Err(Error::OutOfMemory(format!(
                    "{} needs {bytes} bytes on CUDA device {}, but the budget is {} bytes with {used} \
                     in use ({} left); the card has {free} bytes free",
                    kind.name(),
                    d.ordinal,
                    d.budget,
                    d.budget.saturating_sub(used)
                )));
            }
            a.used[kind as usize] += bytes as u64;
        }
        if bytes == 0 {
            return Ok(DeviceBuffer {
                ptr: 0,
                bytes,
                kind,
                dev: d.clone(),
            });
        }
        match unsafe { result::malloc_sync(bytes) } {
            Ok(ptr) => Ok(DeviceBuffer {
                ptr,
                bytes,
                kind,
                dev: d.clone(),
            }),
            Err(e) => {
                let used = {
                    let mut a = d.acct.lock();
                    a.used[kind as usize] -= bytes as u64;
                    a.total()
                };
                let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                    Err(Error::OutOfMemory(format!(
                        "{} needs {bytes} bytes on CUDA device {} ({}), but the card has {free} of \
                         {total} bytes free; llorch holds {used} (budget {})",
                        kind.name(),
                        d.ordinal,
                        d.name,
                        if d.budget == 0 { "none".to_string() } else { d.budget.to_string() }
                    )))
                } else {
                    Err(drv("cuMemAlloc", e))
                }
            }
        }
    }

    /// Used, free and budget numbers.
    pub fn memory(&self) -> Result<MemoryReport> {
        let d = &self.inner;
        d.bind()?;
        let (free, total) = result::mem_get_info().map_err(|e| drv("cuMemGetInfo", e))?;
        let a = d.acct.lock();
        let used = a.total();
        let mut available = free as u64;
        if d.budget > 0 {
            available = available.min(d.budget.saturating_sub(used));
        }
        Ok(MemoryReport {
            used,
            weights: a.used[0],
            kv_cache: a.used[1],
            scratch: a.used[2],
            weight_copies: a.used[3],
            budget: d.budget,
            device_free: free as u64,
            device_total: total as u64,
            available,
        })
    }

    /// Upload bytes into a new buffer (e.g. a quantized weight tensor, exactly as in the file).
    pub fn upload(&self, data: &[u8], kind: MemKind) -> Result<DeviceBuffer> {
        let mut b = self.alloc(data.len(), kind)?;
        self.write(&mut b, 0, data)?;
        Ok(b)
    }

    /// Upload bytes into a new buffer `pad` bytes longer, the padding zeroed (kernels that
    /// load whole 16-byte words may read past the last row).
    pub fn upload_padded(&self, data: &[u8], pad: usize, kind: MemKind) -> Result<DeviceBuffer> {
        let mut b = self.alloc(data.len() + pad, kind)?;
        self.write(&mut b, 0, data)?;
        self.write(&mut b, data.len(), &vec![0u8; pad])?;
        Ok(b)
    }

    pub fn upload_f32(&self, data: &[f32], kind: MemKind) -> Result<DeviceBuffer> {
        self.upload(as_bytes(data), kind)
    }

    pub fn upload_i32(&self, data: &[i32], kind: MemKind) -> Result<DeviceBuffer> {
        self.upload(as_bytes(data), kind)
    }

    /// Copy host bytes into `buf` at byte `offset`.
    pub fn write(&self, buf: &mut DeviceBuffer, offset: usize, data: &[u8]) -> Result<()> {
        if offset.saturating_add(data.len()) > buf.bytes {
            return Err(Error::InvalidArgument(format!(
                "write of {} bytes at offset {offset} into a buffer of {} bytes",
                data.len(),
                buf.bytes
            )));
        }
        buf.check(self, 0, "write")?;
        self.raw_upload(buf.ptr + offset as u64, data)
    }

    /// Set every byte of `buf` to `value` (tests poison outputs with this).
    pub fn fill_bytes(&self, buf: &mut DeviceBuffer, value: u8) -> Result<()> {
        buf.check(self, 0, "fill")?;
        self.raw_fill(buf.ptr, value, buf.bytes)?;
        self.synchronize()
    }

    /// Copy the first `out.len()` bytes of `buf` to the host (waits for earlier work).
    pub fn download(&self, buf: &DeviceBuffer, out: &mut [u8]) -> Result<()> {
        self.download_at(buf, 0, out)
    }

    /// Copy `out.len()` bytes of `buf` from byte `offset` to the host (waits for earlier work).
    pub fn download_at(&self, buf: &DeviceBuffer, offset: usize, out: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(out.len())
            .ok_or_else(|| Error::InvalidArgument("download range overflows".into()))?;
        buf.check(self, end as u64, "download")?;
        self.raw_download(buf.ptr + offset as u64, out)
    }

    // Copies by device address, for memory that is not one `DeviceBuffer` of its own (the
    // KV cache's pages, parts of a slab). The callers check that the range lies in memory
    // of this device that they hold; the buffer forms above and below check it and call these.

    /// `data` to device address `dst`, in stream order with the kernels; waited for, so
    /// `data` may be dropped after.
    pub(super) fn raw_upload(&self, dst: CUdeviceptr, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.inner.bind()?;
        unsafe { result::memcpy_htod_async(dst, data, self.stream.raw) }
            .map_err(|e| drv("copy to device", e))?;
        self.synchronize()
    }

    /// `out.len()` bytes from device address `src` to the host (waits for earlier work).
    pub(super) fn raw_download(&self, src: CUdeviceptr, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.inner.bind()?;
        unsafe { result::memcpy_dtoh_async(out, src, self.stream.raw) }
            .map_err(|e| drv("copy to host (or an earlier kernel failed)", e))?;
        self.synchronize()
    }

    /// Set `bytes` bytes from device address `dst` to `value`, in stream order (no wait).
    pub(super) fn raw_fill(&self, dst: CUdeviceptr, value: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.inner.bind()?;
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream.raw) }
            .map_err(|e| drv("memset", e))
    }

    /// Copy `bytes` bytes from device address `src` to `dst` (not overlapping), in stream
    /// order with the kernels (no wait).
    pub(super) fn raw_copy(&self, dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.inner.bind()?;
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.raw) }
            .map_err(|e| drv("device-to-device copy", e))
    }

    /// The first `n` f32 values of `buf`.
    pub fn download_f32(&self, buf: &DeviceBuffer, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0f32; n];
        self.download(buf, as_bytes_mut(&mut v))?;
        Ok(v)
    }

    /// The first `n` i32 values of `buf`.
    pub fn download_i32(&self, buf: &DeviceBuffer, n: usize) -> Result<Vec<i32>> {
        let mut v = vec![0i32; n];
        self.download(buf, as_bytes_mut(&mut v))?;
        Ok(v)
    }
}

/// Plain-old-data numbers as bytes.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: used only with f32/i32 (no padding, every bit pattern valid as bytes).
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: used only with f32/i32, for which every byte pattern is a valid value.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
