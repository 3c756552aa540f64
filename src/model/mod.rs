//! Architectures: hyper-parameters from metadata, tensor names, the layer recipe; and the
//! loaded [`Model`] (weights bound to a backend, tokenizer, chat template).

pub mod hparams;
mod llama;
mod qwen2;
pub mod recipe;
pub mod synth;

use crate::backend::cpu::{self, CpuModel};
use crate::backend::{ContextOptions, Device};
use crate::gguf::Gguf;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use hparams::HParams;
use recipe::Recipe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The architectures this build runs: `general.architecture` → recipe builder.
/// Builds an architecture's recipe from the file and its hyper-parameters.
type BuildRecipe = fn(&Gguf, HParams) -> Result<Recipe>;

const ARCHITECTURES: &[(&str, BuildRecipe)] = &[("qwen2", qwen2::build), ("llama", llama::build)];

/// A compute context: a device, its threads and memory budget. Shared by models (Arc).
pub struct Context {
    pub options: ContextOptions,
    pool: Arc<cpu::Pool>,
    used: AtomicU64,
    /// The open GPU of a `Device::Cuda` context (its memory manager holds the budget).
    #[cfg(feature = "cuda")]
    cuda: Option<crate::backend::cuda::CudaDevice>,
}

impl Context {
    /// `Error::NoDevice` if the device is not there.
    pub fn new(options: ContextOptions) -> Result<Arc<Context>> {
        #[cfg(feature = "cuda")]
        let cuda = match options.device {
            Device::Cpu => None,
            Device::Cuda(n) => Some(crate::backend::cuda::CudaDevice::open(
                n,
                options.memory_budget,
            )?),
        };
        #[cfg(not(feature = "cuda"))]
        if let Device::Cuda(n) = options.device {
            return Err(Error::NoDevice(format!(
                "CUDA device {n} requested, but this build has no CUDA backend (build with --features cuda)"
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
    pub fn memory_report(&self) -> Result<Option<crate::backend::cuda::MemoryReport>> {
        self.cuda.as_ref().map(|d| d.memory()).transpose()
    }

    /// The open GPU of a CUDA context.
    #[cfg(feature = "cuda")]
    pub fn cuda_device(&self) -> Option<&crate::backend::cuda::CudaDevice> {
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

impl Drop for Reservation {
    fn drop(&mut self) {
        self.ctx.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// One chat message for template rendering.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Weights bound to a backend.
pub(crate) enum Bound {
    Cpu(CpuModel),
    #[cfg(feature = "cuda")]
    Cuda(crate::backend::cuda::CudaModel),
}

/// Loaded weights bound to a context, with tokenizer and hyper-parameters. Shared by sessions.
pub struct Model {
    pub(crate) ctx: Arc<Context>,
    pub(crate) gguf: Arc<Gguf>,
    pub(crate) recipe: Recipe,
    pub(crate) bound: Bound,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
}

impl Model {
    /// Load a GGUF model. `progress(fraction)` returning false cancels (`Error::Cancelled`).
    pub fn load(
        ctx: &Arc<Context>,
        path: &Path,
        progress: Option<&mut dyn FnMut(f32) -> bool>,
    ) -> Result<Arc<Model>> {
        let gguf = Arc::new(Gguf::open(path)?);
        let arch = gguf
            .get_str("general.architecture")?
            .ok_or_else(|| Error::BadModel("missing metadata key 'general.architecture'".into()))?
            .to_string();
        let build = ARCHITECTURES
            .iter()
            .find(|(name, _)| *name == arch)
            .map(|(_, b)| *b)
            .ok_or_else(|| {
                let known: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
                Error::Unsupported(format!(
                    "architecture '{arch}' (this build runs: {})",
                    known.join(", ")
                ))
            })?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let hp = HParams::from_gguf(&gguf, &arch, tokenizer.vocab_size())?;
        let recipe = build(&gguf, hp)?;
        let chat_template = gguf.get_str("tokenizer.chat_template")?.map(str::to_string);
        let mut no_progress = |_: f32| true;
        let progress = progress.unwrap_or(&mut no_progress);
        let bound = match ctx.options.device {
            Device::Cpu => Bound::Cpu(CpuModel::new(
                gguf.clone(),
                &recipe.tensors,
                ctx.pool.clone(),
                progress,
            )?),
            #[cfg(feature = "cuda")]
            Device::Cuda(n) => {
                let dev = ctx.cuda.clone().ok_or_else(|| {
                    Error::Internal(format!("CUDA context without its device {n}"))
                })?;
                Bound::Cuda(crate::backend::cuda::CudaModel::new(
                    dev,
                    &gguf,
                    &recipe.tensors,
                    progress,
                )?)
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(n) => {
                return Err(Error::NoDevice(format!(
                    "CUDA device {n}: not available in this build"
                )))
            }
        };
        Ok(Arc::new(Model {
            ctx: ctx.clone(),
            gguf,
            recipe,
            bound,
            tokenizer,
            chat_template,
        }))
    }

    pub fn architecture(&self) -> &str {
        &self.recipe.hp.arch
    }
    pub fn hparams(&self) -> &HParams {
        &self.recipe.hp
    }
    /// Training context length from metadata.
    pub fn context_length(&self) -> u32 {
        self.recipe.hp.n_ctx_train.min(u32::MAX as usize) as u32
    }
    pub fn vocab_size(&self) -> usize {
        self.recipe.hp.vocab
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }
    /// The model's Jinja chat template, if its metadata has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
    /// Render messages with the model's template (or `template` if given).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        template: Option<&str>,
    ) -> Result<String> {
        let template = template.or(self.chat_template.as_deref()).ok_or_else(|| {
            Error::InvalidArgument(
                "the model has no chat template in its metadata; pass one".into(),
            )
        })?;
        let tok = &self.tokenizer;
        let text_of = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
        crate::tokenizer::chat::render(
            template,
            messages,
            add_generation_prompt,
            &text_of(tok.bos_id()),
            &text_of(tok.eos_id()),
        )
    }
}
