//! AdamW as PyTorch defines it (decoupled weight decay, bias-corrected
//! moments), with its state open so a checkpoint can save and restore it
//! (candle-nn's `AdamW` keeps its moments private), and global-norm
//! gradient clipping as Hugging Face's trainer does by default.
use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use crate::model::ModelError;

/// AdamW settings.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's betas and ε; no weight decay (the trainer's default).
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// The optimizer over a fixed list of variables.
pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates applied so far.
    pub t: usize,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(vars: &[&Var], cfg: AdamWConfig) -> Result<Self, ModelError> {
        let zeros = |v: &&Var| v.zeros_like();
        Ok(Self {
            cfg,
            m: vars.iter().map(zeros).collect::<Result<_, _>>()?,
            v: vars.iter().map(zeros).collect::<Result<_, _>>()?,
            t: 0,
        })
    }

    /// One update of `vars` (the same list, in the same order, as at `new`)
    /// from `grads` scaled by `grad_scale`, at learning rate `lr`. A
    /// variable without a gradient is left alone.
    pub fn step(&mut self, vars: &[&Var], grads: &GradStore, grad_scale: f64, lr: f64) -> Result<(), ModelError> {
        self.t += 1;
        let c = self.cfg;
        let (bc1, bc2) = (1.0 - c.beta1.powi(self.t as i32), 1.0 - c.beta2.powi(self.t as i32));
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = (g * grad_scale)?;
            self.m[i] = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            self.v[i] = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Saves the moments and step count to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let mut out: HashMap<String, Tensor> = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.insert(format!("m.{i}"), m.clone());
            out.insert(format!("v.{i}"), v.clone());
        }
        out.insert("t".into(), Tensor::new(&[self.t as u32], &Device::Cpu)?);
        candle_core::safetensors::save(&out, path)?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote, for the same variable list.
    pub fn load(path: &Path, vars: &[&Var], cfg: AdamWConfig) -> Result<Self, ModelError> {
        let mut saved = candle_core::safetensors::load(path, &Device::Cpu)?;
        let mut take = |k: String, like: &Var| -> Result<Tensor, ModelError> {
            let t = saved.remove(&k).ok_or_else(|| ModelError::Format(format!("{}: no {k}", path.display())))?;
            if t.dims() != like.dims() {
                return Err(ModelError::Format(format!("{}: {k} has the wrong shape", path.display())));
            }
            Ok(t)
        };
        let mut m = Vec::with_capacity(vars.len());
        let mut v = Vec::with_capacity(vars.len());
        for (i, var) in vars.iter().enumerate() {
            m.push(take(format!("m.{i}"), var)?);
            v.push(take(format!("v.{i}"), var)?);
        }
        let t = saved
            .remove("t")
            .and_then(|t| t.to_vec1::<u32>().ok())
            .and_then(|t| t.first().copied())
            .ok_or_else(|| ModelError::Format(format!("{}: no step count", path.display())))?;
        Ok(Self { cfg, m, v, t: t as usize })
    }
}

/// The global L2 norm of `vars`' gradients in `grads`, times `scale`.
pub fn grad_norm(vars: &[&Var], grads: &GradStore, scale: f64) -> Result<f64, ModelError> {
    let mut sum = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    Ok(sum.sqrt() * scale)
}

/// Adds `more`'s gradients of `vars` into `acc` (gradient accumulation).
pub fn accumulate(acc: &mut GradStore, more: &GradStore, vars: &[&Var]) -> Result<(), ModelError> {
    for var in vars {
        if let Some(g) = more.get(var.as_tensor()) {
            let sum = match acc.get(var.as_tensor()) {
                Some(a) => (a + g)?,
                None => g.clone(),
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}
