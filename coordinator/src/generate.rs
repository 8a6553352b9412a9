//! Generation: the model node's token stream, whole greedy generations for the
//! chains' internal steps, token counts, and what the model and embedder are.
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;

use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

impl Coordinator {
    /// Information on the node that serves the model (name, context length).
    pub async fn model_info(&self) -> Result<Option<pb::ModelInfo>> {
        Ok(self.node_info(NodeRole::Model).await?.model)
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

    /// The model node's token stream for a generation request.
    pub async fn model_stream(&self, req: pb::GenerateRequest) -> Result<tonic::Streaming<pb::GenerateChunk>> {
        let node = self.role_node(NodeRole::Model)?;
        Ok(node.client.clone().generate(req).await.map_err(|s| CoordinatorError::node(&node, s))?.into_inner())
    }

    /// A whole greedy generation (chains' internal steps): the text and the finish reason.
    pub(crate) async fn generate_text(
        &self,
        prompt: String,
        max_tokens: u32,
        stop: Vec<String>,
    ) -> Result<(String, String)> {
        let req = pb::GenerateRequest { prompt, max_tokens, temperature: Some(0.0), stop, ..Default::default() };
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

    /// Token counts of texts (as chat prompts with `chat`) and the model's context
    /// length (0 when there was nothing to count, so no call was made).
    pub(crate) async fn count_tokens(&self, texts: Vec<String>, chat: bool) -> Result<(Vec<usize>, usize)> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let node = self.role_node(NodeRole::Model)?;
        let r = node
            .client
            .clone()
            .count_tokens(pb::CountTokensRequest { texts, chat })
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?
            .into_inner();
        Ok((r.counts.into_iter().map(|c| c as usize).collect(), r.context_length as usize))
    }
}
