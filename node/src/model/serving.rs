//! What a node's `model` role serves: a model group plus its chat template,
//! turning prompts or chat messages into token ids.
use std::path::Path;

use tokio::sync::mpsc::UnboundedReceiver;

use super::adapter::registry::{AdapterInfo, AdapterRegistry, MAX_RESIDENT_ADAPTERS};
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
    path: std::path::PathBuf,
    adapters: AdapterRegistry,
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
        Ok(Self {
            group,
            template,
            name: name.to_string(),
            path: path.to_path_buf(),
            adapters: AdapterRegistry::new(MAX_RESIDENT_ADAPTERS),
        })
    }

    /// The name requests use (`--model NAME=PATH`, or the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GGUF file (a fine-tuning job's base).
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Starts a generation by the base model.
    pub fn generate(&self, ids: Vec<u32>, params: SamplingParams) -> Result<UnboundedReceiver<Event>, ModelError> {
        self.group.submit(ids, params)
    }

    /// Starts a generation with adapter `adapter` (None: the base), loading
    /// it first if it is not resident. Blocks while it loads.
    pub fn generate_with(
        &self,
        ids: Vec<u32>,
        params: SamplingParams,
        adapter: Option<&str>,
    ) -> Result<UnboundedReceiver<Event>, ModelError> {
        let id = match adapter {
            None => None,
            Some(name) => Some(
                self.adapters
                    .resident_id(name, self.group.config(), &self.group)?
                    .ok_or_else(|| ModelError::Input(format!("no adapter '{name}' on model '{}'", self.name)))?,
            ),
        };
        self.group.submit_with_adapter(ids, params, id)
    }

    /// Reads the PEFT adapter in `dir` and serves it as `name` (replacing one
    /// of that name). Blocks while it loads.
    pub fn load_adapter(&self, name: &str, dir: &Path) -> Result<AdapterInfo, ModelError> {
        self.adapters.register(name, dir, self.group.config(), &self.group)
    }

    /// Whether the PEFT folder `dir` holds an adapter this model can run
    /// (read and checked, not loaded).
    pub fn check_adapter(&self, dir: &Path) -> Result<(), ModelError> {
        super::adapter::peft::load(dir, self.group.config())?.check(self.group.config())
    }

    /// Stops serving adapter `name`; false when there is none of that name.
    pub fn unload_adapter(&self, name: &str) -> bool {
        self.adapters.unregister(name, &self.group)
    }

    /// Whether this model has an adapter called `name`.
    pub fn has_adapter(&self, name: &str) -> bool {
        self.adapters.contains(name)
    }

    /// The adapters of this model, by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.adapters.list()
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
