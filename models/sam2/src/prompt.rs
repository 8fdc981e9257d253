//! Prompts in original-image pixels, and how bad ones are handled.
//!
//! A policy's boxes and points are often out of range; that is normal input, not an error. Per
//! prompt: a coordinate that is NaN or infinite rejects that prompt only; a prompt with neither
//! box nor points is rejected; an inverted box is normalised (corners sorted); boxes and points
//! outside the image are clipped to the pixel range `[0, W-1] × [0, H-1]`. Every case is
//! counted in [`PromptCounters`].

use std::sync::atomic::{AtomicU64, Ordering};

/// A point prompt: `positive` = foreground (label 1), otherwise background (label 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointPrompt {
    pub x: f32,
    pub y: f32,
    pub positive: bool,
}

/// One object's prompt: an optional box `[x1, y1, x2, y2]` and any number of points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt {
    pub bbox: Option<[f32; 4]>,
    pub points: Vec<PointPrompt>,
}

impl Prompt {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_box(mut self, bbox: [f32; 4]) -> Self {
        self.bbox = Some(bbox);
        self
    }

    pub fn with_point(mut self, x: f32, y: f32, positive: bool) -> Self {
        self.points.push(PointPrompt { x, y, positive });
        self
    }
}

/// Why a prompt got no mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPrompt {
    #[error("prompt has a NaN or infinite coordinate")]
    NonFinite,
    #[error("prompt has neither a box nor points")]
    Empty,
}

/// Running counts of prompt repairs and rejections (export these as metrics).
#[derive(Debug, Default)]
pub struct PromptCounters {
    prompts: AtomicU64,
    boxes_clipped: AtomicU64,
    boxes_inverted: AtomicU64,
    points_clipped: AtomicU64,
    rejected_non_finite: AtomicU64,
    rejected_empty: AtomicU64,
}

/// A copy of [`PromptCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCounterSnapshot {
    /// Prompts seen.
    pub prompts: u64,
    /// Boxes with a corner outside the image, clipped.
    pub boxes_clipped: u64,
    /// Boxes with x1 > x2 or y1 > y2, corners sorted.
    pub boxes_inverted: u64,
    /// Points outside the image, clipped.
    pub points_clipped: u64,
    /// Prompts rejected for a NaN or infinite coordinate.
    pub rejected_non_finite: u64,
    /// Prompts rejected for having neither box nor points.
    pub rejected_empty: u64,
}

impl PromptCounters {
    pub fn snapshot(&self) -> PromptCounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PromptCounterSnapshot {
            prompts: g(&self.prompts),
            boxes_clipped: g(&self.boxes_clipped),
            boxes_inverted: g(&self.boxes_inverted),
            points_clipped: g(&self.points_clipped),
            rejected_non_finite: g(&self.rejected_non_finite),
            rejected_empty: g(&self.rejected_empty),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Repairs or rejects a prompt for a `w × h` image, counting what it did.
pub fn sanitize(
    p: &Prompt,
    w: usize,
    h: usize,
    counters: &PromptCounters,
) -> Result<Prompt, BadPrompt> {
    bump(&counters.prompts);
    let finite = p.bbox.iter().flatten().all(|v| v.is_finite())
        && p.points.iter().all(|q| q.x.is_finite() && q.y.is_finite());
    if !finite {
        bump(&counters.rejected_non_finite);
        return Err(BadPrompt::NonFinite);
    }
    if p.bbox.is_none() && p.points.is_empty() {
        bump(&counters.rejected_empty);
        return Err(BadPrompt::Empty);
    }
    let (xmax, ymax) = (w.saturating_sub(1) as f32, h.saturating_sub(1) as f32);
    let mut out = Prompt {
        bbox: None,
        points: Vec::with_capacity(p.points.len()),
    };
    if let Some([x1, y1, x2, y2]) = p.bbox {
        if x1 > x2 || y1 > y2 {
            bump(&counters.boxes_inverted);
        }
        let (x1, x2) = (x1.min(x2), x1.max(x2));
        let (y1, y2) = (y1.min(y2), y1.max(y2));
        let c = [
            x1.clamp(0.0, xmax),
            y1.clamp(0.0, ymax),
            x2.clamp(0.0, xmax),
            y2.clamp(0.0, ymax),
        ];
        if c != [x1, y1, x2, y2] {
            bump(&counters.boxes_clipped);
        }
        out.bbox = Some(c);
    }
    for q in &p.points {
        let (x, y) = (q.x.clamp(0.0, xmax), q.y.clamp(0.0, ymax));
        if (x, y) != (q.x, q.y) {
            bump(&counters.points_clipped);
        }
        out.points.push(PointPrompt {
            x,
            y,
            positive: q.positive,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_and_rejections_are_counted() {
        let c = PromptCounters::default();
        let ok = sanitize(
            &Prompt::new().with_box([10.0, 20.0, 30.0, 40.0]),
            100,
            50,
            &c,
        )
        .unwrap();
        assert_eq!(ok.bbox, Some([10.0, 20.0, 30.0, 40.0]));
        let inv = sanitize(
            &Prompt::new().with_box([30.0, 40.0, 10.0, 20.0]),
            100,
            50,
            &c,
        )
        .unwrap();
        assert_eq!(inv.bbox, Some([10.0, 20.0, 30.0, 40.0]));
        let clip = sanitize(
            &Prompt::new()
                .with_box([-5.0, 10.0, 150.0, 60.0])
                .with_point(120.0, -3.0, true),
            100,
            50,
            &c,
        )
        .unwrap();
        assert_eq!(clip.bbox, Some([0.0, 10.0, 99.0, 49.0]));
        assert_eq!(
            clip.points[0],
            PointPrompt {
                x: 99.0,
                y: 0.0,
                positive: true
            }
        );
        assert_eq!(
            sanitize(&Prompt::new().with_point(f32::NAN, 1.0, true), 100, 50, &c),
            Err(BadPrompt::NonFinite)
        );
        assert_eq!(
            sanitize(
                &Prompt::new().with_box([0.0, f32::INFINITY, 1.0, 1.0]),
                100,
                50,
                &c
            ),
            Err(BadPrompt::NonFinite)
        );
        assert_eq!(sanitize(&Prompt::new(), 100, 50, &c), Err(BadPrompt::Empty));
        let s = c.snapshot();
        assert_eq!(
            s,
            PromptCounterSnapshot {
                prompts: 6,
                boxes_clipped: 1,
                boxes_inverted: 1,
                points_clipped: 1,
                rejected_non_finite: 2,
                rejected_empty: 1
            }
        );
    }
}
