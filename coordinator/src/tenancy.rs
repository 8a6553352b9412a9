//! Tenants: whose collections and sessions a request may name.
//!
//! A key of tenant `acme` that is not an admin key works in its own namespace:
//! the collection it calls `docs` is stored as `acme:docs`, its session `s1` as
//! `acme:s1`. The prefix is added on the way in and taken off on the way out,
//! so the tenant never sees it, and listings keep only its own names. Names
//! given by a tenant may not contain `:` themselves, so no tenant can spell
//! another's stored name. Admin keys, and every request when API keys are off,
//! work on stored names as they are: an admin sees every tenant's collections
//! and sessions (as `tenant:name`) and may address them that way.
//!
//! Doing this in one place at the edge of the coordinator, rather than in the
//! nodes, keeps shards and session stores free of any notion of tenants: a
//! stored name is just a name there.
use crate::auth::{Principal, Role};
use crate::error::{CoordinatorError, Result};

/// The character between a tenant and the name it chose.
pub const SEPARATOR: char = ':';

/// Whose names a request works with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Stored names as they are: admin keys, or API keys off.
    All,
    /// One tenant's names, without their prefix.
    Tenant(String),
}

impl Scope {
    /// The scope of an authenticated request (None: API keys are off).
    pub fn of(principal: Option<&Principal>) -> Self {
        match principal {
            Some(p) if p.role != Role::Admin => Self::Tenant(p.tenant.clone()),
            _ => Self::All,
        }
    }

    /// The stored name of the collection this scope calls `name`; "" (none
    /// named) stays "" so that the request gets the usual error for it.
    pub fn collection(&self, name: &str) -> Result<String> {
        self.qualify(name, "collection name")
    }

    /// The name this scope shows for the stored collection `stored`, or None
    /// when it belongs to someone else.
    pub fn shown_collection(&self, stored: &str) -> Option<String> {
        self.unqualify(stored)
    }

    /// The stored id of the session this scope calls `id`; "" (no session) stays "".
    pub fn session(&self, id: &str) -> Result<String> {
        self.qualify(id, "session id")
    }

    /// The id this scope shows for the stored session `stored`, or None.
    pub fn shown_session(&self, stored: &str) -> Option<String> {
        self.unqualify(stored)
    }

    /// The stored-name prefix of this scope's names ("" for [`Scope::All`]).
    pub fn prefix(&self) -> String {
        match self {
            Self::All => String::new(),
            Self::Tenant(t) => format!("{t}{SEPARATOR}"),
        }
    }

    fn qualify(&self, name: &str, what: &str) -> Result<String> {
        match self {
            _ if name.is_empty() => Ok(String::new()),
            Self::All => Ok(name.to_string()),
            Self::Tenant(t) => {
                if name.contains(SEPARATOR) {
                    return Err(CoordinatorError::invalid(format!(
                        "a {what} may not contain '{SEPARATOR}' (it separates tenants from their names): '{name}'"
                    )));
                }
                Ok(format!("{t}{SEPARATOR}{name}"))
            }
        }
    }

    fn unqualify(&self, stored: &str) -> Option<String> {
        match self {
            Self::All => Some(stored.to_string()),
            Self::Tenant(t) => stored.strip_prefix(t.as_str())?.strip_prefix(SEPARATOR).map(str::to_string),
        }
    }
}

/// The tenant of a stored name (None: the global namespace).
pub fn tenant_of(stored: &str) -> Option<&str> {
    stored.split_once(SEPARATOR).map(|(tenant, _)| tenant)
}

/// Why a tenant name in the key file is refused.
pub fn validate_tenant(tenant: &str) -> std::result::Result<(), String> {
    if tenant.is_empty() || tenant.len() > 64 {
        return Err(format!("tenant '{tenant}' must be 1 to 64 bytes long"));
    }
    if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        return Err(format!("tenant '{tenant}' may use ASCII letters, digits, '-' and '_' only"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str, role: Role) -> Principal {
        Principal { tenant: t.into(), role }
    }

    #[test]
    fn tenants_get_prefixed_names_and_see_only_their_own() {
        let acme = Scope::of(Some(&tenant("acme", Role::ReadWrite)));
        assert_eq!(acme, Scope::Tenant("acme".into()));
        assert_eq!(acme.collection("docs").unwrap(), "acme:docs");
        assert_eq!(acme.session("会话-1").unwrap(), "acme:会话-1");
        assert_eq!(acme.session("").unwrap(), "");
        assert_eq!(acme.shown_collection("acme:docs").as_deref(), Some("docs"));
        // Another tenant's names, a tenant whose name extends this one, and global names stay hidden.
        for stored in ["globex:docs", "acme2:docs", "docs", "acme"] {
            assert_eq!(acme.shown_collection(stored), None, "{stored}");
        }
        // No tenant can spell another's stored name.
        assert!(acme.collection("globex:docs").is_err());
        assert!(acme.session("globex:s").is_err());
    }

    #[test]
    fn admins_and_open_servers_use_stored_names() {
        for scope in [Scope::of(None), Scope::of(Some(&tenant("acme", Role::Admin)))] {
            assert_eq!(scope, Scope::All);
            assert_eq!(scope.collection("globex:docs").unwrap(), "globex:docs");
            assert_eq!(scope.shown_collection("globex:docs").as_deref(), Some("globex:docs"));
            assert_eq!(scope.prefix(), "");
        }
    }

    #[test]
    fn tenant_names_are_checked() {
        assert!(validate_tenant("acme_prod-2").is_ok());
        for bad in ["", "a:b", "a b", "ä", &"x".repeat(65)] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
    }
}
