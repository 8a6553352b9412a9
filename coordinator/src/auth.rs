//! API keys: who may call what on the public listeners.
//!
//! The key file has one key per line, `KEY TENANT ROLE` separated by
//! whitespace, `#` starting a comment; roles are `admin`, `read-write` and
//! `read-only`. Clients send `authorization: Bearer KEY` (gRPC metadata or HTTP
//! header, as the OpenAI SDKs do with `api_key`). The server re-reads the file
//! on SIGHUP through [`KeyFile::reload`]; a file that does not parse leaves the
//! keys in force as they were.
//!
//! A key's tenant scopes the collections and sessions it names (see
//! [`crate::tenancy`]); admin keys see every tenant's.
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use thiserror::Error;

/// What a key may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Search, embed, generate, ask, read sessions and list collections.
    ReadOnly,
    /// Also create, drop, ingest into and delete from collections, clear sessions.
    ReadWrite,
    /// Also cluster status, metrics and the status page.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read-only" => Self::ReadOnly,
            "read-write" => Self::ReadWrite,
            "admin" => Self::Admin,
            _ => return None,
        })
    }

    /// The role's name as the key file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
            Self::Admin => "admin",
        }
    }
}

/// Whose request this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant named in the key file.
    pub tenant: String,
    /// What the key may do.
    pub role: Role,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key (health probes, reflection).
    Open,
    /// At least this role.
    Needs(Role),
}

/// Why a key file was refused.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read API key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line that is not `KEY TENANT ROLE`.
    #[error("API key file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong (the key itself is never echoed).
        message: String,
    },
    /// No key at all: the server would refuse every request.
    #[error("the API key file holds no keys")]
    Empty,
}

/// Why a request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer` header.
    #[error("missing API key: send 'authorization: Bearer KEY'")]
    Missing,
    /// A key that is not in the file.
    #[error("invalid API key")]
    Invalid,
    /// A key whose role is too low.
    #[error("this API key is {have} and the request needs {needs}")]
    Forbidden {
        /// The key's role.
        have: &'static str,
        /// The role the route needs.
        needs: &'static str,
    },
}

/// A parsed key file.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, Principal)>,
}

impl ApiKeys {
    /// Parses the file's text (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| KeyFileError::Line { line: n + 1, message };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [key, tenant, role] = fields[..] else {
                return Err(bad(format!("expected KEY TENANT ROLE, found {} fields", fields.len())));
            };
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("unknown role '{role}' (use admin, read-write or read-only)")))?;
            crate::tenancy::validate_tenant(tenant).map_err(bad)?;
            if key.len() < 16 {
                return Err(bad("keys must be at least 16 characters".into()));
            }
            if keys.iter().any(|(k, _): &(Vec<u8>, Principal)| k == key.as_bytes()) {
                return Err(bad("the same key appears twice".into()));
            }
            keys.push((key.as_bytes().to_vec(), Principal { tenant: tenant.to_string(), role }));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(Self { keys })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is held (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `authorization` header value against `access`.
    pub fn authorize(&self, authorization: Option<&str>, access: Access) -> Result<Option<Principal>, AuthError> {
        let Access::Needs(needs) = access else { return Ok(None) };
        let presented = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        // Every key is compared, in time independent of where they differ, so
        // response times do not reveal how much of a guess was right.
        let mut found = None;
        for (key, principal) in &self.keys {
            if constant_time_eq(key, presented.as_bytes()) {
                found = Some(principal);
            }
        }
        let principal = found.ok_or(AuthError::Invalid)?;
        if principal.role < needs {
            return Err(AuthError::Forbidden { have: principal.role.as_str(), needs: needs.as_str() });
        }
        Ok(Some(principal.clone()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key file and the keys last read from it.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    keys: RwLock<ApiKeys>,
}

impl KeyFile {
    /// Reads `path`; a file that does not parse is a start-up error.
    pub fn open(path: &Path) -> Result<Self, KeyFileError> {
        Ok(Self { path: path.to_path_buf(), keys: RwLock::new(ApiKeys::load(path)?) })
    }

    /// Re-reads the file; on error the previous keys stay in force.
    pub fn reload(&self) -> Result<usize, KeyFileError> {
        let fresh = ApiKeys::load(&self.path)?;
        let n = fresh.len();
        if let Ok(mut keys) = self.keys.write() {
            *keys = fresh;
        }
        Ok(n)
    }

    /// [`ApiKeys::authorize`] on the keys in force.
    pub fn authorize(&self, authorization: Option<&str>, access: Access) -> Result<Option<Principal>, AuthError> {
        match self.keys.read() {
            Ok(keys) => keys.authorize(authorization, access),
            // A writer panicked mid-swap: refuse rather than guess.
            Err(_) => Err(AuthError::Invalid),
        }
    }
}

/// What a gRPC method of the public listener needs (`/package.Service/Method`).
pub fn grpc_access(path: &str) -> Access {
    let Some(method) = path.strip_prefix("/tessera.v1.Tessera/") else {
        // Health and reflection are for probes and tools; anything else is
        // answered UNIMPLEMENTED by the router.
        return Access::Open;
    };
    Access::Needs(match method {
        "CreateCollection" | "DropCollection" | "Ingest" | "IngestStream" | "Delete" | "ClearSession" => {
            Role::ReadWrite
        }
        // Changing what the model group serves is an operator's act.
        "ClusterStatus" | "LoadAdapter" | "UnloadAdapter" => Role::Admin,
        // Queries and conversation, and any method added later until classified.
        "ListCollections" | "Search" | "Embed" | "Generate" | "Ask" | "ListSessions" | "GetSession"
        | "ListAdapters" => Role::ReadOnly,
        _ => Role::Admin,
    })
}

/// What an HTTP route needs: probes are open, the OpenAI API needs a key,
/// everything else (metrics, the status page) needs an admin key.
pub fn http_access(path: &str) -> Access {
    match path {
        "/healthz" | "/readyz" => Access::Open,
        p if p.starts_with("/v1/") => Access::Needs(Role::ReadOnly),
        _ => Access::Needs(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# team keys\n\
        admin-key-0123456789 acme admin\n\
        writer-key-0123456789   acme   read-write  # CI\n\
        \n\
        reader-key-0123456789 acme read-only\n";

    #[test]
    fn roles_follow_the_file() {
        let keys = ApiKeys::parse(FILE).unwrap();
        assert_eq!(keys.len(), 3);
        let read = Access::Needs(Role::ReadOnly);
        let write = Access::Needs(Role::ReadWrite);
        let admin = Access::Needs(Role::Admin);
        let p = keys.authorize(Some("Bearer reader-key-0123456789"), read).unwrap().unwrap();
        assert_eq!(p, Principal { tenant: "acme".into(), role: Role::ReadOnly });
        assert_eq!(
            keys.authorize(Some("Bearer reader-key-0123456789"), write),
            Err(AuthError::Forbidden { have: "read-only", needs: "read-write" })
        );
        assert!(keys.authorize(Some("Bearer writer-key-0123456789"), write).is_ok());
        assert!(keys.authorize(Some("Bearer writer-key-0123456789"), admin).is_err());
        assert!(keys.authorize(Some("Bearer admin-key-0123456789"), admin).is_ok());
        assert_eq!(keys.authorize(None, read), Err(AuthError::Missing));
        assert_eq!(keys.authorize(Some("Basic abc"), read), Err(AuthError::Missing));
        assert_eq!(keys.authorize(Some("Bearer reader-key-012345678"), read), Err(AuthError::Invalid));
        assert_eq!(keys.authorize(None, Access::Open), Ok(None));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let err = ApiKeys::parse("k-0123456789abcdef acme owner").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("unknown role 'owner'"), "{err}");
        let err = ApiKeys::parse("# nothing\n\nk-0123456789abcdef acme\n").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("found 2 fields"), "{err}");
        assert!(matches!(ApiKeys::parse("# none\n"), Err(KeyFileError::Empty)));
        assert!(ApiKeys::parse("short acme admin").unwrap_err().to_string().contains("16 characters"));
        let err = ApiKeys::parse("k-0123456789abcdef ac:me read-only").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("tenant 'ac:me'"), "{err}");
        let two = "a-0123456789abcdef acme read-only\nb-0123456789abcdef globex read-only\n";
        assert_eq!(ApiKeys::parse(two).unwrap().len(), 2);
    }

    #[test]
    fn routes_are_classified() {
        assert_eq!(grpc_access("/tessera.v1.Tessera/Search"), Access::Needs(Role::ReadOnly));
        assert_eq!(grpc_access("/tessera.v1.Tessera/Ingest"), Access::Needs(Role::ReadWrite));
        assert_eq!(grpc_access("/tessera.v1.Tessera/IngestStream"), Access::Needs(Role::ReadWrite));
        assert_eq!(grpc_access("/tessera.v1.Tessera/ClusterStatus"), Access::Needs(Role::Admin));
        assert_eq!(grpc_access("/tessera.v1.Tessera/SomethingNew"), Access::Needs(Role::Admin));
        assert_eq!(grpc_access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(http_access("/healthz"), Access::Open);
        assert_eq!(http_access("/v1/chat/completions"), Access::Needs(Role::ReadOnly));
        assert_eq!(http_access("/metrics"), Access::Needs(Role::Admin));
        assert_eq!(http_access("/"), Access::Needs(Role::Admin));
    }

    #[test]
    fn a_reload_that_fails_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, FILE).unwrap();
        let file = KeyFile::open(&path).unwrap();
        std::fs::write(&path, "new-reader-0123456789 acme read-only\n").unwrap();
        assert_eq!(file.reload().unwrap(), 1);
        let read = Access::Needs(Role::ReadOnly);
        assert!(file.authorize(Some("Bearer new-reader-0123456789"), read).is_ok());
        assert_eq!(file.authorize(Some("Bearer reader-key-0123456789"), read), Err(AuthError::Invalid));
        std::fs::write(&path, "broken line\n").unwrap();
        assert!(file.reload().is_err());
        assert!(file.authorize(Some("Bearer new-reader-0123456789"), read).is_ok());
    }
}
