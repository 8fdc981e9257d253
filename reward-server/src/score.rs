//! Scoring one group (METHOD §1, §3, §4): parse every response, one segmenter call with every
//! valid object prompt of the group, all reward terms, mask IoU against the GT mask as a metric,
//! and overlong shaping added to the advantage reward only.

use std::time::Instant;

use platter_data::imageio::{ImageLimits, decode_image};
use platter_data::rle::{CocoRle, RleCounts};
use platter_data::{ImageSize, Mask, ObjectPrompt, PolicyBox, PolicyPoint, PolicySpace, Segmenter};
use platter_proto::v1;
use platter_rl::reward::{NonRepeatScope, score_parsed};
use platter_rl::{GroundTruthObject, OverlongConfig, ParsedResponse, RewardConfig};

use crate::{Error, Result};

/// Reward constants of a request, typed.
pub fn settings_to_configs(s: &v1::RewardSettings) -> Result<(RewardConfig, OverlongConfig)> {
    let reward = RewardConfig {
        max_objects: s.max_objects as usize,
        dup_threshold: s.dup_threshold as usize,
        non_repeat_scope: if s.non_repeat_whole_response {
            NonRepeatScope::WholeResponse
        } else {
            NonRepeatScope::Reasoning
        },
        iou_threshold: s.iou_threshold,
        l1_threshold: s.l1_threshold,
        point_threshold: s.point_threshold,
        mask_reward_weight: s.mask_reward_weight,
    };
    let overlong = OverlongConfig {
        enabled: s.overlong_enabled,
        max_response_tokens: s.max_response_tokens as usize,
        overlong_buffer: (s.overlong_buffer > 0).then_some(s.overlong_buffer as usize),
        overlong_penalty: s.overlong_penalty,
    };
    reward.validate().map_err(Error::Settings)?;
    overlong.validate().map_err(Error::Settings)?;
    Ok((reward, overlong))
}

/// The settings message for typed configs (the inverse of [`settings_to_configs`]).
pub fn configs_to_settings(reward: &RewardConfig, overlong: &OverlongConfig) -> v1::RewardSettings {
    v1::RewardSettings {
        max_objects: u32::try_from(reward.max_objects).unwrap_or(u32::MAX),
        dup_threshold: u32::try_from(reward.dup_threshold).unwrap_or(u32::MAX),
        non_repeat_whole_response: reward.non_repeat_scope == NonRepeatScope::WholeResponse,
        iou_threshold: reward.iou_threshold,
        l1_threshold: reward.l1_threshold,
        point_threshold: reward.point_threshold,
        mask_reward_weight: reward.mask_reward_weight,
        overlong_enabled: overlong.enabled,
        max_response_tokens: u32::try_from(overlong.max_response_tokens).unwrap_or(u32::MAX),
        overlong_buffer: overlong
            .overlong_buffer
            .map_or(0, |b| u32::try_from(b).unwrap_or(u32::MAX)),
        overlong_penalty: overlong.overlong_penalty,
    }
}

/// A mask as the wire's RLE message.
pub fn mask_to_rle(mask: &Mask) -> v1::RleMask {
    let rle = mask.to_coco_rle();
    let counts = match rle.counts {
        RleCounts::Compressed(s) => s,
        RleCounts::Uncompressed(c) => platter_data::rle::compress_counts(&c),
    };
    v1::RleMask {
        height: rle.size[0],
        width: rle.size[1],
        counts,
    }
}

fn rle_to_mask(rle: &v1::RleMask) -> Result<Mask> {
    Mask::from_coco_rle(&CocoRle {
        size: [rle.height, rle.width],
        counts: RleCounts::Compressed(rle.counts.clone()),
    })
    .map_err(|e| Error::Request(format!("ground_truth_mask: {e}")))
}

fn ground_truth(objects: &[v1::GroundTruthObject]) -> Result<Vec<GroundTruthObject>> {
    objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let bbox: [f64; 4] = o.bbox_2d.as_slice().try_into().map_err(|_| {
                Error::Request(format!(
                    "ground_truth[{i}].bbox_2d: expected 4 numbers, found {}",
                    o.bbox_2d.len()
                ))
            })?;
            let point: [f64; 2] = o.point_2d.as_slice().try_into().map_err(|_| {
                Error::Request(format!(
                    "ground_truth[{i}].point_2d: expected 2 numbers, found {}",
                    o.point_2d.len()
                ))
            })?;
            Ok(GroundTruthObject {
                bbox_2d: bbox,
                point_2d: point,
            })
        })
        .collect()
}

/// Scores one group with `segmenter`: one `segment` call for all valid prompts of all responses.
/// Timing fields other than `queue_seconds` are filled in.
pub fn score_group(req: &v1::ScoreRequest, segmenter: &dyn Segmenter) -> Result<v1::GroupScore> {
    let started = Instant::now();
    let settings = req
        .settings
        .as_ref()
        .ok_or_else(|| Error::Request("settings: missing".into()))?;
    let (reward_cfg, overlong) = settings_to_configs(settings)?;
    let space = PolicySpace::new(req.policy_image_size)
        .map_err(|e| Error::Request(format!("policy_image_size: {e}")))?;
    let gt = ground_truth(&req.ground_truth)?;
    let image = decode_image(&req.image, "request image", &ImageLimits::default())
        .map_err(|e| Error::Request(e.to_string()))?
        .to_rgb8();
    let size = ImageSize {
        width: image.width(),
        height: image.height(),
    };
    let gt_mask = req
        .ground_truth_mask
        .as_ref()
        .map(rle_to_mask)
        .transpose()?;
    let decode_seconds = started.elapsed().as_secs_f64();

    let rules_started = Instant::now();
    let mut breakdowns = Vec::with_capacity(req.responses.len());
    // Prompts of all responses, and the range each response owns (METHOD §1: predictions map
    // from the policy's input space back to original pixels).
    let mut prompts = Vec::new();
    let mut ranges = Vec::with_capacity(req.responses.len());
    for r in &req.responses {
        let parsed = ParsedResponse::parse(&r.text, reward_cfg.max_objects);
        breakdowns.push(score_parsed(&parsed, &r.text, &gt, &reward_cfg));
        let start = prompts.len();
        for o in parsed.objects().iter().filter(|o| o.is_valid()) {
            if let (Some(b), Some(p)) = (o.bbox_2d, o.point_2d) {
                prompts.push(ObjectPrompt::from_policy(
                    &space,
                    size,
                    PolicyBox(b),
                    PolicyPoint(p),
                ));
            }
        }
        ranges.push(start..prompts.len());
    }
    let rules_seconds = rules_started.elapsed().as_secs_f64();

    let seg_started = Instant::now();
    let masks = if prompts.is_empty() || gt_mask.is_none() && reward_cfg.mask_reward_weight == 0.0 {
        vec![None; prompts.len()]
    } else {
        segmenter
            .segment(&image, &prompts)
            .map_err(|e| Error::Segmenter(e.to_string()))?
    };
    if masks.len() != prompts.len() {
        return Err(Error::Segmenter(format!(
            "expected {} masks, found {}",
            prompts.len(),
            masks.len()
        )));
    }
    let segment_seconds = seg_started.elapsed().as_secs_f64();

    let mut out = Vec::with_capacity(breakdowns.len());
    for ((mut b, range), r) in breakdowns.into_iter().zip(ranges).zip(&req.responses) {
        let num_prompts = range.len();
        if let Some(gt_mask) = &gt_mask {
            let merged =
                platter_data::merge_masks(size.width, size.height, masks[range].iter().flatten())
                    .map_err(|e| Error::Segmenter(e.to_string()))?;
            let iou = merged
                .iou(gt_mask)
                .map_err(|e| Error::Request(format!("ground_truth_mask: {e}")))?;
            b = b.with_mask_iou(iou, reward_cfg.mask_reward_weight);
        }
        let penalty = overlong.shaping(r.num_tokens as usize);
        out.push(v1::RewardTerms {
            think_format: b.think_format,
            answer_format: b.answer_format,
            non_repeat: b.non_repeat,
            seg_iou: b.seg_iou,
            seg_l1: b.seg_l1,
            seg_point: b.seg_point,
            seg: b.seg,
            mask_iou: b.mask_iou,
            num_objects: u32::try_from(b.num_objects).unwrap_or(u32::MAX),
            total: b.total,
            overlong_penalty: penalty,
            shaped_reward: b.total + penalty,
            num_prompts: u32::try_from(num_prompts).unwrap_or(u32::MAX),
        });
    }
    Ok(v1::GroupScore {
        request_id: req.request_id.clone(),
        responses: out,
        timing: Some(v1::ScoreTiming {
            decode_seconds,
            rules_seconds,
            segment_seconds,
            queue_seconds: 0.0,
            total_seconds: started.elapsed().as_secs_f64(),
        }),
        segmenter: segmenter.name().to_owned(),
        error: String::new(),
    })
}
