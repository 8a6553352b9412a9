//! Sessions: which node keeps a session, and the calls that read and change it.
use tessera_proto::v1 as pb;
use tessera_types::{validate_session_id, ChatMessage, SessionState};
use tonic::Code;

use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};
use crate::nodes::NodeRef;

fn state_from_pb(s: pb::SessionState) -> Result<SessionState> {
    SessionState::try_from(s).map_err(|e| CoordinatorError::internal(format!("a session node sent a bad message: {e}")))
}

fn checked(session: &str) -> Result<()> {
    validate_session_id(session).map_err(|e| CoordinatorError::invalid(e.to_string()))
}

impl Coordinator {
    /// The session node that keeps `session`.
    pub(crate) fn session_node(&self, session: &str) -> Result<NodeRef> {
        self.nodes.for_session(session).ok_or_else(|| CoordinatorError::unavailable("no session node is available"))
    }

    async fn load_pb(&self, session: &str) -> Result<pb::SessionState> {
        let node = self.session_node(session)?;
        Ok(node
            .client
            .clone()
            .session_load(pb::GetSessionRequest { session: session.to_string() })
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?
            .into_inner())
    }

    /// A session's history (empty when it does not exist).
    pub(crate) async fn session_load(&self, session: &str) -> Result<SessionState> {
        state_from_pb(self.load_pb(session).await?)
    }

    /// Appends messages durably; returns the state after the append.
    pub(crate) async fn session_append(&self, session: &str, messages: Vec<ChatMessage>) -> Result<SessionState> {
        let node = self.session_node(session)?;
        let messages = messages.into_iter().map(pb::ChatMessage::from).collect();
        let s = node
            .client
            .clone()
            .session_append(pb::SessionAppendRequest { session: session.to_string(), messages })
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?
            .into_inner();
        state_from_pb(s)
    }

    /// Stores a summary of the messages up to `upto`.
    pub(crate) async fn session_summarize(&self, session: &str, summary: &str, upto: u64) -> Result<()> {
        let node = self.session_node(session)?;
        let req = pb::SessionSummaryRequest {
            session: session.to_string(),
            summary: summary.to_string(),
            summarized_upto: upto,
        };
        node.client.clone().session_summarize(req).await.map_err(|s| CoordinatorError::node(&node, s))?;
        Ok(())
    }

    /// A page of the sessions of every session node, by id: each node gives
    /// its next `page_size` after the token, the merge keeps the first
    /// `page_size`, and the last of them is the next token when any node may
    /// hold more.
    pub(crate) async fn list_sessions(&self, req: pb::ListSessionsRequest) -> Result<pb::ListSessionsResponse> {
        use tessera_types::limits::{DEFAULT_SESSIONS_PAGE, MAX_SESSIONS_PAGE};
        let size = if req.page_size == 0 { DEFAULT_SESSIONS_PAGE } else { req.page_size };
        if size > MAX_SESSIONS_PAGE {
            return Err(CoordinatorError::invalid(format!(
                "page_size must be at most {MAX_SESSIONS_PAGE}, got {size}"
            )));
        }
        let ask = pb::ListSessionsRequest { page_size: size, page_token: req.page_token, prefix: req.prefix };
        let mut sessions = Vec::new();
        let mut more = false;
        for node in self.nodes.all() {
            match node.client.clone().session_list(ask.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    more |= !r.next_page_token.is_empty();
                    sessions.extend(r.sessions);
                }
                Err(s) if s.code() == Code::FailedPrecondition => {} // no session role
                Err(s) => return Err(CoordinatorError::node(&node, s)),
            }
        }
        sessions.sort_by(|a, b| a.session.cmp(&b.session));
        sessions.dedup_by(|a, b| a.session == b.session);
        more |= sessions.len() > size as usize;
        sessions.truncate(size as usize);
        let next_page_token = match sessions.last() {
            Some(last) if more => last.session.clone(),
            _ => String::new(),
        };
        Ok(pb::ListSessionsResponse { sessions, next_page_token })
    }

    /// A stored session; `NOT_FOUND` when it has no messages.
    pub(crate) async fn get_session(&self, session: &str) -> Result<pb::SessionState> {
        checked(session)?;
        let state = self.load_pb(session).await?;
        if state.messages.is_empty() {
            return Err(CoordinatorError::not_found(format!("session '{session}' does not exist")));
        }
        Ok(state)
    }

    /// Deletes a session's history.
    pub(crate) async fn clear_session(&self, session: &str) -> Result<pb::ClearSessionResponse> {
        checked(session)?;
        let node = self.session_node(session)?;
        let r = node
            .client
            .clone()
            .session_clear(pb::ClearSessionRequest { session: session.to_string() })
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?;
        Ok(r.into_inner())
    }
}
