//! Generation: the model node's token stream, whole greedy generations for the
//! chains' internal steps, token counts, and what the models and embedder are.
//!
//! A request names its model (`model`; "" or "default" = a node's first). The
//! coordinator does not track which node serves which name: it asks model
//! nodes in turn and takes the first that serves it (a node that does not
//! answers NOT_FOUND, cheaply, before any work), so one process with several
//! models and a cluster of single-model nodes route the same way.
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tonic::Code;

use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// A model node passes a request to the next one when it is unreachable, or
/// does not serve the model the request names (NOT_FOUND, before any work);
/// when no node serves it, the last NOT_FOUND is the answer.
const MODEL_NODE_PASSES: &[Code] = &[Code::Unavailable, Code::NotFound];

impl Coordinator {
    /// Information on the default model of a node that serves models (name, context length).
    pub async fn model_info(&self) -> Result<Option<pb::ModelInfo>> {
        Ok(self.node_info(NodeRole::Model).await?.model)
    }

    /// Every model served by a reachable model node (a name once, in the order
    /// nodes and their models come; the first is the default).
    pub async fn served_models(&self) -> Result<Vec<pb::ModelInfo>> {
        let mut out: Vec<pb::ModelInfo> = Vec::new();
        for node in self.nodes.with_role(NodeRole::Model) {
            let Ok(info) = node.client.clone().info(pb::NodeInfoRequest {}).await else { continue };
            for m in info.into_inner().models {
                if !out.iter().any(|o| o.name == m.name) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// The embedding model's name (None when no node embeds).
    pub async fn embedder_name(&self) -> Result<Option<String>> {
        let name = self.node_info(NodeRole::Embedder).await?.embedder;
        Ok((!name.is_empty()).then_some(name))
    }

    async fn node_info(&self, role: NodeRole) -> Result<pb::NodeInfo> {
        let node = self.role_node(role)?;
        let info =
            node.client.clone().info(pb::NodeInfoRequest {}).await.map_err(|s| CoordinatorError::node(&node, s))?;
        Ok(info.into_inner())
    }

    /// Validates a generation request and starts it on the model node.
    pub async fn generate_checked(&self, req: pb::GenerateRequest) -> Result<tonic::Streaming<pb::GenerateChunk>> {
        if req.prompt.is_empty() && req.messages.is_empty() {
            return Err(CoordinatorError::invalid("give a prompt or chat messages"));
        }
        let bytes = req.prompt.len() + req.messages.iter().map(|m| m.content.len()).sum::<usize>();
        if bytes > self.config.max_prompt_bytes {
            return Err(CoordinatorError::invalid(format!(
                "the prompt is over {} bytes",
                self.config.max_prompt_bytes
            )));
        }
        self.model_stream(req).await
    }

    /// The token stream of the node serving the request's model.
    pub async fn model_stream(&self, req: pb::GenerateRequest) -> Result<tonic::Streaming<pb::GenerateChunk>> {
        let r = self
            .on_role_passing(NodeRole::Model, MODEL_NODE_PASSES, |mut c| {
                let req = req.clone();
                async move { c.generate(req).await }
            })
            .await;
        self.naming_served_models(&req.model, r).await
    }

    /// A NOT_FOUND from the model nodes (every one was asked and none serves
    /// `model`) reworded to list what the whole cluster serves: each node's
    /// own message names only its own models.
    async fn naming_served_models<T>(&self, model: &str, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if e.code() == Code::NotFound => {
                let served: Vec<String> = match self.served_models().await {
                    Ok(models) => models.into_iter().map(|m| m.name).collect(),
                    Err(_) => return Err(e),
                };
                Err(CoordinatorError::not_found(format!(
                    "no model node serves the model '{model}' (served: {}; `default` names the first)",
                    served.join(", ")
                )))
            }
            other => other,
        }
    }

    /// A whole greedy generation by `model` (chains' internal steps): the text and the finish reason.
    pub(crate) async fn generate_text(
        &self,
        model: &str,
        prompt: String,
        max_tokens: u32,
        stop: Vec<String>,
    ) -> Result<(String, String)> {
        let req = pb::GenerateRequest {
            prompt,
            max_tokens,
            temperature: Some(0.0),
            stop,
            model: model.to_string(),
            ..Default::default()
        };
        let mut stream = self.model_stream(req).await?;
        let mut text = String::new();
        while let Some(chunk) = stream.message().await? {
            text.push_str(&chunk.text);
            if !chunk.finish_reason.is_empty() {
                return Ok((text, chunk.finish_reason));
            }
        }
        Ok((text, String::new()))
    }

    /// Token counts of texts under `model`'s tokenizer (as chat prompts with
    /// `chat`) and its context length (0 when there was nothing to count, so no
    /// call was made).
    pub(crate) async fn count_tokens(
        &self,
        model: &str,
        texts: Vec<String>,
        chat: bool,
    ) -> Result<(Vec<usize>, usize)> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let req = pb::CountTokensRequest { texts, chat, model: model.to_string() };
        let r = self
            .on_role_passing(NodeRole::Model, MODEL_NODE_PASSES, |mut c| {
                let req = req.clone();
                async move { c.count_tokens(req).await }
            })
            .await;
        let r = self.naming_served_models(&req.model, r).await?;
        Ok((r.counts.into_iter().map(|c| c as usize).collect(), r.context_length as usize))
    }
}
