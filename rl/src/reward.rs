//! Rewards (METHOD §3): thinking format, answer format, non-repeat and segmentation accuracy,
//! each reported on its own, plus DAPO's overlong shaping (METHOD §4) as a separate function.
//!
//! Maximum total: 1 (think format) + 2 (answer format) + 1 (non-repeat) + 3 (segmentation) = 7,
//! plus `mask_reward_weight` when the optional mask reward is on.

use std::collections::HashSet;

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

use crate::parse::{ParsedResponse, PredictedObject};
use crate::text::py_strip;
use crate::{Error, Result};

/// A ground-truth object in the policy's input space (METHOD §2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundTruthObject {
    /// Tight inclusive box `[x1, y1, x2, y2]`.
    pub bbox_2d: [f64; 4],
    /// Centre of the largest inscribed circle `[x, y]`.
    pub point_2d: [f64; 2],
}

/// Which text the non-repeat term reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NonRepeatScope {
    /// The inside of the first `<think>…</think>` (the whole response when there is none): the paper.
    #[default]
    Reasoning,
    /// The whole response: the published reference code.
    WholeResponse,
}

/// Constants of the reward terms. Every default is METHOD §3's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// At most this many answer objects are read; the rest are ignored.
    pub max_objects: usize,
    /// Non-repeat is 1 while the count of repeated sentences is below this.
    pub dup_threshold: usize,
    /// Which text the non-repeat term reads.
    pub non_repeat_scope: NonRepeatScope,
    /// Box IoU above this is a hit.
    pub iou_threshold: f64,
    /// Mean absolute coordinate difference below this (pixels) is a hit.
    pub l1_threshold: f64,
    /// Point distance below this (pixels), with the point inside its own box, is a hit.
    pub point_threshold: f64,
    /// Weight of the optional mask reward (IoU of the SAM2 mask with the GT mask); 0 = off.
    pub mask_reward_weight: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            max_objects: 120,
            dup_threshold: 2,
            non_repeat_scope: NonRepeatScope::Reasoning,
            iou_threshold: 0.5,
            l1_threshold: 10.0,
            point_threshold: 30.0,
            mask_reward_weight: 0.0,
        }
    }
}

impl RewardConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.max_objects == 0 {
            return bad("reward.max_objects", "must be at least 1");
        }
        if self.dup_threshold == 0 {
            return bad("reward.dup_threshold", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.iou_threshold) {
            return bad("reward.iou_threshold", "must be in [0, 1]");
        }
        if !(self.l1_threshold.is_finite() && self.l1_threshold >= 0.0) {
            return bad("reward.l1_threshold", "must be a finite number >= 0");
        }
        if !(self.point_threshold.is_finite() && self.point_threshold >= 0.0) {
            return bad("reward.point_threshold", "must be a finite number >= 0");
        }
        if !(self.mask_reward_weight.is_finite() && self.mask_reward_weight >= 0.0) {
            return bad("reward.mask_reward_weight", "must be a finite number >= 0");
        }
        Ok(())
    }
}

/// Every reward term of one response, reported separately.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardBreakdown {
    /// `R_tf` ∈ {0, 1}.
    pub think_format: f64,
    /// `R_af` ∈ [0, 2].
    pub answer_format: f64,
    /// `R_nr` ∈ {0, 1}.
    pub non_repeat: f64,
    /// Box-IoU hits over matched pairs / max(K, N).
    pub seg_iou: f64,
    /// Box-L1 hits over matched pairs / max(K, N).
    pub seg_l1: f64,
    /// Point hits over matched pairs / max(K, N).
    pub seg_point: f64,
    /// `R_seg` = seg_iou + seg_l1 + seg_point ∈ [0, 3].
    pub seg: f64,
    /// Mask IoU with the GT mask, when the segmenter's mask was scored.
    pub mask_iou: Option<f64>,
    /// Objects read from the answer (K, after the `max_objects` cap).
    pub num_objects: usize,
    /// Sum of the terms (before overlong shaping), mask reward included when weighted.
    pub total: f64,
}

impl RewardBreakdown {
    /// Adds the optional mask reward: `weight · iou` enters the total.
    pub fn with_mask_iou(mut self, iou: f64, weight: f64) -> Self {
        self.mask_iou = Some(iou);
        self.total += weight * iou;
        self
    }
}

/// Scores one response against the ground truth with every term of METHOD §3.
pub fn score_response(
    response: &str,
    ground_truth: &[GroundTruthObject],
    cfg: &RewardConfig,
) -> RewardBreakdown {
    let parsed = ParsedResponse::parse(response, cfg.max_objects);
    score_parsed(&parsed, response, ground_truth, cfg)
}

/// Scores an already parsed response (`response` is its full text, for the non-repeat term).
pub fn score_parsed(
    parsed: &ParsedResponse,
    response: &str,
    ground_truth: &[GroundTruthObject],
    cfg: &RewardConfig,
) -> RewardBreakdown {
    let think_format = if parsed.think_format_ok { 1.0 } else { 0.0 };
    let objects = parsed.objects();
    let answer_format = answer_format_reward(objects);
    let reasoning = match cfg.non_repeat_scope {
        NonRepeatScope::Reasoning => parsed.reasoning.as_deref().unwrap_or(response),
        NonRepeatScope::WholeResponse => response,
    };
    let non_repeat = non_repeat_reward(reasoning, cfg.dup_threshold);
    let seg = segmentation_reward(objects, ground_truth, cfg);
    RewardBreakdown {
        think_format,
        answer_format,
        non_repeat,
        seg_iou: seg.iou,
        seg_l1: seg.l1,
        seg_point: seg.point,
        seg: seg.total(),
        mask_iou: None,
        num_objects: objects.len(),
        total: think_format + answer_format + non_repeat + seg.total(),
    }
}

/// `R_af`: mean over objects of (+1 for a 4-number box, +1 for a 2-number point); 0 for an
/// empty list or an answer that is not a JSON list.
pub fn answer_format_reward(objects: &[PredictedObject]) -> f64 {
    if objects.is_empty() {
        return 0.0;
    }
    objects
        .iter()
        .map(PredictedObject::format_score)
        .sum::<f64>()
        / objects.len() as f64
}

/// `R_nr`: split on '.', strip, drop empties; 1 while fewer than `dup_threshold` sentences
/// repeat an earlier one exactly.
pub fn non_repeat_reward(text: &str, dup_threshold: usize) -> f64 {
    // Reasoning is a handful of sentences: a linear scan beats hashing until it is not.
    const LINEAR: usize = 32;
    let mut small: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut repeats = 0usize;
    for sentence in text.split('.').map(py_strip).filter(|s| !s.is_empty()) {
        let new = if seen.is_empty() && small.len() < LINEAR {
            let new = !small.contains(&sentence);
            if new {
                small.push(sentence);
            }
            new
        } else {
            if seen.is_empty() {
                seen.extend(small.drain(..));
            }
            seen.insert(sentence)
        };
        if !new {
            repeats += 1;
            if repeats >= dup_threshold {
                return 0.0;
            }
        }
    }
    1.0
}

/// The three hit counts of `R_seg`, each already divided by max(K, N).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SegmentationTerms {
    pub iou: f64,
    pub l1: f64,
    pub point: f64,
}

impl SegmentationTerms {
    pub fn total(&self) -> f64 {
        self.iou + self.l1 + self.point
    }
}

/// IoU of two boxes with the inclusive +1-pixel area convention of the reference code. A box
/// with non-positive union (degenerate or inverted pair) scores 0.
pub fn box_iou_inclusive(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f64; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Whether `p` lies inside box `b`, borders included.
pub fn point_in_box(p: &[f64; 2], b: &[f64; 4]) -> bool {
    p[0] >= b[0] && p[0] <= b[2] && p[1] >= b[1] && p[1] <= b[3]
}

/// The three hits (IoU, L1, point) of prediction `p` against ground truth `g`.
fn hits(p: &PredictedObject, g: &GroundTruthObject, cfg: &RewardConfig) -> [bool; 3] {
    let (Some(pb), Some(pp)) = (&p.bbox_2d, &p.point_2d) else {
        return [false; 3];
    };
    let iou = box_iou_inclusive(pb, &g.bbox_2d) > cfg.iou_threshold;
    let l1 = pb
        .iter()
        .zip(&g.bbox_2d)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / 4.0;
    let dist = ((pp[0] - g.point_2d[0]).powi(2) + (pp[1] - g.point_2d[1]).powi(2)).sqrt();
    [
        iou,
        l1 < cfg.l1_threshold,
        dist < cfg.point_threshold && point_in_box(pp, pb),
    ]
}

/// `R_seg`: Hungarian matching on cost 3 − hits over the K×N matrix (maximising total hits over
/// min(K, N) pairs), hits of matched pairs summed per term, divided by max(K, N). Zero when
/// K = 0, N = 0, or any predicted object lacks a valid box or point.
pub fn segmentation_reward(
    objects: &[PredictedObject],
    ground_truth: &[GroundTruthObject],
    cfg: &RewardConfig,
) -> SegmentationTerms {
    if objects.is_empty()
        || ground_truth.is_empty()
        || !objects.iter().all(PredictedObject::is_valid)
    {
        return SegmentationTerms::default();
    }
    let (k, n) = (objects.len(), ground_truth.len());
    let hit_table: Vec<[bool; 3]> = objects
        .iter()
        .flat_map(|p| ground_truth.iter().map(move |g| hits(p, g, cfg)))
        .collect();
    let hit = |i: usize, j: usize| hit_table[i * n + j];
    let weight = |h: [bool; 3]| h.iter().map(|&x| i64::from(x)).sum::<i64>();

    // kuhn_munkres needs rows <= columns; it maximises the total weight (= total hits).
    // With one prediction or one GT object the optimum is simply the best single pair.
    let pairs: Vec<(usize, usize)> = if k == 1 || n == 1 {
        let all = (0..k).flat_map(|i| (0..n).map(move |j| (i, j)));
        let best = all.max_by_key(|&(i, j)| (weight(hit(i, j)), std::cmp::Reverse((i, j))));
        best.into_iter().collect()
    } else if k <= n {
        let m = Matrix::from_fn(k, n, |(i, j)| weight(hit(i, j)));
        let (_, cols) = kuhn_munkres(&m);
        cols.into_iter().enumerate().collect()
    } else {
        let m = Matrix::from_fn(n, k, |(j, i)| weight(hit(i, j)));
        let (_, rows) = kuhn_munkres(&m);
        rows.into_iter().enumerate().map(|(j, i)| (i, j)).collect()
    };

    let mut sums = [0u32; 3];
    for (i, j) in pairs {
        for (s, h) in sums.iter_mut().zip(hit(i, j)) {
            *s += u32::from(h);
        }
    }
    let denom = k.max(n) as f64;
    SegmentationTerms {
        iou: f64::from(sums[0]) / denom,
        l1: f64::from(sums[1]) / denom,
        point: f64::from(sums[2]) / denom,
    }
}

/// DAPO overlong shaping (METHOD §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlongConfig {
    /// Apply the shaping at all (DAPO: on).
    pub enabled: bool,
    /// L: the generation limit in tokens.
    pub max_response_tokens: usize,
    /// Soft buffer in tokens before L; `None` = L/4.
    pub overlong_buffer: Option<usize>,
    /// Penalty factor (paper: 0.1); the penalty is floored at −factor.
    pub overlong_penalty: f64,
}

impl Default for OverlongConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_response_tokens: 1024,
            overlong_buffer: None,
            overlong_penalty: 0.1,
        }
    }
}

impl OverlongConfig {
    /// The buffer in tokens (L/4 by default).
    pub fn buffer(&self) -> usize {
        self.overlong_buffer.unwrap_or(self.max_response_tokens / 4)
    }

    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_response_tokens == 0 {
            return Err(Error::InvalidConfig {
                key: "max_response_tokens",
                reason: "must be at least 1".into(),
            });
        }
        if self.enabled && (self.buffer() == 0 || self.buffer() > self.max_response_tokens) {
            return Err(Error::InvalidConfig {
                key: "overlong_buffer",
                reason: format!(
                    "must be in 1..={} (max_response_tokens), found {}",
                    self.max_response_tokens,
                    self.buffer()
                ),
            });
        }
        if !(self.overlong_penalty.is_finite() && self.overlong_penalty >= 0.0) {
            return Err(Error::InvalidConfig {
                key: "overlong_penalty",
                reason: "must be a finite number >= 0".into(),
            });
        }
        Ok(())
    }

    /// `penalty · min(0, ((L − buffer) − ℓ) / buffer)`, floored at −penalty; 0 when disabled.
    pub fn shaping(&self, response_tokens: usize) -> f64 {
        let buffer = self.buffer();
        if !self.enabled || buffer == 0 {
            return 0.0;
        }
        let expected = self.max_response_tokens.saturating_sub(buffer) as f64;
        let raw = ((expected - response_tokens as f64) / buffer as f64).min(0.0);
        (self.overlong_penalty * raw).max(-self.overlong_penalty)
    }
}
