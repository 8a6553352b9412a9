//! What a node's `model` role serves: a model group plus its chat template,
//! turning prompts or chat messages into token ids.
use std::path::Path;

use tokio::sync::mpsc::UnboundedReceiver;

use super::chat::{ChatMessage, ChatTemplate, CHATML, GEMMA_TURNS};
use super::engine::{EngineLimits, Event, ModelGroup};
use super::sampler::SamplingParams;
use super::tokenizer::GgufTokenizer;
use super::ModelError;

/// See the module documentation.
pub struct ModelServing {
    group: ModelGroup,
    template: ChatTemplate,
    name: String,
}

impl ModelServing {
    /// Loads `path` over `tp` in-process ranks, served as `name`.
    pub fn load(name: &str, path: &Path, tp: usize, limits: EngineLimits) -> Result<Self, ModelError> {
        let group = ModelGroup::start_named(name, path, super::engine::local_comms(tp), limits)?;
        Self::from_group(name, path, group)
    }

    /// Serves an already started group (e.g. rank 0 of a group whose other ranks
    /// are in other processes) as `name`.
    pub fn from_group(name: &str, path: &Path, group: ModelGroup) -> Result<Self, ModelError> {
        let template = chat_template(path, group.tokenizer())?;
        Ok(Self { group, template, name: name.to_string() })
    }

    /// The name requests use (`--model NAME=PATH`, or the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The running group.
    pub fn group(&self) -> &ModelGroup {
        &self.group
    }

    /// Token ids for a request: chat `messages`, or a `prompt` that is either raw
    /// text or one user message through the chat template.
    pub fn prompt_ids(&self, prompt: &str, messages: &[ChatMessage], raw: bool) -> Result<Vec<u32>, ModelError> {
        let text = if !messages.is_empty() {
            self.template.render(messages)?
        } else if prompt.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        } else if raw {
            prompt.to_string()
        } else {
            self.template.render(&[ChatMessage::new(tessera_types::Role::User, prompt)])?
        };
        self.group.tokenizer().encode(&text)
    }

    /// Starts a generation.
    pub fn generate(&self, ids: Vec<u32>, params: SamplingParams) -> Result<UnboundedReceiver<Event>, ModelError> {
        self.group.submit(ids, params)
    }
}

/// The GGUF's chat template; without one, Gemma's turn format for Gemma
/// models and ChatML for the rest.
pub fn chat_template(path: &Path, tok: &GgufTokenizer) -> Result<ChatTemplate, ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let ct =
        candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| ModelError::Format(e.to_string()))?;
    let arch = ct.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let fallback = if arch.starts_with("gemma") { GEMMA_TURNS } else { CHATML };
    let source = ct
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| fallback.to_string());
    let piece = |id: Option<u32>| id.and_then(|i| tok.token(i)).unwrap_or("").to_string();
    ChatTemplate::new(&source, &piece(tok.bos_id), &piece(tok.eos_id))
}
