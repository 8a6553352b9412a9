//! Chat messages and the three roles a message can have.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Who wrote a message. Serialised as the lower-case name, which is also what
/// chat templates, sled records and the wire carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The person asking.
    User,
    /// The model's answer.
    Assistant,
}

/// A role name that is not system, user or assistant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown message role '{0}' (use system, user or assistant)")]
pub struct UnknownRole(pub String);

impl Role {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// How history lines name the role in prompts ("User: ...").
    pub fn label(self) -> &'static str {
        match self {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }

    /// One history line as it appears in prompts: `User: text`.
    pub fn history_line(&self) -> String {
        format!("{}: {}", self.role.label(), self.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_their_names_and_nothing_else() {
        for r in [Role::System, Role::User, Role::Assistant] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert_eq!(
            "robot".parse::<Role>().unwrap_err().to_string(),
            "unknown message role 'robot' (use system, user or assistant)"
        );
        assert!("User".parse::<Role>().is_err(), "names are lower case");
    }

    #[test]
    fn roles_serialise_as_their_lower_case_names() {
        let m = ChatMessage::new(Role::Assistant, "hi");
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"role":"assistant","content":"hi"}"#);
        let back: ChatMessage = serde_json::from_str(r#"{"role":"user","content":"x"}"#).unwrap();
        assert_eq!(back.role, Role::User);
        assert!(serde_json::from_str::<ChatMessage>(r#"{"role":"robot","content":"x"}"#).is_err());
    }
}
