//! Segmentation evaluation accumulators (METHOD §6).

use serde::{Deserialize, Serialize};

/// The convention for a sample whose predicted and GT masks are both empty, named in reports.
pub const EMPTY_UNION_CONVENTION: &str = "a sample whose predicted and ground-truth masks are both empty (U = 0) counts as IoU 1.0 (LISA / FoodLMM convention)";

/// IoU of one sample from its intersection and union pixel counts; U = 0 counts as 1.0.
pub fn sample_iou(intersection: u64, union: u64) -> f64 {
    if union == 0 {
        1.0
    } else {
        intersection as f64 / union as f64
    }
}

/// Accumulates gIoU (mean of per-sample IoU) and cIoU (ΣI / ΣU) over a split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentationEval {
    samples: u64,
    sum_iou: f64,
    sum_intersection: u128,
    sum_union: u128,
}

impl SegmentationEval {
    /// Adds one sample; returns its IoU.
    pub fn add(&mut self, intersection: u64, union: u64) -> f64 {
        let iou = sample_iou(intersection, union);
        self.samples += 1;
        self.sum_iou += iou;
        self.sum_intersection += u128::from(intersection);
        self.sum_union += u128::from(union);
        iou
    }

    /// Merges another accumulator (e.g. from another evaluation worker).
    pub fn merge(&mut self, other: &SegmentationEval) {
        self.samples += other.samples;
        self.sum_iou += other.sum_iou;
        self.sum_intersection += other.sum_intersection;
        self.sum_union += other.sum_union;
    }

    /// Number of samples added.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// gIoU = mean of per-sample IoU; `None` before any sample.
    pub fn giou(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.sum_iou / self.samples as f64)
    }

    /// cIoU = ΣI / ΣU; with ΣU = 0 (every sample both-empty) the same convention gives 1.0.
    pub fn ciou(&self) -> Option<f64> {
        (self.samples > 0).then(|| {
            if self.sum_union == 0 {
                1.0
            } else {
                self.sum_intersection as f64 / self.sum_union as f64
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giou_and_ciou_hand_derived() {
        let mut e = SegmentationEval::default();
        // Sample 1: I = 50, U = 100 → 0.5. Sample 2: I = 0, U = 300 (unparseable answer,
        // empty prediction, |gt| = 300) → 0. Sample 3: both empty → 1.0.
        assert_eq!(e.add(50, 100), 0.5);
        assert_eq!(e.add(0, 300), 0.0);
        assert_eq!(e.add(0, 0), 1.0);
        // gIoU = (0.5 + 0 + 1) / 3 = 0.5; cIoU = 50 / 400 = 0.125.
        assert_eq!(e.giou(), Some(0.5));
        assert_eq!(e.ciou(), Some(0.125));
        let mut f = SegmentationEval::default();
        f.add(10, 10);
        e.merge(&f);
        assert_eq!(e.samples(), 4);
        assert_eq!(e.ciou(), Some(60.0 / 410.0));
        assert_eq!(SegmentationEval::default().giou(), None);
    }
}
