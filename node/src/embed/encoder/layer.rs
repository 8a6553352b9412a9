//! One transformer layer of a BERT encoder (post-norm, as BERT has it).
use super::attention::{Scratch, SelfAttention};
use super::linear::Linear;
use super::vector_math::add_norm;

/// A layer norm's learned scale and shift.
pub struct LayerNorm {
    /// Scale per value.
    pub weight: Vec<f32>,
    /// Shift per value.
    pub bias: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// `x = norm(x + residual)` in place, row by row.
    pub fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        add_norm(x, residual, &self.weight, &self.bias, self.eps);
    }
}

/// `h = norm(x + attention(x)); out = norm(h + down(gelu(up(h))))`.
pub struct EncoderLayer {
    /// The attention block.
    pub attention: SelfAttention,
    /// Norm after the attention block's residual.
    pub attention_norm: LayerNorm,
    /// Feed-forward expansion (`intermediate.dense`).
    pub up: Linear,
    /// Feed-forward projection back (`output.dense`).
    pub down: Linear,
    /// Norm after the feed-forward residual.
    pub output_norm: LayerNorm,
}

/// The layer's intermediate buffers, kept across layers and batches.
#[derive(Default)]
pub struct LayerScratch {
    attention: Scratch,
    attended: Vec<f32>,
    expanded: Vec<f32>,
}

impl EncoderLayer {
    /// Runs the layer over the packed tokens `x` in place.
    pub fn forward(&self, x: &mut Vec<f32>, starts: &[usize], scratch: &mut LayerScratch) {
        let tokens = *starts.last().unwrap_or(&0);
        self.attention.forward(x, starts, &mut scratch.attention, &mut scratch.attended);
        self.attention_norm.apply(&mut scratch.attended, Some(x));
        self.up.forward_gelu(&scratch.attended, tokens, &mut scratch.expanded);
        self.down.forward(&scratch.expanded, tokens, x);
        self.output_norm.apply(x, Some(&scratch.attended));
    }
}
