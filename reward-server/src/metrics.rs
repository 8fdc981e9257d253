//! Every metric the reward server exports, declared in one place (names in `docs/metrics.md`).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Groups scored (label `outcome` = ok | error).
pub const GROUPS_SCORED: &str = "platter_reward_groups_scored_total";
/// Responses scored.
pub const RESPONSES_SCORED: &str = "platter_reward_responses_scored_total";
/// Object prompts sent to the segmenter.
pub const SEGMENTER_PROMPTS: &str = "platter_reward_segmenter_prompts_total";
/// Value of each reward term per response (label `term`).
pub const TERM_VALUE: &str = "platter_reward_term_value";
/// Seconds per scoring stage (label `stage` = queue | decode | rules | segment | total).
pub const STAGE_SECONDS: &str = "platter_reward_stage_seconds";
/// Groups being scored or waiting for a slot.
pub const INFLIGHT_GROUPS: &str = "platter_reward_inflight_groups";

/// Score requests a client resent after its stream broke (server restart, network).
pub const CLIENT_RESENT: &str = "platter_reward_client_resent_total";

/// Registers descriptions and units (call once per process; repeated calls are harmless).
pub fn describe() {
    describe_counter!(
        GROUPS_SCORED,
        Unit::Count,
        "Groups scored, by outcome (ok, error)."
    );
    describe_counter!(RESPONSES_SCORED, Unit::Count, "Responses scored.");
    describe_counter!(
        SEGMENTER_PROMPTS,
        Unit::Count,
        "Object prompts (valid box + point) sent to the segmenter."
    );
    describe_histogram!(
        TERM_VALUE,
        "Per-response value of each reward term (label term: think_format, answer_format, non_repeat, seg_iou, seg_l1, seg_point, seg, mask_iou, total, overlong_penalty, shaped)."
    );
    describe_histogram!(
        STAGE_SECONDS,
        Unit::Seconds,
        "Seconds per scoring stage (label stage: queue, decode, rules, segment, total)."
    );
    describe_counter!(
        CLIENT_RESENT,
        Unit::Count,
        "Score requests a reward client resent after its stream broke (server restart, network)."
    );
    describe_gauge!(
        INFLIGHT_GROUPS,
        Unit::Count,
        "Groups being scored or waiting for a scoring slot."
    );
}

/// Records one scored group.
pub fn record_group(score: &platter_proto::v1::GroupScore) {
    if !score.error.is_empty() {
        metrics::counter!(GROUPS_SCORED, "outcome" => "error").increment(1);
        return;
    }
    metrics::counter!(GROUPS_SCORED, "outcome" => "ok").increment(1);
    metrics::counter!(RESPONSES_SCORED).increment(score.responses.len() as u64);
    for r in &score.responses {
        metrics::counter!(SEGMENTER_PROMPTS).increment(u64::from(r.num_prompts));
        let terms = [
            ("think_format", r.think_format),
            ("answer_format", r.answer_format),
            ("non_repeat", r.non_repeat),
            ("seg_iou", r.seg_iou),
            ("seg_l1", r.seg_l1),
            ("seg_point", r.seg_point),
            ("seg", r.seg),
            ("total", r.total),
            ("overlong_penalty", r.overlong_penalty),
            ("shaped", r.shaped_reward),
        ];
        for (term, v) in terms {
            metrics::histogram!(TERM_VALUE, "term" => term).record(v);
        }
        if let Some(iou) = r.mask_iou {
            metrics::histogram!(TERM_VALUE, "term" => "mask_iou").record(iou);
        }
    }
    if let Some(t) = &score.timing {
        for (stage, v) in [
            ("queue", t.queue_seconds),
            ("decode", t.decode_seconds),
            ("rules", t.rules_seconds),
            ("segment", t.segment_seconds),
            ("total", t.total_seconds),
        ] {
            metrics::histogram!(STAGE_SECONDS, "stage" => stage).record(v);
        }
    }
}
