//! Choosing the next token: repetition penalty, temperature (0 = greedy),
//! top-k, top-p, from a seeded generator so the same seed gives the same text.
use serde::{Deserialize, Serialize};

use super::constraint::OutputConstraint;

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass; 1 = off.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// > 1 discourages tokens already seen; 1 = off.
    pub repetition_penalty: f32,
    /// Random seed.
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// What the output must be (JSON schema, regex, choice); tokens that
    /// cannot continue a valid output are never sampled.
    #[serde(default)]
    pub constraint: Option<OutputConstraint>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens: 256,
            stop: Vec::new(),
            constraint: None,
        }
    }
}

/// A sampling setting out of range; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSampling(pub String);

impl SamplingParams {
    /// Checks ranges; the error says which setting is wrong.
    pub fn validate(&self) -> Result<(), InvalidSampling> {
        let bad = |m: String| Err(InvalidSampling(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop sequences must not be empty".into());
        }
        if let Some(c) = &self.constraint {
            c.validate().map_err(|e| InvalidSampling(e.to_string()))?;
        }
        use tessera_types::limits::{MAX_STOP_BYTES, MAX_STOP_SEQUENCES};
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad(format!("at most {MAX_STOP_SEQUENCES} stop sequences, got {}", self.stop.len()));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return bad(format!("a stop sequence may be at most {MAX_STOP_BYTES} bytes, got {}", s.len()));
        }
        Ok(())
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let state = params.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Self { params, state: state | 1 }
    }

    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token given the logits and the tokens seen so far (the prompt
    /// and what was generated; only the repetition penalty reads them).
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> u32 {
        if self.params.temperature == 0.0 && self.params.repetition_penalty == 1.0 {
            return argmax(logits);
        }
        let mut logits = logits.to_vec();
        if self.params.repetition_penalty != 1.0 {
            let mut seen = [prompt, generated].concat();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / self.params.repetition_penalty
                    } else {
                        *l * self.params.repetition_penalty
                    };
                }
            }
        }
        if self.params.temperature == 0.0 {
            return argmax(&logits);
        }
        // Tokens a constraint masked (−∞) are not candidates at all, so no
        // rounding in the draw below can land on one.
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, l / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(&logits);
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // Top-k by selection (O(n)), then only the k survivors sorted: the same
        // list a full sort would give, since the order is total.
        if self.params.top_k > 0 && self.params.top_k < candidates.len() {
            candidates.select_nth_unstable_by(self.params.top_k - 1, order);
            candidates.truncate(self.params.top_k);
        }
        candidates.sort_by(order);
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.params.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                mass += p;
                if mass >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            candidates.truncate(keep);
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
        }
        let mut r = self.uniform();
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return candidates[i].0;
            }
            r -= p;
        }
        candidates[probs.len() - 1].0
    }
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature: t, top_k: 0, top_p: 1.0, seed, ..Default::default() }
    }

    #[test]
    fn greedy_seeded_topk_and_penalty() {
        let logits = vec![0.1, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::new(params(0.0, 1)).sample(&logits, &[], &[]), 1);
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, seed));
            (0..50).map(|_| s.sample(&logits, &[], &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut top1 = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, ..params(1.0, 3) });
        assert!((0..20).all(|_| top1.sample(&logits, &[], &[]) == 1));
        let mut top2 = Sampler::new(SamplingParams { temperature: 1.0, top_k: 2, ..params(1.0, 3) });
        assert!((0..50).all(|_| matches!(top2.sample(&logits, &[], &[]), 1 | 2)));
        let mut nucleus = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.01, ..params(1.0, 3) });
        assert!((0..20).all(|_| nucleus.sample(&logits, &[], &[]) == 1));
        let mut penal = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0, 1) });
        assert_eq!(penal.sample(&logits, &[1], &[]), 2);
        assert_eq!(penal.sample(&logits, &[], &[1]), 2);
    }

    #[test]
    fn validation_names_the_setting() {
        assert!(SamplingParams { temperature: -0.1, ..Default::default() }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        assert!(SamplingParams { top_p: 0.0, ..Default::default() }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_p"));
        assert!(SamplingParams { max_tokens: 0, ..Default::default() }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_tokens"));
        assert!(SamplingParams::default().validate().is_ok());
    }
}
