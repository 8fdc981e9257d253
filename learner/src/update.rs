//! One training step over a kept batch, on one data-parallel rank.
//!
//! Every rank holds the same weights and a disjoint share of the global batch. For each of the
//! `mini_batches_per_step` updates, each rank takes the same-index chunk of its share, the
//! global normaliser (DAPO: response tokens; GRPO: sequences) is summed across ranks, each
//! micro-batch's loss is back-propagated and its gradients accumulated, the gradients are summed
//! across ranks, clipped by their global norm and applied by AdamW. Ranks stay bit-identical
//! because they apply identical all-reduced gradients.
//!
//! A non-finite loss or gradient never reaches the weights: the update is skipped on every rank
//! (NaN survives the all-reduce, so all ranks see it), counted, and after
//! `max_consecutive_skips` the step fails with the offending sequence ids.

use candle_core::{DType, Tensor, Var};
use platter_rl::{DapoLoss, GrpoLoss, LossDiagnostics, PolicyLossInput};
use serde::{Deserialize, Serialize};

use crate::clip::{clip_grad_norm, clip_scale, squared_norm};
use crate::collective::Collective;
use crate::optim::AdamW;
use crate::{Error, Result};

/// Per-token log-probs of the response tokens of a micro-batch, right-padded.
#[derive(Debug)]
pub struct ResponseLogprobs {
    /// `[B, T]`.
    pub logp: Tensor,
    /// `[B, T]`, 1.0 on response tokens.
    pub mask: Tensor,
    /// `[B, T]`, when requested.
    pub entropy: Option<Tensor>,
}

/// What the learner needs from a policy model.
pub trait PolicyModel {
    /// One training sequence as the model consumes it (prompt, image, response tokens).
    type Sequence;
    /// Log-probs of the response tokens of `seqs` under the current weights, computed only with
    /// differentiable operations.
    fn response_logprobs(
        &self,
        seqs: &[&Self::Sequence],
        entropy: bool,
    ) -> candle_core::Result<ResponseLogprobs>;
}

/// One sequence of the batch with its advantage.
#[derive(Debug, Clone)]
pub struct TrainItem<S> {
    /// Identifier used in logs (e.g. `prompt/sample`).
    pub id: String,
    pub sequence: S,
    pub advantage: f32,
}

/// Which loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algo", rename_all = "snake_case")]
pub enum Algorithm {
    Dapo(DapoLoss),
    Grpo(GrpoLoss),
}

/// Update settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    pub algorithm: Algorithm,
    /// Optimizer updates per rollout batch.
    pub mini_batches_per_step: usize,
    /// Sequences per forward/backward on one rank (gradient accumulation over micro-batches).
    pub micro_batch_size: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Consecutive skipped updates (non-finite loss or gradient) before the step fails.
    pub max_consecutive_skips: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Dapo(DapoLoss::default()),
            mini_batches_per_step: 1,
            micro_batch_size: 4,
            max_grad_norm: 1.0,
            max_consecutive_skips: 3,
        }
    }
}

/// Statistics of one optimizer update (identical on every rank, except `diagnostics`, which are
/// this rank's token-weighted means).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Global loss of this mini-batch (summed over ranks).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Global response tokens of this mini-batch.
    pub tokens: f64,
    /// The update was skipped for a non-finite loss or gradient.
    pub skipped: bool,
    pub diagnostics: LossDiagnostics,
}

/// Runs the consecutive-skip bookkeeping across steps.
#[derive(Debug, Default)]
pub struct SkipCounter {
    consecutive: u32,
    total: u64,
}

impl SkipCounter {
    /// Updates skipped so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Frozen per-token log-probs of a batch, computed before any update of the step.
#[derive(Debug, Clone)]
pub struct FrozenLogprobs {
    /// One `[1, T_i]` row per item (old policy).
    pub old: Vec<Tensor>,
    /// One row per item (reference policy; GRPO's KL).
    pub reference: Option<Vec<Tensor>>,
}

/// Computes log π_old with `model` (which must hold the weights the rollouts were generated
/// with) and, for GRPO, log π_ref with the frozen reference model; no gradients are kept.
pub fn frozen_logprobs<M: PolicyModel>(
    model: &M,
    reference: Option<&M>,
    items: &[TrainItem<M::Sequence>],
    micro_batch_size: usize,
) -> Result<FrozenLogprobs> {
    let rows = |m: &M| -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(micro_batch_size.max(1)) {
            let seqs: Vec<&M::Sequence> = chunk.iter().map(|i| &i.sequence).collect();
            let lp = m.response_logprobs(&seqs, false)?;
            let logp = lp.logp.detach().to_dtype(DType::F32)?;
            // Rows keep only the response tokens (the mask is a right-padded prefix), so a
            // row's width is that sequence's token count.
            let lens = lp
                .mask
                .gt(0f32)?
                .to_dtype(DType::F32)?
                .sum(1)?
                .to_vec1::<f32>()?;
            for (r, len) in lens.iter().enumerate() {
                out.push(logp.narrow(0, r, 1)?.narrow(1, 0, *len as usize)?);
            }
        }
        Ok(out)
    };
    Ok(FrozenLogprobs {
        old: rows(model)?,
        reference: reference.map(rows).transpose()?,
    })
}

fn stack_rows(rows: &[&Tensor], width: usize) -> Result<Tensor> {
    let padded = rows
        .iter()
        .map(|r| {
            let t = r.dims()[1];
            if t == width {
                Ok((*r).clone())
            } else if t > width {
                Ok(r.narrow(1, 0, width)?)
            } else {
                Ok(r.pad_with_zeros(1, 0, width - t)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&padded, 0)?)
}

/// This rank's share of a global batch: each of the `mini_batches` consecutive chunks of
/// `items` is split across the `world` ranks, so that mini-batch `i` is the same set of
/// sequences whatever the number of ranks.
pub fn shard_for_rank<T: Clone>(
    items: &[T],
    rank: usize,
    world: usize,
    mini_batches: usize,
) -> Vec<T> {
    let minis = mini_batches.max(1);
    let per_mini = items.len().div_ceil(minis).max(1);
    let mut out = Vec::new();
    for mini in items.chunks(per_mini) {
        let per_rank = mini.len().div_ceil(world.max(1));
        out.extend(mini.iter().skip(rank * per_rank).take(per_rank).cloned());
    }
    out
}

/// Runs the `mini_batches_per_step` updates of one step on this rank. `items` is this rank's
/// share of the global batch; `frozen` holds its old/reference log-probs (same order).
#[allow(clippy::too_many_arguments)]
pub fn train_step<M: PolicyModel>(
    model: &M,
    opt: &mut AdamW,
    collective: &dyn Collective,
    items: &[TrainItem<M::Sequence>],
    frozen: &FrozenLogprobs,
    cfg: &UpdateConfig,
    skips: &mut SkipCounter,
) -> Result<Vec<UpdateStats>> {
    let vars: Vec<Var> = opt.vars();
    let minis = cfg.mini_batches_per_step.max(1);
    let per_mini = items.len().div_ceil(minis).max(1);
    let want_entropy = match &cfg.algorithm {
        Algorithm::Dapo(l) => l.entropy_coef != 0.0,
        Algorithm::Grpo(l) => l.entropy_coef != 0.0,
    };
    let mut stats = Vec::with_capacity(minis);
    for mini in 0..minis {
        let start = (mini * per_mini).min(items.len());
        let end = ((mini + 1) * per_mini).min(items.len());
        let local = &items[start..end];

        // Response tokens and sequences of this mini-batch on this rank, then globally.
        let mut local_tokens = 0f64;
        for row in &frozen.old[start..end] {
            local_tokens += row.dims()[1] as f64;
        }
        let mut counts = [local_tokens, local.len() as f64];
        collective.all_reduce_sum_f64(&mut counts)?;
        let [global_tokens, global_seqs] = counts;

        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss_sum = 0f64;
        let mut diag = LossDiagnostics::default();
        for (k, chunk) in local.chunks(cfg.micro_batch_size.max(1)).enumerate() {
            let first = start + k * cfg.micro_batch_size.max(1);
            let seqs: Vec<&M::Sequence> = chunk.iter().map(|i| &i.sequence).collect();
            let lp = model.response_logprobs(&seqs, want_entropy)?;
            let width = lp.logp.dims()[1];
            let old_rows: Vec<&Tensor> = frozen.old[first..first + chunk.len()].iter().collect();
            let old = stack_rows(&old_rows, width)?;
            let reference = match &frozen.reference {
                Some(r) => Some(stack_rows(
                    &r[first..first + chunk.len()].iter().collect::<Vec<_>>(),
                    width,
                )?),
                None => None,
            };
            let adv: Vec<f32> = chunk.iter().map(|i| i.advantage).collect();
            let adv = Tensor::from_vec(adv, chunk.len(), lp.logp.device())?;
            let input = PolicyLossInput {
                logp: &lp.logp,
                old_logp: &old,
                advantages: &adv,
                mask: &lp.mask,
                ref_logp: reference.as_ref(),
                entropy: lp.entropy.as_ref(),
            };
            let out = match &cfg.algorithm {
                Algorithm::Dapo(l) => l.compute(&input, global_tokens)?,
                Algorithm::Grpo(l) => l.compute(&input, global_seqs)?,
            };
            loss_sum += out.diagnostics.loss;
            merge_diagnostics(&mut diag, &out.diagnostics);
            let grads = out.loss.backward()?;
            for (slot, v) in acc.iter_mut().zip(&vars) {
                if let Some(g) = grads.get(v.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }

        // Sum gradients and losses across ranks: one flat f32 buffer on the model's device, one
        // collective call.
        let parts = acc
            .iter()
            .zip(&vars)
            .map(|(slot, v)| match slot {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all(),
                None => Tensor::zeros(v.elem_count(), DType::F32, v.device()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let flat = Tensor::cat(&parts, 0)?;
        let mut loss_buf = [loss_sum];
        collective.all_reduce_sum_f64(&mut loss_buf)?;
        // Sharded (ZeRO-1): reduce-scatter, so each rank holds the summed gradient of its
        // chunk only; the global norm is the sum of the chunks' squared norms.
        let (grad_norm, update) = if let Some(len) = opt.shard_buffer_len() {
            let n = flat.elem_count();
            let flat = if len > n {
                Tensor::cat(
                    &[&flat, &Tensor::zeros(len - n, DType::F32, flat.device())?],
                    0,
                )?
            } else {
                flat
            };
            let chunk = collective.reduce_scatter_sum_tensor(&flat)?;
            let mut sq = [squared_norm(&chunk)?];
            collective.all_reduce_sum_f64(&mut sq)?;
            let norm = sq[0].sqrt();
            let chunk = match clip_scale(norm, cfg.max_grad_norm) {
                Some(scale) => (chunk * scale)?,
                None => chunk,
            };
            (norm, Update::Shard(chunk))
        } else {
            let flat = collective.all_reduce_sum_tensor(&flat)?;
            let mut grads: Vec<Option<Tensor>> = Vec::with_capacity(vars.len());
            let mut offset = 0;
            for v in &vars {
                let n = v.elem_count();
                grads.push(Some(flat.narrow(0, offset, n)?.reshape(v.shape())?));
                offset += n;
            }
            let norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
            (norm, Update::Full(grads))
        };
        let lr = opt.current_lr();
        let skipped = !(grad_norm.is_finite() && loss_buf[0].is_finite());
        if skipped {
            skips.consecutive += 1;
            skips.total += 1;
            let ids: Vec<&str> = local.iter().map(|i| i.id.as_str()).collect();
            tracing::warn!(
                grad_norm,
                loss = loss_buf[0],
                rank = collective.rank(),
                "non-finite loss or gradient: update skipped (sequences {ids:?})"
            );
            if skips.consecutive >= cfg.max_consecutive_skips {
                return Err(Error::NonFinite {
                    consecutive: skips.consecutive,
                    ids: ids.iter().map(|s| s.to_string()).collect(),
                });
            }
        } else {
            skips.consecutive = 0;
            match update {
                Update::Full(grads) => opt.step(&grads)?,
                Update::Shard(chunk) => opt.step_sharded(&chunk, collective)?,
            }
        }
        stats.push(UpdateStats {
            loss: loss_buf[0],
            grad_norm,
            lr,
            tokens: global_tokens,
            skipped,
            diagnostics: diag,
        });
    }
    Ok(stats)
}

/// The clipped, summed gradients an update applies.
enum Update {
    /// Every parameter's gradient (unsharded optimizer).
    Full(Vec<Option<Tensor>>),
    /// This rank's chunk of the flat gradient (sharded optimizer).
    Shard(Tensor),
}

/// Token-weighted running mean of two diagnostics records.
fn merge_diagnostics(acc: &mut LossDiagnostics, d: &LossDiagnostics) {
    let n = acc.tokens + d.tokens;
    if n == 0.0 {
        return;
    }
    let w = |a: f64, b: f64| (a * acc.tokens + b * d.tokens) / n;
    let wo = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(w(a, b)),
        (None, b) => b,
        (a, None) => a,
    };
    let first = acc.tokens == 0.0;
    *acc = LossDiagnostics {
        loss: acc.loss + d.loss,
        pg_loss: acc.pg_loss + d.pg_loss,
        ratio_mean: w(acc.ratio_mean, d.ratio_mean),
        ratio_min: if first {
            d.ratio_min
        } else {
            acc.ratio_min.min(d.ratio_min)
        },
        ratio_max: if first {
            d.ratio_max
        } else {
            acc.ratio_max.max(d.ratio_max)
        },
        clip_fraction_low: w(acc.clip_fraction_low, d.clip_fraction_low),
        clip_fraction_high: w(acc.clip_fraction_high, d.clip_fraction_high),
        dual_clip_fraction: w(acc.dual_clip_fraction, d.dual_clip_fraction),
        kl: wo(acc.kl, d.kl),
        entropy: wo(acc.entropy, d.entropy),
        tokens: n,
        sequences: acc.sequences + d.sequences,
    };
}
