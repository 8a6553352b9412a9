//! One forward step of the decoder on this rank: embeddings, every layer's
//! attention and feed-forward blocks, and rank 0's logits.
use candle_core::{Device, Tensor};

use super::config::Activation;
use super::{Embedding, Head, RankModel, SeqStep};
use crate::model::adapter::Target;
use crate::model::comm::Communicator;
use crate::model::kernels::attention::{self, SeqView};
use crate::model::kernels::norm::{
    add_in_place, gelu_mul, rms_norm, rms_norm_in_place, scale_in_place, silu_mul, softcap_in_place,
};
use crate::model::kv_cache::SeqCache;
use crate::model::ModelError;

impl RankModel {
    /// Runs one step over `steps` on this rank. Rank 0 returns the logits of each
    /// sequence's last token (in `steps` order); other ranks return an empty list.
    pub fn forward(&mut self, steps: &[SeqStep], comm: &dyn Communicator) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_steps(steps)?;
        let mut x = self.embed_tokens(steps)?;
        if let Some(s) = self.cfg.embed_scale {
            scale_in_place(&mut x, s);
        }
        let n = x.len() / self.cfg.hidden;
        let width = self.kv_width();
        for s in steps {
            self.caches.entry(s.seq).or_insert_with(|| SeqCache::new(self.cfg.n_layer, width));
        }
        let eps = self.cfg.eps as f32;
        let mut h = vec![0f32; x.len()];
        for l in 0..self.cfg.n_layer {
            rms_norm(&x, &self.layers[l].attn_norm, eps, &mut h);
            let mut a = self.attention(l, &h, n, steps, comm)?;
            if let Some(w) = &self.layers[l].post_attn_norm {
                rms_norm_in_place(&mut a, w, eps);
            }
            add_in_place(&mut x, &a);
            rms_norm(&x, &self.layers[l].ffn_norm, eps, &mut h);
            let mut f = self.feed_forward(l, &h, n, steps, comm)?;
            if let Some(w) = &self.layers[l].post_ffn_norm {
                rms_norm_in_place(&mut f, w, eps);
            }
            add_in_place(&mut x, &f);
        }
        self.logits(&x, steps, comm)
    }

    /// Refuses steps that cannot run: no tokens, past the context, or not
    /// starting where the sequence's cache ends.
    fn check_steps(&self, steps: &[SeqStep]) -> Result<(), ModelError> {
        for s in steps {
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {} has no tokens in this step", s.seq)));
            }
            if s.start + s.tokens.len() > self.cfg.context_length {
                return Err(ModelError::Input(format!(
                    "sequence {} would exceed the context of {} tokens",
                    s.seq, self.cfg.context_length
                )));
            }
            let cached = self.caches.get(&s.seq).map_or(0, SeqCache::positions);
            if cached != s.start {
                return Err(ModelError::Input(format!(
                    "sequence {} starts at {} but {cached} positions are cached",
                    s.seq, s.start
                )));
            }
            if let Some(id) = s.adapter {
                if !self.adapters.contains_key(&id) {
                    return Err(ModelError::Input(format!("sequence {} names adapter {id}, not loaded", s.seq)));
                }
            }
            if steps.iter().filter(|o| o.seq == s.seq).count() > 1 {
                return Err(ModelError::Input(format!("sequence {} appears twice in one step", s.seq)));
            }
        }
        Ok(())
    }

    /// The embeddings of every step's tokens, one row each, in step order.
    fn embed_tokens(&self, steps: &[SeqStep]) -> Result<Vec<f32>, ModelError> {
        let ids: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary")));
        }
        match &self.embed {
            Embedding::Quant(m) => {
                let mut x = Vec::with_capacity(ids.len() * self.cfg.hidden);
                for &t in &ids {
                    x.extend(
                        m.dequantize_row(t as usize)
                            .ok_or_else(|| ModelError::Input(format!("token id {t} is outside the vocabulary")))?,
                    );
                }
                Ok(x)
            }
            Embedding::Candle(e) => {
                let total = ids.len();
                let ids = Tensor::from_vec(ids, (total,), &Device::Cpu)?;
                Ok(e.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// Every rank's columns of a `rows × local` activation, side by side in rank
    /// order: `rows × (sum of widths)`.
    fn gather_columns(
        &self,
        t: Vec<f32>,
        rows: usize,
        widths: &[usize],
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, ModelError> {
        if comm.world_size() == 1 {
            return Ok(t);
        }
        let all = comm.all_gather(&t)?;
        let expected: usize = widths.iter().map(|w| w * rows).sum();
        if all.len() != expected {
            return Err(ModelError::Config(format!("gathered {} values, expected {expected}", all.len())));
        }
        let total: usize = widths.iter().sum();
        let mut out = vec![0f32; rows * total];
        let (mut src, mut col) = (0, 0);
        for &w in widths {
            for r in 0..rows {
                out[r * total + col..r * total + col + w].copy_from_slice(&all[src + r * w..src + (r + 1) * w]);
            }
            src += w * rows;
            col += w;
        }
        Ok(out)
    }

    /// Layer `l`'s attention block over the normed input `h` (`n` rows): fused
    /// q|k|v for this rank's heads, the per-head norms (Gemma), RoPE, keys and
    /// values appended to each sequence's cache, attention (windowed on a
    /// sliding-window layer), then the output projection by output row after
    /// gathering the heads.
    fn attention(
        &mut self,
        l: usize,
        h: &[f32],
        n: usize,
        steps: &[SeqStep],
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, ModelError> {
        let heads = self.heads();
        let (hd, w) = (heads.head_dim, heads.qkv_width());
        let layer = &self.layers[l];
        let mut qkv = layer.qkv.matmul(h, n)?;
        let (q_w, kv_w) = (heads.n_q * hd, heads.n_kv * hd);
        self.add_adapters(l, &[(Target::Q, 0), (Target::K, q_w), (Target::V, q_w + kv_w)], h, steps, &mut qkv, w);
        if let Some(bias) = &layer.qkv_bias {
            for row in qkv.chunks_exact_mut(w) {
                add_in_place(row, bias);
            }
        }
        let (eps, rope) = (self.cfg.eps as f32, &self.ropes[layer.rope]);
        // Per row: the head norms, RoPE on the query and key heads, the query
        // scale, then the keys and values into the sequence's cache; attention
        // below reads the caches shared.
        let mut rows = qkv.chunks_exact_mut(w);
        for s in steps {
            let cache = self.caches.get_mut(&s.seq).ok_or_else(|| ModelError::Input("no cache".into()))?;
            for (pos, r) in (s.start..s.start + s.tokens.len()).zip(rows.by_ref()) {
                if let Some((qn, kn)) = &layer.qk_norm {
                    rms_norm_in_place(&mut r[..q_w], qn, eps);
                    rms_norm_in_place(&mut r[q_w..q_w + kv_w], kn, eps);
                }
                for head in r[..q_w + kv_w].chunks_exact_mut(hd) {
                    rope.apply(head, pos);
                }
                if let Some(qs) = self.cfg.query_scale {
                    scale_in_place(&mut r[..q_w], qs);
                }
                cache.append(l, &r[q_w..q_w + kv_w], &r[q_w + kv_w..]);
            }
        }
        let views = steps
            .iter()
            .map(|s| {
                let kv = self.caches.get(&s.seq).ok_or_else(|| ModelError::Input("no cache".into()))?.layer(l);
                Ok(SeqView { kv, start: s.start, len: s.tokens.len() })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let y = attention::attend(heads, &qkv, &views, self.cfg.score_scale, self.cfg.layers[l].window);
        let widths: Vec<usize> = self.part.heads_per_rank().iter().map(|h| h * hd).collect();
        let y = self.gather_columns(y, n, &widths, comm)?;
        let mut out = self.layers[l].wo.matmul(&y, n)?;
        self.add_adapters(l, &[(Target::O, 0)], &y, steps, &mut out, self.part.hidden.len());
        self.gather_columns(out, n, &self.part.hidden_per_rank(), comm)
    }

    /// Adds each sequence's adapter update of layer `l`'s `targets` (each
    /// starting at its column of `out`, `width` wide) for that sequence's rows
    /// of the projection input `x`: rows of one step may each run a
    /// different adapter, or none.
    fn add_adapters(
        &self,
        l: usize,
        targets: &[(Target, usize)],
        x: &[f32],
        steps: &[SeqStep],
        out: &mut [f32],
        width: usize,
    ) {
        if self.adapters.is_empty() {
            return;
        }
        let mut row = 0;
        for s in steps {
            let rows = row..row + s.tokens.len();
            row = rows.end;
            let Some(adapter) = s.adapter.and_then(|id| self.adapters.get(&id)) else { continue };
            for &(t, col) in targets {
                if let Some(lora) = adapter.get(l, t) {
                    lora.add_to(x, rows.clone(), out, width, col);
                }
            }
        }
    }

    /// Layer `l`'s gated feed-forward (SwiGLU or GeGLU) over the normed input
    /// `h`; the down projection by output row after gathering the features.
    fn feed_forward(
        &self,
        l: usize,
        h: &[f32],
        n: usize,
        steps: &[SeqStep],
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, ModelError> {
        let layer = &self.layers[l];
        let mut gate_up = layer.gate_up.matmul(h, n)?;
        let f = self.part.ffn.len();
        self.add_adapters(l, &[(Target::Gate, 0), (Target::Up, f)], h, steps, &mut gate_up, 2 * f);
        let m = match self.cfg.activation {
            Activation::Silu => silu_mul(&gate_up, self.part.ffn.len()),
            Activation::GeluTanh => gelu_mul(&gate_up, self.part.ffn.len()),
        };
        let m = self.gather_columns(m, n, &self.part.ffn_per_rank(), comm)?;
        let mut down = layer.w_down.matmul(&m, n)?;
        self.add_adapters(l, &[(Target::Down, 0)], &m, steps, &mut down, self.part.hidden.len());
        self.gather_columns(down, n, &self.part.hidden_per_rank(), comm)
    }

    /// Rank 0: logits of each sequence's last token; other ranks: nothing
    /// (with a vocabulary-parallel head they compute and send their rows).
    fn logits(&self, x: &[f32], steps: &[SeqStep], comm: &dyn Communicator) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = steps.len();
        let (mut logits, vocab) = match &self.head {
            Head::Split { matrix, rows, per_rank } => {
                let mine = matrix.matmul_rows(&self.final_norm(x, steps), n, rows.clone())?;
                (self.gather_columns(mine, n, per_rank, comm)?, per_rank.iter().sum())
            }
            Head::Whole(Some(output)) => (output.matmul(&self.final_norm(x, steps), n)?, output.rows()),
            Head::Whole(None) => return Ok(Vec::new()),
        };
        if comm.rank() != 0 {
            return Ok(Vec::new());
        }
        if let Some(cap) = self.cfg.final_softcap {
            softcap_in_place(&mut logits, cap);
        }
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// The final RMS norm of each sequence's last row of `x`.
    fn final_norm(&self, x: &[f32], steps: &[SeqStep]) -> Vec<f32> {
        let hidden = self.cfg.hidden;
        let mut last = Vec::with_capacity(steps.len() * hidden);
        let mut end = 0;
        for s in steps {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * hidden..end * hidden]);
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &self.norm, self.cfg.eps as f32, &mut normed);
        normed
    }
}
