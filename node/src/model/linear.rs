//! A weight matrix of the model, whatever its GGUF type: Q4_1, Q5_0 and Q8_0 through
//! this crate's kernels ([`super::kernels::matmul`]), every other type through
//! candle's quantised matmul (which has fast paths for the k-quants). Fused
//! projections (q|k|v, gate|up) are one matrix when their type has a kernel
//! here, and candle matrices side by side otherwise.
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::kernels::QuantMatrix;
use super::ModelError;

/// `x · Wᵀ` for one weight matrix (or several stacked by output row).
pub enum Linear {
    /// This crate's kernel (shared: a tied embedding and output head are one matrix).
    Quant(Arc<QuantMatrix>),
    /// candle's kernel; `rows` outputs.
    Candle { mm: QMatMul, rows: usize },
    /// Matrices whose outputs sit side by side (a fused projection of a type
    /// without a kernel here).
    Stacked(Vec<Linear>),
}

impl Linear {
    /// One matrix.
    pub fn new(t: QTensor) -> Result<Self, ModelError> {
        match QuantMatrix::from_qtensor(&t)? {
            Some(m) => Ok(Linear::Quant(Arc::new(m))),
            None => {
                let rows = t.shape().dims2()?.0;
                Ok(Linear::Candle { mm: QMatMul::from_qtensor(t)?, rows })
            }
        }
    }

    /// Several matrices of one input width as one, outputs concatenated in order.
    pub fn stacked(parts: Vec<QTensor>) -> Result<Self, ModelError> {
        let mut quants = Vec::new();
        for p in &parts {
            match QuantMatrix::from_qtensor(p)? {
                Some(m) => quants.push(m),
                None => break,
            }
        }
        if quants.len() == parts.len() {
            if let Some(m) = QuantMatrix::stack(quants) {
                return Ok(Linear::Quant(Arc::new(m)));
            }
        }
        Ok(Linear::Stacked(parts.into_iter().map(Linear::new).collect::<Result<_, _>>()?))
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Quant(m) => m.rows(),
            Linear::Candle { rows, .. } => *rows,
            Linear::Stacked(parts) => parts.iter().map(Linear::rows).sum(),
        }
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> usize {
        match self {
            Linear::Quant(m) => m.bytes(),
            Linear::Candle { mm: QMatMul::QTensor(t), .. } => t.storage_size_in_bytes(),
            Linear::Candle { .. } => 0,
            Linear::Stacked(parts) => parts.iter().map(Linear::bytes).sum(),
        }
    }

    /// `m` rows of input → `m × rows()` outputs, row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        match self {
            Linear::Quant(q) => q.matmul(x, m),
            Linear::Candle { mm, .. } => {
                let cols = x.len().checked_div(m).unwrap_or(0);
                let t = Tensor::from_slice(x, (m, cols), &Device::Cpu)?;
                Ok(mm.forward(&t)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Linear::Stacked(parts) => {
                let outs = parts.iter().map(|p| p.matmul(x, m)).collect::<Result<Vec<_>, _>>()?;
                let total = self.rows();
                let mut out = Vec::with_capacity(m * total);
                for i in 0..m {
                    for (p, o) in parts.iter().zip(&outs) {
                        out.extend_from_slice(&o[i * p.rows()..(i + 1) * p.rows()]);
                    }
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// A type without a kernel here (Q4_K) stacks side by side and agrees with
    /// running each part; a fused Q4_1 pair is one kernel matrix.
    #[test]
    fn stacked_outputs_sit_side_by_side() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (3, 256), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 256), &dev).unwrap();
        let x: Vec<f32> = (0..2 * 256).map(|i| (i as f32 * 0.01).sin()).collect();
        let q = |t: &Tensor, d| QTensor::quantize(t, d).unwrap();
        let fused = Linear::stacked(vec![q(&a, GgmlDType::Q4K), q(&b, GgmlDType::Q4K)]).unwrap();
        assert!(matches!(fused, Linear::Stacked(_)));
        let (ya, yb) = (
            Linear::new(q(&a, GgmlDType::Q4K)).unwrap().matmul(&x, 2).unwrap(),
            Linear::new(q(&b, GgmlDType::Q4K)).unwrap().matmul(&x, 2).unwrap(),
        );
        let y = fused.matmul(&x, 2).unwrap();
        assert_eq!(y, [&ya[..3], &yb[..2], &ya[3..], &yb[2..]].concat());
        let one = Linear::stacked(vec![q(&a, GgmlDType::Q4_1), q(&b, GgmlDType::Q4_1)]).unwrap();
        assert!(matches!(one, Linear::Quant(_)));
        assert_eq!(one.rows(), 5);
    }
}
