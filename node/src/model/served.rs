//! The models one node serves, by name: several model groups in one process
//! (`--model NAME=PATH` repeated), the first the default.
use std::path::PathBuf;
use std::sync::Arc;

use tessera_types::names_default_model;

use super::serving::ModelServing;

/// One model to load: its name, GGUF file and tensor-parallel world size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// What requests call it (`model` in Generate, Ask and the OpenAI API).
    pub name: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// Ranks of its group (threads in this process).
    pub tp: usize,
}

impl ModelSpec {
    /// A model named after its file stem (a bare `--model PATH`).
    pub fn from_path(path: PathBuf, tp: usize) -> Self {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        Self { name, path, tp }
    }

    /// Checks a name given on the command line: 1–128 characters of letters,
    /// digits and `-_.:`, and not one of the default aliases.
    pub fn validate_name(name: &str) -> Result<(), String> {
        if names_default_model(name) {
            return Err(format!("'{name}' always means the default model and cannot name one"));
        }
        if name.len() > 128 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
            return Err(format!("model name '{name}' must be 1-128 letters, digits or -_.:"));
        }
        Ok(())
    }
}

/// Why a name found no model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// This node serves no model at all.
    NoModel,
    /// It serves others; the list says which.
    Unknown(Vec<String>),
}

/// The running groups, the default first.
#[derive(Default)]
pub struct ServedModels {
    groups: Vec<Arc<ModelServing>>,
}

impl ServedModels {
    /// The groups in order (the first is the default).
    pub fn new(groups: Vec<Arc<ModelServing>>) -> Self {
        Self { groups }
    }

    /// The model `name` names: the default for an alias, else the group of that name.
    pub fn get(&self, name: &str) -> Result<Arc<ModelServing>, Lookup> {
        let found =
            if names_default_model(name) { self.groups.first() } else { self.groups.iter().find(|g| g.name() == name) };
        match found {
            Some(g) => Ok(g.clone()),
            None if self.groups.is_empty() => Err(Lookup::NoModel),
            None => Err(Lookup::Unknown(self.names())),
        }
    }

    /// The model and adapter `name` names: a model (None: its base), or an
    /// adapter of one of the models.
    pub fn resolve(&self, name: &str) -> Result<(Arc<ModelServing>, Option<String>), Lookup> {
        match self.get(name) {
            Ok(g) => Ok((g, None)),
            Err(Lookup::Unknown(mut served)) => match self.groups.iter().find(|g| g.has_adapter(name)) {
                Some(g) => Ok((g.clone(), Some(name.to_string()))),
                None => {
                    served.extend(self.groups.iter().flat_map(|g| g.adapters()).map(|a| a.name));
                    Err(Lookup::Unknown(served))
                }
            },
            Err(e) => Err(e),
        }
    }

    /// Whether `name` is taken by a model or by an adapter of any model.
    pub fn name_taken(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g.name() == name || g.has_adapter(name))
    }

    /// Every group, the default first.
    pub fn all(&self) -> &[Arc<ModelServing>] {
        &self.groups
    }

    /// Names of the served models, the default first.
    pub fn names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name().to_string()).collect()
    }

    /// True when no model is served.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_stems_name_bare_paths() {
        assert_eq!(ModelSpec::from_path("/m/SmolLM2.Q4_1.gguf".into(), 1).name, "SmolLM2.Q4_1");
        assert!(ModelSpec::validate_name("gemma-3:270m").is_ok());
        for bad in ["", "default", "tessera", "a b", "ü", &"x".repeat(129)] {
            assert!(ModelSpec::validate_name(bad).is_err(), "{bad:?}");
        }
        let none = ServedModels::default();
        assert_eq!(none.get("default").err(), Some(Lookup::NoModel));
        assert!(none.is_empty() && none.names().is_empty());
    }
}
