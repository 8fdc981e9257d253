//! Scoring one response text against one sample: the segmenter's mask and its IoU with the GT
//! mask (METHOD §6), the reward terms (METHOD §3) and the box matches behind AP@0.5.

use image::RgbImage;
use platter_data::{
    ImageSize, Mask, ObjectPrompt, PolicyBox, PolicyPoint, PolicySpace, Segmenter, merge_masks,
};
use platter_rl::ParsedResponse;
use platter_rl::eval::sample_iou;
use platter_rl::reward::{RewardBreakdown, RewardConfig, box_iou_inclusive, score_parsed};
use serde::{Deserialize, Serialize};

use super::samples::EvalSample;
use crate::{Error, Result};

/// Box IoU at or above which a predicted box matches a GT box for AP@0.5.
pub const BOX_AP_IOU: f64 = 0.5;

/// The merged mask of a response and how it was prompted.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedMask {
    /// OR of the object masks, original-image size; empty when no object was prompted.
    pub mask: Mask,
    /// Objects sent to the segmenter (valid box and point).
    pub prompts: usize,
    /// Prompts the segmenter rejected (returned no mask for).
    pub rejected: usize,
}

/// METHOD §1: one prompt (box + point, label 1, mapped to original pixels) per valid answer
/// object, segmented in one call, masks OR-merged. No valid object → empty mask, and the
/// segmenter is not called.
pub fn predict_mask(
    parsed: &ParsedResponse,
    image: &RgbImage,
    space: &PolicySpace,
    segmenter: &dyn Segmenter,
) -> Result<PredictedMask> {
    let size = ImageSize {
        width: image.width(),
        height: image.height(),
    };
    let prompts: Vec<ObjectPrompt> = parsed
        .objects()
        .iter()
        .filter(|o| o.is_valid())
        .filter_map(|o| match (o.bbox_2d, o.point_2d) {
            (Some(b), Some(p)) => Some(ObjectPrompt::from_policy(
                space,
                size,
                PolicyBox(b),
                PolicyPoint(p),
            )),
            _ => None,
        })
        .collect();
    let seg_err = |reason: String| Error::Data {
        context: format!("segmenter `{}`", segmenter.name()),
        reason,
    };
    let masks = if prompts.is_empty() {
        Vec::new()
    } else {
        segmenter
            .segment(image, &prompts)
            .map_err(|e| seg_err(e.to_string()))?
    };
    if masks.len() != prompts.len() {
        return Err(seg_err(format!(
            "returned {} masks for {} prompts",
            masks.len(),
            prompts.len()
        )));
    }
    let rejected = masks.iter().filter(|m| m.is_none()).count();
    let mask = merge_masks(size.width, size.height, masks.iter().flatten())
        .map_err(|e| seg_err(e.to_string()))?;
    Ok(PredictedMask {
        mask,
        prompts: prompts.len(),
        rejected,
    })
}

/// Box counts of one sample for AP@0.5.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxCounts {
    /// Predicted boxes: answer objects whose `bbox_2d` is 4 finite numbers.
    pub predicted: usize,
    /// GT boxes (evaluation objects).
    pub ground_truth: usize,
    /// Pairs of a maximum one-to-one matching with box IoU ≥ [`BOX_AP_IOU`].
    pub matched: usize,
}

/// Size of a maximum one-to-one matching between `predicted` and `ground_truth` boxes where a
/// pair may match when its IoU (inclusive +1-pixel convention, as the reward's) is at least
/// `threshold`. Kuhn's augmenting paths; answers have at most a few hundred objects.
pub fn match_boxes(predicted: &[[f64; 4]], ground_truth: &[[f64; 4]], threshold: f64) -> usize {
    let adjacent: Vec<Vec<usize>> = predicted
        .iter()
        .map(|p| {
            ground_truth
                .iter()
                .enumerate()
                .filter(|(_, g)| box_iou_inclusive(p, g) >= threshold)
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    // owner[j] = the prediction GT box j is matched to.
    let mut owner: Vec<Option<usize>> = vec![None; ground_truth.len()];
    fn augment(
        i: usize,
        adjacent: &[Vec<usize>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for &j in &adjacent[i] {
            if seen[j] {
                continue;
            }
            seen[j] = true;
            if owner[j].is_none_or(|k| augment(k, adjacent, seen, owner)) {
                owner[j] = Some(i);
                return true;
            }
        }
        false
    }
    let mut matched = 0;
    for i in 0..predicted.len() {
        let mut seen = vec![false; ground_truth.len()];
        if augment(i, &adjacent, &mut seen, &mut owner) {
            matched += 1;
        }
    }
    matched
}

/// Everything measured about one response to one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseScore {
    /// The first `<answer>` parsed as a JSON list.
    pub parsed: bool,
    /// Answer objects read (after the `max_objects` cap).
    pub num_objects: usize,
    /// Objects sent to the segmenter.
    pub num_prompts: usize,
    /// Prompts the segmenter rejected.
    pub rejected_prompts: usize,
    /// |pred ∧ gt| on the original-resolution masks.
    pub intersection: u64,
    /// |pred ∨ gt|.
    pub union: u64,
    /// I / U, with U = 0 counting as 1.0 (METHOD §6).
    pub iou: f64,
    /// Pixels of the predicted mask.
    pub pred_pixels: u64,
    /// Pixels of the GT mask.
    pub gt_pixels: u64,
    /// Box counts for AP@0.5.
    pub boxes: BoxCounts,
    /// The METHOD §3 reward terms against the training GT objects.
    pub reward: RewardBreakdown,
}

/// Scores `text` as the policy's answer to `sample`: parse, reward terms, segmenter mask, mask
/// IoU with the evaluation GT, box matches. Also returns the predicted mask. The optional mask
/// reward (`mask_reward_weight`) uses the IoU with the evaluation GT mask.
pub fn score_response_text(
    text: &str,
    sample: &EvalSample,
    segmenter: &dyn Segmenter,
    reward: &RewardConfig,
) -> Result<(ResponseScore, Mask)> {
    let in_sample = |e: Error| Error::Data {
        context: format!("sample {}", sample.id),
        reason: e.to_string(),
    };
    let space = PolicySpace::new(sample.image_size).map_err(|e| Error::Data {
        context: format!("sample {}", sample.id),
        reason: e.to_string(),
    })?;
    let parsed = ParsedResponse::parse(text, reward.max_objects);
    let predicted = predict_mask(&parsed, &sample.image, &space, segmenter).map_err(in_sample)?;
    let pixel_err = |e: platter_data::Error| Error::Data {
        context: format!("sample {}: predicted mask against the GT mask", sample.id),
        reason: e.to_string(),
    };
    let intersection = predicted
        .mask
        .intersection_count(&sample.gt_mask)
        .map_err(pixel_err)?;
    let union = predicted
        .mask
        .union_count(&sample.gt_mask)
        .map_err(pixel_err)?;
    let iou = sample_iou(intersection, union);
    let breakdown = score_parsed(&parsed, text, &sample.ground_truth, reward)
        .with_mask_iou(iou, reward.mask_reward_weight);
    let pred_boxes: Vec<[f64; 4]> = parsed
        .objects()
        .iter()
        .filter_map(|o| o.bbox_2d)
        .filter(|b| b.iter().all(|v| v.is_finite()))
        .collect();
    let gt_boxes: Vec<[f64; 4]> = sample.eval_objects.iter().map(|o| o.bbox_2d).collect();
    let score = ResponseScore {
        parsed: parsed.answer_parsed(),
        num_objects: parsed.objects().len(),
        num_prompts: predicted.prompts,
        rejected_prompts: predicted.rejected,
        intersection,
        union,
        iou,
        pred_pixels: predicted.mask.count(),
        gt_pixels: sample.gt_mask.count(),
        boxes: BoxCounts {
            predicted: pred_boxes.len(),
            ground_truth: gt_boxes.len(),
            matched: match_boxes(&pred_boxes, &gt_boxes, BOX_AP_IOU),
        },
        reward: breakdown,
    };
    Ok((score, predicted.mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_matching_beats_greedy_order() {
        // GT 0 = 10x10, GT 1 = 10x15 below it. Prediction 0 (10x15 from the top) has IoU
        // 100/150 with GT 0 and 100/200 = 0.5 with GT 1; prediction 1 (10x9) has 90/100 with
        // GT 0 and 40/200 with GT 1. Greedy by best IoU in answer order would give GT 0 to
        // prediction 0 and leave prediction 1 unmatched; the maximum matching pairs 0-1, 1-0.
        let gt = [[0.0, 0.0, 9.0, 9.0], [0.0, 5.0, 9.0, 19.0]];
        let pred = [[0.0, 0.0, 9.0, 14.0], [0.0, 0.0, 9.0, 8.0]];
        assert!((box_iou_inclusive(&pred[0], &gt[0]) - 100.0 / 150.0).abs() < 1e-12);
        assert_eq!(box_iou_inclusive(&pred[0], &gt[1]), 0.5);
        assert_eq!(box_iou_inclusive(&pred[1], &gt[0]), 0.9);
        assert_eq!(box_iou_inclusive(&pred[1], &gt[1]), 0.2);
        assert_eq!(match_boxes(&pred, &gt, 0.5), 2);
        // One GT box cannot be matched twice.
        assert_eq!(match_boxes(&[gt[0], gt[0], gt[0]], &gt[..1], 0.5), 1);
        // Just below the threshold: no match.
        assert_eq!(match_boxes(&pred[1..], &gt[1..], 0.5), 0);
        assert_eq!(match_boxes(&[], &gt, 0.5), 0);
        assert_eq!(match_boxes(&pred, &[], 0.5), 0);
    }
}
