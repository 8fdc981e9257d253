//! Data-parallel ranks as threads: each holds its own trainable policy and AdamW on its device,
//! runs its shard of every step through [`crate::update::train_step`] and all-reduces through
//! its group: an [`InProcessGroup`] on CPU (or when ranks share one GPU), an NCCL group when
//! every rank has a GPU of its own (feature `cuda`). A failing rank aborts the group (so its
//! in-process peers fail at their next collective instead of waiting out the timeout; NCCL
//! peers fail at their timeout) and every rank always answers.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use platter_qwen25vl::{Policy, PolicyVars};

use super::batch::{GlobalBatch, RankModel, logprob_rows};
use crate::checkpoint::{Checkpoint, CheckpointState, CheckpointStore};
#[cfg(feature = "cuda")]
use crate::collective::nccl::{AbortFlag, NcclGroup, NcclUniqueId};
use crate::collective::{Collective, InProcessGroup};
use crate::optim::{AdamW, AdamWConfig};
use crate::update::{
    Algorithm, FrozenLogprobs, SkipCounter, TrainItem, UpdateConfig, UpdateStats, shard_for_rank,
    train_step,
};
use crate::{Error, QwenPolicy, QwenSequence, Result};

/// What every rank is built from.
#[derive(Clone)]
pub(crate) struct RankSetup {
    pub model_dir: PathBuf,
    /// The rank's device ([`RankPool::spawn`] sets it per rank).
    pub device: Device,
    pub freeze_vision: bool,
    pub pad_token_id: u32,
    /// Rollout temperature the log-probs are computed at ([`RankModel::temperature`]).
    pub temperature: f64,
    pub adamw: AdamWConfig,
    /// ZeRO-1 optimizer-state sharding across the ranks.
    pub shard_optimizer: bool,
    pub update: UpdateConfig,
    /// GRPO's frozen reference policy (shared by the ranks on its device: it is never written;
    /// a rank on another device loads its own copy).
    pub reference: Option<Arc<QwenPolicy>>,
    /// Checkpoint to resume from.
    pub resume: Option<Arc<Checkpoint>>,
}

/// One step's work for a rank.
pub(crate) struct TrainOrder {
    pub batch: Arc<GlobalBatch>,
    /// Version of the weights the ranks hold now.
    pub version: u64,
    /// Frozen weights of older versions, for the groups they generated.
    pub history: Arc<BTreeMap<u64, Arc<QwenPolicy>>>,
    /// Rank 0 writes this checkpoint after the update (its `optimizer_step` is filled in);
    /// with a sharded optimizer every rank first contributes its part of the state.
    pub checkpoint: Option<(CheckpointStore, CheckpointState)>,
}

enum Command {
    Train(Box<TrainOrder>, mpsc::Sender<Result<RankReply>>),
    Snapshot(mpsc::Sender<Result<HashMap<String, Tensor>>>),
}

/// Seconds a rank spent per stage of a step.
#[derive(Debug, Clone, Default)]
pub(crate) struct RankTimings {
    pub old_logprobs: f64,
    pub forward: f64,
    pub backward: f64,
    pub collective: f64,
    pub optimizer: f64,
    pub snapshot: f64,
    pub checkpoint: f64,
}

/// Loss diagnostics of a step over every rank, token-weighted over the applied updates.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepDiagnostics {
    pub pg_loss: f64,
    pub ratio_mean: f64,
    pub clip_fraction_low: f64,
    pub clip_fraction_high: f64,
    pub kl: Option<f64>,
    pub entropy: Option<f64>,
    /// Mean |rollout log-prob − recomputed old log-prob| (`None` without rollout log-probs).
    pub logprob_mismatch: Option<f64>,
}

/// What a rank reports after a step.
pub(crate) struct RankReply {
    pub stats: Vec<UpdateStats>,
    pub diagnostics: StepDiagnostics,
    pub timings: RankTimings,
    /// Updates this rank skipped during the step.
    pub skipped: u64,
    /// Rank 0: a deep copy of every weight after the step.
    pub snapshot: Option<HashMap<String, Tensor>>,
    /// Rank 0: the checkpoint written.
    pub checkpoint_dir: Option<PathBuf>,
}

/// The rank threads of one experiment.
pub(crate) struct RankPool {
    senders: Vec<mpsc::Sender<Command>>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RankPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankPool")
            .field("ranks", &self.senders.len())
            .finish()
    }
}

fn panic_message(rank: usize, payload: Box<dyn std::any::Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::Data {
        context: format!("learner rank {rank}"),
        reason: format!("panicked: {what}"),
    }
}

fn stopped(rank: usize) -> Error {
    Error::Data {
        context: format!("learner rank {rank}"),
        reason: "the rank thread stopped without answering".into(),
    }
}

/// Whether `e` only says that another rank failed first.
fn is_secondary(e: &Error) -> bool {
    matches!(
        e,
        Error::CollectiveMismatch { .. } | Error::CollectiveTimeout { .. }
    )
}

/// The error that explains a failed step: a rank's own failure before the collective errors
/// it caused on its peers.
pub(crate) fn root_cause(errors: Vec<Error>) -> Option<Error> {
    let first_primary = errors.iter().position(|e| !is_secondary(e));
    let mut errors = errors;
    match first_primary {
        Some(i) => Some(errors.swap_remove(i)),
        None => errors.into_iter().next(),
    }
}

impl RankPool {
    /// Starts one rank thread per entry of `devices` (rank r on `devices[r]`); each joins its
    /// group, loads the policy (and the resume checkpoint), and the call returns once all are
    /// ready, or with the first rank's error.
    pub fn spawn(setup: RankSetup, devices: Vec<Device>, timeout: Duration) -> Result<Self> {
        let world = devices.len();
        let plans = plan_groups(&devices, timeout)?;
        let mut senders = Vec::with_capacity(world);
        let mut handles = Vec::with_capacity(world);
        let mut ready = Vec::with_capacity(world);
        for (rank, (plan, device)) in plans.into_iter().zip(devices).enumerate() {
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::channel();
            let setup = RankSetup {
                device,
                ..setup.clone()
            };
            let handle = std::thread::Builder::new()
                .name(format!("learner-rank-{rank}"))
                .spawn(move || rank_main(rank, plan, setup, ready_tx, rx))
                .map_err(|e| Error::Data {
                    context: format!("learner rank {rank}"),
                    reason: format!("cannot start its thread: {e}"),
                })?;
            senders.push(tx);
            handles.push(handle);
            ready.push(ready_rx);
        }
        let pool = Self { senders, handles };
        let mut errors = Vec::new();
        for (rank, rx) in ready.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(stopped(rank)),
            }
        }
        match root_cause(errors) {
            Some(e) => Err(e),
            None => Ok(pool),
        }
    }

    /// Runs one step on every rank; replies in rank order, or the error that explains the
    /// failure.
    pub fn train(&self, order: TrainOrder) -> Result<Vec<RankReply>> {
        let mut replies = Vec::with_capacity(self.senders.len());
        for (rank, tx) in self.senders.iter().enumerate() {
            let (rtx, rrx) = mpsc::channel();
            let own = TrainOrder {
                batch: Arc::clone(&order.batch),
                version: order.version,
                history: Arc::clone(&order.history),
                // Every rank learns of a checkpoint (a sharded optimizer gathers its state from
                // all of them); rank 0 writes it.
                checkpoint: order.checkpoint.clone(),
            };
            tx.send(Command::Train(Box::new(own), rtx))
                .map_err(|_| stopped(rank))?;
            replies.push(rrx);
        }
        let mut out = Vec::with_capacity(replies.len());
        let mut errors = Vec::new();
        for (rank, rx) in replies.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(stopped(rank)),
            }
        }
        match root_cause(errors) {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A deep copy of rank 0's weights by HF name.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        let (tx, rx) = mpsc::channel();
        self.senders
            .first()
            .ok_or_else(|| stopped(0))?
            .send(Command::Snapshot(tx))
            .map_err(|_| stopped(0))?;
        rx.recv().map_err(|_| stopped(0))?
    }
}

impl Drop for RankPool {
    fn drop(&mut self) {
        // Closing the command channels ends the rank loops.
        self.senders.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The CUDA device indices of `devices` when every one is a distinct GPU.
#[cfg(feature = "cuda")]
fn distinct_gpus(devices: &[Device]) -> Option<Vec<usize>> {
    let mut ordinals = Vec::with_capacity(devices.len());
    for d in devices {
        match d.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } if !ordinals.contains(&gpu_id) => {
                ordinals.push(gpu_id)
            }
            _ => return None,
        }
    }
    Some(ordinals)
}

/// How each rank joins its group: more than one rank, each on a GPU of its own, use NCCL
/// (feature `cuda`); otherwise (CPU, one rank, or ranks sharing a GPU, which NCCL refuses) the
/// ranks use an in-process group.
fn plan_groups(devices: &[Device], timeout: Duration) -> Result<Vec<GroupPlan>> {
    let world = devices.len();
    #[cfg(feature = "cuda")]
    if world > 1
        && let Some(gpus) = distinct_gpus(devices)
    {
        // Rank 0's id and one abort flag, shared in memory: the ranks are threads of this
        // process, so a failing rank makes its peers fail at once, as in-process.
        let id = NcclUniqueId::new()?;
        let abort = AbortFlag::new();
        tracing::info!(world, ?gpus, "learner ranks all-reduce through NCCL");
        return Ok((0..world)
            .map(|rank| GroupPlan::Nccl {
                rank,
                world,
                id,
                timeout,
                abort: abort.clone(),
            })
            .collect());
    }
    Ok(InProcessGroup::new(world, timeout)
        .into_iter()
        .map(GroupPlan::InProcess)
        .collect())
}

/// What a rank thread needs to join its group.
enum GroupPlan {
    InProcess(InProcessGroup),
    #[cfg(feature = "cuda")]
    Nccl {
        rank: usize,
        world: usize,
        id: NcclUniqueId,
        timeout: Duration,
        abort: AbortFlag,
    },
}

impl GroupPlan {
    fn join(self, _device: &Device) -> Result<RankGroup> {
        match self {
            GroupPlan::InProcess(g) => Ok(RankGroup::InProcess(g)),
            #[cfg(feature = "cuda")]
            GroupPlan::Nccl {
                rank,
                world,
                id,
                timeout,
                abort,
            } => NcclGroup::with_abort_flag(_device, rank, world, &id, timeout, abort.clone())
                .map(RankGroup::Nccl)
                .inspect_err(|_| abort.raise()),
        }
    }
}

/// A rank's collective.
enum RankGroup {
    InProcess(InProcessGroup),
    #[cfg(feature = "cuda")]
    Nccl(NcclGroup),
}

impl RankGroup {
    fn inner(&self) -> &dyn Collective {
        match self {
            RankGroup::InProcess(g) => g,
            #[cfg(feature = "cuda")]
            RankGroup::Nccl(g) => g,
        }
    }

    /// Makes the peers' collectives fail instead of waiting for this rank.
    fn abort(&self) {
        match self {
            RankGroup::InProcess(g) => abort(g),
            #[cfg(feature = "cuda")]
            RankGroup::Nccl(g) => g.abort(),
        }
    }
}

impl Collective for RankGroup {
    fn rank(&self) -> usize {
        self.inner().rank()
    }

    fn world_size(&self) -> usize {
        self.inner().world_size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.inner().all_reduce_sum(buf)
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.inner().all_reduce_sum_f64(buf)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.inner().broadcast(buf, root)
    }

    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.inner().all_reduce_sum_tensor(t)
    }

    fn reduce_scatter_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.inner().reduce_scatter_sum_tensor(t)
    }

    fn all_gather_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.inner().all_gather_tensor(t)
    }
}

/// A rank's model, optimizer and skip bookkeeping.
struct RankState {
    group: RankGroup,
    model: QwenPolicy,
    opt: AdamW,
    skips: SkipCounter,
    setup: RankSetup,
    /// The running step has collectives left, so peers may be waiting for this rank.
    peers_may_wait: bool,
}

fn rank_main(
    rank: usize,
    plan: GroupPlan,
    setup: RankSetup,
    ready: mpsc::Sender<Result<()>>,
    commands: mpsc::Receiver<Command>,
) {
    let loaded = catch_unwind(AssertUnwindSafe(|| {
        let group = plan.join(&setup.device)?;
        RankState::load(group, setup)
    }))
    .unwrap_or_else(|p| Err(panic_message(rank, p)));
    let mut state = match loaded {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Train(order, reply) => {
                state.peers_may_wait = true;
                let r = catch_unwind(AssertUnwindSafe(|| state.train(&order)))
                    .unwrap_or_else(|p| Err(panic_message(rank, p)));
                // After the step's last collective no peer waits for this rank any more, and an
                // abort would only wait out the timeout.
                if r.is_err() && state.peers_may_wait {
                    state.abort_group();
                }
                let _ = reply.send(r);
            }
            Command::Snapshot(reply) => {
                let r = catch_unwind(AssertUnwindSafe(|| state.snapshot()))
                    .unwrap_or_else(|p| Err(panic_message(rank, p)));
                let _ = reply.send(r);
            }
        }
    }
}

impl RankState {
    fn load(group: RankGroup, mut setup: RankSetup) -> Result<Self> {
        // GRPO's reference on this rank's device: the shared copy when it is here, else a
        // copy of its own (the reference is the initial policy, `model_dir`).
        if let Some(shared) = &setup.reference
            && !shared.policy().device().same_device(&setup.device)
        {
            let policy = Policy::load(&setup.model_dir, &setup.device, DType::F32)
                .map_err(|e| Error::Candle(candle_core::Error::wrap(e)))?;
            setup.reference = Some(Arc::new(QwenPolicy::from_parts(
                policy,
                PolicyVars { vars: Vec::new() },
                setup.freeze_vision,
                setup.pad_token_id,
            )));
        }
        let model = QwenPolicy::load_trainable(
            &setup.model_dir,
            &setup.device,
            DType::F32,
            setup.freeze_vision,
        )?;
        let mut opt = if setup.shard_optimizer {
            AdamW::sharded(
                model.trainable(),
                setup.adamw.clone(),
                group.rank(),
                group.world_size(),
            )?
        } else {
            AdamW::new(model.trainable(), setup.adamw.clone())?
        };
        if let Some(ck) = &setup.resume {
            let mut missing = Vec::new();
            for (name, var) in model.trainable() {
                match ck.weights.get(&name) {
                    Some(w) => var.set(&w.to_dtype(var.dtype())?.to_device(var.device())?)?,
                    None => missing.push(name),
                }
            }
            if !missing.is_empty() {
                return Err(Error::Checkpoint {
                    path: ck.dir.clone(),
                    reason: format!("weights missing from the checkpoint: {missing:?}"),
                });
            }
            opt.load_state(&ck.optimizer, ck.state.optimizer_step)?;
        }
        Ok(Self {
            group,
            model,
            opt,
            skips: SkipCounter::default(),
            setup,
            peers_may_wait: false,
        })
    }

    fn abort_group(&self) {
        self.group.abort();
    }

    fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        self.model
            .weights()
            .into_iter()
            .map(|(n, t)| Ok((n, t.copy()?)))
            .collect()
    }

    /// log π_old rows of this rank's share, with the weights of the version that generated each
    /// sequence, micro-batched as the update will be (so that with one update the ratio is
    /// exactly 1); and log π_ref rows when there is a reference.
    fn frozen(&self, order: &TrainOrder, share: &[usize], minis: usize) -> Result<FrozenLogprobs> {
        let batch = &order.batch;
        let mbs = self.setup.update.micro_batch_size.max(1);
        let live = RankModel::new(&self.model, self.setup.pad_token_id, self.setup.temperature);
        let per_mini = share.len().div_ceil(minis).max(1);
        let mut old: Vec<Option<Tensor>> = vec![None; share.len()];
        let mut reference = Vec::with_capacity(share.len());
        for (m, mini) in share.chunks(per_mini).enumerate() {
            for (k, chunk) in mini.chunks(mbs).enumerate() {
                let first = m * per_mini + k * mbs;
                let mut by_version: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
                for (j, &i) in chunk.iter().enumerate() {
                    by_version.entry(batch.versions[i]).or_default().push(j);
                }
                for (v, pos) in by_version {
                    let seqs: Vec<&QwenSequence> = pos
                        .iter()
                        .map(|&j| &batch.items[chunk[j]].sequence)
                        .collect();
                    let rows = if v == order.version {
                        logprob_rows(&live, &seqs, mbs)?
                    } else {
                        let held = order.history.get(&v).ok_or_else(|| Error::Data {
                            context: format!("learner rank {}", self.group.rank()),
                            reason: format!(
                                "no weights of policy version {v} to compute log π_old"
                            ),
                        })?;
                        // Frozen versions live on the learner's first device; their rows
                        // move to this rank's (a no-op when it is the same).
                        logprob_rows(
                            &RankModel::new(held, self.setup.pad_token_id, self.setup.temperature),
                            &seqs,
                            mbs,
                        )?
                        .into_iter()
                        .map(|r| r.to_device(&self.setup.device))
                        .collect::<candle_core::Result<Vec<_>>>()?
                    };
                    for (j, row) in pos.into_iter().zip(rows) {
                        old[first + j] = Some(row);
                    }
                }
                if let Some(r) = &self.setup.reference {
                    let seqs: Vec<&QwenSequence> =
                        chunk.iter().map(|&i| &batch.items[i].sequence).collect();
                    reference.extend(logprob_rows(
                        &RankModel::new(r, self.setup.pad_token_id, self.setup.temperature),
                        &seqs,
                        mbs,
                    )?);
                }
            }
        }
        let old = old
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.ok_or_else(|| Error::Data {
                    context: format!("learner rank {}", self.group.rank()),
                    reason: format!("no old log-probs computed for sequence {i} of its share"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FrozenLogprobs {
            old,
            reference: self.setup.reference.as_ref().map(|_| reference),
        })
    }

    fn train(&mut self, order: &TrainOrder) -> Result<RankReply> {
        let rank = self.group.rank();
        let world = self.group.world_size();
        let minis = self.setup.update.mini_batches_per_step.max(1);
        let all: Vec<usize> = (0..order.batch.items.len()).collect();
        let share = shard_for_rank(&all, rank, world, minis);
        let items: Vec<TrainItem<QwenSequence>> = share
            .iter()
            .map(|&i| order.batch.items[i].clone())
            .collect();
        let mut timings = RankTimings::default();

        let started = Instant::now();
        let frozen = self.frozen(order, &share, minis)?;
        timings.old_logprobs = started.elapsed().as_secs_f64();
        let (mut mismatch, mut mismatch_tokens) = (0f64, 0f64);
        for (row, &i) in frozen.old.iter().zip(&share) {
            let rollout = &order.batch.rollout_logprobs[i];
            if rollout.is_empty() {
                continue;
            }
            let row = row.flatten_all()?.to_vec1::<f32>()?;
            for (a, b) in row.iter().zip(rollout) {
                mismatch += f64::from((a - b).abs());
                mismatch_tokens += 1.0;
            }
        }

        let model = RankModel::new(&self.model, self.setup.pad_token_id, self.setup.temperature);
        let collective = TimedCollective::new(&self.group);
        let skipped_before = self.skips.total();
        let started = Instant::now();
        let stats = train_step(
            &model,
            &mut self.opt,
            &collective,
            &items,
            &frozen,
            &self.setup.update,
            &mut self.skips,
        )?;
        collective.finish();
        let total = started.elapsed().as_secs_f64();
        timings.forward = model.forward_time().as_secs_f64();
        timings.collective = collective.collective_seconds();
        timings.optimizer = collective.optimizer_seconds();
        timings.backward =
            (total - timings.forward - timings.collective - timings.optimizer).max(0.0);

        let diagnostics = self.reduce_diagnostics(&stats, mismatch, mismatch_tokens)?;
        // A sharded optimizer's state is gathered from every rank (a collective) for the
        // checkpoint rank 0 writes.
        let optimizer_state = match &order.checkpoint {
            Some(_) if rank == 0 || self.opt.is_sharded() => {
                Some(self.opt.full_state(&self.group)?.0)
            }
            _ => None,
        };
        self.peers_may_wait = false;
        let mut reply = RankReply {
            stats,
            diagnostics,
            timings,
            skipped: self.skips.total() - skipped_before,
            snapshot: None,
            checkpoint_dir: None,
        };
        if rank == 0 {
            let started = Instant::now();
            reply.snapshot = Some(self.snapshot()?);
            reply.timings.snapshot = started.elapsed().as_secs_f64();
            if let (Some((store, state)), Some(optimizer)) = (&order.checkpoint, &optimizer_state) {
                let started = Instant::now();
                let state = CheckpointState {
                    optimizer_step: self.opt.step_count(),
                    ..state.clone()
                };
                let dir =
                    self.model
                        .save_checkpoint(store, &self.setup.model_dir, optimizer, &state)?;
                reply.checkpoint_dir = Some(dir);
                reply.timings.checkpoint = started.elapsed().as_secs_f64();
            }
        }
        Ok(reply)
    }

    /// Sums this rank's token-weighted diagnostics of the applied updates with every other
    /// rank's (skip decisions are global, so every rank sums the same updates).
    fn reduce_diagnostics(
        &self,
        stats: &[UpdateStats],
        mismatch: f64,
        mismatch_tokens: f64,
    ) -> Result<StepDiagnostics> {
        let mut buf = [0f64; 11];
        for s in stats.iter().filter(|s| !s.skipped) {
            let d = &s.diagnostics;
            let t = d.tokens;
            buf[0] += t;
            buf[1] += d.ratio_mean * t;
            buf[2] += d.clip_fraction_low * t;
            buf[3] += d.clip_fraction_high * t;
            if let Some(kl) = d.kl {
                buf[4] += kl * t;
                buf[5] += t;
            }
            if let Some(h) = d.entropy {
                buf[6] += h * t;
                buf[7] += t;
            }
            buf[8] += d.pg_loss;
        }
        buf[9] = mismatch;
        buf[10] = mismatch_tokens;
        self.group.all_reduce_sum_f64(&mut buf)?;
        let applied = stats.iter().filter(|s| !s.skipped).count().max(1) as f64;
        let per_token = |sum: f64, n: f64| if n > 0.0 { sum / n } else { 0.0 };
        let track_kl = matches!(&self.setup.update.algorithm, Algorithm::Grpo(_))
            && self.setup.reference.is_some();
        Ok(StepDiagnostics {
            pg_loss: buf[8] / applied,
            ratio_mean: per_token(buf[1], buf[0]),
            clip_fraction_low: per_token(buf[2], buf[0]),
            clip_fraction_high: per_token(buf[3], buf[0]),
            kl: (track_kl && buf[5] > 0.0).then(|| buf[4] / buf[5]),
            entropy: (buf[7] > 0.0).then(|| buf[6] / buf[7]),
            logprob_mismatch: (buf[10] > 0.0).then(|| buf[9] / buf[10]),
        })
    }
}

/// Makes every peer's next (or current) collective fail at once: a zero-length broadcast
/// never matches the all-reduces the update performs. When every rank aborts together (a
/// symmetric failure) the broadcasts simply meet.
fn abort(group: &dyn Collective) {
    let _ = group.broadcast(&mut [], 0);
}

/// A collective that times its calls, and the optimizer segment of the update: from the end
/// of an update's last collective (the one-value loss all-reduce that follows the gradient
/// all-reduce in [`crate::update::train_step`]) to the start of the next collective or the end
/// of the step, i.e. gradient clipping and the AdamW step.
struct TimedCollective<'a> {
    inner: &'a RankGroup,
    collective_ns: AtomicU64,
    optimizer_ns: AtomicU64,
    optimizer_since: Mutex<Option<Instant>>,
}

impl<'a> TimedCollective<'a> {
    fn new(inner: &'a RankGroup) -> Self {
        Self {
            inner,
            collective_ns: AtomicU64::new(0),
            optimizer_ns: AtomicU64::new(0),
            optimizer_since: Mutex::new(None),
        }
    }

    fn settle_optimizer(&self) {
        let since = self
            .optimizer_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(since) = since {
            self.optimizer_ns
                .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.settle_optimizer();
        let started = Instant::now();
        let r = f();
        self.collective_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// Closes an open optimizer segment (call when the update returns).
    fn finish(&self) {
        self.settle_optimizer();
    }

    fn collective_seconds(&self) -> f64 {
        self.collective_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn optimizer_seconds(&self) -> f64 {
        self.optimizer_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

impl Collective for TimedCollective<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.timed(|| self.inner.all_reduce_sum(buf))
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let ends_update = buf.len() == 1;
        let r = self.timed(|| self.inner.all_reduce_sum_f64(buf));
        if ends_update {
            *self
                .optimizer_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        r
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.timed(|| self.inner.broadcast(buf, root))
    }

    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.timed(|| self.inner.all_reduce_sum_tensor(t))
    }

    fn reduce_scatter_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.timed(|| self.inner.reduce_scatter_sum_tensor(t))
    }

    fn all_gather_tensor(&self, t: &Tensor) -> Result<Tensor> {
        self.timed(|| self.inner.all_gather_tensor(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aborting_rank_fails_its_peers_at_once() {
        let timeout = Duration::from_secs(30);
        for peer_first in [false, true] {
            let mut groups = InProcessGroup::new(2, timeout);
            let peer = groups.pop().unwrap();
            let failing = groups.pop().unwrap();
            let started = Instant::now();
            let waiting = std::thread::spawn(move || peer.all_reduce_sum_f64(&mut [1.0, 2.0]));
            if peer_first {
                std::thread::sleep(Duration::from_millis(50));
            }
            abort(&failing);
            let e = waiting.join().unwrap().unwrap_err();
            assert!(matches!(e, Error::CollectiveMismatch { .. }), "{e}");
            assert!(started.elapsed() < timeout / 2, "{:?}", started.elapsed());
        }
        // Every rank aborting together completes.
        let groups = InProcessGroup::new(2, timeout);
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| std::thread::spawn(move || abort(&g)))
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn root_cause_prefers_a_rank_own_failure() {
        let secondary = Error::CollectiveMismatch {
            rank: 1,
            detail: "another rank failed".into(),
        };
        let own = Error::Data {
            context: "learner rank 0".into(),
            reason: "boom".into(),
        };
        let e = root_cause(vec![secondary, own]).unwrap();
        assert!(e.to_string().contains("boom"), "{e}");
        assert!(root_cause(Vec::new()).is_none());
    }
}
