//! Compute backends: CPU always, CUDA with the `cuda` feature.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

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

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions { device: Device::Cpu, threads: 0, memory_budget: 0 }
    }
}
