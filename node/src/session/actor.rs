//! The session actor: one per live session, the only writer of its history.
//!
//! It loads the session when spawned, answers reads from memory, and writes
//! through to sled, answering an append only after the flush. Because one
//! actor owns a session, concurrent asks on it append in a single order.
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info_span, Instrument};

use super::{SessionError, SessionState, SessionStore};
use tessera_types::ChatMessage;

/// Messages a session actor understands.
pub enum SessionMsg {
    /// The stored state.
    Load(RpcReplyPort<Result<SessionState, SessionError>>),
    /// Append messages; answered once durable, with the new state.
    Append(Vec<ChatMessage>, RpcReplyPort<Result<SessionState, SessionError>>),
    /// Record a summary of messages up to a seq.
    Summarize { summary: String, upto: u64, reply: RpcReplyPort<Result<SessionState, SessionError>> },
    /// Remove the session's history; answers how many messages it had.
    Clear(RpcReplyPort<Result<u64, SessionError>>),
}

/// The actor type.
pub struct SessionActor;

/// What a session actor holds.
pub struct SessionActorState {
    store: SessionStore,
    /// None when loading failed; every request then reports that error.
    state: Result<SessionState, String>,
    id: String,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionActorState;
    type Arguments = (SessionStore, String);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (store, id): (SessionStore, String),
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = store.load(&id).map_err(|e| e.to_string());
        Ok(SessionActorState { store, state, id })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        s: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let loaded = |s: &SessionActorState| s.state.clone().map_err(SessionError::Corrupt);
        match message {
            SessionMsg::Load(reply) => {
                let _span = info_span!("session.load", session = %s.id).entered();
                let _ = reply.send(loaded(s));
            }
            SessionMsg::Append(messages, reply) => {
                let span = info_span!("session.append", session = %s.id, messages = messages.len());
                let result = async {
                    let mut state = loaded(s)?;
                    let stored = s.store.append(&s.id, &messages).await?;
                    state.messages.extend(stored);
                    s.state = Ok(state.clone());
                    Ok(state)
                }
                .instrument(span)
                .await;
                let _ = reply.send(result);
            }
            SessionMsg::Summarize { summary, upto, reply } => {
                let span = info_span!("session.summarize", session = %s.id, upto);
                let result = async {
                    s.store.set_summary(&s.id, &summary, upto).await?;
                    s.state = s.store.load(&s.id).map_err(|e| e.to_string());
                    loaded(s)
                }
                .instrument(span)
                .await;
                let _ = reply.send(result);
            }
            SessionMsg::Clear(reply) => {
                let span = info_span!("session.clear", session = %s.id);
                let result = s.store.clear(&s.id).instrument(span).await;
                if result.is_ok() {
                    s.state = Ok(SessionState { session: s.id.clone(), ..Default::default() });
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}
