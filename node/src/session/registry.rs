//! The session registry: spawns a [`SessionActor`] per session on first use and
//! passivates (stops) actors that have been idle, so memory follows the number
//! of active conversations, not of all conversations ever held.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef, RpcReplyPort};
use tessera_proto::shutdown::Shutdown;
use tokio::sync::Mutex;
use tracing::debug;

use super::{validate_session_id, SessionActor, SessionError, SessionInfo, SessionMsg, SessionState, SessionStore};
use tessera_types::ChatMessage;

struct Live {
    actor: ActorRef<SessionMsg>,
    last_used: Instant,
}

/// See the module documentation.
#[derive(Clone)]
pub struct SessionRegistry {
    store: SessionStore,
    live: Arc<Mutex<HashMap<String, Live>>>,
}

impl SessionRegistry {
    /// Opens the session database at `path`; actors idle for `idle` are stopped
    /// by a sweeper that runs until `shutdown` (or until the registry is dropped).
    pub fn open(path: &Path, idle: Duration, shutdown: &Shutdown) -> Result<Self, SessionError> {
        let me = Self { store: SessionStore::open(path)?, live: Arc::default() };
        let weak = Arc::downgrade(&me.live);
        let period = (idle / 4).max(Duration::from_millis(50));
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(live) = weak.upgrade() else { break };
                passivate(&live, idle).await;
            }
        });
        Ok(me)
    }

    /// Sessions with a live actor now.
    pub async fn live_count(&self) -> usize {
        self.live.lock().await.len()
    }

    async fn actor(&self, session: &str) -> Result<ActorRef<SessionMsg>, SessionError> {
        validate_session_id(session)?;
        let mut live = self.live.lock().await;
        if let Some(l) = live.get_mut(session) {
            l.last_used = Instant::now();
            return Ok(l.actor.clone());
        }
        let (actor, _) = Actor::spawn(None, SessionActor, (self.store.clone(), session.to_string()))
            .await
            .map_err(|e| SessionError::Unavailable(e.to_string()))?;
        debug!(session, "session actor spawned");
        live.insert(session.to_string(), Live { actor: actor.clone(), last_used: Instant::now() });
        metrics::gauge!("tessera_sessions_live").set(live.len() as f64);
        Ok(actor)
    }

    /// Sends to the session's actor; if it was passivated in between, respawns once.
    async fn call<T: Send + 'static>(
        &self,
        session: &str,
        build: impl Fn(RpcReplyPort<T>) -> SessionMsg,
    ) -> Result<T, SessionError> {
        for _ in 0..2 {
            let actor = self.actor(session).await?;
            match actor.call(&build, None).await {
                Ok(ractor::rpc::CallResult::Success(v)) => return Ok(v),
                _ => {
                    self.live.lock().await.remove(session);
                }
            }
        }
        Err(SessionError::Unavailable(format!("session '{session}' did not answer")))
    }

    /// The stored state of a session (no messages when unknown).
    pub async fn load(&self, session: &str) -> Result<SessionState, SessionError> {
        self.call(session, SessionMsg::Load).await?
    }

    /// Appends messages; returns once durable.
    pub async fn append(&self, session: &str, messages: Vec<ChatMessage>) -> Result<SessionState, SessionError> {
        let n = messages.len() as u64;
        let state = self.call(session, |r| SessionMsg::Append(messages.clone(), r)).await??;
        metrics::counter!("tessera_session_messages_appended_total").increment(n);
        Ok(state)
    }

    /// Records a summary of messages up to `upto`.
    pub async fn summarize(&self, session: &str, summary: String, upto: u64) -> Result<SessionState, SessionError> {
        self.call(session, |reply| SessionMsg::Summarize { summary: summary.clone(), upto, reply }).await?
    }

    /// Removes a session's history.
    pub async fn clear(&self, session: &str) -> Result<u64, SessionError> {
        self.call(session, SessionMsg::Clear).await?
    }

    /// All stored sessions.
    pub fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        self.store.list()
    }

    /// A page of stored sessions (see [`super::store::SessionStore::list_page`]).
    pub fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<SessionInfo>, SessionError> {
        self.store.list_page(prefix, after, limit)
    }

    /// Stops every live actor (their data is already durable).
    pub async fn shutdown(&self) {
        for (_, l) in self.live.lock().await.drain() {
            l.actor.stop(None);
        }
    }
}

async fn passivate(live: &Mutex<HashMap<String, Live>>, idle: Duration) {
    let mut live = live.lock().await;
    let now = Instant::now();
    live.retain(|session, l| {
        let keep = now.duration_since(l.last_used) < idle;
        if !keep {
            debug!(session, "session actor passivated");
            l.actor.stop(None);
        }
        keep
    });
    metrics::gauge!("tessera_sessions_live").set(live.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn actors_are_spawned_on_demand_passivated_when_idle_and_reload_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let reg =
            SessionRegistry::open(&dir.path().join("s.sled"), Duration::from_millis(200), &Shutdown::new()).unwrap();
        let m = |c: &str| ChatMessage { role: tessera_types::Role::User, content: c.into() };
        reg.append("a", vec![m("one")]).await.unwrap();
        reg.append("b", vec![m("two")]).await.unwrap();
        assert_eq!(reg.live_count().await, 2);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(reg.live_count().await, 0, "idle actors are stopped");
        let a = reg.append("a", vec![m("three")]).await.unwrap();
        assert_eq!(a.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), vec!["one", "three"]);
        assert_eq!(reg.live_count().await, 1);
        assert!(reg.load("").await.is_err());
        assert_eq!(reg.clear("b").await.unwrap(), 1);
        assert!(reg.load("b").await.unwrap().messages.is_empty());
    }

    #[tokio::test]
    async fn concurrent_appends_to_one_session_all_land_in_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let reg = SessionRegistry::open(&dir.path().join("s.sled"), Duration::from_secs(60), &Shutdown::new()).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let reg = reg.clone();
                tokio::spawn(async move {
                    reg.append("s", vec![ChatMessage { role: tessera_types::Role::User, content: format!("m{i}") }])
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let s = reg.load("s").await.unwrap();
        assert_eq!(s.messages.len(), 16);
        assert!(s.messages.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }
}
