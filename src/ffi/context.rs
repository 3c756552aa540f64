//! llorch_context: a device, its threads and memory budget.

use super::{
    arg, call, check_struct_size, guard, llorch_error, llorch_status, out, read_sized_fields,
};
use crate::backend::Context;
use crate::backend::{ContextOptions, Device};
use crate::Error;
use std::sync::Arc;

/// A compute context: a device with its worker threads and memory budget. Models loaded in it
/// keep it alive, so it may be freed before them. Created by `llorch_context_new`, freed by
/// `llorch_context_free`. Thread-safety: a context may be used by several threads at once.
pub struct llorch_context {
    pub(crate) ctx: Arc<Context>,
}

/// Kind of device of a context (the `device_type` field of `llorch_context_params`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum llorch_device_type {
    LLORCH_DEVICE_CPU = 0,
    /// An NVIDIA GPU; needs a build with CUDA and a device.
    LLORCH_DEVICE_CUDA = 1,
}

/// Parameters of `llorch_context_new`. Fill with `llorch_context_params_init` first, then set
/// fields; `struct_size` lets later versions append fields without breaking callers.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct llorch_context_params {
    /// sizeof(llorch_context_params), set by llorch_context_params_init.
    pub struct_size: usize,
    /// A `llorch_device_type` value. Default `LLORCH_DEVICE_CPU`.
    pub device_type: i32,
    /// CUDA device ordinal (ignored for the CPU). Default 0.
    pub device_index: u32,
    /// CPU worker threads; 0 = all cores (the default). At most 4 per core: more is
    /// `LLORCH_ERR_INVALID_ARGUMENT`.
    pub threads: u32,
    /// Bytes the context may allocate for weights, KV caches and scratch; 0 = no limit (default).
    /// On the CPU the weights count with the bytes of the file they are read from in place.
    pub memory_budget: u64,
}

const CONTEXT_PARAMS_MIN: usize = std::mem::offset_of!(llorch_context_params, memory_budget) + 8;

fn context_params_default() -> llorch_context_params {
    let d = ContextOptions::default();
    let (device_type, device_index) = match d.device {
        Device::Cpu => (llorch_device_type::LLORCH_DEVICE_CPU as i32, 0),
        Device::Cuda(n) => (llorch_device_type::LLORCH_DEVICE_CUDA as i32, n),
    };
    llorch_context_params {
        struct_size: std::mem::size_of::<llorch_context_params>(),
        device_type,
        device_index,
        threads: d.threads as u32,
        memory_budget: d.memory_budget,
    }
}

/// Fills `params` with the defaults (CPU, all cores, no memory limit) and its struct_size.
/// NULL is ignored. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_context_params_init(params: *mut llorch_context_params) {
    guard(
        |_| (),
        || {
            if let Some(p) = params.as_mut() {
                *p = context_params_default();
            }
        },
    )
}

/// Creates a context. `params` may be NULL for the defaults. On success `*out` receives the
/// handle; on failure `*out` is untouched and `*err` (if `err` is not NULL) receives the reason.
/// `LLORCH_ERR_NO_DEVICE` if the device is absent, `LLORCH_ERR_UNSUPPORTED` for an unknown
/// device type. Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn llorch_context_new(
    params: *const llorch_context_params,
    out_context: *mut *mut llorch_context,
    err: *mut *mut llorch_error,
) -> llorch_status {
    call(err, || {
        let out_context = out(out_context, "out_context")?;
        let mut p = context_params_default();
        if !params.is_null() {
            let size = arg(params, "params")?.struct_size;
            check_struct_size(size, CONTEXT_PARAMS_MIN, "params")?;
            read_sized_fields!(params, size, p: llorch_context_params {
                device_type, device_index, threads, memory_budget
            });
        }
        let device = match p.device_type {
            0 => Device::Cpu,
            1 => Device::Cuda(p.device_index),
            t => {
                return Err(Error::Unsupported(format!(
                    "params->device_type {t} is not a llorch_device_type"
                )))
            }
        };
        let options = ContextOptions {
            device,
            threads: p.threads as usize,
            memory_budget: p.memory_budget,
        };
        let ctx = Context::new(options)?;
        *out_context = Box::into_raw(Box::new(llorch_context { ctx }));
        Ok(())
    })
}

/// Frees a context handle. Models loaded in it keep what they need alive. NULL is ignored.
/// Thread-safety: any thread, but not while another call is using this handle.
#[no_mangle]
pub unsafe extern "C" fn llorch_context_free(context: *mut llorch_context) {
    guard(
        |_| (),
        || {
            if !context.is_null() {
                drop(Box::from_raw(context));
            }
        },
    )
}
