//! Per-sample records, the split-level report computed from them, and the Table-1-style
//! Markdown rendering.

use platter_rl::eval::{EMPTY_UNION_CONVENTION, SegmentationEval};
use serde::{Deserialize, Serialize};

use super::EvalOptions;
use super::score::ResponseScore;

/// One evaluated sample (one line of the per-sample JSONL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Manifest sample id.
    pub id: String,
    /// The question.
    pub question: String,
    /// The decoded greedy response (stop token removed).
    pub response: String,
    /// The response ended on a stop token rather than the length limit.
    pub stopped: bool,
    /// Generated tokens, the stop token included.
    pub response_tokens: usize,
    /// Parse, mask, box and reward measurements.
    #[serde(flatten)]
    pub score: ResponseScore,
    /// This sample's share of its batch's generation time (batch time / batch size).
    pub generate_seconds: f64,
    /// Segmentation and scoring time of this sample.
    pub score_seconds: f64,
}

/// Means of the METHOD §3 reward terms over a split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardMeans {
    /// `R_tf`.
    pub think_format: f64,
    /// `R_af`.
    pub answer_format: f64,
    /// `R_nr`.
    pub non_repeat: f64,
    /// Box-IoU hits part of `R_seg`.
    pub seg_iou: f64,
    /// Box-L1 hits part of `R_seg`.
    pub seg_l1: f64,
    /// Point hits part of `R_seg`.
    pub seg_point: f64,
    /// `R_seg`.
    pub seg: f64,
    /// Sum of the terms (mask reward included when weighted).
    pub total: f64,
}

/// Metrics of one policy on one split (`docs/eval.md` defines each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// What was evaluated (the checkpoint directory, or a name the caller set).
    pub policy: String,
    /// Segmenter that turned answers into masks (`box` or `sam2`).
    pub segmenter: String,
    /// Samples evaluated.
    pub samples: usize,
    /// Mean of per-sample mask IoU.
    pub giou: f64,
    /// ΣI / ΣU over the split.
    pub ciou: f64,
    /// How a sample with both masks empty counts.
    pub empty_union_convention: String,
    /// Fraction of responses whose first `<answer>` parses as a JSON list.
    pub parse_rate: f64,
    /// Fraction that ended on the stop token.
    pub stop_rate: f64,
    /// Mean answer objects per response.
    pub mean_objects: f64,
    /// Box AP at IoU 0.5 with every prediction at the same score: precision × recall.
    /// `None` when the split has no GT boxes.
    pub box_ap50: Option<f64>,
    /// Matched / predicted boxes (`None` without predictions).
    pub box_precision50: Option<f64>,
    /// Matched / GT boxes (`None` without GT boxes).
    pub box_recall50: Option<f64>,
    /// Mean generated tokens per response (stop token included).
    pub mean_response_tokens: f64,
    /// Mean seconds per sample: generation share plus segmentation and scoring.
    pub latency_seconds: f64,
    /// Wall time of the whole evaluation (prompt preparation included).
    pub wall_seconds: f64,
    /// Mean reward terms.
    pub rewards: RewardMeans,
    /// The options it ran with.
    pub options: EvalOptions,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl EvalReport {
    /// The split-level metrics of `records` (every figure is a function of the records, so a
    /// report can be recomputed from the per-sample JSONL).
    pub fn from_records(
        policy: &str,
        segmenter: &str,
        records: &[SampleRecord],
        options: &EvalOptions,
        wall_seconds: f64,
    ) -> EvalReport {
        let n = records.len();
        let mean = |f: &dyn Fn(&SampleRecord) -> f64| {
            if n == 0 {
                0.0
            } else {
                records.iter().map(f).sum::<f64>() / n as f64
            }
        };
        let mut seg = SegmentationEval::default();
        let (mut predicted, mut gt, mut matched) = (0, 0, 0);
        for r in records {
            seg.add(r.score.intersection, r.score.union);
            predicted += r.score.boxes.predicted;
            gt += r.score.boxes.ground_truth;
            matched += r.score.boxes.matched;
        }
        let precision = ratio(matched, predicted);
        let recall = ratio(matched, gt);
        // With one score for every prediction the precision-recall curve is the single point
        // (recall, precision); the area under its interpolated step is their product. With GT
        // boxes but no predictions, recall is 0 and so is AP.
        let box_ap50 = recall.map(|r| r * precision.unwrap_or(0.0));
        let b = |f: &dyn Fn(&platter_rl::RewardBreakdown) -> f64| mean(&|r| f(&r.score.reward));
        EvalReport {
            policy: policy.to_owned(),
            segmenter: segmenter.to_owned(),
            samples: n,
            giou: seg.giou().unwrap_or(0.0),
            ciou: seg.ciou().unwrap_or(0.0),
            empty_union_convention: EMPTY_UNION_CONVENTION.to_owned(),
            parse_rate: mean(&|r| f64::from(u8::from(r.score.parsed))),
            stop_rate: mean(&|r| f64::from(u8::from(r.stopped))),
            mean_objects: mean(&|r| r.score.num_objects as f64),
            box_ap50,
            box_precision50: precision,
            box_recall50: recall,
            mean_response_tokens: mean(&|r| r.response_tokens as f64),
            latency_seconds: mean(&|r| r.generate_seconds + r.score_seconds),
            wall_seconds,
            rewards: RewardMeans {
                think_format: b(&|r| r.think_format),
                answer_format: b(&|r| r.answer_format),
                non_repeat: b(&|r| r.non_repeat),
                seg_iou: b(&|r| r.seg_iou),
                seg_l1: b(&|r| r.seg_l1),
                seg_point: b(&|r| r.seg_point),
                seg: b(&|r| r.seg),
                total: b(&|r| r.total),
            },
            options: options.clone(),
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"))
}

/// The Markdown tables of a report for several policies on the same split: Table 1's gIoU and
/// cIoU with parse rate, box AP@0.5, mean tokens and latency, then the mean reward terms.
pub fn markdown_tables(reports: &[EvalReport]) -> String {
    let mut s = String::from(
        "| Policy | gIoU | cIoU | parse rate | box AP@0.5 | mean tokens | s / sample |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {:.1} | {:.3} |\n",
            r.policy.replace('|', "\\|"),
            r.giou,
            r.ciou,
            r.parse_rate,
            opt(r.box_ap50),
            r.mean_response_tokens,
            r.latency_seconds
        ));
    }
    s.push_str(
        "\n| Policy | think | answer | non-repeat | seg (iou + l1 + point) | total | objects | stop rate |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let m = &r.rewards;
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} ({:.3} + {:.3} + {:.3}) | {:.3} | {:.2} | {:.3} |\n",
            r.policy.replace('|', "\\|"),
            m.think_format,
            m.answer_format,
            m.non_repeat,
            m.seg,
            m.seg_iou,
            m.seg_l1,
            m.seg_point,
            m.total,
            r.mean_objects,
            r.stop_rate
        ));
    }
    s
}
