//! Dynamic sampling (METHOD §5): keep only groups whose rewards are not all equal, and assemble
//! a batch of `prompts_per_step` kept groups within a bound on generation rounds.
//!
//! Pure logic: the coordinator owns the network side. It calls [`BatchAssembler::start_round`]
//! each time it asks workers for another wave of prompts, [`BatchAssembler::offer`] for every
//! scored group as it arrives, and [`BatchAssembler::take_batch`] once the batch is full (or the
//! round bound says to train on what it holds).

use serde::{Deserialize, Serialize};

use crate::advantage::population_std;
use crate::reward::RewardBreakdown;
use crate::{Error, Result};

/// Which value of a response the filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FilterMetric {
    /// The total reward before overlong shaping (METHOD default).
    #[default]
    Total,
    ThinkFormat,
    AnswerFormat,
    NonRepeat,
    Seg,
    SegIou,
    SegL1,
    SegPoint,
    MaskIou,
}

impl FilterMetric {
    /// The metric's value for one response (mask IoU counts as 0 when it was not scored).
    pub fn of(&self, r: &RewardBreakdown) -> f64 {
        match self {
            FilterMetric::Total => r.total,
            FilterMetric::ThinkFormat => r.think_format,
            FilterMetric::AnswerFormat => r.answer_format,
            FilterMetric::NonRepeat => r.non_repeat,
            FilterMetric::Seg => r.seg,
            FilterMetric::SegIou => r.seg_iou,
            FilterMetric::SegL1 => r.seg_l1,
            FilterMetric::SegPoint => r.seg_point,
            FilterMetric::MaskIou => r.mask_iou.unwrap_or(0.0),
        }
    }
}

/// What to do when `max_generation_rounds` is reached without a full batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundLimitOutcome {
    /// Stop the experiment with a clear error.
    #[default]
    Fail,
    /// Train on the kept groups gathered so far (logged as a partial batch).
    TrainPartial,
}

/// Batch-assembly settings (METHOD §5 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssemblerConfig {
    /// Kept groups per training batch.
    pub prompts_per_step: usize,
    /// DAPO dynamic sampling on; off = GRPO, every group kept.
    pub dynamic_sampling: bool,
    /// A group is kept when the population std of its metric exceeds this.
    pub min_group_std: f64,
    /// The value the filter reads.
    pub filter_metric: FilterMetric,
    /// Bound on generation rounds per batch; 0 = unlimited.
    pub max_generation_rounds: u32,
    /// Outcome when the bound is hit.
    pub on_round_limit: RoundLimitOutcome,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            prompts_per_step: 16,
            dynamic_sampling: true,
            min_group_std: 1e-6,
            filter_metric: FilterMetric::Total,
            max_generation_rounds: 10,
            on_round_limit: RoundLimitOutcome::Fail,
        }
    }
}

impl AssemblerConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.prompts_per_step == 0 {
            return Err(Error::InvalidConfig {
                key: "prompts_per_step",
                reason: "must be at least 1".into(),
            });
        }
        if !(self.min_group_std.is_finite() && self.min_group_std >= 0.0) {
            return Err(Error::InvalidConfig {
                key: "min_group_std",
                reason: "must be a finite number >= 0".into(),
            });
        }
        Ok(())
    }
}

/// A scored group the assembler can judge.
pub trait ScoredGroup {
    /// The filter metric of every response in the group.
    fn metric_values(&self, metric: FilterMetric) -> Vec<f64>;
    /// Response tokens generated for this group (for the discarded-token count).
    fn response_tokens(&self) -> u64;
}

/// Whether a group passes the filter: population std of its metric above `min_group_std`.
pub fn is_mixed(values: &[f64], min_group_std: f64) -> bool {
    values.iter().all(|v| v.is_finite()) && population_std(values) > min_group_std
}

/// What happened to one offered group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Kept for this batch.
    Kept,
    /// Uniformly rewarded (or non-finite): dropped.
    Dropped,
    /// Mixed, but the batch was already full: returned to the caller in `surplus`.
    Surplus,
}

/// What the caller should do after a round ended without a full batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundDecision {
    /// Another round may start.
    Continue,
    /// The bound was hit with `train_partial`: call `take_batch` and train on what is held.
    TrainPartial,
}

/// Counters for one assembled batch (exported as metrics by the coordinator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AssemblyStats {
    pub rounds: u32,
    pub offered: usize,
    pub kept: usize,
    pub dropped: usize,
    pub surplus: usize,
    pub generated_tokens: u64,
    pub discarded_tokens: u64,
    /// The batch was cut short by the round bound.
    pub partial: bool,
}

impl AssemblyStats {
    /// Kept / offered (1.0 before any group arrived).
    pub fn kept_fraction(&self) -> f64 {
        if self.offered == 0 {
            1.0
        } else {
            self.kept as f64 / self.offered as f64
        }
    }
}

/// A full (or partial) batch and its counters.
#[derive(Debug)]
pub struct AssembledBatch<G> {
    pub groups: Vec<G>,
    pub stats: AssemblyStats,
}

/// Accepts scored groups one at a time until it holds `prompts_per_step` kept groups.
#[derive(Debug)]
pub struct BatchAssembler<G> {
    cfg: AssemblerConfig,
    kept: Vec<G>,
    surplus: Vec<G>,
    stats: AssemblyStats,
}

impl<G: ScoredGroup> BatchAssembler<G> {
    /// A new, empty assembler. Validate the config first (see [`AssemblerConfig::validate`]).
    pub fn new(cfg: AssemblerConfig) -> Self {
        Self {
            cfg,
            kept: Vec::new(),
            surplus: Vec::new(),
            stats: AssemblyStats::default(),
        }
    }

    /// Seeds the batch with groups carried over from the previous step (surplus within the
    /// staleness bound). They were already judged mixed, so they are kept as they come until
    /// the batch is full; the rest are returned.
    pub fn seed(&mut self, carried: Vec<G>) -> Vec<G> {
        let mut rest = Vec::new();
        for g in carried {
            if self.is_full() {
                rest.push(g);
            } else {
                self.kept.push(g);
                self.stats.kept += 1;
            }
        }
        rest
    }

    /// Marks the start of a generation round. Returns an error (outcome `fail`) or
    /// [`RoundDecision::TrainPartial`] when the round bound is already used up.
    pub fn start_round(&mut self) -> Result<RoundDecision> {
        let max = self.cfg.max_generation_rounds;
        if max != 0 && self.stats.rounds >= max {
            return match self.cfg.on_round_limit {
                RoundLimitOutcome::Fail => Err(Error::RoundLimit {
                    max_rounds: max,
                    kept: self.kept.len(),
                    needed: self.cfg.prompts_per_step,
                }),
                RoundLimitOutcome::TrainPartial => {
                    self.stats.partial = true;
                    Ok(RoundDecision::TrainPartial)
                }
            };
        }
        self.stats.rounds += 1;
        Ok(RoundDecision::Continue)
    }

    /// Judges one group as it arrives.
    pub fn offer(&mut self, group: G) -> Offer {
        let tokens = group.response_tokens();
        self.stats.offered += 1;
        self.stats.generated_tokens += tokens;
        let keep = !self.cfg.dynamic_sampling
            || is_mixed(
                &group.metric_values(self.cfg.filter_metric),
                self.cfg.min_group_std,
            );
        if !keep {
            self.stats.dropped += 1;
            self.stats.discarded_tokens += tokens;
            Offer::Dropped
        } else if self.is_full() {
            self.stats.surplus += 1;
            self.stats.discarded_tokens += tokens;
            self.surplus.push(group);
            Offer::Surplus
        } else {
            self.stats.kept += 1;
            self.kept.push(group);
            Offer::Kept
        }
    }

    /// The batch holds `prompts_per_step` kept groups.
    pub fn is_full(&self) -> bool {
        self.kept.len() >= self.cfg.prompts_per_step
    }

    /// Kept groups still needed.
    pub fn needed(&self) -> usize {
        self.cfg.prompts_per_step.saturating_sub(self.kept.len())
    }

    /// Counters so far.
    pub fn stats(&self) -> &AssemblyStats {
        &self.stats
    }

    /// Hands over the batch and the surplus groups (which the caller may carry to the next
    /// step when their policy version is within the staleness bound; surplus tokens are
    /// counted as discarded here, and a carried group is not discarded work in the end).
    pub fn take_batch(self) -> (AssembledBatch<G>, Vec<G>) {
        (
            AssembledBatch {
                groups: self.kept,
                stats: self.stats,
            },
            self.surplus,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct G(Vec<f64>, u64);
    impl ScoredGroup for G {
        fn metric_values(&self, _: FilterMetric) -> Vec<f64> {
            self.0.clone()
        }
        fn response_tokens(&self) -> u64 {
            self.1
        }
    }

    fn cfg(n: usize, rounds: u32, outcome: RoundLimitOutcome) -> AssemblerConfig {
        AssemblerConfig {
            prompts_per_step: n,
            max_generation_rounds: rounds,
            on_round_limit: outcome,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_mixed_drops_uniform_and_counts_surplus() {
        let mut a = BatchAssembler::new(cfg(2, 10, RoundLimitOutcome::Fail));
        assert_eq!(a.start_round().unwrap(), RoundDecision::Continue);
        assert_eq!(a.offer(G(vec![7.0; 8], 100)), Offer::Dropped);
        assert_eq!(a.offer(G(vec![0.0, 1.0], 10)), Offer::Kept);
        assert_eq!(a.offer(G(vec![f64::NAN, 1.0], 5)), Offer::Dropped);
        assert!(!a.is_full());
        assert_eq!(a.offer(G(vec![0.0, 3.0], 20)), Offer::Kept);
        assert!(a.is_full());
        assert_eq!(a.offer(G(vec![1.0, 3.0], 30)), Offer::Surplus);
        let (batch, surplus) = a.take_batch();
        assert_eq!(batch.groups.len(), 2);
        assert_eq!(surplus.len(), 1);
        let s = batch.stats;
        assert_eq!(
            (s.offered, s.kept, s.dropped, s.surplus, s.rounds),
            (5, 2, 2, 1, 1)
        );
        assert_eq!(s.generated_tokens, 165);
        assert_eq!(s.discarded_tokens, 100 + 5 + 30);
        assert_eq!(s.kept_fraction(), 0.4);
    }

    #[test]
    fn threshold_is_strict() {
        // Population std of (0, 2e-6) is 1e-6: not above the threshold.
        assert!(!is_mixed(&[0.0, 2e-6], 1e-6));
        assert!(is_mixed(&[0.0, 2.1e-6], 1e-6));
    }

    #[test]
    fn grpo_mode_keeps_everything() {
        let mut a = BatchAssembler::new(AssemblerConfig {
            dynamic_sampling: false,
            ..cfg(1, 10, RoundLimitOutcome::Fail)
        });
        assert_eq!(a.offer(G(vec![1.0; 4], 1)), Offer::Kept);
    }

    #[test]
    fn round_bound_fail_and_partial() {
        let mut a: BatchAssembler<G> = BatchAssembler::new(cfg(4, 2, RoundLimitOutcome::Fail));
        a.start_round().unwrap();
        a.start_round().unwrap();
        let err = a.start_round().unwrap_err().to_string();
        assert!(err.contains("max_generation_rounds = 2"), "{err}");

        let mut b = BatchAssembler::new(cfg(4, 1, RoundLimitOutcome::TrainPartial));
        b.start_round().unwrap();
        b.offer(G(vec![0.0, 1.0], 1));
        assert_eq!(b.start_round().unwrap(), RoundDecision::TrainPartial);
        let (batch, _) = b.take_batch();
        assert!(batch.stats.partial);
        assert_eq!(batch.groups.len(), 1);

        let mut c: BatchAssembler<G> = BatchAssembler::new(cfg(4, 0, RoundLimitOutcome::Fail));
        for _ in 0..1000 {
            assert_eq!(c.start_round().unwrap(), RoundDecision::Continue);
        }
    }

    #[test]
    fn seeding_with_carried_groups() {
        let mut a = BatchAssembler::new(cfg(2, 10, RoundLimitOutcome::Fail));
        let rest = a.seed(vec![
            G(vec![0.0, 1.0], 1),
            G(vec![0.0, 1.0], 1),
            G(vec![0.0, 1.0], 1),
        ]);
        assert_eq!(rest.len(), 1);
        assert!(a.is_full());
        assert_eq!(a.needed(), 0);
    }
}
