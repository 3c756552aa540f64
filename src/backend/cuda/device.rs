//! Opening a device: driver, context, kernels.

use super::memory::Accounting;
use super::{drv, fatbins};
use crate::{Error, Result};
use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

/// An open CUDA device with its memory manager and loaded kernels, and the stream this handle
/// issues work on. Cheap to clone (clones share device and stream);
/// [`with_own_stream`](Self::with_own_stream) gives a handle with a stream of its own (one per
/// session, so that sessions in different threads neither serialize nor get captured into each
/// other's CUDA graphs).
#[derive(Clone)]
pub struct CudaDevice {
    pub(super) inner: Arc<Inner>,
    pub(super) stream: Arc<Stream>,
}

/// A non-blocking CUDA stream (no implicit ordering with the legacy default stream).
pub(super) struct Stream {
    pub raw: sys::CUstream,
    dev: Arc<Inner>,
}

// A stream handle may be used from any thread; the driver serializes access to it.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    fn new(dev: &Arc<Inner>) -> Result<Arc<Stream>> {
        dev.bind()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(|e| drv("stream creation", e))?;
        Ok(Arc::new(Stream {
            raw,
            dev: dev.clone(),
        }))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.dev.bind();
        unsafe {
            let _ = result::stream::synchronize(self.raw);
            let _ = result::stream::destroy(self.raw);
        }
    }
}

pub(super) struct Inner {
    pub ordinal: u32,
    pub name: String,
    pub total_bytes: u64,
    /// Streaming multiprocessors (sizes persistent grids).
    pub sm_count: u32,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    modules: Vec<sys::CUmodule>,
    pub funcs: HashMap<String, sys::CUfunction>,
    /// 0 = no budget beyond the card.
    pub budget: u64,
    pub acct: Mutex<Accounting>,
}

// The driver API is thread-safe; the handles are plain ids owned by this struct.
unsafe impl Send for Inner {}
unsafe impl Sync for Inner {}

impl Inner {
    /// Make this device's context current on the calling thread (every driver call needs it).
    pub fn bind(&self) -> Result<()> {
        unsafe { result::ctx::set_current(self.ctx) }.map_err(|e| drv("cuCtxSetCurrent", e))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Buffers hold an Arc of this, so all of them are freed by now.
        unsafe {
            let _ = result::ctx::set_current(self.ctx);
            for m in self.modules.drain(..) {
                let _ = result::module::unload(m);
            }
            let _ = result::primary_ctx::release(self.dev);
        }
    }
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}: {})", self.inner.ordinal, self.inner.name)
    }
}

impl CudaDevice {
    /// Open GPU `ordinal` with an allocation budget in bytes (0 = the whole card).
    /// [`Error::NoDevice`] when the driver library is missing, no GPU answers, the ordinal is
    /// out of range, or the GPU is older than the kernels' target (compute capability 9.0).
    pub fn open(ordinal: u32, budget_bytes: u64) -> Result<CudaDevice> {
        // cudarc panics on a missing driver symbol (a driver older than its bindings): turn
        // that into an answer too.
        match std::panic::catch_unwind(|| open_inner(ordinal, budget_bytes)) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Error::NoDevice(format!(
                    "the CUDA driver could not be used (is it older than CUDA 13.0?): {msg}"
                )))
            }
        }
    }

    pub fn ordinal(&self) -> u32 {
        self.inner.ordinal
    }

    /// The GPU's name, e.g. "NVIDIA H200".
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The card's total memory in bytes.
    pub fn total_memory(&self) -> u64 {
        self.inner.total_bytes
    }

    /// Wait for the work issued through this handle's stream; reports a kernel fault as an
    /// error.
    pub fn synchronize(&self) -> Result<()> {
        self.inner.bind()?;
        unsafe { result::stream::synchronize(self.stream.raw) }
            .map_err(|e| drv("synchronize (a kernel failed?)", e))
    }

    /// A handle on the same device (memory, kernels) with a new stream of its own.
    pub fn with_own_stream(&self) -> Result<CudaDevice> {
        Ok(CudaDevice {
            inner: self.inner.clone(),
            stream: Stream::new(&self.inner)?,
        })
    }

    /// Streaming multiprocessors of the GPU.
    pub fn sm_count(&self) -> u32 {
        self.inner.sm_count
    }
}

fn open_inner(ordinal: u32, budget: u64) -> Result<CudaDevice> {
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::NoDevice(
            "the CUDA driver library (libcuda.so.1) was not found: no NVIDIA driver is installed \
             (or it is not on the loader path)"
                .into(),
        ));
    }
    result::init().map_err(|e| {
        Error::NoDevice(format!(
            "the CUDA driver is installed but cuInit failed: {e}"
        ))
    })?;
    let count = result::device::get_count()
        .map_err(|e| Error::NoDevice(format!("cuDeviceGetCount failed: {e}")))?;
    if ordinal as i64 >= count as i64 {
        return Err(Error::NoDevice(format!(
            "CUDA device {ordinal} was asked for but the driver sees {count} device(s)"
        )));
    }
    let dev = result::device::get(ordinal as i32)
        .map_err(|e| Error::NoDevice(format!("cuDeviceGet({ordinal}): {e}")))?;
    let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown GPU".into());
    let attr =
        |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|e| drv("attribute", e));
    let major = attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    if major < 9 {
        return Err(Error::NoDevice(format!(
            "CUDA device {ordinal} ({name}) has compute capability {major}.{minor}; llorch's \
             kernels are built for 9.0 (Hopper) and newer"
        )));
    }
    let total_bytes =
        unsafe { result::device::total_mem(dev) }.map_err(|e| drv("total_mem", e))? as u64;
    let sm_count = attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
    let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| drv("primary context", e))?;
    let mut inner = Inner {
        ordinal,
        name,
        total_bytes,
        sm_count,
        dev,
        ctx,
        modules: Vec::new(),
        funcs: HashMap::new(),
        budget,
        acct: Mutex::new(Accounting::default()),
    };
    inner.bind()?;
    // From here on, an early return drops `inner`, which unloads and releases what it holds.
    for (file, image) in fatbins::FATBINS {
        // The driver reads the fatbin header as 8-byte words: give it an aligned copy.
        let mut aligned = vec![0u64; image.len().div_ceil(8)];
        unsafe {
            std::ptr::copy_nonoverlapping(
                image.as_ptr(),
                aligned.as_mut_ptr() as *mut u8,
                image.len(),
            )
        };
        let module = unsafe { result::module::load_data(aligned.as_ptr() as *const c_void) }
            .map_err(|e| {
                Error::NoDevice(format!(
                    "CUDA device {ordinal} ({}) cannot load kernels/{file}.cu (sm_90 code): {e}",
                    inner.name
                ))
            })?;
        inner.modules.push(module);
        let names = super::launch::kernel_names(file).iter();
        for &func in names.chain(super::fused::rows_kernel_names(file)) {
            let c = CString::new(func).expect("kernel names have no NUL");
            let f = unsafe { result::module::get_function(module, c) }.map_err(|e| {
                Error::Internal(format!("kernel {func} missing from {file}.cu: {e}"))
            })?;
            super::fused::prepare_kernel(func, f)?;
            inner.funcs.insert(func.to_string(), f);
        }
    }
    let inner = Arc::new(inner);
    let stream = Stream::new(&inner)?;
    Ok(CudaDevice { inner, stream })
}
