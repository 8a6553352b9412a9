//! The training graph's elementwise layers as single candle ops, each with
//! its own backward pass: RMS norm (frozen weight), RoPE on adjacent pairs,
//! causal softmax (scale folded in), and SwiGLU. Composed from candle's
//! broadcasting ops they cost a dozen tensor-wide passes (and allocations)
//! each way, about a third of a step measured with perf; here each is one
//! pass forward and one back, in parallel over rows on the rank's rayon pool
//! (the pool the products use, so no second pool wakes up per op).
//!
//! candle's own fused versions (`rms_norm`, `rope_i`, `softmax_last_dim`)
//! have no backward pass: a graph using them would train nothing behind them.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

fn f32s<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(all), Some((a, b))) => Ok(&all[a..b]),
        _ => Err(candle_core::Error::Msg("fused ops take contiguous f32".into())),
    }
}

fn vec_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// Rows of `width` per parallel task: at least 16k values a task.
fn rows_per_task(width: usize) -> usize {
    (16384 / width.max(1)).max(1)
}

/// `x / √(mean(x²) + eps) · w` over the last dimension; `w` is frozen.
pub struct RmsNorm {
    /// The norm's weights.
    pub weight: Arc<Vec<f32>>,
    /// ε.
    pub eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout)?;
        let h = self.weight.len();
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(h);
        out.par_chunks_mut(h * per).zip(x.par_chunks(h * per)).for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / h as f32 + self.eps).sqrt();
                for ((o, x), w) in o.iter_mut().zip(x).zip(self.weight.iter()) {
                    *o = x * inv * w;
                }
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (x, g) = (vec_of(arg)?, vec_of(grad)?);
        let h = self.weight.len();
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(h);
        // y = x·r·w with r = (mean x² + ε)^-½: ∂x = r·(g⊙w) − x·r³·mean(x ⊙ g⊙w).
        out.par_chunks_mut(h * per).zip(x.par_chunks(h * per)).zip(g.par_chunks(h * per)).for_each(|((o, x), g)| {
            for ((o, x), g) in o.chunks_exact_mut(h).zip(x.chunks_exact(h)).zip(g.chunks_exact(h)) {
                let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / h as f32 + self.eps).sqrt();
                let dot: f32 = x.iter().zip(g).zip(self.weight.iter()).map(|((x, g), w)| x * g * w).sum::<f32>();
                let c = r * r * r * dot / h as f32;
                for (((o, x), g), w) in o.iter_mut().zip(x).zip(g).zip(self.weight.iter()) {
                    *o = r * g * w - x * c;
                }
            }
        });
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

/// RoPE on heads laid out `batch × heads × len × head_dim`, position = the
/// row's index in `len`: adjacent pairs `(2i, 2i+1)` as llama.cpp rotates a
/// llama GGUF, or with `neox` the halves `(i, i + head_dim/2)` (Gemma).
pub struct Rope {
    /// `positions × head_dim/2` cos and sin.
    pub cos: Arc<Vec<f32>>,
    /// See `cos`.
    pub sin: Arc<Vec<f32>>,
    /// Rows of the tables.
    pub half: usize,
    /// Pairs `(i, i + half)` instead of `(2i, 2i+1)`.
    pub neox: bool,
}

impl Rope {
    fn rotate(&self, x: &[f32], dims: &[usize], sign: f32) -> candle_core::Result<Vec<f32>> {
        let [_, _, len, hd] = dims else { return Err(candle_core::Error::Msg("rope takes 4 dims".into())) };
        let (len, hd) = (*len, *hd);
        if hd != 2 * self.half || len * self.half > self.cos.len() {
            return Err(candle_core::Error::Msg("rope: head width or length does not fit the tables".into()));
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(len * hd).zip(x.par_chunks(len * hd)).for_each(|(o, x)| {
            for p in 0..len {
                let (c, s) =
                    (&self.cos[p * self.half..(p + 1) * self.half], &self.sin[p * self.half..(p + 1) * self.half]);
                for i in 0..self.half {
                    let (ia, ib) = if self.neox { (i, i + self.half) } else { (2 * i, 2 * i + 1) };
                    let (a, b) = (x[p * hd + ia], x[p * hd + ib]);
                    let sn = sign * s[i];
                    o[p * hd + ia] = a * c[i] - b * sn;
                    o[p * hd + ib] = a * sn + b * c[i];
                }
            }
        });
        Ok(out)
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "train-rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self.rotate(f32s(storage, layout)?, layout.shape().dims(), 1.0)?;
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// A rotation's transpose is the rotation by −θ.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let out = self.rotate(&vec_of(grad)?, arg.dims(), -1.0)?;
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

/// `softmax(scale · s)` over the last dimension of `… × rows × len` scores,
/// positions after the row's own masked out (causal). `rows` may be a
/// multiple of `len`: the query heads of one key/value group stacked (row
/// `r` is at position `r mod len`), so grouped-query attention needs no
/// copies of the keys and values. With a `window` (sliding-window layers),
/// a row at position `i` also masks keys at `j` with `i − j ≥ window`, as
/// llama.cpp's mask does.
pub struct CausalSoftmax {
    /// Multiplies the scores first.
    pub scale: f32,
    /// Positions a row sees, itself included (`None`: all before it).
    pub window: Option<usize>,
}

impl CausalSoftmax {
    /// The first key position row position `i` sees.
    fn start(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w.max(1)))
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "train-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout)?;
        let (rows, t) = square(layout.shape().dims())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(rows * t).zip(x.par_chunks(rows * t)).for_each(|(o, x)| {
            for r in 0..rows {
                let i = r % t;
                let j0 = self.start(i);
                let row = &x[r * t + j0..r * t + i + 1];
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
                let o = &mut o[r * t + j0..r * t + i + 1];
                let mut sum = 0f32;
                for (o, v) in o.iter_mut().zip(row) {
                    *o = (v * self.scale - max).exp();
                    sum += *o;
                }
                o.iter_mut().for_each(|v| *v /= sum);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// ∂s = scale · p ⊙ (∂p − Σ ∂p ⊙ p), per row; masked entries stay 0.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (p, g) = (vec_of(res)?, vec_of(grad)?);
        let (rows, t) = square(res.dims())?;
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(rows * t).zip(p.par_chunks(rows * t)).zip(g.par_chunks(rows * t)).for_each(|((o, p), g)| {
            for r in 0..rows {
                let i = r % t;
                let j0 = self.start(i);
                let (p, g) = (&p[r * t + j0..r * t + i + 1], &g[r * t + j0..r * t + i + 1]);
                let dot: f32 = p.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, p), g) in o[r * t + j0..r * t + i + 1].iter_mut().zip(p).zip(g) {
                    *o = self.scale * p * (g - dot);
                }
            }
        });
        Ok(Some(Tensor::from_vec(out, res.shape(), res.device())?))
    }
}

/// The last two dimensions of scores, checked: rows a multiple of len.
fn square(dims: &[usize]) -> candle_core::Result<(usize, usize)> {
    match dims {
        [.., rows, t] if *t > 0 && rows % t == 0 => Ok((*rows, *t)),
        _ => Err(candle_core::Error::Msg(format!("causal softmax: scores of shape {dims:?}"))),
    }
}

/// `silu(gate) · up`.
pub struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "train-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(s1, l1)?, f32s(s2, l2)?);
        if g.len() != u.len() {
            return Err(candle_core::Error::Msg("swiglu: gate and up differ in size".into()));
        }
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(16384).zip(g.par_chunks(16384)).zip(u.par_chunks(16384)).for_each(|((o, g), u)| {
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, d) = (vec_of(gate)?, vec_of(up)?, vec_of(grad)?);
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(16384)
            .zip(du.par_chunks_mut(16384))
            .zip(g.par_chunks(16384).zip(u.par_chunks(16384)).zip(d.par_chunks(16384)))
            .for_each(|((dg, du), ((g, u), d))| {
                for i in 0..g.len() {
                    let s = 1.0 / (1.0 + (-g[i]).exp());
                    du[i] = d[i] * g[i] * s;
                    dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var, D};

    use super::*;

    fn worst(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Each fused op against the same layer composed from candle's
    /// differentiable ops: values and input gradients (through a random
    /// projection of the output, so every element's gradient differs).
    #[test]
    fn fused_layers_match_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap();
        let check = |ours: Tensor, theirs: Tensor, what: &str| {
            assert!(worst(&ours, &theirs) < 1e-4, "{what}: forward");
            let go = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let d = worst(go.get(x.as_tensor()).unwrap(), gt.get(x.as_tensor()).unwrap());
            assert!(d < 1e-4, "{what}: gradient differs by {d}");
        };

        let w: Vec<f32> = (0..8).map(|i| 0.5 + i as f32 * 0.1).collect();
        let wt = Tensor::new(w.as_slice(), &dev).unwrap();
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = x.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&wt).unwrap();
        check(x.apply_op1(RmsNorm { weight: Arc::new(w), eps: 1e-5 }).unwrap(), composed, "rms norm");

        let (cos, sin): (Vec<f32>, Vec<f32>) =
            (0..4 * 4).map(|i| ((i as f32 * 0.3).cos(), (i as f32 * 0.3).sin())).unzip();
        let c = Tensor::from_vec(cos.clone(), (4, 4), &dev).unwrap();
        let s = Tensor::from_vec(sin.clone(), (4, 4), &dev).unwrap();
        let pairs = x.reshape((2, 3, 4, 4, 2)).unwrap();
        let (x0, x1) =
            (pairs.narrow(4, 0, 1).unwrap().squeeze(4).unwrap(), pairs.narrow(4, 1, 1).unwrap().squeeze(4).unwrap());
        let r0 = (x0.broadcast_mul(&c).unwrap() - x1.broadcast_mul(&s).unwrap()).unwrap();
        let r1 = (x0.broadcast_mul(&s).unwrap() + x1.broadcast_mul(&c).unwrap()).unwrap();
        let composed = Tensor::stack(&[r0, r1], 4).unwrap().reshape((2, 3, 4, 8)).unwrap();
        let (cos, sin) = (Arc::new(cos), Arc::new(sin));
        let rope = |neox| Rope { cos: cos.clone(), sin: sin.clone(), half: 4, neox };
        check(x.apply_op1(rope(false)).unwrap(), composed, "rope");
        // NeoX: the first half of the head against the second.
        let (x0, x1) = (x.narrow(3, 0, 4).unwrap(), x.narrow(3, 4, 4).unwrap());
        let r0 = (x0.broadcast_mul(&c).unwrap() - x1.broadcast_mul(&s).unwrap()).unwrap();
        let r1 = (x0.broadcast_mul(&s).unwrap() + x1.broadcast_mul(&c).unwrap()).unwrap();
        check(x.apply_op1(rope(true)).unwrap(), Tensor::cat(&[r0, r1], 3).unwrap(), "neox rope");

        let scores = x.narrow(3, 0, 4).unwrap().contiguous().unwrap();
        let probe4 = probe.narrow(3, 0, 4).unwrap();
        // Causal, and with a window of 2 (a key two or more positions back masked too).
        for window in [None, Some(2)] {
            let visible = move |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
            let mask: Vec<f32> =
                (0..4).flat_map(|i| (0..4).map(move |j| if visible(i, j) { 0.0 } else { f32::NEG_INFINITY })).collect();
            let mask = Tensor::from_vec(mask, (4, 4), &dev).unwrap();
            let composed =
                candle_nn::ops::softmax(&(scores.clone() * 0.5).unwrap().broadcast_add(&mask).unwrap(), D::Minus1)
                    .unwrap();
            let ours = scores.apply_op1(CausalSoftmax { scale: 0.5, window }).unwrap();
            assert!(worst(&ours, &composed) < 1e-5, "softmax forward, window {window:?}");
            let go = (ours * &probe4).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (composed * &probe4).unwrap().sum_all().unwrap().backward().unwrap();
            let d = worst(go.get(x.as_tensor()).unwrap(), gt.get(x.as_tensor()).unwrap());
            assert!(d < 1e-5, "softmax gradient, window {window:?}: {d}");
        }

        let up = (x.as_tensor() * 0.7).unwrap().cos().unwrap();
        let composed = ((x.as_tensor() / (x.neg().unwrap().exp().unwrap() + 1.0).unwrap()).unwrap() * &up).unwrap();
        check(x.apply_op2(&up, SwiGlu).unwrap(), composed, "swiglu");
    }
}
