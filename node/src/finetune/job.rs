//! One fine-tuning run from start to end, as the CLI (`tessera finetune`)
//! and the `FineTune` RPC both start it: the base's tokenizer and chat
//! template, the data parsed and encoded (before anything is written), the
//! evaluation split, the f32 base, then the trainer.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::data::{split_eval, Encoder, Example};
use super::model::{Precision, TrainModel};
use super::trainer::{train, Progress, TrainConfig, TrainSummary};
use super::FinetuneError;
use crate::model::engine::load_tokenizer;
use crate::model::serving::chat_template;

/// Where the training text comes from.
#[derive(Debug, Clone)]
pub enum TrainingData {
    /// JSON Lines of chats or prompt/completion pairs.
    Jsonl(String),
    /// Plain texts (a collection's chunks): next-token on every token.
    Texts(Vec<String>),
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FinetuneJob {
    /// The GGUF base.
    pub base: PathBuf,
    /// Training data.
    pub data: TrainingData,
    /// Held-out JSON Lines (`--eval`); else `eval_split` of the data.
    pub eval: Option<String>,
    /// Fraction of the data held out when `eval` is None.
    pub eval_split: f32,
    /// Longest training sequence in tokens.
    pub max_seq_len: usize,
    /// The trainer's settings.
    pub train: TrainConfig,
    /// How the frozen base multiplies.
    pub precision: Precision,
}

/// What the data turned into, reported before training starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Training sequences.
    pub train_examples: usize,
    /// Held-out sequences.
    pub eval_examples: usize,
    /// Lines or texts dropped: nothing to learn left after `max_seq_len`.
    pub dropped: usize,
    /// Tokens counted in the loss, training set.
    pub target_tokens: usize,
    /// Trainable parameters.
    pub parameters: usize,
}

impl FinetuneJob {
    /// Runs the job; `prepared` hears once the data is parsed, `progress`
    /// after every step and evaluation.
    pub fn run(
        &self,
        prepared: &mut dyn FnMut(&Prepared),
        progress: &mut dyn FnMut(&Progress),
        stop: &AtomicBool,
    ) -> Result<TrainSummary, FinetuneError> {
        if self.max_seq_len < 2 {
            return Err(FinetuneError::Config("--max-seq-len must be at least 2".into()));
        }
        let tokenizer = load_tokenizer(&self.base)?;
        let template = chat_template(&self.base, &tokenizer)?;
        let enc = Encoder { tokenizer: &tokenizer, template: &template, max_seq_len: self.max_seq_len };
        let (examples, dropped) = match &self.data {
            TrainingData::Jsonl(text) => enc.jsonl(text)?,
            TrainingData::Texts(texts) => {
                let mut out = Vec::new();
                let mut dropped = 0;
                for t in texts {
                    let ex = enc.plain(t)?;
                    if ex.target_tokens() == 0 {
                        dropped += 1;
                    } else {
                        out.push(ex);
                    }
                }
                if out.is_empty() {
                    return Err(FinetuneError::Data("the collection has no chunk with text to learn".into()));
                }
                (out, dropped)
            }
        };
        let (train_set, eval_set): (Vec<Example>, Vec<Example>) = match &self.eval {
            Some(text) => (examples, enc.jsonl(text).map_err(|e| FinetuneError::Data(format!("--eval: {e}")))?.0),
            None => split_eval(examples, self.eval_split),
        };
        let model = TrainModel::load_with(&self.base, self.precision)?;
        let params_count = {
            let (input_output, r) = (&self.train.targets, self.train.rank);
            let cfg = model.config();
            input_output.iter().map(|t| t.shape(cfg)).map(|(i, o)| (i + o) * r).sum::<usize>() * cfg.n_layer
        };
        prepared(&Prepared {
            train_examples: train_set.len(),
            eval_examples: eval_set.len(),
            dropped,
            target_tokens: train_set.iter().map(Example::target_tokens).sum(),
            parameters: params_count,
        });
        train(&model, &train_set, &eval_set, &self.train, progress, stop)
    }
}
