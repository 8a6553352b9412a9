//! Request and response bodies of the OpenAI-compatible API.
//!
//! Requests are lenient where OpenAI clients differ (content as a string or as
//! text parts, `stop` as a string or a list) and strict about types: a wrong
//! type is a 400 naming the problem. Unknown fields are ignored, as OpenAI
//! clients send many optional ones. The `collection`, `session`, `top_k`,
//! `mode` and `template` fields are Tessera's extension for retrieval and memory.
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message's content: a string, or a list of parts of which text parts are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts such as `{"type": "text", "text": "..."}`.
    Parts(Vec<ContentPart>),
}

/// One part of a content list.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// "text" (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// A chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// system, developer, user or assistant.
    pub role: String,
    /// The content (null for assistant messages that only called tools).
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Stop {
    /// As a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    /// "text", "json_object" or "json_schema".
    #[serde(rename = "type")]
    pub kind: String,
    /// For "json_schema": `{"name", "schema", "strict"}`.
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// The schema of a `json_schema` response format.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    /// The JSON Schema.
    #[serde(default)]
    pub schema: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// POST /v1/chat/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model id (see /v1/models).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling temperature (default 1 as in OpenAI; 0 = greedy).
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Answer length.
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed.
    pub seed: Option<u64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// JSON output.
    pub response_format: Option<ResponseFormat>,
    /// Choices (only 1).
    pub n: Option<u32>,
    /// Tessera: retrieve from this collection (the last user message is the question).
    pub collection: Option<String>,
    /// Tessera: keep the conversation under this session id (server-side memory).
    pub session: Option<String>,
    /// Tessera: chunks to retrieve.
    pub top_k: Option<u32>,
    /// Tessera: vector, bm25 or hybrid.
    pub mode: Option<String>,
    /// Tessera: prompt template of the ask chain.
    pub template: Option<String>,
}

/// `prompt` of /v1/completions: a string or a list with one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// A list (token arrays are refused).
    Many(Vec<Value>),
}

/// POST /v1/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Model id.
    pub model: String,
    /// The prompt, continued as raw text.
    pub prompt: Prompt,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Completion length (OpenAI's default is 16).
    pub max_tokens: Option<u32>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed.
    pub seed: Option<u64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// Choices (only 1).
    pub n: Option<u32>,
    /// Echo the prompt (unsupported when true).
    #[serde(default)]
    pub echo: bool,
}

/// `input` of /v1/embeddings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts (token arrays are refused).
    Many(Vec<Value>),
}

/// POST /v1/embeddings.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// Model id.
    pub model: String,
    /// Texts.
    pub input: EmbeddingInput,
    /// "float" (default) or "base64".
    pub encoding_format: Option<String>,
    /// Must equal the model's dimension when given.
    pub dimensions: Option<u32>,
}

/// Token usage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl Usage {
    /// From the wire usage.
    pub fn from_pb(u: Option<tessera_proto::v1::Usage>) -> Self {
        let u = u.unwrap_or_default();
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// A source of a retrieval-augmented answer (Tessera extension).
#[derive(Debug, Clone, Serialize)]
pub struct SourceOut {
    /// Document id.
    pub doc_id: String,
    /// Chunk id.
    pub chunk_id: String,
    /// Retrieval score.
    pub score: f32,
}
