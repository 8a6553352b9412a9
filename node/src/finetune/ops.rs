//! Two custom candle ops that training needs for speed, both with their own
//! backward pass:
//!
//! - [`FrozenMatmul`]: `x · W` for a base weight that is not trained.
//!   candle's matmul backward always computes the gradient of both operands,
//!   so a plain matmul against a frozen weight spends half of every backward
//!   pass (and gigabytes) on weight gradients nobody reads. This op's
//!   backward returns only `∂x = ∂y · Wᵀ` (the same buffer read with swapped
//!   strides), through the `gemm` crate.
//! - [`CrossEntropy`]: the masked next-token loss over the vocabulary in one
//!   pass per row (max, log-sum-exp, the target's logit), and its gradient
//!   `(softmax − onehot) · w / count` in one more, instead of a dozen
//!   vocabulary-wide temporaries.
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::embed::encoder::amx::{self, Epilogue, PackedWeights};

/// A frozen `k × n` matrix, element `(i, j)` at `data[i * rs + j * cs]`;
/// optionally also rounded to bf16 in AMX tile order, for this product and
/// its transpose (see [`FrozenMatmul::with_bf16_tiles`]).
#[derive(Clone)]
pub struct FrozenMatmul {
    data: Arc<Vec<f32>>,
    k: usize,
    n: usize,
    rs: usize,
    cs: usize,
    /// (this product's tiles, the transpose's tiles).
    tiles: Option<Arc<(PackedWeights, PackedWeights)>>,
    /// Which of the two this op multiplies by.
    tiles_transposed: bool,
}

impl FrozenMatmul {
    /// `w` stored row-major as `k × n` (input × output).
    pub fn input_major(w: Arc<Vec<f32>>, k: usize, n: usize) -> Self {
        Self { data: w, k, n, rs: n, cs: 1, tiles: None, tiles_transposed: false }
    }

    /// `w` stored row-major as `n × k` (output × input, e.g. a tied
    /// embedding used as the output head), used as its transpose.
    pub fn output_major(w: Arc<Vec<f32>>, n: usize, k: usize) -> Self {
        Self { data: w, k, n, rs: 1, cs: k, tiles: None, tiles_transposed: false }
    }

    /// The same matrix multiplied through the AMX bf16 tiles (weights and
    /// inputs rounded to bf16, sums in f32: mixed-precision training, ~3x
    /// the f32 products here), forward and backward; unchanged where AMX is
    /// absent or a size is not a multiple of 32.
    pub fn with_bf16_tiles(mut self) -> Self {
        if !amx::fits(self.k, self.n) || !amx::fits(self.n, self.k) {
            return self;
        }
        let at = |i: usize, j: usize| self.data[i * self.rs + j * self.cs];
        // `pack` takes [inputs, outputs] row-major.
        let fwd: Vec<f32> = (0..self.k * self.n).map(|idx| at(idx / self.n, idx % self.n)).collect();
        let bwd: Vec<f32> = (0..self.n * self.k).map(|idx| at(idx % self.k, idx / self.k)).collect();
        if let (Some(f), Some(b)) =
            (PackedWeights::pack(&fwd, self.k, self.n), PackedWeights::pack(&bwd, self.n, self.k))
        {
            self.tiles = Some(Arc::new((f, b)));
        }
        self
    }

    /// The transpose (`n × k`) over the same buffer (and tiles).
    fn transposed(&self) -> Self {
        Self {
            data: self.data.clone(),
            k: self.n,
            n: self.k,
            rs: self.cs,
            cs: self.rs,
            tiles: self.tiles.clone(),
            tiles_transposed: !self.tiles_transposed,
        }
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// `W + s · (B A)ᵀ` for an input-major `W`: `a` is `rank × k`, `b` is
    /// `n × rank` (the merged weights an adapter must agree with).
    pub fn plus_low_rank(&self, a: &[f32], b: &[f32], rank: usize, s: f32) -> Self {
        let mut w: Vec<f32> =
            (0..self.k * self.n).map(|idx| self.data[(idx / self.n) * self.rs + (idx % self.n) * self.cs]).collect();
        for i in 0..self.k {
            for o in 0..self.n {
                let d: f32 = (0..rank).map(|j| a[j * self.k + i] * b[o * rank + j]).sum();
                w[i * self.n + o] += s * d;
            }
        }
        Self::input_major(Arc::new(w), self.k, self.n)
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<std::borrow::Cow<'a, [f32]>> {
    let CpuStorage::F32(all) = storage else {
        return Err(candle_core::Error::Msg("frozen ops take f32".into()));
    };
    Ok(match layout.contiguous_offsets() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&all[a..b]),
        None => std::borrow::Cow::Owned(strided(layout).into_iter().map(|i| all[i]).collect()),
    })
}

/// Storage offsets of a strided layout's elements, in row-major order.
fn strided(layout: &Layout) -> Vec<usize> {
    let dims = layout.shape().dims();
    let stride = layout.stride();
    let mut out = vec![layout.start_offset()];
    for (d, &n) in dims.iter().enumerate() {
        out = out.iter().flat_map(|&base| (0..n).map(move |i| base + i * stride[d])).collect();
    }
    out
}

impl FrozenMatmul {
    /// `out (m × n) = x (m × k) · W`, both row-major.
    fn product(&self, x: &[f32], m: usize, out: &mut [f32]) {
        debug_assert!(x.len() >= m * self.k && out.len() >= m * self.n);
        if let Some(tiles) = &self.tiles {
            let packed = if self.tiles_transposed { &tiles.1 } else { &tiles.0 };
            packed.matmul(x, m, &vec![0f32; self.n], Epilogue::Bias, out);
            return;
        }
        let threads = rayon::current_num_threads();
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: x is m × k row-major, out m × n row-major (lengths checked
        // above), data k × n at (rs, cs), as every constructor sets it.
        unsafe {
            gemm::gemm(
                m,
                self.n,
                self.k,
                out.as_mut_ptr(),
                1,
                self.n as isize,
                false,
                x.as_ptr(),
                1,
                self.k as isize,
                self.data.as_ptr(),
                self.cs as isize,
                self.rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let (&k, lead) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("matmul of a scalar".into()))?;
        if k != self.k {
            return Err(candle_core::Error::Msg(format!("frozen matmul: input width {k}, weight {}", self.k)));
        }
        let m: usize = lead.iter().product();
        let x = contiguous_f32(storage, layout)?;
        let mut out = vec![0f32; m * self.n];
        self.product(&x, m, &mut out);
        let mut shape = lead.to_vec();
        shape.push(self.n);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.apply_op1_no_bwd(&self.transposed())?))
    }
}

/// The output head and the masked mean next-token cross-entropy in one op,
/// over the final hidden states (`rows × hidden`): only rows that count in
/// the loss are multiplied by the head, a few rows at a time, so the
/// `rows × vocab` logits never exist whole (100 MB at 4 × 128 tokens of a
/// 49k vocabulary, and as much again for their gradient); the backward pass
/// recomputes each block's logits rather than keeping them.
pub struct HeadLoss {
    /// The head (`hidden × vocab`).
    pub head: FrozenMatmul,
    /// The target id of each row.
    pub targets: Arc<Vec<u32>>,
    /// Each row's weight (0: not counted).
    pub weights: Arc<Vec<f32>>,
}

/// Rows multiplied by the head at once.
const HEAD_BLOCK: usize = 64;

/// `−log softmax(row)[target]`, in f64 sums.
fn row_loss(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = row.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>().ln() + max as f64;
    lse - row[target] as f64
}

/// `scale · (softmax(row) − onehot(target))` into `out`.
fn row_grad(row: &[f32], target: usize, scale: f32, out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    for (o, v) in out.iter_mut().zip(row) {
        *o = (v - max).exp() / sum * scale;
    }
    out[target] -= scale;
}

impl HeadLoss {
    fn count(&self) -> f32 {
        self.weights.iter().sum::<f32>().max(1.0)
    }

    /// Calls `f(rows, logits)` for each block of counted rows with their logits.
    fn blocks(&self, x: &[f32], mut f: impl FnMut(&[usize], &[f32])) {
        let (k, n) = (self.head.k, self.head.n);
        let counted: Vec<usize> = (0..self.weights.len()).filter(|&r| self.weights[r] != 0.0).collect();
        let mut xs = vec![0f32; HEAD_BLOCK * k];
        let mut logits = vec![0f32; HEAD_BLOCK * n];
        for rows in counted.chunks(HEAD_BLOCK) {
            for (i, &r) in rows.iter().enumerate() {
                xs[i * k..(i + 1) * k].copy_from_slice(&x[r * k..(r + 1) * k]);
            }
            self.head.product(&xs, rows.len(), &mut logits);
            f(rows, &logits[..rows.len() * n]);
        }
    }
}

impl CustomOp1 for HeadLoss {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = layout.shape().dims2()?;
        if k != self.head.k || rows != self.targets.len() || rows != self.weights.len() {
            return Err(candle_core::Error::Msg("head loss: shapes of states, targets and weights differ".into()));
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= self.head.n) {
            return Err(candle_core::Error::Msg(format!("target {t} is outside the vocabulary")));
        }
        let x = contiguous_f32(storage, layout)?;
        let n = self.head.n;
        let mut total = 0f64;
        self.blocks(&x, |rows, logits| {
            for (i, &r) in rows.iter().enumerate() {
                total += self.weights[r] as f64 * row_loss(&logits[i * n..(i + 1) * n], self.targets[r] as usize);
            }
        });
        Ok((CpuStorage::F32(vec![(total / self.count() as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (rows, k) = arg.dims2()?;
        let g = grad.to_scalar::<f32>()? / self.count();
        let x = arg.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let n = self.head.n;
        let back = self.head.transposed();
        let mut out = vec![0f32; rows * k];
        let mut dx = vec![0f32; HEAD_BLOCK * k];
        let mut dlogits = vec![0f32; HEAD_BLOCK * n];
        self.blocks(&x, |block, logits| {
            for (i, &r) in block.iter().enumerate() {
                let (row, d) = (&logits[i * n..(i + 1) * n], &mut dlogits[i * n..(i + 1) * n]);
                row_grad(row, self.targets[r] as usize, self.weights[r] * g, d);
            }
            back.product(&dlogits[..block.len() * n], block.len(), &mut dx);
            for (i, &r) in block.iter().enumerate() {
                out[r * k..(r + 1) * k].copy_from_slice(&dx[i * k..(i + 1) * k]);
            }
        });
        Ok(Some(Tensor::from_vec(out, (rows, k), arg.device())?))
    }
}

/// The masked mean next-token cross-entropy of `rows × vocab` logits.
pub struct CrossEntropy {
    /// The target id of each row.
    pub targets: Arc<Vec<u32>>,
    /// Each row's weight (0: not counted).
    pub weights: Arc<Vec<f32>>,
}

impl CrossEntropy {
    fn count(&self) -> f32 {
        self.weights.iter().sum::<f32>().max(1.0)
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "masked-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        if rows != self.targets.len() || rows != self.weights.len() {
            return Err(candle_core::Error::Msg("cross-entropy: rows and targets differ".into()));
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(candle_core::Error::Msg(format!("target {t} is outside the vocabulary")));
        }
        let x = contiguous_f32(storage, layout)?;
        let mut total = 0f64;
        for r in (0..rows).filter(|&r| self.weights[r] != 0.0) {
            total += self.weights[r] as f64 * row_loss(&x[r * vocab..(r + 1) * vocab], self.targets[r] as usize);
        }
        Ok((CpuStorage::F32(vec![(total / self.count() as f64) as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (rows, vocab) = arg.dims2()?;
        let g = grad.to_scalar::<f32>()? / self.count();
        let x = arg.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; rows * vocab];
        for r in (0..rows).filter(|&r| self.weights[r] != 0.0) {
            let (row, o) = (&x[r * vocab..(r + 1) * vocab], &mut out[r * vocab..(r + 1) * vocab]);
            row_grad(row, self.targets[r] as usize, self.weights[r] * g, o);
        }
        Ok(Some(Tensor::from_vec(out, (rows, vocab), arg.device())?))
    }
}

/// A frozen projection with its LoRA update as one op over (x, A, B):
/// `y = x · W + s · ((x ⊙ mask) · Aᵀ) · Bᵀ`, where `mask` is the dropout
/// mask (already scaled by 1/(1−p); None: no dropout). As separate candle
/// ops this was six graph nodes per projection, each costing a zeroed
/// gradient buffer and an add in candle's backward; here the backward
/// returns ∂x, ∂A and ∂B from one pass:
/// `∂B = s · ∂yᵀ u`, `∂u = s · ∂y B`, `∂A = ∂uᵀ (x ⊙ mask)`,
/// `∂x = ∂y · Wᵀ + (∂u · A) ⊙ mask`, with `u = (x ⊙ mask) · Aᵀ`.
pub struct LoraProjection {
    /// The frozen weight.
    pub base: FrozenMatmul,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout mask over x's elements, or None.
    pub mask: Option<Arc<Vec<f32>>>,
}

/// A matrix read at (row stride, column stride).
struct Strided<'a>(&'a [f32], usize, usize);

/// `out (m × n) = a (m × k) · b`, via gemm.
fn small_product(a: &[f32], m: usize, k: usize, Strided(b, b_rs, b_cs): Strided, n: usize, out: &mut [f32]) {
    // SAFETY: a is m × k row-major, out m × n row-major, b k × n at the strides given.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

impl LoraProjection {
    fn masked(&self, x: &[f32]) -> Vec<f32> {
        match &self.mask {
            Some(m) => x.iter().zip(m.iter()).map(|(a, b)| a * b).collect(),
            None => x.to_vec(),
        }
    }
}

impl candle_core::CustomOp3 for LoraProjection {
    fn name(&self) -> &'static str {
        "lora-projection"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let (&k, lead) = dims.split_last().ok_or_else(|| candle_core::Error::Msg("projection of a scalar".into()))?;
        let (r, ka) = l2.shape().dims2()?;
        let (n, rb) = l3.shape().dims2()?;
        if k != self.base.k || ka != k || rb != r || n != self.base.n {
            return Err(candle_core::Error::Msg("lora projection: shapes of x, A, B and W differ".into()));
        }
        let m: usize = lead.iter().product();
        let (x, a, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?, contiguous_f32(s3, l3)?);
        let mut y = vec![0f32; m * n];
        self.base.product(&x, m, &mut y);
        let xm = self.masked(&x);
        let mut u = vec![0f32; m * r];
        small_product(&xm, m, k, Strided(&a, 1, k), r, &mut u); // Aᵀ: element (i, j) = a[j·k + i]
        let mut d = vec![0f32; m * n];
        small_product(&u, m, r, Strided(&b, 1, r), n, &mut d); // Bᵀ: element (j, o) = b[o·r + j]
        for (y, d) in y.iter_mut().zip(&d) {
            *y += self.scale * d;
        }
        let mut shape = lead.to_vec();
        shape.push(n);
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, k) = a.dims2()?;
        let n = b.dims2()?.0;
        let m = x.elem_count() / k;
        let (xv, av, bv, g) = (
            x.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
            a.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
            b.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
            grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
        );
        let xm = self.masked(&xv);
        let mut u = vec![0f32; m * r];
        small_product(&xm, m, k, Strided(&av, 1, k), r, &mut u);
        // ∂B (n × r) = s · ∂yᵀ (n × m) · u (m × r).
        let mut db = vec![0f32; n * r];
        small_product_t(&g, m, n, &u, r, &mut db);
        db.iter_mut().for_each(|v| *v *= self.scale);
        // ∂u (m × r) = s · ∂y (m × n) · B (n × r).
        let mut du = vec![0f32; m * r];
        small_product(&g, m, n, Strided(&bv, r, 1), r, &mut du);
        du.iter_mut().for_each(|v| *v *= self.scale);
        // ∂A (r × k) = ∂uᵀ (r × m) · xm (m × k).
        let mut da = vec![0f32; r * k];
        small_product_t(&du, m, r, &xm, k, &mut da);
        // ∂x = ∂y · Wᵀ + (∂u · A) ⊙ mask.
        let mut dx = vec![0f32; m * k];
        self.base.transposed().product(&g, m, &mut dx);
        let mut dl = vec![0f32; m * k];
        small_product(&du, m, r, Strided(&av, k, 1), k, &mut dl);
        match &self.mask {
            Some(mask) => dx.iter_mut().zip(&dl).zip(mask.iter()).for_each(|((d, l), w)| *d += l * w),
            None => dx.iter_mut().zip(&dl).for_each(|(d, l)| *d += l),
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(da, (r, k), a.device())?),
            Some(Tensor::from_vec(db, (n, r), b.device())?),
        ))
    }
}

/// `out (p × q) = lhsᵀ · rhs` for `lhs` (m × p) and `rhs` (m × q), row-major.
fn small_product_t(lhs: &[f32], m: usize, p: usize, rhs: &[f32], q: usize, out: &mut [f32]) {
    // SAFETY: lhsᵀ is p × m read at (row stride 1, column stride p); rhs m × q; out p × q.
    unsafe {
        gemm::gemm(
            p,
            q,
            m,
            out.as_mut_ptr(),
            1,
            q as isize,
            false,
            lhs.as_ptr(),
            p as isize,
            1,
            rhs.as_ptr(),
            1,
            q as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var, D};

    use super::*;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Both ops against candle's own differentiable ops: the same values and
    /// the same input gradients.
    #[test]
    fn frozen_matmul_and_cross_entropy_match_candles_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap(); // input × output
        let op = FrozenMatmul::input_major(Arc::new(w.flatten_all().unwrap().to_vec1().unwrap()), 5, 7);
        let ours = x.apply_op1(op).unwrap();
        let theirs = x.broadcast_matmul(&w).unwrap();
        assert!(close(&ours, &theirs) < 1e-5);
        // The same matrix stored output-major, as a tied head is.
        let wt = w.t().unwrap().contiguous().unwrap();
        let head = FrozenMatmul::output_major(Arc::new(wt.flatten_all().unwrap().to_vec1().unwrap()), 7, 5);
        assert!(close(&x.apply_op1(head).unwrap(), &theirs) < 1e-5);

        let targets = Tensor::new(&[1u32, 6, 0, 3, 2, 5], &dev).unwrap();
        let weights = [1f32, 0.0, 1.0, 1.0, 0.0, 1.0];
        let loss = |logits: Tensor| {
            let op =
                CrossEntropy { targets: Arc::new(targets.to_vec1().unwrap()), weights: Arc::new(weights.to_vec()) };
            logits.reshape((6, 7)).unwrap().apply_op1(op).unwrap()
        };
        let reference = |logits: Tensor| {
            let flat = logits.reshape((6, 7)).unwrap();
            let lsm = candle_nn::ops::log_softmax(&flat, D::Minus1).unwrap();
            let picked = lsm.gather(&targets.reshape((6, 1)).unwrap(), 1).unwrap().reshape(6).unwrap();
            let w = Tensor::new(&weights, &dev).unwrap();
            ((picked * w).unwrap().sum_all().unwrap() * (-1.0 / 4.0)).unwrap()
        };
        let (a, b) = (loss(ours.clone()), reference(theirs.clone()));
        assert!(close(&a, &b) < 1e-5, "loss {a} vs {b}");
        let (ga, gb) = (a.backward().unwrap(), b.backward().unwrap());
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        assert!(close(ga, gb) < 1e-5, "input gradients differ");
        assert_eq!(ga.dtype(), DType::F32);

        // The fused head + loss: the same loss and input gradient as the head
        // then the loss, rows of weight 0 included.
        let states = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap()).unwrap();
        let head = FrozenMatmul::output_major(Arc::new(wt.flatten_all().unwrap().to_vec1().unwrap()), 7, 5);
        let fused = states
            .apply_op1(HeadLoss {
                head: head.clone(),
                targets: Arc::new(targets.to_vec1().unwrap()),
                weights: Arc::new(weights.to_vec()),
            })
            .unwrap();
        let split = loss(states.apply_op1(head.clone()).unwrap());
        assert!(close(&fused, &split) < 1e-5, "fused loss {fused} vs {split}");
        let (gf, gs) = (fused.backward().unwrap(), split.backward().unwrap());
        assert!(close(gf.get(states.as_tensor()).unwrap(), gs.get(states.as_tensor()).unwrap()) < 1e-5);

        // The fused LoRA projection, with and without a dropout mask: the
        // same output and the same gradients of x, A and B as the composed ops.
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 2), &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let frozen = FrozenMatmul::input_major(Arc::new(w.flatten_all().unwrap().to_vec1().unwrap()), 5, 7);
        for mask in [None, Some((0..30).map(|i| if i % 3 == 0 { 0.0 } else { 1.5 }).collect::<Vec<f32>>())] {
            let op = LoraProjection { base: frozen.clone(), scale: 2.0, mask: mask.clone().map(Arc::new) };
            let ours = x.apply_op3(a.as_tensor(), b.as_tensor(), op).unwrap();
            let xm = match &mask {
                Some(m) => (x.as_tensor() * Tensor::from_vec(m.clone(), (2, 3, 5), &dev).unwrap()).unwrap(),
                None => x.as_tensor().clone(),
            };
            let delta = xm.broadcast_matmul(&a.t().unwrap()).unwrap().broadcast_matmul(&b.t().unwrap()).unwrap();
            let theirs = (x.broadcast_matmul(&w).unwrap() + (delta * 2.0).unwrap()).unwrap();
            assert!(close(&ours, &theirs) < 1e-4, "lora projection forward");
            let go = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                let d = close(go.get(v.as_tensor()).unwrap(), gt.get(v.as_tensor()).unwrap());
                assert!(d < 1e-4, "lora projection gradient differs by {d}");
            }
        }
    }
}
