//! Prompt templates: named Jinja templates (minijinja) with variables.
//!
//! The chain ships defaults for question answering (`qa`), for rewriting a
//! follow-up into a standalone question (`condense`), for summary memory
//! (`summarize`). Users add or
//! override templates from a folder of `NAME.j2` / `NAME.jinja` / `NAME.txt`
//! files. A template is checked for the variables it uses before rendering, so
//! a missing variable is an error that names it, not an empty string.
use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use thiserror::Error;

/// Why a template could not be added or rendered.
#[derive(Debug, Error, PartialEq)]
pub enum PromptError {
    /// No template has that name.
    #[error("unknown template '{name}' (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// Known names, comma-separated.
        known: String,
    },
    /// The template uses a variable the caller did not give.
    #[error("template '{template}' needs variable '{variable}', which was not given")]
    MissingVariable {
        /// Template name.
        template: String,
        /// The variable.
        variable: String,
    },
    /// Syntax or render error.
    #[error("template '{template}': {message}")]
    Invalid {
        /// Template name.
        template: String,
        /// What minijinja said.
        message: String,
    },
    /// A template folder could not be read.
    #[error("reading templates: {0}")]
    Io(String),
}

/// The default question-answering template.
pub const QA: &str = "\
Answer the question using only the context below. If the context does not contain the answer, say that you do not know.
{% if summary %}
Summary of the earlier conversation:
{{ summary }}
{% endif %}{% if history %}
Conversation so far:
{{ history }}
{% endif %}
Context:
{{ context }}

Question: {{ question }}
{% if format_instructions %}{{ format_instructions }}
{% endif %}Answer:";

/// The default template that rewrites a follow-up question.
pub const CONDENSE: &str = "\
Rewrite the follow-up question so that it can be understood without the conversation. Reply with the rewritten question only, on one line.

Conversation:
{{ history }}
Follow-up question: {{ question }}
Rewritten question:";

/// The default template of summary memory.
pub const SUMMARIZE: &str = "\
Summarise the conversation in a few sentences, keeping names, facts and questions asked. Extend the previous summary with the new lines.

Previous summary:
{{ summary }}

New lines:
{{ new_lines }}

New summary:";

/// See the module documentation.
pub struct PromptLibrary {
    env: Environment<'static>,
    sources: BTreeMap<String, String>,
}

impl Default for PromptLibrary {
    fn default() -> Self {
        Self::with_defaults()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl PromptLibrary {
    /// The four default templates.
    pub fn with_defaults() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let mut me = Self { env, sources: BTreeMap::new() };
        for (name, src) in [("qa", QA), ("condense", CONDENSE), ("summarize", SUMMARIZE)] {
            // The defaults are constants checked by the tests below.
            let _ = me.add(name, src);
        }
        me
    }

    /// Adds or replaces a template.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), PromptError> {
        if !valid_name(name) {
            return Err(PromptError::Invalid {
                template: name.into(),
                message: "template names are 1-64 ASCII letters, digits, '-', '_' or '.'".into(),
            });
        }
        self.env
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| PromptError::Invalid { template: name.into(), message: e.to_string() })?;
        self.sources.insert(name.to_string(), source.to_string());
        Ok(())
    }

    /// Adds every `*.j2`, `*.jinja` and `*.txt` file of `dir`, named by file stem.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<String>, PromptError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PromptError::Io(format!("{}: {e}", dir.display())))?;
        let mut added = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| PromptError::Io(e.to_string()))?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "j2" | "jinja" | "txt") {
                continue;
            }
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
            let source =
                std::fs::read_to_string(&path).map_err(|e| PromptError::Io(format!("{}: {e}", path.display())))?;
            self.add(&name, &source)?;
            added.push(name);
        }
        added.sort();
        Ok(added)
    }

    /// Template names.
    pub fn names(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// The variables a template uses.
    pub fn variables(&self, name: &str) -> Result<Vec<String>, PromptError> {
        let t = self.template(name)?;
        let mut v: Vec<String> = t.undeclared_variables(false).into_iter().collect();
        v.sort();
        Ok(v)
    }

    fn template(&self, name: &str) -> Result<minijinja::Template<'_, '_>, PromptError> {
        self.env
            .get_template(name)
            .map_err(|_| PromptError::Unknown { name: name.into(), known: self.names().join(", ") })
    }

    /// Renders `name` with `vars`; every variable the template uses must be given.
    pub fn render(&self, name: &str, vars: &BTreeMap<String, Value>) -> Result<String, PromptError> {
        let t = self.template(name)?;
        let mut used: Vec<String> = t.undeclared_variables(false).into_iter().collect();
        used.sort();
        if let Some(missing) = used.into_iter().find(|v| !vars.contains_key(v)) {
            return Err(PromptError::MissingVariable { template: name.into(), variable: missing });
        }
        t.render(minijinja::value::Serde(vars))
            .map_err(|e| PromptError::Invalid { template: name.into(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()
    }

    #[test]
    fn defaults_render_with_their_variables() {
        let lib = PromptLibrary::with_defaults();
        assert_eq!(lib.names(), vec!["condense", "qa", "summarize"]);
        assert_eq!(
            lib.variables("qa").unwrap(),
            vec!["context", "format_instructions", "history", "question", "summary"]
        );
        let out = lib
            .render(
                "qa",
                &vars(&[
                    ("context", "[1] cp -r copies folders"),
                    ("history", ""),
                    ("summary", ""),
                    ("question", "cp 的 -r 是什么?"),
                    ("format_instructions", ""),
                ]),
            )
            .unwrap();
        assert!(out.contains("Context:\n[1] cp -r copies folders\n\nQuestion: cp 的 -r 是什么?\nAnswer:"), "{out}");
        assert!(!out.contains("Conversation so far"));
        let c = lib.render("condense", &vars(&[("history", "User: a"), ("question", "and b?")])).unwrap();
        assert!(c.ends_with("Follow-up question: and b?\nRewritten question:"), "{c}");
    }

    #[test]
    fn missing_variables_unknown_names_and_bad_syntax_are_clear_errors() {
        let mut lib = PromptLibrary::with_defaults();
        let err = lib.render("qa", &vars(&[("context", "c")])).unwrap_err();
        assert!(matches!(err, PromptError::MissingVariable { .. }), "{err}");
        assert!(err.to_string().contains("needs variable"));
        let err = lib.render("nope", &vars(&[])).unwrap_err();
        assert_eq!(err.to_string(), "unknown template 'nope' (known: condense, qa, summarize)");
        assert!(lib.add("bad", "{% if %}").is_err());
        assert!(lib.add("../x", "hi").is_err());
        assert!(!lib.contains("bad"));
    }

    #[test]
    fn user_templates_load_from_a_folder_and_may_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("terse.j2"), "Q: {{ question }} C: {{ context }} T: {{ tone }}").unwrap();
        std::fs::write(dir.path().join("qa.txt"), "only {{ question }}").unwrap();
        std::fs::write(dir.path().join("notes.md"), "ignored").unwrap();
        let mut lib = PromptLibrary::with_defaults();
        assert_eq!(lib.load_dir(dir.path()).unwrap(), vec!["qa", "terse"]);
        assert_eq!(lib.render("qa", &vars(&[("question", "x")])).unwrap(), "only x");
        let err = lib.render("terse", &vars(&[("question", "x"), ("context", "y")])).unwrap_err();
        assert_eq!(err.to_string(), "template 'terse' needs variable 'tone', which was not given");
        assert!(lib.load_dir(&dir.path().join("missing")).is_err());
    }
}
