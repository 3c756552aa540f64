//! The compute context: a device, its CPU threads and its memory budget. Shared by the
//! models loaded in it (`Arc`); every byte a model or session allocates is reserved here.

use super::cpu;
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which device a context computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// CUDA device by ordinal.
    Cuda(u32),
}

/// Options of a context (the C `llorch_context`).
#[derive(Debug, Clone)]
pub struct ContextOptions {
    pub device: Device,
    /// CPU worker threads; 0 = all cores.
    pub threads: usize,
    /// Bytes the context may allocate for weights, KV caches and scratch; 0 = no limit.
    pub memory_budget: u64,
}

/// Most CPU threads a context may ask for, per core: beyond a few per core, threads only
/// contend (and a typo such as 100000 would try to start that many).
pub const MAX_THREADS_PER_CORE: usize = 4;

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            device: Device::Cpu,
            threads: 0,
            memory_budget: 0,
        }
    }
}

/// A compute context: a device, its threads and memory budget. Shared by models (Arc).
pub struct Context {
    pub options: ContextOptions,
    pub(crate) pool: Arc<cpu::Pool>,
    used: AtomicU64,
    /// The open GPU of a `Device::Cuda` context (its memory manager holds the budget).
    #[cfg(feature = "cuda")]
    pub(crate) cuda: Option<super::cuda::CudaDevice>,
}

impl Context {
    /// `Error::NoDevice` if the device is not there.
    pub fn new(options: ContextOptions) -> Result<Arc<Context>> {
        #[cfg(feature = "cuda")]
        let cuda = match options.device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(super::cuda::CudaDevice::open(n, options.memory_budget)?),
        };
        #[cfg(not(feature = "cuda"))]
        if let Device::Cuda(n) = options.device {
            return Err(Error::NoDevice(format!(
                "CUDA device {n} requested, but this build has no CUDA backend (build with --features cuda)"
            )));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if options.threads > cores * MAX_THREADS_PER_CORE {
            return Err(Error::InvalidArgument(format!(
                "{} CPU threads asked for; this machine has {cores} cores and a context may use \
                 at most {} ({MAX_THREADS_PER_CORE} per core)",
                options.threads,
                cores * MAX_THREADS_PER_CORE
            )));
        }
        let pool = cpu::thread_pool(options.threads)?;
        Ok(Arc::new(Context {
            options,
            pool,
            used: AtomicU64::new(0),
            #[cfg(feature = "cuda")]
            cuda,
        }))
    }

    /// The GPU's memory (used per kind, budget, free) for a CUDA context; None for the CPU.
    #[cfg(feature = "cuda")]
    pub fn memory_report(&self) -> Result<Option<super::cuda::MemoryReport>> {
        self.cuda.as_ref().map(|d| d.memory()).transpose()
    }

    /// The open GPU of a CUDA context.
    #[cfg(feature = "cuda")]
    pub fn cuda_device(&self) -> Option<&super::cuda::CudaDevice> {
        self.cuda.as_ref()
    }

    /// Worker threads of the context.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Bytes currently accounted to models' and sessions' buffers.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Account `bytes` for `what` against the budget; released when the reservation drops.
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation> {
        let budget = self.options.memory_budget;
        let prev = self.used.fetch_add(bytes, Ordering::SeqCst);
        if budget != 0 && prev.saturating_add(bytes) > budget {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::OutOfMemory(format!(
                "{what} needs {bytes} bytes; {prev} of the context's budget of {budget} bytes are in use"
            )));
        }
        Ok(Reservation {
            ctx: self.clone(),
            bytes,
        })
    }
}

/// Bytes accounted to a context, given back on drop.
pub struct Reservation {
    ctx: Arc<Context>,
    bytes: u64,
}

impl Reservation {
    /// Bytes this reservation holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Moves `bytes` of this reservation into a new one (None if it holds fewer): a grant
    /// made up front, handed out piece by piece.
    pub fn split(&mut self, bytes: u64) -> Option<Reservation> {
        self.bytes = self.bytes.checked_sub(bytes)?;
        Some(Reservation {
            ctx: self.ctx.clone(),
            bytes,
        })
    }

    /// The context it is accounted in.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ctx.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}
