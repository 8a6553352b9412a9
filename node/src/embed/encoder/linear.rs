//! A dense layer, `y = x W^T + b`, as one matrix product over every token of
//! the batch.
use gemm::Parallelism;
use half::f16;

use super::amx::{Epilogue, PackedWeights};
use super::skinny;
use super::vector_math::gelu;

/// Weights transposed once at load to `[inputs, outputs]` row-major, so the
/// product reads both operands along rows; the bias is written into the
/// output first and the product accumulated onto it (no second pass).
pub struct Linear {
    weight_t: Vec<f32>,
    /// The same weights rounded to f16, for the few-row path (see `skinny`;
    /// empty where AMX tiles are used).
    weight_t_f16: Vec<f16>,
    /// The same weights in bf16 AMX tiles, for products over many rows
    /// where the CPU has AMX (see `amx`).
    weight_amx: Option<PackedWeights>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// From PyTorch's `[outputs, inputs]` weight and its bias.
    pub fn new(weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        debug_assert_eq!(weight.len(), inputs * outputs);
        let mut weight_t = vec![0f32; inputs * outputs];
        for o in 0..outputs {
            for i in 0..inputs {
                weight_t[i * outputs + o] = weight[o * inputs + i];
            }
        }
        Self::from_transposed(weight_t, bias, inputs, outputs)
    }

    /// The f16 copy is made only where the few-row kernel can be reached:
    /// with AMX tiles every product takes them.
    fn from_transposed(weight_t: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        let weight_amx = PackedWeights::pack(&weight_t, inputs, outputs);
        let weight_t_f16 = if weight_amx.is_none() && skinny::available(outputs) {
            weight_t.iter().map(|&w| f16::from_f32(w)).collect()
        } else {
            Vec::new()
        };
        Self { weight_t, weight_t_f16, weight_amx, bias, inputs, outputs }
    }

    /// Several layers that read the same input as one (query, key and value):
    /// their outputs side by side, so one product replaces three. The tiles
    /// and f16 copies are joined the same way, not made again.
    pub fn concat(parts: &[Linear]) -> Self {
        let inputs = parts[0].inputs;
        let outputs: usize = parts.iter().map(|p| p.outputs).sum();
        let weight_t = side_by_side(inputs, parts, |p| &p.weight_t);
        let weight_amx = match parts.iter().map(|p| p.weight_amx.as_ref()).collect::<Option<Vec<_>>>() {
            Some(tiles) => PackedWeights::side_by_side(&tiles),
            None => PackedWeights::pack(&weight_t, inputs, outputs),
        };
        let weight_t_f16 =
            if weight_amx.is_none() && skinny::available(outputs) && parts.iter().all(|p| !p.weight_t_f16.is_empty()) {
                side_by_side(inputs, parts, |p| &p.weight_t_f16)
            } else {
                Vec::new()
            };
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Self { weight_t, weight_t_f16, weight_amx, bias, inputs, outputs }
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out = x W^T + b` for `rows` rows of `x`; `out` is resized to fit.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        self.forward_then(x, rows, Epilogue::Bias, out);
    }

    /// `out = gelu(x W^T + b)`: on the AMX path the GELU is applied to each
    /// block while it is in cache, instead of in a pass of its own.
    pub fn forward_gelu(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        self.forward_then(x, rows, Epilogue::Gelu, out);
    }

    fn forward_then(&self, x: &[f32], rows: usize, epilogue: Epilogue, out: &mut Vec<f32>) {
        assert_eq!(x.len(), rows * self.inputs, "linear input has the wrong width");
        // AMX first at every row count: with the weights read once as bf16
        // and the products nearly free, it beats the f16 few-row kernel on
        // a 15-token query too (measured: 2.0 against 3.3 ms p50).
        if let Some(tiles) = &self.weight_amx {
            // Every element is overwritten: a reused buffer is only cut to
            // size, not cleared first.
            let len = rows * self.outputs;
            if out.len() < len {
                out.resize(len, 0.0);
            }
            out.truncate(len);
            tiles.matmul(x, rows, &self.bias, epilogue, out);
            return;
        }
        let few_rows = rows <= skinny::MAX_ROWS && skinny::available(self.outputs);
        out.clear();
        out.reserve(rows * self.outputs);
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        if rows == 0 {
            return;
        }
        if few_rows {
            skinny::matmul(x, rows, self.inputs, &self.weight_t_f16, self.outputs, out);
        } else {
            matmul(
                rows,
                self.outputs,
                self.inputs,
                x,
                self.inputs,
                &self.weight_t,
                self.outputs,
                out,
                self.outputs,
                true,
                1.0,
            );
        }
        if epilogue == Epilogue::Gelu {
            gelu(out);
        }
    }
}

/// The `[inputs, outputs]` matrices of `parts`, each row the parts' rows
/// one after another.
fn side_by_side<T: Copy>(inputs: usize, parts: &[Linear], matrix: impl Fn(&Linear) -> &[T]) -> Vec<T> {
    let mut joined = Vec::with_capacity(inputs * parts.iter().map(|p| p.outputs).sum::<usize>());
    for i in 0..inputs {
        for p in parts {
            joined.extend_from_slice(&matrix(p)[i * p.outputs..][..p.outputs]);
        }
    }
    joined
}

/// Threads for one product: both cores once the product is large enough to
/// pay for waking the second (a short query's projections are not).
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= 1 << 20 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `dst[m x n] (+)= scale * a[m x k] * b[k x n]`, all row-major with the
/// given row strides (`accumulate`: add onto `dst` instead of overwriting).
#[allow(clippy::too_many_arguments)] // a matrix product is its three operands, their strides and the flags
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_stride: usize,
    b: &[f32],
    b_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    accumulate: bool,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || a.len() >= (m - 1) * a_stride + k, "matmul: a is too short");
    assert!(k == 0 || b.len() >= (k - 1) * b_stride + n, "matmul: b is too short");
    assert!(dst.len() >= (m - 1) * dst_stride + n, "matmul: dst is too short");
    assert!(m == 1 || dst_stride >= n, "matmul: dst rows overlap");
    let view = Strided { a: a.as_ptr(), a_rs: a_stride, a_cs: 1, b: b.as_ptr(), b_rs: b_stride, b_cs: 1 };
    // SAFETY: the asserts above keep every read of a and b and every write of dst inside the slices.
    unsafe { view.product(m, n, k, dst.as_mut_ptr(), dst_stride, accumulate, scale, parallelism(m, n, k)) }
}

/// Two operands given by pointers and both strides, for views a slice cannot
/// express (one head's columns of the packed q|k|v rows; keys read as the
/// columns of `k^T`).
pub struct Strided {
    /// First operand, `m x k`.
    pub a: *const f32,
    /// Its row stride.
    pub a_rs: usize,
    /// Its column stride.
    pub a_cs: usize,
    /// Second operand, `k x n`.
    pub b: *const f32,
    /// Its row stride.
    pub b_rs: usize,
    /// Its column stride.
    pub b_cs: usize,
}

impl Strided {
    /// `dst[m x n] (+)= scale * a * b`, `dst` row-major with row stride `dst_rs`.
    ///
    /// # Safety
    /// Every element the strides reach must lie inside the operands'
    /// allocations, and nothing else may access `dst`'s elements meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn product(
        &self,
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        dst_rs: usize,
        accumulate: bool,
        scale: f32,
        parallelism: Parallelism,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            self.a,
            self.a_cs as isize,
            self.a_rs as isize,
            self.b,
            self.b_cs as isize,
            self.b_rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_the_definition_and_concat_stacks_outputs() {
        let (inputs, outputs, rows) = (5, 3, 4);
        let w: Vec<f32> = (0..inputs * outputs).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..outputs).map(|i| i as f32).collect();
        let x: Vec<f32> = (0..rows * inputs).map(|i| (i as f32 * 0.11).cos()).collect();
        let layer = Linear::new(&w, b.clone(), inputs, outputs);
        let mut y = Vec::new();
        layer.forward(&x, rows, &mut y);
        for r in 0..rows {
            for o in 0..outputs {
                let want: f32 = (0..inputs).map(|i| x[r * inputs + i] * w[o * inputs + i]).sum::<f32>() + b[o];
                assert!((y[r * outputs + o] - want).abs() < 1e-5, "row {r} output {o}");
            }
        }
        let both = Linear::concat(&[Linear::new(&w, b.clone(), inputs, outputs), Linear::new(&w, b, inputs, outputs)]);
        let mut y2 = Vec::new();
        both.forward(&x, rows, &mut y2);
        for r in 0..rows {
            assert_eq!(&y2[r * 6..r * 6 + 3], &y[r * 3..r * 3 + 3]);
            assert_eq!(&y2[r * 6 + 3..r * 6 + 6], &y[r * 3..r * 3 + 3]);
        }
    }
}
