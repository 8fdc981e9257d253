//! The Qwen2.5-VL learner behind the coordinator's [`Learner`] trait.
//!
//! [`QwenLearner::start_experiment`] loads `[model] policy` into `[learner] ranks` data-parallel
//! replicas (threads; each rank its own policy and AdamW), opens the experiment's prompt source
//! and publishes version 0. Ranks share one device ([`QwenLearner::with_device`]; an in-process
//! collective) or rank r runs on the r-th of a device list ([`QwenLearner::with_rank_devices`],
//! [`QwenLearner::per_rank_cuda`]; NCCL between GPUs with the `cuda` feature).
//! [`QwenLearner::train_step`]:
//!
//! 1. checks the batch (finite rewards and log-probs, token ids in the vocabulary, a known
//!    policy version within `max_staleness`) and rebuilds every group's prompt from its
//!    `prompt_index` exactly as the rollout engine built it ([`prepare_prompt`]);
//! 2. computes advantages from the shaped rewards per group (METHOD §4);
//! 3. on every rank, for its shard ([`crate::shard_for_rank`]): log π_old with the weights that
//!    generated each group (the live weights for the current version; a frozen copy of the
//!    last `max_staleness` versions otherwise), log π_ref with the frozen initial policy (GRPO
//!    with `kl_coef` > 0), then [`crate::train_step`] (mini-batches, micro-batches, the global
//!    normaliser, all-reduce, clip, AdamW, non-finite updates skipped);
//! 4. publishes the new version as a safetensors blob under the HF tensor names (f32 or bf16,
//!    `[model] publish_dtype`) on the watch channel, and writes a checkpoint when one is due.
//!
//! The version advances by one per step, also when every update of the step was skipped.
//! After `[learner] max_consecutive_skips` skipped updates in a row the step fails with the
//! offending sequence ids; the learner then refuses further steps until the next
//! `start_experiment` (as after any rank failure, since the ranks may disagree).
//!
//! Resume: with `[learner] checkpoint_dir` set, `start_experiment` continues from the newest
//! intact checkpoint written for the same experiment (name, policy, algorithm, vision
//! freezing), restoring weights, AdamW state, the step count and the policy version; groups of
//! versions older than the checkpoint are then refused. A directory holding checkpoints of
//! another experiment is an error.
//!
//! Log-probs (old, current and GRPO reference) are those of the distribution the workers
//! sampled from, `softmax(logits / rollout.temperature)`, so importance ratios and the reported
//! train/rollout mismatch compare like with like at any temperature (METHOD §4's default is 1).

mod batch;
mod rank;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, DeviceLocation, Tensor};
use platter_coordinator::Learner;
use platter_coordinator::config::{
    Algorithm as ExperimentAlgorithm, ExperimentConfig, OptimConfig, PublishDtype,
};
use platter_coordinator::dataset::PromptSource;
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use platter_qwen25vl::{Config as ModelConfig, Policy, PolicyVars, Processor};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use batch::BatchRules;
pub use batch::prepare_prompt;
use rank::{RankPool, RankSetup, TrainOrder};

use crate::checkpoint::{CheckpointState, CheckpointStore};
use crate::metrics as m;
use crate::optim::AdamWConfig;
use crate::update::{Algorithm, UpdateConfig};
use crate::{Error, QwenPolicy, Result};

impl From<&OptimConfig> for AdamWConfig {
    /// The experiment's `[optim]` table as the learner's AdamW settings (`grad_clip` goes to the
    /// update, not the optimizer).
    fn from(o: &OptimConfig) -> Self {
        AdamWConfig {
            lr: o.lr,
            beta1: o.betas[0],
            beta2: o.betas[1],
            eps: o.eps,
            weight_decay: o.weight_decay,
            warmup_steps: o.warmup_steps,
            ..AdamWConfig::default()
        }
    }
}

/// The update settings an experiment config asks for.
pub fn update_config(cfg: &ExperimentConfig) -> UpdateConfig {
    UpdateConfig {
        algorithm: match cfg.algorithm {
            ExperimentAlgorithm::Dapo => Algorithm::Dapo(cfg.dapo.clone()),
            ExperimentAlgorithm::Grpo => Algorithm::Grpo(cfg.grpo.clone()),
        },
        mini_batches_per_step: cfg.learner.mini_batches_per_step as usize,
        micro_batch_size: cfg.learner.micro_batch_size as usize,
        max_grad_norm: cfg.optim.grad_clip,
        max_consecutive_skips: cfg.learner.max_consecutive_skips,
    }
}

/// Encodes weights as one safetensors blob under their HF names, in `dtype`.
pub fn encode_weights(weights: &HashMap<String, Tensor>, dtype: PublishDtype) -> Result<Vec<u8>> {
    let dt = match dtype {
        PublishDtype::F32 => DType::F32,
        PublishDtype::Bf16 => DType::BF16,
    };
    let mut converted: Vec<(&str, Tensor)> = weights
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_dtype(dt)?)))
        .collect::<Result<_>>()?;
    converted.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize(converted, None).map_err(|e| Error::Data {
        context: "publishing weights".into(),
        reason: format!("safetensors encoding failed: {e}"),
    })
}

/// Seconds per stage of one step (rank 0's for the per-rank stages).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Checking the batch and rebuilding the prompts.
    pub prepare: f64,
    /// log π_old (and log π_ref) forward passes.
    pub old_logprobs: f64,
    /// Forward passes of the updates.
    pub forward: f64,
    /// Backward passes and gradient accumulation.
    pub backward: f64,
    /// Collectives, waiting for slower ranks included.
    pub collective: f64,
    /// Gradient clipping and the AdamW steps.
    pub optimizer: f64,
    /// Copying, encoding and publishing the new weights.
    pub publish: f64,
    /// Writing the checkpoint (0 when none was due).
    pub checkpoint: f64,
    /// The whole step.
    pub total: f64,
}

/// One step in detail: the loss diagnostics over every rank and update, and where the time went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: u64,
    pub policy_version: u64,
    pub sequences: usize,
    /// Response tokens of the batch.
    pub tokens: u64,
    /// Mean loss of the applied updates.
    pub loss: f64,
    pub pg_loss: f64,
    /// Mean global grad norm (before clipping) of the applied updates.
    pub grad_norm: f64,
    pub ratio_mean: f64,
    pub clip_fraction_low: f64,
    pub clip_fraction_high: f64,
    /// k3 KL to the reference (GRPO).
    pub kl: Option<f64>,
    /// Mean entropy (when an entropy bonus is on).
    pub entropy: Option<f64>,
    /// Mean |rollout − recomputed old| log-prob (`None` when no rollout log-probs came).
    pub logprob_mismatch: Option<f64>,
    /// Updates of this step skipped for a non-finite loss or gradient.
    pub skipped_updates: u64,
    /// Optimizer updates run (`mini_batches_per_step`).
    pub updates: usize,
    /// Size of the published blob.
    pub blob_bytes: usize,
    /// Checkpoint written after this step.
    pub checkpoint: Option<PathBuf>,
    pub seconds: StageSeconds,
}

/// What a checkpoint records about the experiment it belongs to (`state.json`'s `extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointOwner {
    name: String,
    policy: PathBuf,
    algorithm: ExperimentAlgorithm,
    freeze_vision: bool,
}

impl CheckpointOwner {
    fn of(cfg: &ExperimentConfig) -> Self {
        Self {
            name: cfg.name.clone(),
            policy: cfg.model.policy.clone(),
            algorithm: cfg.algorithm,
            freeze_vision: cfg.model.freeze_vision,
        }
    }
}

/// One running experiment.
struct Session {
    cfg: ExperimentConfig,
    model_cfg: ModelConfig,
    processor: Processor,
    source: PromptSource,
    ranks: RankPool,
    device: Device,
    version: u64,
    /// Frozen weights of recent versions (only with `max_staleness` > 0).
    history: BTreeMap<u64, Arc<QwenPolicy>>,
    store: Option<CheckpointStore>,
    skipped_updates: u64,
    last_report: Option<StepReport>,
    /// Why the ranks can no longer be trusted (a failed step).
    broken: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("experiment", &self.cfg.name)
            .field("version", &self.version)
            .field("ranks", &self.ranks)
            .finish_non_exhaustive()
    }
}

/// The Qwen2.5-VL learner (see the module docs). Calls block; run them off an async runtime.
pub struct QwenLearner {
    /// Rank 0's device; also where the reference policy and frozen old versions live.
    device: Device,
    /// Rank r's device is `rank_devices[r]`; empty: every rank on `device`.
    rank_devices: Vec<Device>,
    session: Mutex<Option<Session>>,
    publish: watch::Sender<PolicyWeights>,
}

impl std::fmt::Debug for QwenLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenLearner")
            .field("device", &self.device)
            .field("rank_devices", &self.rank_devices.len())
            .finish_non_exhaustive()
    }
}

impl Default for QwenLearner {
    fn default() -> Self {
        Self::new()
    }
}

fn to_coordinator(e: Error) -> platter_coordinator::Error {
    platter_coordinator::Error::Learner(e.to_string())
}

impl QwenLearner {
    /// A learner whose ranks run on the CPU. Until the first `start_experiment` the weights
    /// channel holds version 0 with an empty blob.
    pub fn new() -> Self {
        Self::with_device(Device::Cpu)
    }

    /// A learner whose ranks all run on `device` (threads sharing it, with an in-process
    /// collective).
    pub fn with_device(device: Device) -> Self {
        Self::build(device, Vec::new())
    }

    /// A learner whose rank r runs on `devices[r]`; an experiment may ask for at most
    /// `devices.len()` ranks. The devices are all CPU or all distinct GPUs; with more than one
    /// GPU rank (feature `cuda`) the ranks all-reduce through NCCL.
    pub fn with_rank_devices(devices: Vec<Device>) -> Result<Self> {
        let Some(first) = devices.first().cloned() else {
            return Err(Error::InvalidConfig {
                key: "rank devices",
                reason: "the list is empty".into(),
            });
        };
        let mut gpus = Vec::new();
        for d in &devices {
            match d.location() {
                DeviceLocation::Cuda { gpu_id } if gpus.contains(&gpu_id) => {
                    return Err(Error::InvalidConfig {
                        key: "rank devices",
                        reason: format!("cuda:{gpu_id} appears twice; give each rank its own GPU"),
                    });
                }
                DeviceLocation::Cuda { gpu_id } => gpus.push(gpu_id),
                DeviceLocation::Cpu => {}
                other => {
                    return Err(Error::InvalidConfig {
                        key: "rank devices",
                        reason: format!("{other:?} is not supported; use CPU or CUDA devices"),
                    });
                }
            }
        }
        if !gpus.is_empty() && gpus.len() != devices.len() {
            return Err(Error::InvalidConfig {
                key: "rank devices",
                reason: "CPU and GPU devices are mixed; use all CPU or all GPUs".into(),
            });
        }
        Ok(Self::build(first, devices))
    }

    /// A learner whose rank r runs on `cuda:r`, for up to `gpus` ranks (needs the `cuda`
    /// feature). Each GPU gets a device with its own stream, so a rank's work is ordered
    /// whatever thread submits it.
    pub fn per_rank_cuda(gpus: usize) -> Result<Self> {
        let devices = (0..gpus)
            .map(|r| {
                Device::new_cuda_with_stream(r).map_err(|e| Error::InvalidConfig {
                    key: "rank devices",
                    reason: format!("cannot open cuda:{r} for rank {r}: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::with_rank_devices(devices)
    }

    fn build(device: Device, rank_devices: Vec<Device>) -> Self {
        m::describe();
        let (publish, _) = watch::channel(PolicyWeights {
            version: 0,
            safetensors: Arc::new(Vec::new()),
        });
        Self {
            device,
            rank_devices,
            session: Mutex::new(None),
            publish,
        }
    }

    /// The device of each of `ranks` ranks.
    fn devices_for(&self, ranks: usize) -> Result<Vec<Device>> {
        if self.rank_devices.is_empty() {
            return Ok(vec![self.device.clone(); ranks]);
        }
        if ranks > self.rank_devices.len() {
            return Err(Error::InvalidConfig {
                key: "learner.ranks",
                reason: format!(
                    "{ranks} ranks asked for, but the learner has {} rank devices (one per \
                     rank)",
                    self.rank_devices.len()
                ),
            });
        }
        Ok(self.rank_devices[..ranks].to_vec())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<Session>>> {
        self.session.lock().map_err(|_| Error::Data {
            context: "learner".into(),
            reason: "state poisoned by a panic".into(),
        })
    }

    /// Version of the weights published last.
    pub fn version(&self) -> u64 {
        self.publish.borrow().version
    }

    /// What the last successful step did, in more detail than its `TrainStepResponse`.
    pub fn last_step(&self) -> Option<StepReport> {
        self.lock()
            .ok()
            .and_then(|g| g.as_ref().and_then(|s| s.last_report.clone()))
    }

    /// Optimizer updates skipped (non-finite loss or gradient) in the running experiment.
    pub fn skipped_updates(&self) -> u64 {
        self.lock()
            .ok()
            .and_then(|g| g.as_ref().map(|s| s.skipped_updates))
            .unwrap_or(0)
    }

    fn start(&self, cfg: &ExperimentConfig) -> Result<u64> {
        cfg.validate().map_err(|e| Error::Data {
            context: "experiment config".into(),
            reason: e.to_string(),
        })?;
        let devices = self.devices_for(cfg.learner.ranks as usize)?;
        let mut guard = self.lock()?;
        // Stop the previous experiment's ranks before loading new ones.
        *guard = None;
        let dir = cfg.model.policy.clone();
        let model_err = |e: platter_qwen25vl::Error| Error::Data {
            context: format!("`model.policy` = {}", dir.display()),
            reason: e.to_string(),
        };
        let model_cfg = ModelConfig::from_file(&dir.join("config.json")).map_err(model_err)?;
        let processor = Processor::from_dir(&dir, &model_cfg).map_err(model_err)?;
        let source = PromptSource::open(&cfg.data, cfg.seed).map_err(|e| Error::Data {
            context: format!("`data.manifest` = {}", cfg.data.manifest.display()),
            reason: e.to_string(),
        })?;
        if !(cfg.rollout.temperature.is_finite() && cfg.rollout.temperature > 0.0) {
            return Err(Error::InvalidConfig {
                key: "rollout.temperature",
                reason: format!(
                    "the learner needs the sampling distribution: a positive finite \
                     temperature, found {}",
                    cfg.rollout.temperature
                ),
            });
        }
        let store = cfg
            .learner
            .checkpoint_dir
            .as_ref()
            .map(|d| CheckpointStore::new(d, cfg.learner.keep_checkpoints as usize));
        let resume = match &store {
            Some(s) => s.load_latest(&Device::Cpu)?,
            None => None,
        };
        if let Some(ck) = &resume {
            let owner: Option<CheckpointOwner> =
                serde_json::from_value(ck.state.extra.clone()).ok();
            if owner.as_ref() != Some(&CheckpointOwner::of(cfg)) {
                return Err(Error::Checkpoint {
                    path: ck.dir.clone(),
                    reason: format!(
                        "`learner.checkpoint_dir` holds checkpoints of another experiment \
                         ({:?}); use a fresh directory to start this one",
                        ck.state.extra
                    ),
                });
            }
            tracing::info!(
                dir = %ck.dir.display(),
                step = ck.state.step,
                version = ck.state.policy_version,
                "resuming from checkpoint"
            );
        }
        let pad_token_id = processor.pad_token_id;
        let update = update_config(cfg);
        let needs_reference = matches!(&update.algorithm, Algorithm::Grpo(g) if g.kl_coef > 0.0);
        let reference = if needs_reference {
            let policy = Policy::load(&dir, &self.device, DType::F32).map_err(model_err)?;
            Some(Arc::new(QwenPolicy::from_parts(
                policy,
                PolicyVars { vars: Vec::new() },
                cfg.model.freeze_vision,
                pad_token_id,
            )))
        } else {
            None
        };
        let version = resume.as_ref().map_or(0, |c| c.state.policy_version);
        let setup = RankSetup {
            model_dir: dir.clone(),
            device: self.device.clone(),
            freeze_vision: cfg.model.freeze_vision,
            pad_token_id,
            temperature: cfg.rollout.temperature,
            adamw: AdamWConfig::from(&cfg.optim),
            shard_optimizer: cfg.learner.shard_optimizer,
            update,
            reference,
            resume: resume.map(Arc::new),
        };
        let ranks = RankPool::spawn(
            setup,
            devices,
            Duration::from_secs_f64(cfg.learner.collective_timeout_seconds),
        )?;
        let mut session = Session {
            cfg: cfg.clone(),
            model_cfg,
            processor,
            source,
            ranks,
            device: self.device.clone(),
            version,
            history: BTreeMap::new(),
            store,
            skipped_updates: 0,
            last_report: None,
            broken: None,
        };
        let snapshot = session.ranks.snapshot()?;
        self.publish_version(&mut session, version, snapshot)?;
        tracing::info!(
            experiment = %cfg.name,
            ranks = cfg.learner.ranks,
            version,
            policy = %dir.display(),
            "learner ready"
        );
        *guard = Some(session);
        Ok(version)
    }

    /// Encodes and publishes `snapshot` as `version`, and keeps it for log π_old of stale
    /// groups when `max_staleness` > 0. Returns the blob size.
    fn publish_version(
        &self,
        s: &mut Session,
        version: u64,
        snapshot: HashMap<String, Tensor>,
    ) -> Result<usize> {
        let blob = encode_weights(&snapshot, s.cfg.model.publish_dtype)?;
        let bytes = blob.len();
        if s.cfg.max_staleness > 0 {
            let policy = Policy::from_tensors(s.model_cfg.clone(), snapshot, &s.device, DType::F32)
                .map_err(|e| Error::Candle(candle_core::Error::wrap(e)))?;
            let frozen = QwenPolicy::from_parts(
                policy,
                PolicyVars { vars: Vec::new() },
                s.cfg.model.freeze_vision,
                s.processor.pad_token_id,
            );
            s.history.insert(version, Arc::new(frozen));
            let oldest = version.saturating_sub(s.cfg.max_staleness);
            s.history.retain(|v, _| *v >= oldest);
        }
        s.version = version;
        self.publish.send_replace(PolicyWeights {
            version,
            safetensors: Arc::new(blob),
        });
        metrics::gauge!(m::WEIGHTS_BLOB_BYTES).set(bytes as f64);
        Ok(bytes)
    }

    fn step(&self, req: &v1::TrainStepRequest) -> Result<v1::TrainStepResponse> {
        let started = Instant::now();
        let mut guard = self.lock()?;
        let s = guard.as_mut().ok_or_else(|| Error::Data {
            context: format!("train step {}", req.step),
            reason: "no experiment started on this learner (call start_experiment first)".into(),
        })?;
        if let Some(reason) = &s.broken {
            return Err(Error::Data {
                context: format!("train step {}", req.step),
                reason: format!(
                    "the learner stopped after an earlier failure ({reason}); start the \
                     experiment again"
                ),
            });
        }
        let rules = BatchRules {
            processor: &s.processor,
            image_size: s.cfg.data.image_size,
            vocab_size: s.model_cfg.text.vocab_size,
            max_positions: s.model_cfg.text.max_position_embeddings,
            version: s.version,
            max_staleness: s.cfg.max_staleness,
            held: s.history.keys().copied().collect::<BTreeSet<u64>>(),
            mini_batches: s.cfg.learner.mini_batches_per_step as usize,
        };
        let batch = rules.build(req, &mut s.source)?;
        let prepare = started.elapsed().as_secs_f64();
        let tokens = batch.tokens;
        let sequences = batch.items.len();

        let next = s.version + 1;
        let steps_done = req.step + 1;
        let every = s.cfg.learner.checkpoint_every;
        let due = steps_done >= s.cfg.steps || (every > 0 && steps_done.is_multiple_of(every));
        let checkpoint = match (&s.store, due) {
            (Some(store), true) => Some((
                store.clone(),
                CheckpointState {
                    step: steps_done,
                    optimizer_step: 0,
                    policy_version: next,
                    extra: serde_json::to_value(CheckpointOwner::of(&s.cfg)).map_err(|e| {
                        Error::Data {
                            context: "checkpoint state".into(),
                            reason: e.to_string(),
                        }
                    })?,
                },
            )),
            _ => None,
        };
        let order = TrainOrder {
            batch: Arc::new(batch),
            version: s.version,
            history: Arc::new(s.history.clone()),
            checkpoint,
        };
        let mut replies = match s.ranks.train(order) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("train step {} failed: {e}", req.step);
                tracing::error!(step = req.step, error = %e, "learner step failed; stopping");
                s.broken = Some(reason.clone());
                return Err(Error::Data {
                    context: format!("train step {}", req.step),
                    reason: e.to_string(),
                });
            }
        };
        let mut lead = replies.swap_remove(0);
        let snapshot = lead.snapshot.take().ok_or_else(|| Error::Data {
            context: format!("train step {}", req.step),
            reason: "rank 0 returned no weights".into(),
        })?;
        let publish_started = Instant::now();
        let blob_bytes = self.publish_version(s, next, snapshot)?;
        let publish = publish_started.elapsed().as_secs_f64() + lead.timings.snapshot;

        // Skip decisions are global: every rank counted the same updates.
        metrics::counter!(m::SKIPPED_UPDATES).increment(lead.skipped);
        if lead.skipped > 0 {
            s.skipped_updates += lead.skipped;
            tracing::warn!(
                step = req.step,
                skipped = lead.skipped,
                total = s.skipped_updates,
                "updates skipped for a non-finite loss or gradient"
            );
        }
        // Means over the applied updates (over all of them when every update was skipped, so
        // that the non-finite values show).
        let applied: Vec<&crate::UpdateStats> = lead.stats.iter().filter(|u| !u.skipped).collect();
        let counted: Vec<&crate::UpdateStats> = if applied.is_empty() {
            lead.stats.iter().collect()
        } else {
            applied
        };
        let mean = |f: fn(&crate::UpdateStats) -> f64| -> f64 {
            counted.iter().map(|u| f(u)).sum::<f64>() / counted.len().max(1) as f64
        };
        let loss = mean(|u| u.loss);
        let grad_norm = mean(|u| u.grad_norm);
        let d = &lead.diagnostics;
        let seconds_total = started.elapsed().as_secs_f64();
        let response = v1::TrainStepResponse {
            policy_version: next,
            loss,
            pg_loss: d.pg_loss,
            grad_norm,
            tokens,
            logprob_mismatch: d.logprob_mismatch.unwrap_or(0.0),
            seconds: seconds_total,
        };

        let t = &lead.timings;
        let stage = |name: &'static str, secs: f64| {
            metrics::histogram!(m::STAGE_SECONDS, "stage" => name).record(secs);
        };
        stage("prepare", prepare);
        stage("old_logprobs", t.old_logprobs);
        stage("forward", t.forward);
        stage("backward", t.backward);
        stage("collective", t.collective);
        stage("optimizer", t.optimizer);
        stage("publish", publish);
        metrics::gauge!(m::LOSS).set(loss);
        metrics::gauge!(m::PG_LOSS).set(d.pg_loss);
        metrics::gauge!(m::RATIO_MEAN).set(d.ratio_mean);
        metrics::gauge!(m::CLIP_FRACTION, "side" => "low").set(d.clip_fraction_low);
        metrics::gauge!(m::CLIP_FRACTION, "side" => "high").set(d.clip_fraction_high);
        if let Some(kl) = d.kl {
            metrics::gauge!(m::KL).set(kl);
        }
        if let Some(h) = d.entropy {
            metrics::gauge!(m::ENTROPY).set(h);
        }
        for u in &lead.stats {
            metrics::histogram!(m::GRAD_NORM).record(u.grad_norm);
        }
        if let Some(u) = lead.stats.last() {
            metrics::gauge!(m::LR).set(u.lr);
        }
        metrics::gauge!(m::TOKENS_PER_SECOND).set(tokens as f64 / seconds_total.max(1e-9));
        metrics::counter!(m::TRAINED_TOKENS).increment(tokens);
        if let Some(mm) = d.logprob_mismatch {
            metrics::gauge!(m::LOGPROB_MISMATCH).set(mm);
        }
        metrics::counter!(m::CHECKPOINTS).increment(u64::from(lead.checkpoint_dir.is_some()));
        if let Some(dir) = &lead.checkpoint_dir {
            stage("checkpoint", t.checkpoint);
            tracing::info!(step = req.step, dir = %dir.display(), "checkpoint written");
        }
        tracing::info!(
            experiment = %req.experiment_id,
            step = req.step,
            version = next,
            sequences,
            tokens,
            loss,
            pg_loss = d.pg_loss,
            grad_norm,
            ratio_mean = d.ratio_mean,
            clip_low = d.clip_fraction_low,
            clip_high = d.clip_fraction_high,
            kl = d.kl.unwrap_or(f64::NAN),
            logprob_mismatch = d.logprob_mismatch.unwrap_or(f64::NAN),
            blob_bytes,
            seconds = seconds_total,
            old_logprobs_s = t.old_logprobs,
            forward_s = t.forward,
            backward_s = t.backward,
            collective_s = t.collective,
            optimizer_s = t.optimizer,
            publish_s = publish,
            "learner step"
        );
        s.last_report = Some(StepReport {
            step: req.step,
            policy_version: next,
            sequences,
            tokens,
            loss,
            pg_loss: d.pg_loss,
            grad_norm,
            ratio_mean: d.ratio_mean,
            clip_fraction_low: d.clip_fraction_low,
            clip_fraction_high: d.clip_fraction_high,
            kl: d.kl,
            entropy: d.entropy,
            logprob_mismatch: d.logprob_mismatch,
            skipped_updates: lead.skipped,
            updates: lead.stats.len(),
            blob_bytes,
            checkpoint: lead.checkpoint_dir.clone(),
            seconds: StageSeconds {
                prepare,
                old_logprobs: t.old_logprobs,
                forward: t.forward,
                backward: t.backward,
                collective: t.collective,
                optimizer: t.optimizer,
                publish,
                checkpoint: t.checkpoint,
                total: seconds_total,
            },
        });
        Ok(response)
    }
}

impl Learner for QwenLearner {
    fn start_experiment(&self, cfg: &ExperimentConfig) -> platter_coordinator::Result<u64> {
        self.start(cfg).map_err(to_coordinator)
    }

    fn train_step(
        &self,
        batch: &v1::TrainStepRequest,
    ) -> platter_coordinator::Result<v1::TrainStepResponse> {
        self.step(batch).map_err(to_coordinator)
    }

    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.publish.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_devices_are_checked_and_bound_the_rank_count() {
        let e = QwenLearner::with_rank_devices(Vec::new()).unwrap_err();
        assert!(e.to_string().contains("rank devices"), "{e}");

        let shared = QwenLearner::new();
        assert_eq!(shared.devices_for(3).unwrap().len(), 3);

        let listed = QwenLearner::with_rank_devices(vec![Device::Cpu, Device::Cpu]).unwrap();
        let devices = listed.devices_for(2).unwrap();
        assert_eq!(devices.len(), 2);
        assert!(devices.iter().all(|d| d.is_cpu()));
        assert_eq!(listed.devices_for(1).unwrap().len(), 1);
        let e = listed.devices_for(3).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    key: "learner.ranks",
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("3 ranks") && text.contains("2 rank devices"),
            "{text}"
        );
    }
}
