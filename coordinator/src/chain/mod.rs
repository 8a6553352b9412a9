//! The building blocks of chains, pure of any node call: [`prompt`] holds
//! named templates, [`parser`] turns model output into values, [`budget`] fits
//! a prompt into the context window. The ask chain that runs them over the
//! nodes is `crate::ask`.

pub mod budget;
pub mod parser;
pub mod prompt;

pub use parser::{OutputError, OutputParser};
pub use prompt::{PromptError, PromptLibrary};
