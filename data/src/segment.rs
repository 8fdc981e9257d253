//! The segmenter interface other crates implement (SAM2), and the box fallback used without SAM2
//! weights.

use crate::coords::{ImageSize, OriginalBox, OriginalPoint, PolicyBox, PolicyPoint, PolicySpace};
use crate::error::{Error, Result};
use crate::mask::Mask;

/// One object prompt in original-image pixel coordinates (METHOD §1: box + point, label 1).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectPrompt {
    /// `[x1, y1, x2, y2]` in original pixels, if the object has a box.
    pub bbox: Option<[f32; 4]>,
    /// Prompt points in original pixels.
    pub points: Vec<PromptPoint>,
}

/// One prompt point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptPoint {
    /// `[x, y]` in original pixels.
    pub xy: [f32; 2],
    /// Foreground (label 1) or background (label 0).
    pub positive: bool,
}

impl ObjectPrompt {
    /// The METHOD §1 prompt for one predicted object: its box and its point (label 1), mapped from
    /// the policy space to the original image.
    pub fn from_policy(
        space: &PolicySpace,
        size: ImageSize,
        bbox: PolicyBox,
        point: PolicyPoint,
    ) -> ObjectPrompt {
        let OriginalBox(b) = space.box_to_original(bbox, size);
        let OriginalPoint(p) = space.point_to_original(point, size);
        ObjectPrompt {
            bbox: Some([b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32]),
            points: vec![PromptPoint {
                xy: [p[0] as f32, p[1] as f32],
                positive: true,
            }],
        }
    }

    /// Whether every coordinate is finite.
    pub fn is_finite(&self) -> bool {
        self.bbox.is_none_or(|b| b.iter().all(|v| v.is_finite()))
            && self
                .points
                .iter()
                .all(|p| p.xy.iter().all(|v| v.is_finite()))
    }
}

/// Error type of segmenter implementations (each crate keeps its own error type).
pub type SegmentError = Box<dyn std::error::Error + Send + Sync>;

/// A promptable segmenter (SAM2, or [`BoxSegmenter`]).
pub trait Segmenter: Send + Sync {
    /// Short name for logs and metrics ("sam2", "box").
    fn name(&self) -> &str;
    /// Encode `image` once and predict one mask per prompt (batched); `None` for a prompt that
    /// was rejected (e.g. NaN coordinates) while the others still get masks.
    fn segment(
        &self,
        image: &image::RgbImage,
        prompts: &[ObjectPrompt],
    ) -> Result<Vec<Option<Mask>>, SegmentError>;
}

/// The fallback segmenter: each prompt's mask is its box, filled and clipped to the image.
///
/// Box corners are rounded half up to pixel indices and filled inclusively (the same convention
/// as ground-truth boxes, so a GT box maps to exactly its own extent). Inverted boxes are
/// normalised. A prompt with no box or with a non-finite coordinate gets `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoxSegmenter;

impl BoxSegmenter {
    fn segment_one(width: u32, height: u32, prompt: &ObjectPrompt) -> Option<Mask> {
        if !prompt.is_finite() {
            return None;
        }
        let [x1, y1, x2, y2] = prompt.bbox?.map(|v| (f64::from(v) + 0.5).floor());
        let mut mask = Mask::new(width, height);
        let (lo_x, hi_x) = (x1.min(x2), x1.max(x2));
        let (lo_y, hi_y) = (y1.min(y2), y1.max(y2));
        // Entirely left of or above the image: nothing to fill.
        if hi_x < 0.0 || hi_y < 0.0 {
            return Some(mask);
        }
        // Float-to-int casts saturate, so huge values clip to the image.
        let clamp = |v: f64| v.max(0.0) as u32;
        mask.fill_rect(clamp(lo_x), clamp(lo_y), clamp(hi_x), clamp(hi_y));
        Some(mask)
    }
}

impl Segmenter for BoxSegmenter {
    fn name(&self) -> &str {
        "box"
    }

    fn segment(
        &self,
        image: &image::RgbImage,
        prompts: &[ObjectPrompt],
    ) -> Result<Vec<Option<Mask>>, SegmentError> {
        Ok(prompts
            .iter()
            .map(|p| Self::segment_one(image.width(), image.height(), p))
            .collect())
    }
}

/// OR-merge object masks into one `width` × `height` mask (METHOD §1). No masks → empty mask; a
/// mask of another size is an error.
pub fn merge_masks<'a>(
    width: u32,
    height: u32,
    masks: impl IntoIterator<Item = &'a Mask>,
) -> Result<Mask> {
    let mut merged = Mask::new(width, height);
    for (i, m) in masks.into_iter().enumerate() {
        merged.or_assign(m).map_err(|e| match e {
            Error::SizeMismatch {
                expected_w,
                expected_h,
                found_w,
                found_h,
                ..
            } => Error::SizeMismatch {
                what: format!("merging object mask {i}"),
                expected_w,
                expected_h,
                found_w,
                found_h,
            },
            other => other,
        })?;
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(b: [f32; 4]) -> ObjectPrompt {
        ObjectPrompt {
            bbox: Some(b),
            points: vec![],
        }
    }

    #[test]
    fn box_segmenter_fills_clips_normalises_and_rejects() {
        let img = image::RgbImage::new(10, 8);
        let prompts = [
            prompt([2.0, 1.0, 4.0, 3.0]),
            prompt([4.0, 3.0, 2.0, 1.0]),
            prompt([-5.0, -5.0, 100.0, 1.4]),
            prompt([f32::NAN, 0.0, 1.0, 1.0]),
            prompt([-9.0, -9.0, -1.0, -1.0]),
            ObjectPrompt {
                bbox: None,
                points: vec![],
            },
        ];
        let out = BoxSegmenter.segment(&img, &prompts).unwrap();
        let a = out[0].as_ref().unwrap();
        // Inclusive 3 x 3 box.
        assert_eq!(a.count(), 9);
        assert_eq!(out[1].as_ref(), Some(a));
        // Clipped: x 0..=9, y 0..=1 -> 20 pixels.
        assert_eq!(out[2].as_ref().unwrap().count(), 20);
        assert_eq!(out[3], None);
        assert!(out[4].as_ref().unwrap().is_empty());
        assert_eq!(out[5], None);
    }

    #[test]
    fn merge_empty_and_mismatch() {
        let m = merge_masks(4, 3, []).unwrap();
        assert!(m.is_empty() && m.width() == 4 && m.height() == 3);
        let a = Mask::from_fn(4, 3, |x, _| x == 0);
        let b = Mask::from_fn(4, 3, |_, y| y == 0);
        assert_eq!(merge_masks(4, 3, [&a, &b]).unwrap().count(), 6);
        let err = merge_masks(4, 3, [&a, &Mask::new(3, 3)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("object mask 1"), "{err}");
    }

    #[test]
    fn prompt_from_policy_space() {
        let s = PolicySpace::default();
        let size = ImageSize {
            width: 420,
            height: 840,
        };
        let p = ObjectPrompt::from_policy(
            &s,
            size,
            PolicyBox([0.0, 0.0, 101.0, 10.0]),
            PolicyPoint([3.0, 5.0]),
        );
        assert_eq!(p.bbox, Some([0.0, 0.0, 51.0, 10.0]));
        assert_eq!(p.points[0].xy, [2.0, 5.0]);
    }
}
