//! Architectures: hyper-parameters from metadata, tensor names, the layer recipe; and the
//! loaded [`Model`] (weights bound to a backend, tokenizer, chat template).

mod gemma3;
mod gpt_oss;
pub mod hparams;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;
pub mod recipe;
pub mod synth;

use crate::backend::kvpool::{KvPool, Layout, PoolStats, BLOCK_POSITIONS};
use crate::backend::{Context, Dims, Reservation, Weights};
use crate::gguf::Gguf;
use crate::grammar::VocabTrie;
use crate::tokenizer::chat::ChatMessage;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use hparams::HParams;
use recipe::Recipe;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The architectures this build runs: `general.architecture` → recipe builder.
/// Builds an architecture's recipe from the file and its hyper-parameters.
type BuildRecipe = fn(&Gguf, HParams) -> Result<Recipe>;

const ARCHITECTURES: &[(&str, BuildRecipe)] = &[
    ("qwen2", qwen2::build),
    ("llama", llama::build),
    ("gemma3", gemma3::build),
    ("qwen3", qwen3::build),
    ("phi3", phi3::build),
    ("gpt-oss", gpt_oss::build),
];

/// Loaded weights bound to a context, with tokenizer and hyper-parameters. Shared by sessions.
pub struct Model {
    pub(crate) ctx: Arc<Context>,
    pub(crate) gguf: Arc<Gguf>,
    pub(crate) recipe: Recipe,
    /// The vocabulary's byte trie for constrained output, built on first use.
    vocab_trie: OnceLock<Arc<VocabTrie>>,
    pub(crate) weights: Weights,
    /// The weights' bytes, accounted against the context's budget.
    _reservation: Reservation,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    /// Steps the generating sessions together (continuous batching).
    pub(crate) batcher: crate::session::batch::Batcher,
    /// The KV memory of the model's sessions (those whose backend takes it in blocks).
    pub(crate) kv_pool: Arc<KvPool>,
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
        let reservation = ctx.reserve(
            Weights::host_bytes(ctx, &recipe.tensors),
            "the model's weights",
        )?;
        let weights = Weights::bind(ctx, &gguf, &recipe.tensors, progress)?;
        let dims = recipe.hp.dims();
        let kv_pool = KvPool::new(
            ctx.clone(),
            Layout {
                n_layer: dims.n_layer,
                kv_dim: dims.kv_dim(),
                block: BLOCK_POSITIONS,
            },
        );
        Ok(Arc::new(Model {
            kv_pool,
            ctx: ctx.clone(),
            gguf,
            vocab_trie: OnceLock::new(),
            recipe,
            weights,
            _reservation: reservation,
            tokenizer,
            chat_template,
            batcher: Default::default(),
        }))
    }

    /// What the model's KV pool holds now.
    pub fn kv_stats(&self) -> PoolStats {
        self.kv_pool.stats()
    }

    /// What the batcher has done: steps run, the sequences they carried, sessions
    /// generating now.
    pub fn batch_stats(&self) -> crate::session::batch::BatchStats {
        self.batcher.stats()
    }

    pub fn architecture(&self) -> &str {
        &self.recipe.hp.arch
    }
    pub fn hparams(&self) -> &HParams {
        &self.recipe.hp
    }
    /// The sizes the backends allocate for.
    pub fn dims(&self) -> Dims {
        self.recipe.hp.dims()
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
    /// The tokens' texts as a byte trie (for constrained output), built once per model.
    pub fn vocab_trie(&self) -> Result<Arc<VocabTrie>> {
        if let Some(t) = self.vocab_trie.get() {
            return Ok(t.clone());
        }
        let t = Arc::new(VocabTrie::new(&self.tokenizer)?);
        Ok(self.vocab_trie.get_or_init(|| t).clone())
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
        use crate::tokenizer::chat::TemplateOrigin;
        let (origin, template) = match (template, self.chat_template.as_deref()) {
            (Some(t), _) => (TemplateOrigin::Caller, t),
            (None, Some(t)) => (TemplateOrigin::Model, t),
            (None, None) => {
                return Err(Error::Unsupported(
                    "the model has no chat template in its metadata; pass one".into(),
                ))
            }
        };
        let tok = &self.tokenizer;
        let text_of = |id: Option<u32>| id.map(|i| tok.token_text(i)).unwrap_or_default();
        crate::tokenizer::chat::render_from(
            origin,
            template,
            messages,
            add_generation_prompt,
            &text_of(tok.bos_id()),
            &text_of(tok.eos_id()),
        )
    }
}
