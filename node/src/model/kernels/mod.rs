//! The model's CPU kernels, written for this crate (the product's own core):
//! quantised matmuls for the default model's weight types, fused attention over
//! the in-place KV cache, RoPE and the row-wise ops of a decoder layer. Each
//! works on plain f32 slices so a decode step allocates a handful of buffers,
//! not a tensor per op; SIMD paths are chosen at run time ([`simd`]).
pub(crate) mod attention;
pub mod matmul;
pub(crate) mod norm;
pub(crate) mod q4_1;
pub(crate) mod q5_0;
pub(crate) mod q8_0;
pub(crate) mod quantize;
pub(crate) mod rope;
pub(crate) mod simd;

pub use matmul::{QuantKind, QuantMatrix};
