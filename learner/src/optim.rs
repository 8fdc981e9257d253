//! AdamW with f32 state whose every bit can be saved and restored (candle-nn's AdamW keeps its
//! moments private and in the parameter dtype, so it can neither be checkpointed for an exact
//! resume nor hold f32 master state for bf16 weights).
//!
//! Update, as `torch.optim.AdamW` with decoupled weight decay:
//! `p ← p·(1 − lr·wd)`; `m ← β1 m + (1 − β1) g`; `v ← β2 v + (1 − β2) g²`;
//! `p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)`.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::{Error, Result};

/// Optimizer settings (METHOD §4 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warmup from 0 to `lr` over this many steps (0 = constant lr).
    pub warmup_steps: u64,
    /// Cosine decay from `lr` (after the warmup) to `min_lr` at update `decay_steps`, then
    /// `min_lr` (0 = no decay: constant `lr` after the warmup).
    pub decay_steps: u64,
    /// The floor of the cosine decay.
    pub min_lr: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            decay_steps: 0,
            min_lr: 0.0,
        }
    }
}

impl AdamWConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                reason: reason.into(),
            })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("optim.lr", "must be a positive finite number");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("optim.beta1", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("optim.beta2", "must be in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("optim.eps", "must be a positive finite number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("optim.weight_decay", "must be a finite number >= 0");
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("optim.min_lr", "must be a finite number in [0, lr]");
        }
        if self.decay_steps > 0 && self.decay_steps <= self.warmup_steps {
            return bad(
                "optim.decay_steps",
                "must be 0 (no decay) or larger than optim.warmup_steps",
            );
        }
        Ok(())
    }
}

struct Param {
    name: String,
    var: Var,
    /// f32 copy of the weights when the var is not f32 (bf16 on GPU).
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

/// The per-step scalars of the update.
struct StepConstants {
    lr: f64,
    decay: f64,
    b1: f64,
    b2: f64,
    bc1: f64,
    bc2_sqrt: f64,
    eps: f64,
}

impl StepConstants {
    /// One pass over host buffers (CPU): ~10x fewer passes and allocations than tensor ops.
    fn fused_cpu(
        &self,
        m: &mut Tensor,
        v: &mut Tensor,
        w: &Tensor,
        g: Option<&Tensor>,
    ) -> Result<Tensor> {
        let shape = w.shape().clone();
        let mut wv = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let decay = self.decay as f32;
        let Some(g) = g else {
            wv.iter_mut().for_each(|x| *x *= decay);
            return Ok(Tensor::from_vec(wv, shape, w.device())?);
        };
        let gv = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut mv = m.flatten_all()?.to_vec1::<f32>()?;
        let mut vv = v.flatten_all()?.to_vec1::<f32>()?;
        let (b1, b2) = (self.b1 as f32, self.b2 as f32);
        let (c1, c2) = ((1.0 - self.b1) as f32, (1.0 - self.b2) as f32);
        let step = (self.lr / self.bc1) as f32;
        let bc2_sqrt = self.bc2_sqrt as f32;
        let eps = self.eps as f32;
        for (((w, m), v), g) in wv.iter_mut().zip(mv.iter_mut()).zip(vv.iter_mut()).zip(&gv) {
            *w *= decay;
            *m = b1 * *m + c1 * g;
            *v = b2 * *v + c2 * g * g;
            *w -= step * *m / (v.sqrt() / bc2_sqrt + eps);
        }
        *m = Tensor::from_vec(mv, shape.clone(), w.device())?;
        *v = Tensor::from_vec(vv, shape.clone(), w.device())?;
        Ok(Tensor::from_vec(wv, shape, w.device())?)
    }

    /// The same update as tensor operations (GPU: stays on the device).
    fn tensor_ops(
        &self,
        m: &mut Tensor,
        v: &mut Tensor,
        w: Tensor,
        g: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut w = (w * self.decay)?;
        if let Some(g) = g {
            let g = g.to_dtype(DType::F32)?.detach();
            *m = ((&*m * self.b1)? + (&g * (1.0 - self.b1))?)?;
            *v = ((&*v * self.b2)? + (g.sqr()? * (1.0 - self.b2))?)?;
            let denom = ((v.sqrt()? / self.bc2_sqrt)? + self.eps)?;
            w = (w - ((&*m / denom)? * (self.lr / self.bc1))?)?;
        }
        Ok(w)
    }

    /// The update of one weight tensor `w` (f32) with its moments, on whichever device.
    fn apply(
        &self,
        m: &mut Tensor,
        v: &mut Tensor,
        w: Tensor,
        g: Option<&Tensor>,
    ) -> Result<Tensor> {
        if w.device().is_cpu() {
            self.fused_cpu(m, v, &w, g)
        } else {
            self.tensor_ops(m, v, w, g)
        }
    }
}

/// ZeRO-1 optimizer-state sharding: the parameters, flattened in order and zero-padded to
/// `world × chunk` elements, are split into `world` equal chunks, and rank `r` keeps the f32
/// weights and the moments of chunk `r` only (1/world of the optimizer memory).
struct Shard {
    rank: usize,
    world: usize,
    chunk: usize,
    /// f32 weights of this rank's chunk: the master copy the update writes.
    master: Tensor,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters, optionally with its state sharded across data-parallel ranks
/// ([`AdamW::sharded`]).
pub struct AdamW {
    cfg: AdamWConfig,
    step: u64,
    params: Vec<Param>,
    shard: Option<Shard>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("cfg", &self.cfg)
            .field("step", &self.step)
            .field("params", &self.params.len())
            .finish()
    }
}

impl AdamW {
    /// Zero-initialised moments for every named parameter.
    pub fn new(named: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let params = named
            .into_iter()
            .map(|(name, var)| {
                let t = var.as_tensor();
                let master = if t.dtype() == DType::F32 {
                    None
                } else {
                    Some(t.to_dtype(DType::F32)?.detach())
                };
                Ok(Param {
                    m: Tensor::zeros(t.shape(), DType::F32, t.device())?,
                    v: Tensor::zeros(t.shape(), DType::F32, t.device())?,
                    name,
                    var,
                    master,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            step: 0,
            params,
            shard: None,
        })
    }

    /// ZeRO-1: rank `rank` of `world` keeps f32 weights and moments for its chunk of the
    /// flattened parameters only. Updates go through [`Self::step_sharded`] with this rank's
    /// chunk of the summed gradients; every rank ends the update with all the weights.
    pub fn sharded(
        named: Vec<(String, Var)>,
        cfg: AdamWConfig,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        cfg.validate()?;
        if rank >= world {
            return Err(Error::BadRank { rank, world });
        }
        let params = named
            .into_iter()
            .map(|(name, var)| {
                let empty = Tensor::zeros(0, DType::F32, var.device())?;
                Ok(Param {
                    name,
                    m: empty.clone(),
                    v: empty,
                    var,
                    master: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let total: usize = params.iter().map(|p| p.var.elem_count()).sum();
        let chunk = total.div_ceil(world).max(1);
        let mut opt = Self {
            cfg,
            step: 0,
            params,
            shard: None,
        };
        let master = opt.own_chunk(&opt.flat_weights()?, rank, chunk)?;
        let zeros = Tensor::zeros(chunk, DType::F32, master.device())?;
        opt.shard = Some(Shard {
            rank,
            world,
            chunk,
            master,
            m: zeros.clone(),
            v: zeros,
        });
        Ok(opt)
    }

    /// Whether the state is sharded ([`Self::sharded`]).
    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }

    /// With sharding: the length of the flat gradient buffer a step reduce-scatters
    /// (`world × chunk`: every parameter's gradient flattened in order, then zeros).
    pub fn shard_buffer_len(&self) -> Option<usize> {
        self.shard.as_ref().map(|s| s.world * s.chunk)
    }

    fn device(&self) -> candle_core::Device {
        self.params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu)
    }

    /// Every parameter flattened in order, as f32.
    fn flat_weights(&self) -> Result<Tensor> {
        self.flat_of(|p| Ok(p.var.as_tensor().detach()))
    }

    /// `f(param)` for every parameter, flattened in order into one f32 vector.
    fn flat_of(&self, f: impl Fn(&Param) -> Result<Tensor>) -> Result<Tensor> {
        let parts = self
            .params
            .iter()
            .map(|p| Ok(f(p)?.to_dtype(DType::F32)?.flatten_all()?))
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Ok(Tensor::zeros(0, DType::F32, &self.device())?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Chunk `rank` (of `chunk` elements) of `flat`, zero-padded past its end.
    fn own_chunk(&self, flat: &Tensor, rank: usize, chunk: usize) -> Result<Tensor> {
        let total = flat.elem_count();
        let start = (rank * chunk).min(total);
        let take = (total - start).min(chunk);
        let mut parts = vec![flat.narrow(0, start, take)?];
        if take < chunk {
            parts.push(Tensor::zeros(chunk - take, DType::F32, flat.device())?);
        }
        Ok(Tensor::cat(&parts, 0)?.contiguous()?)
    }

    /// Splits a flat vector (at least as long as all parameters) into per-parameter tensors of
    /// their shapes, f32.
    fn split_flat(&self, flat: &Tensor) -> Result<Vec<Tensor>> {
        let mut off = 0;
        let mut out = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let n = p.var.elem_count();
            out.push(flat.narrow(0, off, n)?.reshape(p.var.shape())?);
            off += n;
        }
        Ok(out)
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The learning rate the next update uses: linear warmup, then constant or (with
    /// `decay_steps`) a cosine down to `min_lr`.
    pub fn current_lr(&self) -> f64 {
        let next = self.step + 1;
        let (warm, decay) = (self.cfg.warmup_steps, self.cfg.decay_steps);
        if warm > 0 && next < warm {
            self.cfg.lr * next as f64 / warm as f64
        } else if decay > 0 {
            let span = decay.saturating_sub(warm.max(1)).max(1) as f64;
            let done = (next.saturating_sub(warm.max(1)) as f64 / span).min(1.0);
            let cos = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
            self.cfg.min_lr + (self.cfg.lr - self.cfg.min_lr) * cos
        } else {
            self.cfg.lr
        }
    }

    /// Parameter names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// Vars in order (the order gradients are passed in).
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// One update with `grads[i]` the gradient of parameter `i` (same order as [`Self::vars`]);
    /// `None` = no gradient (the parameter only decays).
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::InvalidConfig {
                key: "grads",
                reason: format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.params.len()
                ),
            });
        }
        if self.shard.is_some() {
            return Err(Error::InvalidConfig {
                key: "optimizer",
                reason: "a sharded AdamW updates through step_sharded".into(),
            });
        }
        let k = self.next_constants();
        for (p, g) in self.params.iter_mut().zip(grads) {
            let w = match &p.master {
                Some(m) => m.clone(),
                None => p.var.as_tensor().detach(),
            };
            let w = k.apply(&mut p.m, &mut p.v, w, g.as_ref())?;
            match &mut p.master {
                Some(m) => {
                    p.var.set(&w.to_dtype(p.var.dtype())?)?;
                    *m = w;
                }
                None => p.var.set(&w)?,
            }
        }
        Ok(())
    }

    /// Counts the update and returns its constants.
    fn next_constants(&mut self) -> StepConstants {
        let lr = self.current_lr();
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        StepConstants {
            lr,
            decay: 1.0 - lr * self.cfg.weight_decay,
            b1,
            b2,
            bc1: 1.0 - b1.powi(t),
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt(),
            eps: self.cfg.eps,
        }
    }

    /// One sharded update: `grad_chunk` is this rank's chunk of the summed (and clipped)
    /// flat gradient, as [`Collective::reduce_scatter_sum_tensor`] returns it. Updates this
    /// rank's weights and moments, then all-gathers the weights into every parameter. Every
    /// rank must call it (it is a collective).
    pub fn step_sharded(&mut self, grad_chunk: &Tensor, collective: &dyn Collective) -> Result<()> {
        let Some(chunk) = self.shard.as_ref().map(|s| s.chunk) else {
            return Err(Error::InvalidConfig {
                key: "optimizer",
                reason: "step_sharded needs an AdamW built with AdamW::sharded".into(),
            });
        };
        if grad_chunk.elem_count() != chunk {
            return Err(Error::InvalidConfig {
                key: "grads",
                reason: format!(
                    "a gradient chunk of {} elements for a shard of {chunk}",
                    grad_chunk.elem_count()
                ),
            });
        }
        let k = self.next_constants();
        let Some(shard) = self.shard.as_mut() else {
            unreachable!("checked above");
        };
        // Padding past the last parameter has zero weight and gradient, so it stays zero.
        shard.master = k.apply(
            &mut shard.m,
            &mut shard.v,
            shard.master.clone(),
            Some(&grad_chunk.flatten_all()?),
        )?;
        let full = collective.all_gather_tensor(&shard.master)?;
        for (p, w) in self.params.iter().zip(self.split_flat(&full)?) {
            p.var.set(&w.to_dtype(p.var.dtype())?)?;
        }
        Ok(())
    }

    /// Optimizer state for a checkpoint, gathered from every rank when sharded (then every
    /// rank must call it); see [`Self::state`] for the keys.
    pub fn full_state(
        &self,
        collective: &dyn Collective,
    ) -> Result<(HashMap<String, Tensor>, u64)> {
        let Some(shard) = &self.shard else {
            return self.state();
        };
        let m = collective.all_gather_tensor(&shard.m)?;
        let v = collective.all_gather_tensor(&shard.v)?;
        let master = collective.all_gather_tensor(&shard.master)?;
        let mut out = HashMap::new();
        let split = |t: &Tensor| self.split_flat(t);
        for (((p, m), v), w) in self
            .params
            .iter()
            .zip(split(&m)?)
            .zip(split(&v)?)
            .zip(split(&master)?)
        {
            out.insert(format!("m.{}", p.name), m);
            out.insert(format!("v.{}", p.name), v);
            if p.var.dtype() != DType::F32 {
                out.insert(format!("master.{}", p.name), w);
            }
        }
        Ok((out, self.step))
    }

    /// Optimizer state for a checkpoint: `m.{name}`, `v.{name}` (and `master.{name}` for
    /// non-f32 weights), plus the step count. A sharded optimizer holds only its chunk: use
    /// [`Self::full_state`].
    pub fn state(&self) -> Result<(HashMap<String, Tensor>, u64)> {
        if self.shard.is_some() {
            return Err(Error::InvalidConfig {
                key: "optimizer",
                reason: "a sharded AdamW's state is gathered with full_state".into(),
            });
        }
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
            if let Some(m) = &p.master {
                out.insert(format!("master.{}", p.name), m.clone());
            }
        }
        Ok((out, self.step))
    }

    /// Restores state written by [`Self::state`]; every tensor must be present with the right shape.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let mut problems = Vec::new();
        for p in &self.params {
            for key in [format!("m.{}", p.name), format!("v.{}", p.name)] {
                match tensors.get(&key) {
                    None => problems.push(format!("missing `{key}`")),
                    Some(t) if t.dims() != p.var.dims() => problems.push(format!(
                        "`{key}`: expected shape {:?}, found {:?}",
                        p.var.dims(),
                        t.dims()
                    )),
                    Some(_) => {}
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error::InvalidConfig {
                key: "optimizer state",
                reason: problems.join("; "),
            });
        }
        if let Some((rank, chunk)) = self.shard.as_ref().map(|s| (s.rank, s.chunk)) {
            let dev = self.device();
            let get = |key: String| -> Result<Tensor> {
                Ok(tensors[&key].to_dtype(DType::F32)?.to_device(&dev)?)
            };
            let m = self.flat_of(|p| get(format!("m.{}", p.name)))?;
            let v = self.flat_of(|p| get(format!("v.{}", p.name)))?;
            let master = self.flat_of(|p| match tensors.get(&format!("master.{}", p.name)) {
                Some(w) if p.var.dtype() != DType::F32 => Ok(w.to_device(&dev)?),
                _ => Ok(p.var.as_tensor().detach()),
            })?;
            let (m, v, master) = (
                self.own_chunk(&m, rank, chunk)?,
                self.own_chunk(&v, rank, chunk)?,
                self.own_chunk(&master, rank, chunk)?,
            );
            if let Some(shard) = self.shard.as_mut() {
                (shard.m, shard.v, shard.master) = (m, v, master);
            }
            self.step = step;
            return Ok(());
        }
        for p in &mut self.params {
            let dev = p.var.device().clone();
            p.m = tensors[&format!("m.{}", p.name)]
                .to_dtype(DType::F32)?
                .to_device(&dev)?;
            p.v = tensors[&format!("v.{}", p.name)]
                .to_dtype(DType::F32)?
                .to_device(&dev)?;
            if p.master.is_some() {
                let w = match tensors.get(&format!("master.{}", p.name)) {
                    Some(m) => m.to_dtype(DType::F32)?.to_device(&dev)?,
                    None => p.var.as_tensor().to_dtype(DType::F32)?.detach(),
                };
                p.master = Some(w);
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_steps_hand_derived() {
        // One scalar weight w0 = 1, gradient 0.5 both steps; lr 0.1, β (0.9, 0.999), eps 1e-8,
        // wd 0.01.
        // Step 1: w = 1·(1 − 0.001) = 0.999; m = 0.05; v = 0.00025; m̂ = 0.05/0.1 = 0.5,
        //   √v̂ = √(0.00025/0.001) = 0.5 → w = 0.999 − 0.1·(0.5/(0.5 + 1e-8)) ≈ 0.899.
        // Step 2: w = 0.899·0.999 = 0.898101; m = 0.095, v = 0.00049975; m̂ = 0.095/0.19 = 0.5,
        //   √v̂ = √(0.00049975/0.001999) = 0.5 → w ≈ 0.798101.
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone())],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let g = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        opt.step(&[Some(g.clone())]).unwrap();
        assert!((w.to_vec1::<f32>().unwrap()[0] - 0.899).abs() < 1e-6);
        opt.step(&[Some(g)]).unwrap();
        assert!((w.to_vec1::<f32>().unwrap()[0] - 0.798101).abs() < 1e-6);
        assert_eq!(opt.step_count(), 2);
    }

    /// Three parameters of 5, 3 and 4 elements (12, padded to 3 × 4 on 3 ranks, to 2 × 6 on
    /// 2): sharded AdamW on each rank gives exactly the unsharded update, and the gathered
    /// state equals the unsharded state, for world sizes 1, 2 and 3.
    #[test]
    fn sharded_matches_unsharded() {
        use crate::collective::InProcessGroup;
        const SHAPES: [&[usize]; 3] = [&[5], &[3], &[2, 2]];
        let init = |k: usize| -> Vec<(String, Var)> {
            SHAPES
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n: usize = s.iter().product();
                    let v: Vec<f32> = (0..n).map(|j| (i * 7 + j + k) as f32 * 0.1 - 0.5).collect();
                    let t = Tensor::from_vec(v, *s, &Device::Cpu).unwrap();
                    (format!("p{i}"), Var::from_tensor(&t).unwrap())
                })
                .collect()
        };
        let grads = |step: usize| -> Vec<f32> {
            (0..12)
                .map(|j| ((j * 5 + step * 3) % 11) as f32 * 0.03 - 0.15)
                .collect()
        };
        let cfg = AdamWConfig {
            lr: 0.05,
            ..Default::default()
        };
        let reference = init(0);
        let mut opt = AdamW::new(reference.clone(), cfg.clone()).unwrap();
        for step in 0..3 {
            let g = grads(step);
            let mut off = 0;
            let per: Vec<Option<Tensor>> = reference
                .iter()
                .map(|(_, v)| {
                    let n = v.elem_count();
                    let t = Tensor::from_vec(g[off..off + n].to_vec(), v.shape(), &Device::Cpu);
                    off += n;
                    Some(t.unwrap())
                })
                .collect();
            opt.step(&per).unwrap();
        }
        let want_w: Vec<Vec<f32>> = reference
            .iter()
            .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let (want_state, _) = opt.state().unwrap();
        for world in 1..=3usize {
            let groups = InProcessGroup::new(world, std::time::Duration::from_secs(30));
            let handles: Vec<_> = groups
                .into_iter()
                .map(|group| {
                    let cfg = cfg.clone();
                    std::thread::spawn(move || {
                        let vars = init(0);
                        let rank = group.rank();
                        let mut opt = AdamW::sharded(vars.clone(), cfg, rank, world).unwrap();
                        let len = opt.shard_buffer_len().unwrap();
                        for step in 0..3 {
                            // Every rank holds the full gradient; the reduce-scatter sums
                            // `world` copies, so each rank passes 1/world of it.
                            let mut g: Vec<f32> =
                                grads(step).iter().map(|x| x / world as f32).collect();
                            g.resize(len, 0.0);
                            let flat = Tensor::from_vec(g, len, &Device::Cpu).unwrap();
                            let chunk = group.reduce_scatter_sum_tensor(&flat).unwrap();
                            opt.step_sharded(&chunk, &group).unwrap();
                        }
                        let (state, step) = opt.full_state(&group).unwrap();
                        assert!(opt.state().is_err(), "a shard alone is not a checkpoint");
                        let w: Vec<Vec<f32>> = vars
                            .iter()
                            .map(|(_, v)| v.flatten_all().unwrap().to_vec1().unwrap())
                            .collect();
                        (w, state, step)
                    })
                })
                .collect();
            for h in handles {
                let (w, state, step) = h.join().unwrap();
                assert_eq!(step, 3);
                for (got, want) in w.iter().zip(&want_w) {
                    for (a, b) in got.iter().zip(want) {
                        assert!(
                            (a - b).abs() <= 1e-6,
                            "world {world}: weights {got:?} vs {want:?}"
                        );
                    }
                }
                assert_eq!(state.len(), want_state.len());
                for (k, t) in &want_state {
                    let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                    let b: Vec<f32> = state[k].flatten_all().unwrap().to_vec1().unwrap();
                    for (x, y) in a.iter().zip(&b) {
                        assert!((x - y).abs() <= 1e-6, "world {world}: {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn warmup_is_linear() {
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let opt = AdamW::new(
            vec![("w".into(), w)],
            AdamWConfig {
                lr: 1.0,
                warmup_steps: 4,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(opt.current_lr(), 0.25);
    }

    #[test]
    fn cosine_decay_after_warmup() {
        // lr 1, warmup 2, decay to 0.1 at update 6: updates 1..=8 use 0.5 (warmup), 1.0 (the
        // peak), 1 − 0.9·(1 − cos(π/4))/2, 0.55 (halfway), …, 0.1 at update 6 and after.
        let w = Var::new(&[1f32], &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            lr: 1.0,
            warmup_steps: 2,
            decay_steps: 6,
            min_lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w)], cfg).unwrap();
        let mut lrs = Vec::new();
        for _ in 0..8 {
            lrs.push(opt.current_lr());
            opt.step(&[None]).unwrap();
        }
        let q = 0.1 + 0.9 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
        let want = [0.5, 1.0, q, 0.55, 1.1 - q, 0.1, 0.1, 0.1];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
    }

    #[test]
    fn decay_settings_are_checked() {
        let cfg = |decay_steps, min_lr| AdamWConfig {
            lr: 1e-3,
            warmup_steps: 10,
            decay_steps,
            min_lr,
            ..Default::default()
        };
        assert!(cfg(0, 0.0).validate().is_ok());
        assert!(cfg(100, 1e-4).validate().is_ok());
        for bad in [cfg(10, 0.0), cfg(100, 2e-3), cfg(100, f64::NAN)] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("optim."), "{e}");
        }
    }
}
