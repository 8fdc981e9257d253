//! Every metric the learner exports, declared in one place (names in `docs/metrics.md`).
//!
//! Per-step values are gauges holding the last step's value; the loss diagnostics are the
//! token-weighted means over the step's updates and every rank.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Loss of the last step (mean over its optimizer updates).
pub const LOSS: &str = "platter_learner_loss";
/// Policy-gradient part of the loss of the last step.
pub const PG_LOSS: &str = "platter_learner_pg_loss";
/// Mean importance ratio r = exp(log πθ − log πold) over the last step's response tokens.
pub const RATIO_MEAN: &str = "platter_learner_ratio_mean";
/// Fraction of response tokens where a clip is active, by `side` (low, high).
pub const CLIP_FRACTION: &str = "platter_learner_clip_fraction";
/// Mean k3 KL to the reference policy (GRPO).
pub const KL: &str = "platter_learner_kl";
/// Mean entropy of the next-token distribution over response tokens (when computed).
pub const ENTROPY: &str = "platter_learner_entropy";
/// Global gradient norm before clipping, per optimizer update.
pub const GRAD_NORM: &str = "platter_learner_grad_norm";
/// Learning rate of the last update.
pub const LR: &str = "platter_learner_lr";
/// Response tokens trained per second of the last step (whole step time).
pub const TOKENS_PER_SECOND: &str = "platter_learner_tokens_per_second";
/// Response tokens trained on.
pub const TRAINED_TOKENS: &str = "platter_learner_trained_tokens_total";
/// Seconds per stage of a step, by `stage`.
pub const STAGE_SECONDS: &str = "platter_learner_stage_seconds";
/// Optimizer updates skipped for a non-finite loss or gradient.
pub const SKIPPED_UPDATES: &str = "platter_learner_skipped_updates_total";
/// Mean |rollout log-prob − recomputed old log-prob| over the last step's response tokens.
pub const LOGPROB_MISMATCH: &str = "platter_learner_logprob_mismatch";
/// Size of the last published weights blob (what every subscriber receives per version).
pub const WEIGHTS_BLOB_BYTES: &str = "platter_learner_weights_blob_bytes";
/// Checkpoints written.
pub const CHECKPOINTS: &str = "platter_learner_checkpoints_total";

/// The stages [`STAGE_SECONDS`] is labelled with.
pub const STAGES: [&str; 8] = [
    "prepare",
    "old_logprobs",
    "forward",
    "backward",
    "collective",
    "optimizer",
    "publish",
    "checkpoint",
];

/// Registers descriptions and units (idempotent).
pub fn describe() {
    describe_gauge!(
        LOSS,
        "Loss of the last step (mean over its optimizer updates)."
    );
    describe_gauge!(
        PG_LOSS,
        "Policy-gradient part of the loss of the last step."
    );
    describe_gauge!(
        RATIO_MEAN,
        "Mean importance ratio exp(log pi_theta - log pi_old) over the last step's response tokens."
    );
    describe_gauge!(
        CLIP_FRACTION,
        "Fraction of the last step's response tokens where the clip is active (side: low, high)."
    );
    describe_gauge!(
        KL,
        "Mean k3 KL to the frozen reference policy over the last step's response tokens (GRPO)."
    );
    describe_gauge!(
        ENTROPY,
        "Mean next-token entropy over the last step's response tokens (when an entropy bonus is on)."
    );
    describe_histogram!(
        GRAD_NORM,
        "Global gradient norm before clipping, one value per optimizer update."
    );
    describe_gauge!(LR, "Learning rate of the last optimizer update.");
    describe_gauge!(
        TOKENS_PER_SECOND,
        "Response tokens trained per second of the last step (whole step time)."
    );
    describe_counter!(
        TRAINED_TOKENS,
        Unit::Count,
        "Response tokens trained on (each counted once per step)."
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Seconds per step stage (stage: prepare, old_logprobs, forward, backward, collective, \
         optimizer, publish, checkpoint); rank 0's time for the per-rank stages."
    );
    describe_counter!(
        SKIPPED_UPDATES,
        Unit::Count,
        "Optimizer updates skipped because the loss or gradient was not finite."
    );
    describe_gauge!(
        LOGPROB_MISMATCH,
        "Mean |rollout log-prob - recomputed old log-prob| over the last step's response tokens."
    );
    describe_gauge!(
        WEIGHTS_BLOB_BYTES,
        Unit::Bytes,
        "Size of the last published weights blob (safetensors, publish dtype)."
    );
    describe_counter!(CHECKPOINTS, Unit::Count, "Checkpoints written.");
}
