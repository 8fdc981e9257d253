//! The learner API the step driver hands full batches to, and a one-rank learner that really
//! computes the METHOD §4 loss, its gradient and an AdamW step, then publishes the new version.
//!
//! [`UnigramLearner`]'s policy is a context-free distribution over token ids (one logit per
//! token, safetensors tensor `logits`, shape `[vocab]`). It exists so the whole loop (leasing,
//! generation, scoring, dynamic sampling, loss, optimizer, weight publishing, version tagging)
//! runs end to end before `platter-learner` brings the Qwen2.5-VL learner, which implements the
//! same [`Learner`] trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use platter_rl::{DapoLoss, GrpoLoss, PolicyLossInput, group_advantages};
use tokio::sync::watch;

use crate::config::{Algorithm, ExperimentConfig, OptimConfig};
use crate::{Error, Result};

/// What the coordinator needs from a learner. Calls may block (run them off the async runtime).
pub trait Learner: Send + Sync + 'static {
    /// Resets model and optimizer for an experiment; returns the policy version to start from
    /// and publishes its weights.
    fn start_experiment(&self, cfg: &ExperimentConfig) -> Result<u64>;
    /// Trains one step on a full batch and publishes the next version.
    fn train_step(&self, batch: &v1::TrainStepRequest) -> Result<v1::TrainStepResponse>;
    /// Published weights: the latest version now, and every later one.
    fn subscribe(&self) -> watch::Receiver<PolicyWeights>;
}

struct Inner {
    algorithm: Algorithm,
    dapo: DapoLoss,
    grpo: GrpoLoss,
    optim: OptimConfig,
    theta: Vec<f32>,
    initial: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    version: u64,
    /// Weights of recent versions: log π_old is recomputed with the weights a group came from.
    history: HashMap<u64, Vec<f32>>,
}

/// A one-rank learner over a context-free token distribution (see the module docs).
pub struct UnigramLearner {
    vocab: usize,
    inner: Mutex<Inner>,
    publish: watch::Sender<PolicyWeights>,
}

impl std::fmt::Debug for UnigramLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnigramLearner")
            .field("vocab", &self.vocab)
            .finish_non_exhaustive()
    }
}

/// Encodes logits as the `logits` tensor of a safetensors blob.
pub fn encode_logits(theta: &[f32]) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = theta.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![theta.len()], &bytes)
            .map_err(|e| Error::Learner(format!("encoding weights: {e}")))?;
    safetensors::serialize([("logits", view)], None)
        .map_err(|e| Error::Learner(format!("encoding weights: {e}")))
}

fn log_softmax(theta: &[f32]) -> Vec<f64> {
    let max = theta.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = theta
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    theta.iter().map(|&x| x as f64 - lse).collect()
}

impl UnigramLearner {
    /// A learner over `vocab` token ids, starting from uniform logits (version 0).
    pub fn new(vocab: usize) -> Self {
        let zeros = vec![0f32; vocab.max(1)];
        let (publish, _) = watch::channel(PolicyWeights {
            version: 0,
            safetensors: Arc::new(encode_logits(&zeros).unwrap_or_default()),
        });
        Self {
            vocab: vocab.max(1),
            inner: Mutex::new(Inner {
                algorithm: Algorithm::Dapo,
                dapo: DapoLoss::default(),
                grpo: GrpoLoss::default(),
                optim: OptimConfig::default(),
                theta: zeros.clone(),
                initial: zeros.clone(),
                m: zeros.clone(),
                v: zeros.clone(),
                t: 0,
                version: 0,
                history: HashMap::from([(0, zeros)]),
            }),
            publish,
        }
    }

    fn publish(&self, version: u64, theta: &[f32]) -> Result<()> {
        let weights = PolicyWeights {
            version,
            safetensors: Arc::new(encode_logits(theta)?),
        };
        self.publish.send_replace(weights);
        Ok(())
    }
}

impl Learner for UnigramLearner {
    fn start_experiment(&self, cfg: &ExperimentConfig) -> Result<u64> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::Learner("learner state poisoned".into()))?;
        let zeros = vec![0f32; self.vocab];
        *g = Inner {
            algorithm: cfg.algorithm,
            dapo: cfg.dapo.clone(),
            grpo: cfg.grpo.clone(),
            optim: cfg.optim.clone(),
            theta: zeros.clone(),
            initial: zeros.clone(),
            m: zeros.clone(),
            v: zeros.clone(),
            t: 0,
            version: 0,
            history: HashMap::from([(0, zeros.clone())]),
        };
        self.publish(0, &zeros)?;
        Ok(0)
    }

    fn train_step(&self, batch: &v1::TrainStepRequest) -> Result<v1::TrainStepResponse> {
        let started = Instant::now();
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::Learner("learner state poisoned".into()))?;
        let responses: Vec<(&v1::TrainResponse, f64, u64)> = batch
            .groups
            .iter()
            .flat_map(|grp| {
                let rewards: Vec<f64> = grp.responses.iter().map(|r| r.shaped_reward).collect();
                let adv = group_advantages(&rewards);
                grp.responses
                    .iter()
                    .zip(adv)
                    .map(move |(r, a)| (r, a, grp.policy_version))
            })
            .collect();
        let b = responses.len();
        let t = responses
            .iter()
            .map(|(r, _, _)| r.token_ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        if b == 0 {
            return Err(Error::Learner(format!("step {}: empty batch", batch.step)));
        }
        let (mut idx, mut mask, mut old, mut reference, mut adv) = (
            Vec::with_capacity(b * t),
            Vec::with_capacity(b * t),
            Vec::with_capacity(b * t),
            Vec::with_capacity(b * t),
            Vec::with_capacity(b),
        );
        let ref_lsm = log_softmax(&g.initial);
        let (mut mismatch, mut tokens) = (0f64, 0u64);
        let mut lsm_cache: HashMap<u64, Vec<f64>> = HashMap::new();
        for (r, a, version) in &responses {
            let old_theta = g.history.get(version).ok_or_else(|| {
                Error::Learner(format!(
                    "step {}: no weights of policy version {version} to recompute log π_old",
                    batch.step
                ))
            })?;
            let lsm = lsm_cache
                .entry(*version)
                .or_insert_with(|| log_softmax(old_theta));
            adv.push(*a as f32);
            for j in 0..t {
                match r.token_ids.get(j) {
                    Some(&tok) => {
                        let tok = tok as usize;
                        if tok >= self.vocab {
                            return Err(Error::Learner(format!(
                                "step {}: token id {tok} outside the learner's vocabulary of {}",
                                batch.step, self.vocab
                            )));
                        }
                        idx.push(tok as u32);
                        mask.push(1f32);
                        old.push(lsm[tok] as f32);
                        reference.push(ref_lsm[tok] as f32);
                        if let Some(lp) = r.rollout_logprobs.get(j) {
                            mismatch += (f64::from(*lp) - lsm[tok]).abs();
                        }
                        tokens += 1;
                    }
                    None => {
                        idx.push(0);
                        mask.push(0f32);
                        old.push(0f32);
                        reference.push(0f32);
                    }
                }
            }
        }
        let dev = Device::Cpu;
        let theta = Var::from_slice(&g.theta, self.vocab, &dev)?;
        // log_softmax by hand: the fused candle-nn op has no backward.
        let th = theta.as_tensor();
        let max = th.max_keepdim(0)?.detach();
        let shifted = th.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(0)?.log()?;
        let lsm = shifted.broadcast_sub(&lse)?;
        let logp = lsm
            .index_select(&Tensor::from_vec(idx, b * t, &dev)?, 0)?
            .reshape((b, t))?;
        let old_logp = Tensor::from_vec(old, (b, t), &dev)?;
        let ref_logp = Tensor::from_vec(reference, (b, t), &dev)?;
        let mask = Tensor::from_vec(mask, (b, t), &dev)?;
        let advantages = Tensor::from_vec(adv, b, &dev)?;
        let input = PolicyLossInput {
            logp: &logp,
            old_logp: &old_logp,
            advantages: &advantages,
            mask: &mask,
            ref_logp: Some(&ref_logp),
            entropy: None,
        };
        let out = match g.algorithm {
            Algorithm::Dapo => g.dapo.compute(&input, tokens.max(1) as f64)?,
            Algorithm::Grpo => g.grpo.compute(&input, b as f64)?,
        };
        let grads = out.loss.backward()?;
        let grad: Vec<f32> = match grads.get(th) {
            Some(gr) => gr.to_vec1()?,
            None => vec![0f32; self.vocab],
        };
        let grad_norm = grad
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        let o = g.optim.clone();
        let scale = if grad_norm > o.grad_clip {
            o.grad_clip / (grad_norm + 1e-6)
        } else {
            1.0
        };
        g.t += 1;
        let step = g.t;
        let (b1, b2) = (o.betas[0], o.betas[1]);
        let inner = &mut *g;
        let Inner { m, v, theta, .. } = inner;
        for (((gi, mi), vi), th) in grad
            .iter()
            .zip(m.iter_mut())
            .zip(v.iter_mut())
            .zip(theta.iter_mut())
        {
            // AdamW with decoupled weight decay, in f64 for the moment estimates' arithmetic.
            let gi = f64::from(*gi) * scale;
            *mi = (b1 * f64::from(*mi) + (1.0 - b1) * gi) as f32;
            *vi = (b2 * f64::from(*vi) + (1.0 - b2) * gi * gi) as f32;
            let mhat = f64::from(*mi) / (1.0 - b1.powi(step));
            let vhat = f64::from(*vi) / (1.0 - b2.powi(step));
            let t = f64::from(*th);
            *th = (t - o.lr * (mhat / (vhat.sqrt() + 1e-8) + o.weight_decay * t)) as f32;
        }
        inner.version += 1;
        let version = inner.version;
        inner.history.insert(version, inner.theta.clone());
        // Keep a few versions: enough for any staleness bound a test or tiny run uses.
        inner.history.retain(|v, _| *v + 8 >= version);
        let theta_now = inner.theta.clone();
        drop(g);
        self.publish(version, &theta_now)?;
        Ok(v1::TrainStepResponse {
            policy_version: version,
            loss: out.diagnostics.loss,
            pg_loss: out.diagnostics.pg_loss,
            grad_norm,
            tokens,
            logprob_mismatch: if tokens > 0 {
                mismatch / tokens as f64
            } else {
                0.0
            },
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.publish.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lr: f64) -> ExperimentConfig {
        let mut c =
            ExperimentConfig::from_toml("name = \"t\"\nsteps = 1\n[data]\nmanifest = \"m\"\n")
                .unwrap();
        c.optim.lr = lr;
        c
    }

    fn response(tok: u32, reward: f64) -> v1::TrainResponse {
        v1::TrainResponse {
            token_ids: vec![tok],
            rollout_logprobs: vec![(0.25f32).ln()],
            shaped_reward: reward,
        }
    }

    #[test]
    fn dapo_step_moves_probability_to_rewarded_tokens() {
        let l = UnigramLearner::new(4);
        let mut rx = l.subscribe();
        assert_eq!(l.start_experiment(&cfg(0.1)).unwrap(), 0);
        let batch = v1::TrainStepRequest {
            experiment_id: "e".into(),
            step: 0,
            groups: vec![v1::TrainGroup {
                prompt_index: 0,
                policy_version: 0,
                responses: vec![response(1, 7.0), response(2, 0.0)],
            }],
        };
        let out = l.train_step(&batch).unwrap();
        assert_eq!(out.policy_version, 1);
        assert_eq!(out.tokens, 2);
        // Ratio 1 at the rollout weights: DAPO loss = -(1/T) Σ Â = 0 for a symmetric group;
        // the gradient still pushes token 1 up and token 2 down.
        assert!(out.loss.abs() < 1e-6, "{}", out.loss);
        assert!(out.grad_norm > 0.0);
        assert!(out.logprob_mismatch < 1e-6);
        assert!(rx.has_changed().unwrap());
        let w = rx.borrow_and_update().clone();
        assert_eq!(w.version, 1);
        let st = safetensors::SafeTensors::deserialize(&w.safetensors).unwrap();
        let data = st.tensor("logits").unwrap().data().to_vec();
        let theta: Vec<f32> = data
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(theta[1] > 0.0 && theta[2] < 0.0, "{theta:?}");
        // A token outside the vocabulary is an error naming it.
        let mut bad = batch.clone();
        bad.groups[0].responses[0].token_ids = vec![9];
        assert!(
            l.train_step(&bad)
                .unwrap_err()
                .to_string()
                .contains("token id 9")
        );
    }
}
