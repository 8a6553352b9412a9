//! Durable session history on sled.
//!
//! Two trees: `session.messages` keyed by `session id, 0x00, seq (u64 big
//! endian)` so a prefix scan returns a session's messages oldest first, and
//! `session.meta` keyed by session id with the counters and the summary. An
//! append writes both in one sled transaction and is flushed before it
//! returns, so an acknowledged turn survives a crash.
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::SessionError;
use tessera_types::{validate_session_id, ChatMessage, SessionInfo, SessionState, StoredMessage};

const MESSAGES: &str = "session.messages";
const META: &str = "session.meta";
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    next_seq: u64,
    messages: u64,
    summary: String,
    summarized_upto: u64,
    updated_unix_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn message_key(session: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.len() + 9);
    k.extend_from_slice(session.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn prefix(session: &str) -> Vec<u8> {
    let mut k = session.as_bytes().to_vec();
    k.push(0);
    k
}

fn corrupt(e: impl std::fmt::Display) -> SessionError {
    SessionError::Corrupt(e.to_string())
}

/// See the module documentation.
#[derive(Clone)]
pub struct SessionStore {
    db: sled::Db,
    messages: sled::Tree,
    meta: sled::Tree,
}

impl SessionStore {
    /// Opens (creating) the session database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, SessionError> {
        let db = sled::open(path)?;
        Ok(Self { messages: db.open_tree(MESSAGES)?, meta: db.open_tree(META)?, db })
    }

    fn meta_of(&self, session: &str) -> Result<Option<Meta>, SessionError> {
        match self.meta.get(session.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// The session's state; empty (no messages) when it is unknown.
    pub fn load(&self, session: &str) -> Result<SessionState, SessionError> {
        validate_session_id(session)?;
        let meta = self.meta_of(session)?.unwrap_or_default();
        let mut messages = Vec::new();
        for item in self.messages.scan_prefix(prefix(session)) {
            let (_, v) = item?;
            messages.push(serde_json::from_slice::<StoredMessage>(&v).map_err(corrupt)?);
        }
        Ok(SessionState {
            session: session.to_string(),
            messages,
            summary: meta.summary,
            summarized_upto: meta.summarized_upto,
        })
    }

    /// Appends messages atomically and flushes; returns the stored records.
    pub async fn append(&self, session: &str, new: &[ChatMessage]) -> Result<Vec<StoredMessage>, SessionError> {
        validate_session_id(session)?;
        let now = now_ms();
        let result = (&self.messages, &self.meta).transaction(|(messages, meta)| {
            let mut m: Meta = match meta.get(session.as_bytes())? {
                Some(v) => serde_json::from_slice(&v)
                    .map_err(|e| ConflictableTransactionError::Abort(SessionError::Corrupt(e.to_string())))?,
                None => Meta::default(),
            };
            let mut stored = Vec::with_capacity(new.len());
            for msg in new {
                m.next_seq += 1;
                let record =
                    StoredMessage { seq: m.next_seq, role: msg.role, content: msg.content.clone(), unix_ms: now };
                let bytes = serde_json::to_vec(&record)
                    .map_err(|e| ConflictableTransactionError::Abort(SessionError::Corrupt(e.to_string())))?;
                messages.insert(message_key(session, record.seq), bytes)?;
                stored.push(record);
            }
            m.messages += new.len() as u64;
            m.updated_unix_ms = now;
            let bytes = serde_json::to_vec(&m)
                .map_err(|e| ConflictableTransactionError::Abort(SessionError::Corrupt(e.to_string())))?;
            meta.insert(session.as_bytes(), bytes)?;
            Ok(stored)
        });
        let stored = match result {
            Ok(s) => s,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        };
        self.db.flush_async().await?;
        Ok(stored)
    }

    /// Records a summary of the messages up to `upto`; flushed before it returns.
    /// A summary older than the stored one is ignored (summaries may race).
    pub async fn set_summary(&self, session: &str, summary: &str, upto: u64) -> Result<(), SessionError> {
        validate_session_id(session)?;
        let mut meta = self
            .meta_of(session)?
            .ok_or_else(|| SessionError::Invalid(format!("session '{session}' has no messages to summarise")))?;
        if upto > meta.next_seq {
            return Err(SessionError::Invalid(format!("summarized_upto {upto} is past the last message")));
        }
        if upto <= meta.summarized_upto {
            return Ok(());
        }
        meta.summary = summary.to_string();
        meta.summarized_upto = upto;
        self.meta.insert(session.as_bytes(), serde_json::to_vec(&meta).map_err(corrupt)?)?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// Removes a session; returns how many messages it had.
    pub async fn clear(&self, session: &str) -> Result<u64, SessionError> {
        validate_session_id(session)?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for item in self.messages.scan_prefix(prefix(session)).keys() {
            batch.remove(item?);
            removed += 1;
        }
        self.messages.apply_batch(batch)?;
        self.meta.remove(session.as_bytes())?;
        self.db.flush_async().await?;
        Ok(removed)
    }

    /// Every stored session, by id.
    pub fn list(&self) -> Result<Vec<SessionInfo>, SessionError> {
        self.list_page("", "", usize::MAX)
    }

    /// At most `limit` sessions whose ids start with `prefix` and sort after
    /// `after` ("" = from the first), by id. The prefix is how a tenant's
    /// sessions are listed without reading anyone else's.
    pub fn list_page(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<SessionInfo>, SessionError> {
        use std::ops::Bound;
        let mut out = Vec::new();
        let start = if after > prefix { Bound::Excluded(after.as_bytes()) } else { Bound::Included(prefix.as_bytes()) };
        let range = self.meta.range::<&[u8], _>((start, Bound::Unbounded));
        for item in range.take_while(|i| i.as_ref().map_or(true, |(k, _)| k.starts_with(prefix.as_bytes()))).take(limit)
        {
            let (k, v) = item?;
            let meta: Meta = serde_json::from_slice(&v).map_err(corrupt)?;
            out.push(SessionInfo {
                session: String::from_utf8_lossy(&k).into_owned(),
                messages: meta.messages,
                updated_unix_ms: meta.updated_unix_ms,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.parse().unwrap(), content: content.into() }
    }

    #[tokio::test]
    async fn sessions_come_back_a_page_at_a_time_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("p.sled")).unwrap();
        for id in ["c", "a", "会话", "b", "d"] {
            store.append(id, &[msg("user", id)]).await.unwrap();
        }
        let ids = |page: Vec<SessionInfo>| page.into_iter().map(|s| s.session).collect::<Vec<_>>();
        assert_eq!(ids(store.list_page("", "", 2).unwrap()), vec!["a", "b"]);
        assert_eq!(ids(store.list_page("", "b", 2).unwrap()), vec!["c", "d"]);
        assert_eq!(ids(store.list_page("", "d", 2).unwrap()), vec!["会话"]);
        assert!(store.list_page("", "会话", 2).unwrap().is_empty());
        assert_eq!(store.list().unwrap().len(), 5);
        // A prefix keeps one tenant's ids, from its first one or after a token.
        for id in ["acme:s2", "acme:s1", "acme2:s1", "globex:s1"] {
            store.append(id, &[msg("user", id)]).await.unwrap();
        }
        assert_eq!(ids(store.list_page("acme:", "", 10).unwrap()), vec!["acme:s1", "acme:s2"]);
        assert_eq!(ids(store.list_page("acme:", "acme:s1", 10).unwrap()), vec!["acme:s2"]);
        assert_eq!(ids(store.list_page("acme:", "", 1).unwrap()), vec!["acme:s1"]);
        assert!(store.list_page("acme:", "acme:s2", 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn appends_survive_reopen_in_order_and_sessions_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sled");
        {
            let store = SessionStore::open(&path).unwrap();
            store.append("alice", &[msg("user", "你好"), msg("assistant", "hi")]).await.unwrap();
            store.append("alice-2", &[msg("user", "other")]).await.unwrap();
            store.append("alice", &[msg("user", "again")]).await.unwrap();
            store.set_summary("alice", "greetings", 2).await.unwrap();
        }
        // sled's flusher thread may still hold the file lock for a moment after drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match SessionStore::open(&path) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let s = store.load("alice").unwrap();
        let texts: Vec<_> = s.messages.iter().map(|m| (m.seq, m.content.as_str())).collect();
        assert_eq!(texts, vec![(1, "你好"), (2, "hi"), (3, "again")]);
        assert_eq!((s.summary.as_str(), s.summarized_upto), ("greetings", 2));
        assert_eq!(store.load("alice-2").unwrap().messages.len(), 1);
        let list = store.list().unwrap();
        assert_eq!(
            list.iter().map(|i| (i.session.as_str(), i.messages)).collect::<Vec<_>>(),
            vec![("alice", 3), ("alice-2", 1)]
        );
        assert_eq!(store.clear("alice").await.unwrap(), 3);
        assert!(store.load("alice").unwrap().messages.is_empty());
        assert_eq!(store.load("alice-2").unwrap().messages.len(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("s.sled")).unwrap();
        store.append("a", &[msg("user", "x")]).await.unwrap();
        // A role outside system/user/assistant cannot reach the store: the wire
        // conversion refuses the whole batch before anything is appended.
        let wire = [("user", "y"), ("robot", "z")]
            .map(|(role, content)| tessera_proto::v1::ChatMessage { role: role.into(), content: content.into() });
        assert!(tessera_proto::convert::chat_messages(&wire).is_err());
        assert!(store.append("", &[msg("user", "y")]).await.is_err());
        assert!(store.append("a\nb", &[msg("user", "y")]).await.is_err());
        assert!(store.set_summary("a", "s", 9).await.is_err());
        assert!(store.set_summary("nobody", "s", 1).await.is_err());
        assert_eq!(store.load("a").unwrap().messages.len(), 1);
    }
}
