//! Policy losses (METHOD §4) in candle, differentiable with respect to the new log-probs.
//!
//! Shapes: `logp`, `old_logp`, `ref_logp`, `entropy`, `mask` are `[B, T]` (response tokens
//! only, right-padded; `mask` is 1.0 on response tokens); `advantages` is `[B]`. Inputs are
//! cast to f32. Padded positions never reach the loss or its gradient, whatever they hold.
//!
//! Only differentiable candle ops are used (exp, clamp, maximum/minimum, where_cond, sums);
//! the log-ratio is clamped to [−20, 20] before `exp` (as verl does) so a wild log-prob cannot
//! overflow the ratio.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Log-ratio clamp applied before `exp`.
const LOG_RATIO_CLAMP: f32 = 20.0;
/// k3 KL clamp (METHOD §4).
const KL_CLAMP: f32 = 10.0;

/// Inputs of a policy loss for one micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct PolicyLossInput<'a> {
    /// log πθ of each response token, `[B, T]`: the tensor gradients flow into.
    pub logp: &'a Tensor,
    /// log π_old (recomputed with the weights the rollout came from), `[B, T]`.
    pub old_logp: &'a Tensor,
    /// Per-sequence advantages, `[B]`.
    pub advantages: &'a Tensor,
    /// 1.0 on response tokens, 0.0 on padding, `[B, T]`.
    pub mask: &'a Tensor,
    /// log π_ref of the frozen initial policy, `[B, T]` (GRPO's KL).
    pub ref_logp: Option<&'a Tensor>,
    /// Per-token entropy of πθ, `[B, T]` (differentiable; for the entropy bonus and reporting).
    pub entropy: Option<&'a Tensor>,
}

/// Detached diagnostics of one loss evaluation. Fractions are over response tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LossDiagnostics {
    /// The loss value.
    pub loss: f64,
    /// The policy-gradient part of the loss (without KL and entropy terms).
    pub pg_loss: f64,
    /// Mean of r = exp(logπθ − logπold).
    pub ratio_mean: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Tokens where the lower clip is active (Â < 0, r < 1 − ε_low): no gradient.
    pub clip_fraction_low: f64,
    /// Tokens where the upper clip is active (Â > 0, r > 1 + ε_high): no gradient.
    pub clip_fraction_high: f64,
    /// Tokens where the dual clip is active (Â < 0, r > C).
    pub dual_clip_fraction: f64,
    /// Mean k3 KL to the reference, when reference log-probs were given.
    pub kl: Option<f64>,
    /// Mean entropy, when given.
    pub entropy: Option<f64>,
    /// Response tokens in this micro-batch.
    pub tokens: f64,
    /// Sequences in this micro-batch.
    pub sequences: usize,
}

/// A loss and its diagnostics.
#[derive(Debug)]
pub struct LossOutput {
    /// Scalar loss; call `backward()` on it.
    pub loss: Tensor,
    pub diagnostics: LossDiagnostics,
}

/// DAPO: `−(1/T) Σᵢ Σₜ min(r Â, clip(r, 1−ε_low, 1+ε_high) Â)`, T = response tokens of the
/// whole global batch (passed in, so data-parallel ranks agree), no KL; optional dual clip C
/// (for Â < 0 the per-token loss is capped at −Â·C) and entropy bonus `− c · Σ H / T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapoLoss {
    pub clip_low: f64,
    pub clip_high: f64,
    /// Dual-clip constant C (> 1); `None` = off.
    pub dual_clip: Option<f64>,
    pub entropy_coef: f64,
}

impl Default for DapoLoss {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.28,
            dual_clip: None,
            entropy_coef: 0.0,
        }
    }
}

/// GRPO: `−(1/G) Σᵢ (1/|oᵢ|) Σₜ [min(r Â, clip(r, 1−ε, 1+ε) Â) − β·KL]` with KL the k3 estimator
/// `exp(ref − logp) − (ref − logp) − 1` clamped to [−10, 10]: the sequence-mean of token-means.
/// G = sequences in the global batch (passed in). Optional entropy bonus as for DAPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoLoss {
    pub clip_eps: f64,
    pub kl_coef: f64,
    pub entropy_coef: f64,
}

impl Default for GrpoLoss {
    fn default() -> Self {
        Self {
            clip_eps: 0.2,
            kl_coef: 0.01,
            entropy_coef: 0.0,
        }
    }
}

fn invalid(key: &'static str, reason: &str) -> Error {
    Error::InvalidConfig {
        key,
        reason: reason.to_owned(),
    }
}

impl DapoLoss {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_low.is_finite() && (0.0..1.0).contains(&self.clip_low)) {
            return Err(invalid("loss.clip_low", "must be in [0, 1)"));
        }
        if !(self.clip_high.is_finite() && self.clip_high >= 0.0) {
            return Err(invalid("loss.clip_high", "must be a finite number >= 0"));
        }
        if let Some(c) = self.dual_clip
            && !(c.is_finite() && c > 1.0)
        {
            return Err(invalid("loss.dual_clip", "must be a finite number > 1"));
        }
        if !self.entropy_coef.is_finite() {
            return Err(invalid("loss.entropy_coef", "must be finite"));
        }
        Ok(())
    }

    /// The loss over one micro-batch; `token_normaliser` is T, the response-token count of the
    /// whole global batch (all micro-batches and ranks).
    pub fn compute(&self, input: &PolicyLossInput, token_normaliser: f64) -> Result<LossOutput> {
        check_normaliser("token_normaliser", token_normaliser)?;
        let p = Prepared::new(input)?;
        let pg = p.clipped_pg(self.clip_low, self.clip_high, self.dual_clip)?;
        let pg_loss = (pg.sum_all()? / token_normaliser)?;
        let mut loss = pg_loss.clone();
        if let (Some(h), true) = (&p.entropy, self.entropy_coef != 0.0) {
            loss = (loss - (h.sum_all()? * (self.entropy_coef / token_normaliser))?)?;
        }
        let diagnostics = p.diagnostics(
            &loss,
            &pg_loss,
            self.clip_low,
            self.clip_high,
            self.dual_clip,
            None,
        )?;
        Ok(LossOutput { loss, diagnostics })
    }
}

impl GrpoLoss {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_eps.is_finite() && (0.0..1.0).contains(&self.clip_eps)) {
            return Err(invalid("loss.clip_eps", "must be in [0, 1)"));
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err(invalid("loss.kl_coef", "must be a finite number >= 0"));
        }
        if !self.entropy_coef.is_finite() {
            return Err(invalid("loss.entropy_coef", "must be finite"));
        }
        Ok(())
    }

    /// The loss over one micro-batch; `sequence_normaliser` is G, the number of sequences in
    /// the whole global batch. `ref_logp` is required when `kl_coef > 0`.
    pub fn compute(&self, input: &PolicyLossInput, sequence_normaliser: f64) -> Result<LossOutput> {
        check_normaliser("sequence_normaliser", sequence_normaliser)?;
        let p = Prepared::new(input)?;
        let pg = p.clipped_pg(self.clip_eps, self.clip_eps, None)?;
        let kl = match (&p.ref_logp, self.kl_coef > 0.0) {
            (Some(r), _) => Some(p.k3_kl(r)?),
            (None, true) => {
                return Err(Error::Shape {
                    name: "ref_logp",
                    expected: "[B, T] reference log-probs (GRPO with kl_coef > 0)".into(),
                    found: vec![],
                });
            }
            (None, false) => None,
        };
        // Per-token loss, then the token-mean per sequence, then the sum over sequences / G.
        let lens = p.mask.sum(1)?.clamp(1f32, f32::MAX)?;
        let seq_mean = |t: &Tensor| -> Result<Tensor> {
            Ok(((t.sum(1)? / &lens)?.sum_all()? / sequence_normaliser)?)
        };
        let pg_loss = seq_mean(&pg)?;
        let mut loss = pg_loss.clone();
        if let (Some(kl), true) = (&kl, self.kl_coef > 0.0) {
            loss = (loss + (seq_mean(kl)? * self.kl_coef)?)?;
        }
        if let (Some(h), true) = (&p.entropy, self.entropy_coef != 0.0) {
            loss = (loss - (seq_mean(h)? * self.entropy_coef)?)?;
        }
        let diagnostics = p.diagnostics(
            &loss,
            &pg_loss,
            self.clip_eps,
            self.clip_eps,
            None,
            kl.as_ref(),
        )?;
        Ok(LossOutput { loss, diagnostics })
    }
}

/// Validated, masked f32 inputs.
struct Prepared {
    mask: Tensor,
    keep: Tensor,
    zeros: Tensor,
    logp: Tensor,
    ratio: Tensor,
    /// −Â as a `[B, 1]` column.
    neg_adv: Tensor,
    ref_logp: Option<Tensor>,
    /// Masked entropy, `[B, T]`.
    entropy: Option<Tensor>,
}

fn check_normaliser(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::Normaliser { name, value })
    }
}

fn expect_shape(name: &'static str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        return Err(Error::Shape {
            name,
            expected: format!("{dims:?}"),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

impl Prepared {
    fn new(input: &PolicyLossInput) -> Result<Self> {
        let dims = input.logp.dims().to_vec();
        if dims.len() != 2 {
            return Err(Error::Shape {
                name: "logp",
                expected: "[B, T]".into(),
                found: dims,
            });
        }
        let b = dims[0];
        expect_shape("old_logp", input.old_logp, &dims)?;
        expect_shape("mask", input.mask, &dims)?;
        expect_shape("advantages", input.advantages, &[b])?;
        if let Some(r) = input.ref_logp {
            expect_shape("ref_logp", r, &dims)?;
        }
        if let Some(h) = input.entropy {
            expect_shape("entropy", h, &dims)?;
        }
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let mask = f(input.mask)?;
        let keep = mask.gt(0f32)?;
        let zeros = mask.zeros_like()?;
        let logp = f(input.logp)?;
        // Mask before exp: padding holds anything (even −inf) and must not make NaN gradients.
        let log_ratio = keep
            .where_cond(&(&logp - f(input.old_logp)?)?, &zeros)?
            .clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
        let ratio = log_ratio.exp()?;
        let neg_adv = f(input.advantages)?.neg()?.unsqueeze(1)?;
        let ref_logp = input.ref_logp.map(f).transpose()?;
        let entropy = match input.entropy {
            Some(h) => Some(keep.where_cond(&f(h)?, &zeros)?),
            None => None,
        };
        Ok(Self {
            mask,
            keep,
            zeros,
            logp,
            ratio,
            neg_adv,
            ref_logp,
            entropy,
        })
    }

    /// Masked per-token `max(−Â r, −Â clip(r))`, with the dual clip for Â < 0.
    fn clipped_pg(&self, low: f64, high: f64, dual: Option<f64>) -> Result<Tensor> {
        let pg1 = self.ratio.broadcast_mul(&self.neg_adv)?;
        let clipped = self.ratio.clamp((1.0 - low) as f32, (1.0 + high) as f32)?;
        let pg2 = clipped.broadcast_mul(&self.neg_adv)?;
        let mut pg = pg1.maximum(&pg2)?;
        if let Some(c) = dual {
            let cap = (self.neg_adv.clone() * c)?.broadcast_as(pg.shape())?;
            let negative = self
                .neg_adv
                .gt(0f32)?
                .broadcast_as(pg.shape())?
                .contiguous()?;
            pg = negative.where_cond(&pg.minimum(&cap)?, &pg)?;
        }
        Ok(self.keep.where_cond(&pg, &self.zeros)?)
    }

    /// Masked k3 KL, clamped to [−10, 10].
    fn k3_kl(&self, ref_logp: &Tensor) -> Result<Tensor> {
        let d = self
            .keep
            .where_cond(&(ref_logp - &self.logp)?, &self.zeros)?;
        let kl = ((d.exp()? - &d)? - 1.0)?.clamp(-KL_CLAMP, KL_CLAMP)?;
        Ok(self.keep.where_cond(&kl, &self.zeros)?)
    }

    fn diagnostics(
        &self,
        loss: &Tensor,
        pg_loss: &Tensor,
        low: f64,
        high: f64,
        dual: Option<f64>,
        kl: Option<&Tensor>,
    ) -> Result<LossDiagnostics> {
        let mask = self.mask.to_vec2::<f32>()?;
        let ratio = self.ratio.detach().to_vec2::<f32>()?;
        let neg_adv = self.neg_adv.to_vec2::<f32>()?;
        let kl = kl.map(|k| k.detach().to_vec2::<f32>()).transpose()?;
        let ent = self
            .entropy
            .as_ref()
            .map(|h| h.detach().to_vec2::<f32>())
            .transpose()?;
        let (mut n, mut rsum, mut lo, mut hi, mut du, mut klsum, mut hsum) =
            (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
        let (mut rmin, mut rmax) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, row) in mask.iter().enumerate() {
            let a = -f64::from(neg_adv[i][0]);
            for (j, &m) in row.iter().enumerate() {
                if m <= 0.0 {
                    continue;
                }
                let r = f64::from(ratio[i][j]);
                n += 1.0;
                rsum += r;
                rmin = rmin.min(r);
                rmax = rmax.max(r);
                lo += f64::from(u8::from(a < 0.0 && r < 1.0 - low));
                hi += f64::from(u8::from(a > 0.0 && r > 1.0 + high));
                if let Some(c) = dual {
                    du += f64::from(u8::from(a < 0.0 && r > c));
                }
                if let Some(k) = &kl {
                    klsum += f64::from(k[i][j]);
                }
                if let Some(h) = &ent {
                    hsum += f64::from(h[i][j]);
                }
            }
        }
        let per_token = |x: f64| if n > 0.0 { x / n } else { 0.0 };
        Ok(LossDiagnostics {
            loss: f64::from(loss.detach().to_scalar::<f32>()?),
            pg_loss: f64::from(pg_loss.detach().to_scalar::<f32>()?),
            ratio_mean: per_token(rsum),
            ratio_min: if n > 0.0 { rmin } else { 1.0 },
            ratio_max: if n > 0.0 { rmax } else { 1.0 },
            clip_fraction_low: per_token(lo),
            clip_fraction_high: per_token(hi),
            dual_clip_fraction: per_token(du),
            kl: kl.map(|_| per_token(klsum)),
            entropy: ent.map(|_| per_token(hsum)),
            tokens: n,
            sequences: mask.len(),
        })
    }
}
