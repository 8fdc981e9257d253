//! Every metric the coordinator exports, declared in one place (names in `docs/metrics.md`).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Scored groups received, by outcome (kept, dropped, surplus, duplicate, ignored, stale).
pub const GROUPS: &str = "platter_groups_total";
/// Generation rounds each assembled batch needed.
pub const GENERATION_ROUNDS: &str = "platter_generation_rounds";
/// Response tokens received from workers (scored groups, and the work of cancelled leases).
pub const TOKENS_GENERATED: &str = "platter_generated_tokens_total";
/// Response tokens generated but not trained on (dropped, surplus, late, duplicate, stale,
/// cancelled).
pub const TOKENS_DISCARDED: &str = "platter_discarded_tokens_total";
/// Lease events (granted, expired, cancelled).
pub const LEASES: &str = "platter_leases_total";
/// Experiments waiting to run.
pub const QUEUE_DEPTH: &str = "platter_experiment_queue_depth";
/// Prompts waiting to be leased in the running step.
pub const PENDING_PROMPTS: &str = "platter_pending_prompts";
/// Seconds per step stage (assembly, learn, step).
pub const STAGE_SECONDS: &str = "platter_step_stage_seconds";
/// Unix time of the last finished step.
pub const LAST_STEP_TIMESTAMP: &str = "platter_last_step_timestamp_seconds";
/// Current policy version.
pub const POLICY_VERSION: &str = "platter_policy_version";
/// Kept / offered groups of the last step.
pub const KEPT_FRACTION: &str = "platter_kept_group_fraction";
/// Loss of the last step.
pub const STEP_LOSS: &str = "platter_step_loss";
/// Mean total reward of the kept groups of the last step.
pub const STEP_REWARD: &str = "platter_step_mean_reward";
/// Response length of every received response.
pub const RESPONSE_TOKENS: &str = "platter_response_length_tokens";
/// Steps trained.
pub const STEPS: &str = "platter_steps_total";
/// Mutating calls refused for a missing or wrong token.
pub const AUTH_FAILURES: &str = "platter_auth_failures_total";

/// Registers descriptions and units (idempotent).
pub fn describe() {
    describe_counter!(
        GROUPS,
        Unit::Count,
        "Scored groups received, by outcome (kept, dropped, surplus, duplicate, ignored, stale)."
    );
    describe_histogram!(
        GENERATION_ROUNDS,
        Unit::Count,
        "Generation rounds (waves of prompts_per_step prompts) per assembled batch."
    );
    describe_counter!(
        TOKENS_GENERATED,
        Unit::Count,
        "Response tokens received from rollout workers (scored groups, and tokens decoded for cancelled leases)."
    );
    describe_counter!(
        TOKENS_DISCARDED,
        Unit::Count,
        "Response tokens generated but not trained on, by reason (dropped, surplus, late, duplicate, stale, cancelled)."
    );
    describe_counter!(
        LEASES,
        Unit::Count,
        "Prompt lease events, by event (granted, expired, cancelled)."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Experiments queued behind the running one."
    );
    describe_gauge!(
        PENDING_PROMPTS,
        Unit::Count,
        "Prompts of the running step waiting for a worker."
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Seconds per step stage (stage: assembly, learn, step)."
    );
    describe_gauge!(
        LAST_STEP_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the last finished step."
    );
    describe_gauge!(
        POLICY_VERSION,
        Unit::Count,
        "Current policy version of the running experiment."
    );
    describe_gauge!(KEPT_FRACTION, "Kept / offered groups in the last step.");
    describe_gauge!(STEP_LOSS, "Loss of the last step.");
    describe_gauge!(
        STEP_REWARD,
        "Mean total reward (before shaping) of the kept groups of the last step."
    );
    describe_histogram!(
        RESPONSE_TOKENS,
        Unit::Count,
        "Length in tokens of every received response."
    );
    describe_counter!(STEPS, Unit::Count, "Training steps finished.");
    describe_counter!(
        AUTH_FAILURES,
        Unit::Count,
        "Mutating calls refused for a missing or wrong bearer token."
    );
}
