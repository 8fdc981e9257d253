//! Ground-truth objects from masks (METHOD §2): a tight box and the centre of the largest
//! inscribed circle per object, scaled to the policy's input space; plus the optional
//! segmenter-consistency filter.

use image::{GrayImage, Luma, RgbImage};
use imageproc::distance_transform::euclidean_squared_distance_transform;
use imageproc::region_labelling::{Connectivity, connected_components};
use serde::{Deserialize, Serialize};

use crate::coords::{ImageSize, OriginalBox, OriginalPoint, PolicySpace};
use crate::error::{Error, Result};
use crate::mask::{Mask, PixelBox};
use crate::segment::{ObjectPrompt, PromptPoint, Segmenter};

/// One ground-truth object in the policy's input space, spelled exactly like an answer object:
/// `{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GtObject {
    /// Box `[x1, y1, x2, y2]` in policy pixels.
    pub bbox_2d: [f64; 4],
    /// Point `[x, y]` in policy pixels.
    pub point_2d: [f64; 2],
}

/// One object in original-image pixels: its own mask, tight box and inscribed-circle centre.
#[derive(Debug, Clone, PartialEq)]
pub struct GtRegion {
    /// The object's pixels.
    pub mask: Mask,
    /// Tight inclusive extent of `mask`.
    pub bbox: PixelBox,
    /// Centre `[x, y]` of the largest inscribed circle; always a pixel of `mask`.
    pub point: [u32; 2],
}

/// Centre of the largest circle inscribed in `mask`: the argmax of the Euclidean distance from
/// each on pixel to the nearest off pixel, where everything outside the image counts as off (a
/// mask touching the border is not treated as extending past it). Ties go to the first maximum
/// in row-major order (smallest y, then smallest x). `None` for an empty mask.
pub fn inscribed_circle_center(mask: &Mask) -> Option<[u32; 2]> {
    if mask.is_empty() {
        return None;
    }
    let (w, h) = (mask.width(), mask.height());
    // Foreground of the transform = pixels that are off, with a one-pixel off frame around the
    // image; the distance of an on pixel to the nearest of those is its inscribed radius.
    let mut off = GrayImage::from_pixel(w + 2, h + 2, Luma([255u8]));
    for (x, y) in mask.iter_on() {
        off.put_pixel(x + 1, y + 1, Luma([0]));
    }
    let dist = euclidean_squared_distance_transform(&off);
    let mut best: Option<([u32; 2], f64)> = None;
    for (x, y) in mask.iter_on() {
        let d = dist.get_pixel(x + 1, y + 1)[0];
        if best.is_none_or(|(_, b)| d > b) {
            best = Some(([x, y], d));
        }
    }
    best.map(|(p, _)| p)
}

impl GtRegion {
    /// The region of a (non-empty) object mask; `None` if the mask is empty.
    pub fn from_mask(mask: Mask) -> Option<GtRegion> {
        let bbox = mask.bbox()?;
        let point = inscribed_circle_center(&mask)?;
        Some(GtRegion { mask, bbox, point })
    }

    /// The object in the policy space: every coordinate `round(v·S/W)` (or `/H`), half up.
    pub fn to_gt_object(&self, space: &PolicySpace) -> GtObject {
        let size = ImageSize {
            width: self.mask.width(),
            height: self.mask.height(),
        };
        let b = self.bbox;
        let pb = space.box_from_original(
            OriginalBox([
                f64::from(b.x_min),
                f64::from(b.y_min),
                f64::from(b.x_max),
                f64::from(b.y_max),
            ]),
            size,
        );
        let pp = space.point_from_original(
            OriginalPoint([f64::from(self.point[0]), f64::from(self.point[1])]),
            size,
        );
        GtObject {
            bbox_2d: pb.0,
            point_2d: pp.0,
        }
    }

    /// The METHOD §2 consistency prompt: this object's box and point (label 1), original pixels.
    pub fn prompt(&self) -> ObjectPrompt {
        let b = self.bbox;
        ObjectPrompt {
            bbox: Some([
                b.x_min as f32,
                b.y_min as f32,
                b.x_max as f32,
                b.y_max as f32,
            ]),
            points: vec![PromptPoint {
                xy: [self.point[0] as f32, self.point[1] as f32],
                positive: true,
            }],
        }
    }
}

/// One region per mask (one per target class for FoodReasonSeg); empty masks are skipped.
pub fn regions_from_masks(masks: impl IntoIterator<Item = Mask>) -> Vec<GtRegion> {
    masks.into_iter().filter_map(GtRegion::from_mask).collect()
}

/// Split a binary mask into its 8-connected components, dropping components smaller than
/// `min_area` pixels, in order of first pixel (row-major).
pub fn connected_regions(mask: &Mask, min_area: u64) -> Vec<GtRegion> {
    if mask.is_empty() {
        return Vec::new();
    }
    let labels = connected_components(&mask.to_gray_image(), Connectivity::Eight, Luma([0u8]));
    let mut order: Vec<u32> = Vec::new();
    let mut comps: Vec<Mask> = Vec::new();
    for (x, y) in mask.iter_on() {
        let label = labels.get_pixel(x, y)[0];
        let idx = match order.iter().position(|&l| l == label) {
            Some(i) => i,
            None => {
                order.push(label);
                comps.push(Mask::new(mask.width(), mask.height()));
                order.len() - 1
            }
        };
        comps[idx].set(x, y, true);
    }
    regions_from_masks(comps.into_iter().filter(|m| m.count() >= min_area.max(1)))
}

/// What the consistency filter did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    /// Objects kept.
    pub kept: usize,
    /// Objects dropped: IoU below the threshold, or the segmenter rejected the prompt.
    pub dropped: usize,
}

/// The optional METHOD §2 filter: segment each object from its own box + point and drop it when
/// the IoU of that mask with the object's GT mask is below `min_iou` (default 0.6).
pub fn filter_consistent(
    segmenter: &dyn Segmenter,
    image: &RgbImage,
    regions: Vec<GtRegion>,
    min_iou: f64,
) -> Result<(Vec<GtRegion>, FilterStats)> {
    let prompts: Vec<ObjectPrompt> = regions.iter().map(GtRegion::prompt).collect();
    let masks = segmenter
        .segment(image, &prompts)
        .map_err(|e| Error::Dataset(format!("segmenter {} failed: {e}", segmenter.name())))?;
    if masks.len() != regions.len() {
        return Err(Error::Dataset(format!(
            "segmenter {} returned {} masks for {} prompts",
            segmenter.name(),
            masks.len(),
            regions.len()
        )));
    }
    let mut stats = FilterStats::default();
    let mut kept = Vec::new();
    for (region, pred) in regions.into_iter().zip(masks) {
        let iou = match pred {
            Some(m) => m.iou(&region.mask)?,
            None => 0.0,
        };
        if iou >= min_iou {
            stats.kept += 1;
            kept.push(region);
        } else {
            stats.dropped += 1;
        }
    }
    Ok((kept, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::BoxSegmenter;

    #[test]
    fn inscribed_center_of_rectangle_and_ties() {
        // 7x5 rectangle at x 2..=8, y 1..=5 in a 12x8 mask. On the middle row y = 3 the off rows
        // 0 and 6 are 3 away; column x is x - 1 from column 1 and 9 - x from column 9, so x in
        // 4..=6 all reach distance 3 (squared 9). Ties go to the first in row-major order: (4, 3).
        let m = Mask::from_fn(12, 8, |x, y| (2..=8).contains(&x) && (1..=5).contains(&y));
        assert_eq!(inscribed_circle_center(&m), Some([4, 3]));
        // Whole image on: the border counts as off, so the centre is the image centre (2, 2).
        let full = Mask::from_fn(5, 5, |_, _| true);
        assert_eq!(inscribed_circle_center(&full), Some([2, 2]));
        assert_eq!(inscribed_circle_center(&Mask::new(3, 3)), None);
    }

    #[test]
    fn point_lies_on_non_convex_mask() {
        // A ring: the centre of its bounding box is off the mask; the point must still be on it.
        let m = Mask::from_fn(41, 41, |x, y| {
            let d = (f64::from(x) - 20.0).hypot(f64::from(y) - 20.0);
            (12.0..18.0).contains(&d)
        });
        let p = inscribed_circle_center(&m).unwrap();
        assert!(m.get(p[0], p[1]));
        assert!(!m.get(20, 20));
    }

    #[test]
    fn gt_object_scaling_hand_derived() {
        // 420 x 210 image, object at x 10..=20, y 5..=15 (11 x 11 square, centre (15, 10)).
        let m = Mask::from_fn(420, 210, |x, y| {
            (10..=20).contains(&x) && (5..=15).contains(&y)
        });
        let r = GtRegion::from_mask(m).unwrap();
        assert_eq!(r.point, [15, 10]);
        let o = r.to_gt_object(&PolicySpace::default());
        // x: v · 840 / 420 = 2v; y: v · 840 / 210 = 4v.
        assert_eq!(o.bbox_2d, [20.0, 20.0, 40.0, 60.0]);
        assert_eq!(o.point_2d, [30.0, 40.0]);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(
            json,
            r#"{"bbox_2d":[20.0,20.0,40.0,60.0],"point_2d":[30.0,40.0]}"#
        );
    }

    #[test]
    fn components_and_filter() {
        // Two squares and a speck.
        let m = Mask::from_fn(30, 10, |x, y| {
            ((1..=5).contains(&x) && (1..=5).contains(&y))
                || ((10..=20).contains(&x) && (2..=8).contains(&y))
                || (x == 28 && y == 9)
        });
        let regions = connected_regions(&m, 2);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0].mask.count(), 25);
        assert_eq!(regions[1].mask.count(), 77);
        // The box segmenter reproduces a square exactly (IoU 1 >= 0.6, kept); a thin diagonal
        // fills 20 of its 20x20 box (IoU 20/400 = 0.05, dropped).
        let diag = Mask::from_fn(30, 30, |x, y| x == y && x < 20);
        let square = Mask::from_fn(30, 30, |x, y| x >= 25 && y >= 25);
        let regions = regions_from_masks([diag, square]);
        let img = RgbImage::new(30, 30);
        let (kept, stats) = filter_consistent(&BoxSegmenter, &img, regions, 0.6).unwrap();
        assert_eq!(
            stats,
            FilterStats {
                kept: 1,
                dropped: 1
            }
        );
        assert_eq!(kept[0].mask.count(), 25);
    }
}
