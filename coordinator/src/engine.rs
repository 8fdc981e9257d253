//! The running experiment's step state: prompt leasing with deadlines, re-lease on expiry,
//! duplicate dropping, and streaming dynamic sampling through `platter_rl::BatchAssembler`.
//!
//! Pure state plus the clock passed in; the gRPC service and the step driver lock it briefly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use platter_proto::v1::{self, GroupOutcome};
use platter_rl::filter::{Offer, RoundDecision, ScoredGroup};
use platter_rl::{BatchAssembler, FilterMetric, RewardBreakdown};

use crate::config::ExperimentConfig;
use crate::dataset::PromptSource;
use crate::metrics as m;

/// A scored group held by the assembler.
#[derive(Debug, Clone)]
pub struct HeldGroup {
    /// Sampler position of the prompt.
    pub draw: u64,
    /// Version that generated it.
    pub policy_version: u64,
    /// The responses with their rewards.
    pub responses: Vec<v1::ScoredResponse>,
}

fn breakdown(t: &v1::RewardTerms) -> RewardBreakdown {
    RewardBreakdown {
        think_format: t.think_format,
        answer_format: t.answer_format,
        non_repeat: t.non_repeat,
        seg_iou: t.seg_iou,
        seg_l1: t.seg_l1,
        seg_point: t.seg_point,
        seg: t.seg,
        mask_iou: t.mask_iou,
        num_objects: t.num_objects as usize,
        total: t.total,
    }
}

impl ScoredGroup for HeldGroup {
    fn metric_values(&self, metric: FilterMetric) -> Vec<f64> {
        // A response without reward terms is not finite: the filter drops the group.
        self.responses
            .iter()
            .map(|r| {
                r.reward
                    .as_ref()
                    .map_or(f64::NAN, |t| metric.of(&breakdown(t)))
            })
            .collect()
    }
    fn response_tokens(&self) -> u64 {
        self.responses
            .iter()
            .map(|r| r.token_ids.len() as u64)
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Task {
    draw: u64,
    sample: usize,
    attempt: u32,
}

#[derive(Debug)]
struct Lease {
    task: Task,
    worker_id: String,
    deadline: Instant,
}

/// Per-step counters beyond the assembler's.
#[derive(Debug, Default, Clone, Copy)]
pub struct StepCounters {
    pub cancelled_leases: u32,
    pub expired_leases: u32,
    pub duplicates: u32,
    pub carried: u32,
    /// Response tokens workers reported decoding for this step's stopped leases.
    pub cancelled_tokens: u64,
}

/// Why assembly stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Still gathering groups.
    Gathering,
    /// Full, or partial after the round bound with `train_partial`.
    Ready,
    /// The experiment must stop with this error.
    Failed(String),
}

/// The running experiment.
#[derive(Debug)]
pub struct Run {
    pub id: String,
    pub cfg: ExperimentConfig,
    source: PromptSource,
    reward_settings: v1::RewardSettings,
    lease_timeout: Duration,
    pub step: u64,
    pub version: u64,
    pub cursor: u64,
    pub cancel_requested: bool,
    assembler: Option<BatchAssembler<HeldGroup>>,
    readiness: Readiness,
    pending: VecDeque<Task>,
    leases: HashMap<String, Lease>,
    /// Leases the workers must be told to stop (lease id -> worker id).
    cancelled: HashMap<String, String>,
    /// Leases of this step that were cancelled or expired and whose discarded work the worker
    /// has not reported yet (lease id -> worker id).
    stopped_in_step: HashMap<String, String>,
    keys: HashSet<(u64, u64, u32)>,
    done: HashSet<u64>,
    carried: Vec<HeldGroup>,
    offered: Vec<v1::OfferedGroup>,
    pub counters: StepCounters,
    pub assembly_started: Instant,
}

impl Run {
    /// A run starting at `step` with the sampler at `cursor` and the policy at `version`.
    pub fn new(
        id: String,
        cfg: ExperimentConfig,
        source: PromptSource,
        step: u64,
        cursor: u64,
        version: u64,
    ) -> Self {
        let reward_settings =
            platter_reward::configs_to_settings(&cfg.reward, &cfg.overlong_in_effect());
        let lease_timeout = Duration::from_secs_f64(cfg.rollout.lease_timeout_seconds);
        Self {
            id,
            cfg,
            source,
            reward_settings,
            lease_timeout,
            step,
            version,
            cursor,
            cancel_requested: false,
            assembler: None,
            readiness: Readiness::Gathering,
            pending: VecDeque::new(),
            leases: HashMap::new(),
            cancelled: HashMap::new(),
            stopped_in_step: HashMap::new(),
            keys: HashSet::new(),
            done: HashSet::new(),
            carried: Vec::new(),
            offered: Vec::new(),
            counters: StepCounters::default(),
            assembly_started: Instant::now(),
        }
    }

    /// Lease timeout of this experiment.
    pub fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    /// Starts assembling the batch of `self.step`, seeded with carried surplus.
    pub fn begin_step(&mut self, now: Instant) {
        let mut a = BatchAssembler::new(self.cfg.assembler());
        let carried = std::mem::take(&mut self.carried);
        let n = carried.len();
        let rest = a.seed(carried);
        self.counters = StepCounters {
            carried: (n - rest.len()) as u32,
            ..Default::default()
        };
        self.cancelled.clear();
        self.stopped_in_step.clear();
        self.offered.clear();
        self.readiness = if a.is_full() {
            Readiness::Ready
        } else {
            Readiness::Gathering
        };
        self.assembler = Some(a);
        self.assembly_started = now;
    }

    /// Whether the batch can be taken.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Whether the step is assembling (leases are granted only then).
    pub fn assembling(&self) -> bool {
        self.assembler.is_some() && self.readiness == Readiness::Gathering
    }

    fn new_round(&mut self) -> bool {
        let Some(a) = self.assembler.as_mut() else {
            return false;
        };
        if a.is_full() {
            return false;
        }
        match a.start_round() {
            Err(e) => {
                tracing::error!(experiment = %self.id, step = self.step, error = %e, "round bound reached");
                self.readiness = Readiness::Failed(e.to_string());
                false
            }
            Ok(RoundDecision::TrainPartial) => {
                tracing::warn!(experiment = %self.id, step = self.step, kept = a.stats().kept, "round bound reached: training a partial batch (on_round_limit = train_partial)");
                self.readiness = Readiness::Ready;
                false
            }
            Ok(RoundDecision::Continue) => {
                for _ in 0..self.cfg.sampling.prompts_per_step {
                    let sample = self.source.index_at(self.cursor);
                    self.pending.push_back(Task {
                        draw: self.cursor,
                        sample,
                        attempt: 1,
                    });
                    self.cursor += 1;
                }
                true
            }
        }
    }

    /// Up to `max` leases for `worker_id`.
    pub fn lease(&mut self, worker_id: &str, max: usize, now: Instant) -> Vec<v1::PromptLease> {
        let mut out = Vec::new();
        while out.len() < max && self.assembling() {
            if self.pending.is_empty() && !self.new_round() {
                break;
            }
            let Some(task) = self.pending.pop_front() else {
                break;
            };
            let payload = match self.source.payload(task.sample) {
                Ok(p) => p,
                Err(e) => {
                    self.readiness = Readiness::Failed(e.to_string());
                    break;
                }
            };
            let lease_id = format!("{}/{}/{}/{}", self.id, self.step, task.draw, task.attempt);
            self.leases.insert(
                lease_id.clone(),
                Lease {
                    task,
                    worker_id: worker_id.to_owned(),
                    deadline: now + self.lease_timeout,
                },
            );
            metrics::counter!(m::LEASES, "event" => "granted").increment(1);
            out.push(v1::PromptLease {
                lease_id,
                experiment_id: self.id.clone(),
                step: self.step,
                prompt_index: task.draw,
                attempt: task.attempt,
                sample_id: payload.sample_id,
                prompt_text: payload.prompt_text,
                image: payload.image,
                policy_image_size: self.cfg.data.image_size,
                ground_truth: payload.ground_truth,
                ground_truth_mask: Some(payload.ground_truth_mask),
                group_size: self.cfg.rollout.group_size,
                max_response_tokens: u32::try_from(self.cfg.overlong.max_response_tokens)
                    .unwrap_or(u32::MAX),
                temperature: self.cfg.rollout.temperature,
                top_p: self.cfg.rollout.top_p,
                seed: self.cfg.seed
                    ^ task.draw.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ u64::from(task.attempt),
                min_policy_version: self.version,
                reward: Some(self.reward_settings),
            });
        }
        metrics::gauge!(m::PENDING_PROMPTS).set(self.pending.len() as f64);
        out
    }

    /// Extends `worker_id`'s live leases; returns those it must stop (cancelled, expired or
    /// unknown).
    pub fn heartbeat(
        &mut self,
        worker_id: &str,
        lease_ids: &[String],
        now: Instant,
    ) -> Vec<String> {
        let mut stop = Vec::new();
        for id in lease_ids {
            match self.leases.get_mut(id) {
                Some(l) if l.worker_id == worker_id => l.deadline = now + self.lease_timeout,
                _ => stop.push(id.clone()),
            }
        }
        self.cancelled
            .retain(|id, w| !(w == worker_id && lease_ids.contains(id)));
        stop
    }

    /// Takes `worker_id`'s report of leases it stopped and the tokens it had decoded for each:
    /// counted in the metrics, and in this step's counters when the lease is one of this step's
    /// cancelled or expired leases held by that worker (each lease once).
    pub fn stopped(&mut self, worker_id: &str, reports: &[v1::StoppedLease]) {
        record_stopped_tokens(reports);
        for r in reports {
            if self
                .stopped_in_step
                .get(&r.lease_id)
                .is_some_and(|w| w == worker_id)
            {
                self.stopped_in_step.remove(&r.lease_id);
                self.counters.cancelled_tokens += r.decoded_tokens;
            }
        }
    }

    /// Re-queues the prompts of expired leases (at the front, with the next attempt number).
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for id in expired {
            if let Some(l) = self.leases.remove(&id) {
                tracing::warn!(experiment = %self.id, step = self.step, lease = %id, worker = %l.worker_id, "lease expired; leasing the prompt again");
                metrics::counter!(m::LEASES, "event" => "expired").increment(1);
                self.counters.expired_leases += 1;
                self.stopped_in_step.insert(id, l.worker_id);
                if self.assembling() && !self.done.contains(&l.task.draw) {
                    self.pending.push_front(Task {
                        attempt: l.task.attempt + 1,
                        ..l.task
                    });
                }
            }
        }
    }

    fn cancel_draw(&mut self, draw: u64) {
        self.pending.retain(|t| t.draw != draw);
        let ids: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.task.draw == draw)
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            if let Some(l) = self.leases.remove(&id) {
                self.stopped_in_step.insert(id.clone(), l.worker_id.clone());
                self.cancelled.insert(id, l.worker_id);
                self.counters.cancelled_leases += 1;
                metrics::counter!(m::LEASES, "event" => "cancelled").increment(1);
            }
        }
    }

    /// Cancels every outstanding lease and drops unleased prompts (the batch is full or the run
    /// stops); workers learn it from their next heartbeat.
    pub fn cancel_outstanding(&mut self) {
        self.pending.clear();
        for (id, l) in self.leases.drain() {
            self.stopped_in_step.insert(id.clone(), l.worker_id.clone());
            self.cancelled.insert(id, l.worker_id);
            self.counters.cancelled_leases += 1;
            metrics::counter!(m::LEASES, "event" => "cancelled").increment(1);
        }
        metrics::gauge!(m::PENDING_PROMPTS).set(0.0);
    }

    /// Judges one returned group.
    pub fn submit(&mut self, req: v1::SubmitScoredGroupRequest) -> GroupOutcome {
        let tokens: u64 = req.responses.iter().map(|r| r.token_ids.len() as u64).sum();
        metrics::counter!(m::TOKENS_GENERATED).increment(tokens);
        for r in &req.responses {
            metrics::histogram!(m::RESPONSE_TOKENS).record(r.token_ids.len() as f64);
        }
        let discard = |reason: &'static str| {
            metrics::counter!(m::TOKENS_DISCARDED, "reason" => reason).increment(tokens)
        };
        let outcome =
            if req.experiment_id != self.id || req.step != self.step || self.assembler.is_none() {
                discard("late");
                GroupOutcome::Ignored
            } else if !self.keys.insert((req.step, req.prompt_index, req.attempt))
                || self.done.contains(&req.prompt_index)
            {
                self.counters.duplicates += 1;
                discard("duplicate");
                GroupOutcome::Duplicate
            } else if self.version.saturating_sub(req.policy_version) > self.cfg.max_staleness
                || req.policy_version > self.version
            {
                // The prompt goes back to the queue as a fresh attempt.
                self.leases.remove(&req.lease_id);
                if self.assembling() {
                    let sample = self.source.index_at(req.prompt_index);
                    self.pending.push_front(Task {
                        draw: req.prompt_index,
                        sample,
                        attempt: req.attempt + 1,
                    });
                }
                discard("stale");
                GroupOutcome::Stale
            } else {
                self.leases.remove(&req.lease_id);
                self.done.insert(req.prompt_index);
                // Another attempt of the same prompt (after an expiry) is now redundant.
                self.cancel_draw(req.prompt_index);
                let group = HeldGroup {
                    draw: req.prompt_index,
                    policy_version: req.policy_version,
                    responses: req.responses,
                };
                let mixed = platter_rl::filter::is_mixed(
                    &group.metric_values(self.cfg.sampling.filter_metric),
                    self.cfg.sampling.min_group_std,
                );
                let group_terms =
                    mean_terms(group.responses.iter().filter_map(|r| r.reward.as_ref()));
                let outcome = match self.assembler.as_mut().map(|a| a.offer(group)) {
                    Some(Offer::Kept) => GroupOutcome::Kept,
                    Some(Offer::Dropped) => {
                        discard("dropped");
                        GroupOutcome::Dropped
                    }
                    Some(Offer::Surplus) => {
                        discard("surplus");
                        GroupOutcome::Surplus
                    }
                    None => GroupOutcome::Ignored,
                };
                self.offered.push(v1::OfferedGroup {
                    prompt_index: req.prompt_index,
                    mixed,
                    tokens,
                    outcome: outcome as i32,
                    mean_terms: group_terms,
                });
                outcome
            };
        let label = match outcome {
            GroupOutcome::Kept => "kept",
            GroupOutcome::Dropped => "dropped",
            GroupOutcome::Surplus => "surplus",
            GroupOutcome::Duplicate => "duplicate",
            GroupOutcome::Stale => "stale",
            _ => "ignored",
        };
        metrics::counter!(m::GROUPS, "outcome" => label).increment(1);
        if self.assembler.as_ref().is_some_and(|a| a.is_full())
            && self.readiness == Readiness::Gathering
        {
            self.readiness = Readiness::Ready;
            self.cancel_outstanding();
        }
        outcome
    }

    /// Hands over the assembled batch; outstanding work is cancelled, and surplus groups that
    /// will still be within the staleness bound after this step's update are carried over.
    pub fn take_batch(&mut self) -> Option<platter_rl::filter::AssembledBatch<HeldGroup>> {
        let a = self.assembler.take()?;
        self.cancel_outstanding();
        let (batch, surplus) = a.take_batch();
        let next_version = self.version + 1;
        self.carried = surplus
            .into_iter()
            .filter(|g| next_version.saturating_sub(g.policy_version) <= self.cfg.max_staleness)
            .collect();
        self.keys.clear();
        self.done.clear();
        Some(batch)
    }

    /// The groups offered in this step so far, in arrival order.
    pub fn take_offered(&mut self) -> Vec<v1::OfferedGroup> {
        std::mem::take(&mut self.offered)
    }

    /// Leases cancelled for `worker_id` that it has not acknowledged yet.
    pub fn cancelled_for(&self, worker_id: &str) -> Vec<String> {
        self.cancelled
            .iter()
            .filter(|(_, w)| *w == worker_id)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Counts the tokens of stopped leases as generated and discarded (`reason` = cancelled).
pub fn record_stopped_tokens(reports: &[v1::StoppedLease]) {
    let tokens: u64 = reports.iter().map(|r| r.decoded_tokens).sum();
    if tokens > 0 {
        metrics::counter!(m::TOKENS_GENERATED).increment(tokens);
        metrics::counter!(m::TOKENS_DISCARDED, "reason" => "cancelled").increment(tokens);
    }
}

/// The mean of every reward term over `terms` (`mask_iou` over those that have one; counts
/// rounded to the nearest integer); `None` when `terms` is empty.
pub fn mean_terms<'a>(terms: impl Iterator<Item = &'a v1::RewardTerms>) -> Option<v1::RewardTerms> {
    let mut sum = v1::RewardTerms::default();
    let (mut n, mut objects, mut prompts) = (0usize, 0f64, 0f64);
    let (mut mask_sum, mut mask_n) = (0f64, 0usize);
    for t in terms {
        n += 1;
        sum.think_format += t.think_format;
        sum.answer_format += t.answer_format;
        sum.non_repeat += t.non_repeat;
        sum.seg_iou += t.seg_iou;
        sum.seg_l1 += t.seg_l1;
        sum.seg_point += t.seg_point;
        sum.seg += t.seg;
        sum.total += t.total;
        sum.overlong_penalty += t.overlong_penalty;
        sum.shaped_reward += t.shaped_reward;
        objects += f64::from(t.num_objects);
        prompts += f64::from(t.num_prompts);
        if let Some(m) = t.mask_iou {
            mask_sum += m;
            mask_n += 1;
        }
    }
    if n == 0 {
        return None;
    }
    let k = n as f64;
    Some(v1::RewardTerms {
        think_format: sum.think_format / k,
        answer_format: sum.answer_format / k,
        non_repeat: sum.non_repeat / k,
        seg_iou: sum.seg_iou / k,
        seg_l1: sum.seg_l1 / k,
        seg_point: sum.seg_point / k,
        seg: sum.seg / k,
        mask_iou: (mask_n > 0).then(|| mask_sum / mask_n as f64),
        num_objects: (objects / k).round() as u32,
        total: sum.total / k,
        overlong_penalty: sum.overlong_penalty / k,
        shaped_reward: sum.shaped_reward / k,
        num_prompts: (prompts / k).round() as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &std::path::Path) -> Run {
        let synth = platter_data::synth::SynthConfig {
            n: 6,
            width: 64,
            height: 48,
            policy_image_size: 112,
            threads: 1,
            ..Default::default()
        };
        let manifest = platter_data::synth::generate(&synth, dir).unwrap().manifest;
        let toml = format!(
            "name = \"t\"\nsteps = 2\n[data]\nmanifest = \"{}\"\nimage_size = 112\n[rollout]\ngroup_size = 2\nlease_timeout_seconds = 1.0\n[sampling]\nprompts_per_step = 1\n",
            manifest.display()
        );
        let cfg = ExperimentConfig::from_toml(&toml).unwrap();
        let source = PromptSource::open(&cfg.data, 0).unwrap();
        let mut run = Run::new("e".into(), cfg, source, 0, 0, 0);
        run.begin_step(Instant::now());
        run
    }

    fn report(lease_id: &str, decoded_tokens: u64) -> v1::StoppedLease {
        v1::StoppedLease {
            lease_id: lease_id.to_owned(),
            decoded_tokens,
        }
    }

    #[test]
    fn stopped_work_counts_once_for_the_step_and_worker_that_held_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = run(dir.path());
        let t0 = Instant::now();
        let a = run.lease("w1", 1, t0).remove(0).lease_id;
        let b = run.lease("w2", 1, t0).remove(0).lease_id;
        let c = run.lease("w2", 1, t0).remove(0).lease_id;
        // Nothing stopped yet: a report of a live lease does not count for the step.
        run.stopped("w1", &[report(&a, 5)]);
        assert_eq!(run.counters.cancelled_tokens, 0);
        // `a` expires; `b` and `c` are cancelled (the batch is full, say).
        run.expire(t0 + Duration::from_secs(2));
        assert_eq!(run.counters.expired_leases, 3);
        // w1 reports a: 7 tokens. w1 reporting w2's lease b is not counted; w2 reports b: 11,
        // then b again (a resent heartbeat): not counted twice; an unknown lease: ignored.
        run.stopped("w1", &[report(&a, 7), report(&b, 100)]);
        run.stopped(
            "w2",
            &[report(&b, 11), report(&b, 11), report("e/9/9/1", 50)],
        );
        // 7 + 11 = 18.
        assert_eq!(run.counters.cancelled_tokens, 18);
        // The next step starts from zero and ignores the previous step's leases.
        run.begin_step(t0 + Duration::from_secs(3));
        run.stopped("w2", &[report(&c, 13)]);
        assert_eq!(run.counters.cancelled_tokens, 0);
    }

    #[test]
    fn cancelled_leases_count_their_reported_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut run = run(dir.path());
        let now = Instant::now();
        let leases = run.lease("w", 2, now);
        run.cancel_outstanding();
        assert_eq!(run.counters.cancelled_leases, 2);
        // 30 + 4 = 34.
        run.stopped(
            "w",
            &[
                report(&leases[0].lease_id, 30),
                report(&leases[1].lease_id, 4),
            ],
        );
        assert_eq!(run.counters.cancelled_tokens, 34);
    }
}
