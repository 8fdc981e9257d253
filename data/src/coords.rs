//! Coordinate spaces of METHOD §1.
//!
//! The policy sees the image resized (aspect not kept) to `image_size` × `image_size` and answers in
//! that space ([`PolicyBox`], [`PolicyPoint`]); SAM2 and evaluation work on the original image
//! ([`OriginalBox`], [`OriginalPoint`]). Newtypes keep the two apart.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Size of an original image in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    /// Width W.
    pub width: u32,
    /// Height H.
    pub height: u32,
}

/// A box `[x1, y1, x2, y2]` in the policy's input space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyBox(pub [f64; 4]);

/// A point `[x, y]` in the policy's input space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolicyPoint(pub [f64; 2]);

/// A box `[x1, y1, x2, y2]` in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OriginalBox(pub [f64; 4]);

/// A point `[x, y]` in original-image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OriginalPoint(pub [f64; 2]);

/// Round half up (`floor(v + 0.5)`), the rounding METHOD §1 names. Non-finite values stay
/// non-finite so downstream code can reject them.
pub fn round_half_up(v: f64) -> f64 {
    (v + 0.5).floor()
}

/// The square policy input space, `image_size` × `image_size` pixels (default 840 = 30 × 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpace {
    image_size: u32,
}

impl Default for PolicySpace {
    fn default() -> Self {
        PolicySpace { image_size: 840 }
    }
}

impl PolicySpace {
    /// A policy space of `image_size` pixels per side; must be positive.
    pub fn new(image_size: u32) -> Result<PolicySpace> {
        if image_size == 0 {
            return Err(Error::Config(
                "image_size must be positive, found 0".to_owned(),
            ));
        }
        Ok(PolicySpace { image_size })
    }

    /// Pixels per side.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    fn scale_to_original(&self, v: f64, extent: u32) -> f64 {
        round_half_up(v * f64::from(extent) / f64::from(self.image_size))
    }

    fn scale_to_policy(&self, v: f64, extent: u32) -> f64 {
        if extent == 0 {
            return f64::NAN;
        }
        round_half_up(v * f64::from(self.image_size) / f64::from(extent))
    }

    /// Policy point → original pixels: `x·W/S`, `y·H/S`, rounded half up.
    pub fn point_to_original(&self, p: PolicyPoint, size: ImageSize) -> OriginalPoint {
        let [x, y] = p.0;
        OriginalPoint([
            self.scale_to_original(x, size.width),
            self.scale_to_original(y, size.height),
        ])
    }

    /// Policy box → original pixels, each coordinate as in [`Self::point_to_original`].
    pub fn box_to_original(&self, b: PolicyBox, size: ImageSize) -> OriginalBox {
        let [x1, y1, x2, y2] = b.0;
        OriginalBox([
            self.scale_to_original(x1, size.width),
            self.scale_to_original(y1, size.height),
            self.scale_to_original(x2, size.width),
            self.scale_to_original(y2, size.height),
        ])
    }

    /// Original pixels → policy space: `round(v·S/W)` (half up), METHOD §2.
    pub fn point_from_original(&self, p: OriginalPoint, size: ImageSize) -> PolicyPoint {
        let [x, y] = p.0;
        PolicyPoint([
            self.scale_to_policy(x, size.width),
            self.scale_to_policy(y, size.height),
        ])
    }

    /// Original pixels → policy space for a box.
    pub fn box_from_original(&self, b: OriginalBox, size: ImageSize) -> PolicyBox {
        let [x1, y1, x2, y2] = b.0;
        PolicyBox([
            self.scale_to_policy(x1, size.width),
            self.scale_to_policy(y1, size.height),
            self.scale_to_policy(x2, size.width),
            self.scale_to_policy(y2, size.height),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_mappings() {
        let s = PolicySpace::default();
        let size = ImageSize {
            width: 420,
            height: 1680,
        };
        // x: 101 · 420 / 840 = 50.5 -> 51 (half up); y: 101 · 1680 / 840 = 202.
        assert_eq!(
            s.point_to_original(PolicyPoint([101.0, 101.0]), size),
            OriginalPoint([51.0, 202.0])
        );
        // Back: 51 · 840 / 420 = 102; 202 · 840 / 1680 = 101.
        assert_eq!(
            s.point_from_original(OriginalPoint([51.0, 202.0]), size),
            PolicyPoint([102.0, 101.0])
        );
        let b = s.box_to_original(PolicyBox([0.0, 0.0, 840.0, 840.0]), size);
        assert_eq!(b, OriginalBox([0.0, 0.0, 420.0, 1680.0]));
        assert!(s.point_to_original(PolicyPoint([f64::NAN, 1.0]), size).0[0].is_nan());
        assert!(PolicySpace::new(0).is_err());
        // A 3-pixel policy space: 1 · 10 / 3 = 3.33 -> 3.
        let t = PolicySpace::new(3).unwrap();
        let size10 = ImageSize {
            width: 10,
            height: 10,
        };
        assert_eq!(
            t.point_to_original(PolicyPoint([1.0, 2.0]), size10),
            OriginalPoint([3.0, 7.0])
        );
    }
}
