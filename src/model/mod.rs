//! Architectures: hyper-parameters from metadata, tensor names, the layer recipe.
//! (Agreed interface; the implementation fills in the bodies.)

use crate::backend::ContextOptions;
use crate::tokenizer::Tokenizer;
use crate::Result;
use std::path::Path;
use std::sync::Arc;

/// A compute context: a device, its threads and memory budget. Shared by models (Arc).
pub struct Context {
    pub options: ContextOptions,
}

impl Context {
    /// `Error::NoDevice` if the device is not there.
    pub fn new(options: ContextOptions) -> Result<Arc<Context>> {
        Ok(Arc::new(Context { options }))
    }
}

/// One chat message for template rendering.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Loaded weights bound to a context, with tokenizer and hyper-parameters. Shared by sessions.
pub struct Model {
    _todo: (),
}

impl Model {
    /// Load a GGUF model. `progress(fraction)` returning false cancels (`Error::Cancelled`).
    pub fn load(
        _ctx: &Arc<Context>,
        _path: &Path,
        _progress: Option<&mut dyn FnMut(f32) -> bool>,
    ) -> Result<Arc<Model>> {
        todo!()
    }
    pub fn architecture(&self) -> &str {
        todo!()
    }
    /// Training context length from metadata.
    pub fn context_length(&self) -> u32 {
        todo!()
    }
    pub fn vocab_size(&self) -> usize {
        todo!()
    }
    pub fn tokenizer(&self) -> &Tokenizer {
        todo!()
    }
    /// The model's Jinja chat template, if its metadata has one.
    pub fn chat_template(&self) -> Option<&str> {
        todo!()
    }
    /// Render messages with the model's template (or `template` if given).
    pub fn apply_chat_template(
        &self,
        _messages: &[ChatMessage],
        _add_generation_prompt: bool,
        _template: Option<&str>,
    ) -> Result<String> {
        todo!()
    }
}
