//! The binary mask used everywhere: SAM2 outputs, ground-truth masks, evaluation.
//!
//! Storage is bit-packed: pixel (x, y) is bit `y·width + x` of a `Vec<u64>` (row-major, no row
//! padding, unused tail bits always zero). Area, intersection and union are then popcounts over
//! words, which `docs/data.md` measures against a run-length representation.

use std::fmt;
use std::path::Path;

use image::{DynamicImage, GrayImage, Luma};

use crate::error::{Error, Result};
use crate::imageio::{self, ImageLimits};

/// A binary mask of `width` × `height` pixels.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    width: u32,
    height: u32,
    words: Vec<u64>,
}

/// Tight inclusive extent of a mask's pixels, in the mask's own pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PixelBox {
    /// Leftmost column holding a pixel.
    pub x_min: u32,
    /// Topmost row holding a pixel.
    pub y_min: u32,
    /// Rightmost column holding a pixel (inclusive).
    pub x_max: u32,
    /// Bottom row holding a pixel (inclusive).
    pub y_max: u32,
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mask")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("count", &self.count())
            .finish()
    }
}

fn words_for(width: u32, height: u32) -> usize {
    let bits = width as usize * height as usize;
    bits.div_ceil(64)
}

impl Mask {
    /// An empty (all off) mask.
    pub fn new(width: u32, height: u32) -> Mask {
        Mask {
            width,
            height,
            words: vec![0; words_for(width, height)],
        }
    }

    /// A mask whose pixel (x, y) is `f(x, y)`.
    pub fn from_fn(width: u32, height: u32, mut f: impl FnMut(u32, u32) -> bool) -> Mask {
        let mut mask = Mask::new(width, height);
        let mut i = 0usize;
        for y in 0..height {
            for x in 0..width {
                if f(x, y) {
                    mask.words[i >> 6] |= 1u64 << (i & 63);
                }
                i += 1;
            }
        }
        mask
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    fn index(&self, x: u32, y: u32) -> Option<usize> {
        (x < self.width && y < self.height).then(|| y as usize * self.width as usize + x as usize)
    }

    /// Whether pixel (x, y) is on; pixels outside the mask are off.
    pub fn get(&self, x: u32, y: u32) -> bool {
        self.index(x, y)
            .is_some_and(|i| (self.words[i >> 6] >> (i & 63)) & 1 == 1)
    }

    /// Set pixel (x, y). Writes outside the mask are dropped (the mask is clipped to its frame).
    pub fn set(&mut self, x: u32, y: u32, on: bool) {
        if let Some(i) = self.index(x, y) {
            if on {
                self.words[i >> 6] |= 1u64 << (i & 63);
            } else {
                self.words[i >> 6] &= !(1u64 << (i & 63));
            }
        }
    }

    /// Turn on every pixel of the inclusive rectangle `[x0, x1] × [y0, y1]`, clipped to the mask.
    pub fn fill_rect(&mut self, x0: u32, y0: u32, x1: u32, y1: u32) {
        if self.width == 0 || self.height == 0 || x0 > x1 || y0 > y1 {
            return;
        }
        if x0 >= self.width || y0 >= self.height {
            return;
        }
        let x1 = x1.min(self.width - 1);
        let y1 = y1.min(self.height - 1);
        for y in y0..=y1 {
            let row = y as usize * self.width as usize;
            self.set_span(row + x0 as usize, row + x1 as usize + 1);
        }
    }

    /// Set bits `[start, end)` word by word.
    fn set_span(&mut self, start: usize, end: usize) {
        let mut i = start;
        while i < end {
            let bit = i & 63;
            let n = (64 - bit).min(end - i);
            let run = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.words[i >> 6] |= run;
            i += n;
        }
    }

    /// Number of pixels that are on (the area).
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether no pixel is on.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    fn check_same_size(&self, other: &Mask, what: &str) -> Result<()> {
        if self.width != other.width || self.height != other.height {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected_w: self.width,
                expected_h: self.height,
                found_w: other.width,
                found_h: other.height,
            });
        }
        Ok(())
    }

    /// |self ∧ other|; masks of different sizes are an error.
    pub fn intersection_count(&self, other: &Mask) -> Result<u64> {
        self.check_same_size(other, "mask intersection")?;
        Ok(self
            .words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum())
    }

    /// |self ∨ other|; masks of different sizes are an error.
    pub fn union_count(&self, other: &Mask) -> Result<u64> {
        self.check_same_size(other, "mask union")?;
        Ok(self
            .words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a | b).count_ones()))
            .sum())
    }

    /// Intersection over union. Two empty masks give 1.0 (the LISA / FoodLMM convention of
    /// METHOD §6: U = 0 counts as a perfect match).
    pub fn iou(&self, other: &Mask) -> Result<f64> {
        self.check_same_size(other, "mask IoU")?;
        // One pass over both word arrays for I and U together.
        let (mut inter, mut union) = (0u64, 0u64);
        for (a, b) in self.words.iter().zip(&other.words) {
            inter += u64::from((a & b).count_ones());
            union += u64::from((a | b).count_ones());
        }
        if union == 0 {
            return Ok(1.0);
        }
        Ok(inter as f64 / union as f64)
    }

    /// OR-merge `other` into `self`.
    pub fn or_assign(&mut self, other: &Mask) -> Result<()> {
        self.check_same_size(other, "mask OR-merge")?;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        Ok(())
    }

    /// Iterate over the (x, y) of every pixel that is on, in row-major order.
    pub fn iter_on(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let width = self.width as usize;
        self.words.iter().enumerate().flat_map(move |(wi, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                let i = wi * 64 + bit;
                // Both fit in u32 because width and height do.
                Some(((i % width) as u32, (i / width) as u32))
            })
        })
    }

    /// Tight inclusive extent of the pixels that are on; `None` for an empty mask.
    pub fn bbox(&self) -> Option<PixelBox> {
        let mut it = self.iter_on();
        let (x, y) = it.next()?;
        let mut b = PixelBox {
            x_min: x,
            y_min: y,
            x_max: x,
            y_max: y,
        };
        for (x, y) in it {
            b.x_min = b.x_min.min(x);
            b.x_max = b.x_max.max(x);
            // Row-major order: y only grows.
            b.y_max = y;
        }
        Some(b)
    }

    /// The mask as an 8-bit image: 255 on, 0 off.
    pub fn to_gray_image(&self) -> GrayImage {
        let mut img = GrayImage::new(self.width, self.height);
        for (x, y) in self.iter_on() {
            img.put_pixel(x, y, Luma([255]));
        }
        img
    }

    /// Pixels of `img` that are non-zero.
    pub fn from_gray_image(img: &GrayImage) -> Mask {
        Mask::from_fn(img.width(), img.height(), |x, y| {
            img.get_pixel(x, y)[0] != 0
        })
    }

    /// Pixels of a label map equal to `class_id`.
    pub fn from_label_map(labels: &GrayImage, class_id: u8) -> Mask {
        Mask::from_fn(labels.width(), labels.height(), |x, y| {
            labels.get_pixel(x, y)[0] == class_id
        })
    }

    /// Decode a mask from PNG (or any supported image) bytes: a pixel is on when any colour
    /// channel is non-zero (alpha is ignored).
    pub fn from_png_bytes(bytes: &[u8], what: &str, limits: &ImageLimits) -> Result<Mask> {
        let img = imageio::decode_image(bytes, what, limits)?;
        let (w, h) = (img.width(), img.height());
        fn any_nonzero<T: Copy + PartialEq + Default>(px: &[T]) -> bool {
            px.iter().any(|&v| v != T::default())
        }
        let mask = match &img {
            DynamicImage::ImageLuma8(i) => Mask::from_fn(w, h, |x, y| i.get_pixel(x, y)[0] != 0),
            DynamicImage::ImageLumaA8(i) => Mask::from_fn(w, h, |x, y| i.get_pixel(x, y)[0] != 0),
            DynamicImage::ImageLuma16(i) => Mask::from_fn(w, h, |x, y| i.get_pixel(x, y)[0] != 0),
            DynamicImage::ImageLumaA16(i) => Mask::from_fn(w, h, |x, y| i.get_pixel(x, y)[0] != 0),
            DynamicImage::ImageRgb8(i) => {
                Mask::from_fn(w, h, |x, y| any_nonzero(&i.get_pixel(x, y).0))
            }
            DynamicImage::ImageRgba8(i) => {
                Mask::from_fn(w, h, |x, y| any_nonzero(&i.get_pixel(x, y).0[..3]))
            }
            DynamicImage::ImageRgb16(i) => {
                Mask::from_fn(w, h, |x, y| any_nonzero(&i.get_pixel(x, y).0))
            }
            DynamicImage::ImageRgba16(i) => {
                Mask::from_fn(w, h, |x, y| any_nonzero(&i.get_pixel(x, y).0[..3]))
            }
            other => {
                return Err(Error::Format {
                    what: what.to_owned(),
                    expected: "an 8- or 16-bit integer mask image".to_owned(),
                    found: format!("{:?}", other.color()),
                });
            }
        };
        Ok(mask)
    }

    /// Read a mask PNG from a file; see [`Mask::from_png_bytes`].
    pub fn read_png(path: &Path, limits: &ImageLimits) -> Result<Mask> {
        let bytes = imageio::read_bytes(path)?;
        Mask::from_png_bytes(&bytes, &path.display().to_string(), limits)
    }

    /// Encode as an 8-bit grayscale PNG (255 on, 0 off).
    pub fn to_png_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.to_gray_image()
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .map_err(|source| Error::Image {
                what: "mask".to_owned(),
                source,
            })?;
        Ok(out)
    }

    /// Write as an 8-bit grayscale PNG (255 on, 0 off).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png_bytes()?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_bbox() {
        let mut m = Mask::new(70, 3);
        assert!(m.is_empty());
        assert_eq!(m.bbox(), None);
        m.set(69, 0, true);
        m.set(1, 2, true);
        m.set(500, 500, true); // dropped
        assert!(m.get(69, 0) && m.get(1, 2) && !m.get(0, 0) && !m.get(500, 500));
        assert_eq!(m.count(), 2);
        assert_eq!(
            m.bbox(),
            Some(PixelBox {
                x_min: 1,
                y_min: 0,
                x_max: 69,
                y_max: 2
            })
        );
        m.set(69, 0, false);
        assert_eq!(m.count(), 1);
    }

    #[test]
    fn fill_rect_matches_from_fn_across_word_boundaries() {
        let mut m = Mask::new(100, 7);
        m.fill_rect(3, 1, 90, 5);
        let r = Mask::from_fn(100, 7, |x, y| (3..=90).contains(&x) && (1..=5).contains(&y));
        assert_eq!(m, r);
        let mut clipped = Mask::new(10, 10);
        clipped.fill_rect(8, 8, 1000, 1000);
        assert_eq!(clipped.count(), 4);
    }

    #[test]
    fn iou_and_merge_hand_derived() {
        // a: columns 0..=3 of a 10x1 row (4 px); b: columns 2..=7 (6 px).
        // I = {2,3} = 2, U = {0..=7} = 8, IoU = 0.25.
        let a = Mask::from_fn(10, 1, |x, _| x <= 3);
        let b = Mask::from_fn(10, 1, |x, _| (2..=7).contains(&x));
        assert_eq!(a.intersection_count(&b).unwrap(), 2);
        assert_eq!(a.union_count(&b).unwrap(), 8);
        assert!((a.iou(&b).unwrap() - 0.25).abs() < 1e-12);
        let mut m = a.clone();
        m.or_assign(&b).unwrap();
        assert_eq!(m.count(), 8);
        let e = Mask::new(10, 1);
        assert_eq!(e.iou(&Mask::new(10, 1)).unwrap(), 1.0);
        assert_eq!(e.iou(&a).unwrap(), 0.0);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let a = Mask::new(4, 4);
        let b = Mask::new(4, 5);
        let err = a.iou(&b).unwrap_err().to_string();
        assert!(err.contains("4x4") && err.contains("4x5"), "{err}");
        assert!(a.clone().or_assign(&b).is_err());
        assert!(a.intersection_count(&b).is_err());
    }

    #[test]
    fn png_round_trip_and_colour_rule() {
        let m = Mask::from_fn(13, 9, |x, y| (x * y) % 3 == 1);
        let bytes = m.to_png_bytes().unwrap();
        let back = Mask::from_png_bytes(&bytes, "t", &ImageLimits::default()).unwrap();
        assert_eq!(m, back);
        // (1, 0, 0) is on although its luma rounds to 0; alpha does not count.
        let mut rgba = image::RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, image::Rgba([1, 0, 0, 0]));
        rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 255]));
        let mut out = Vec::new();
        rgba.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        let m = Mask::from_png_bytes(&out, "t", &ImageLimits::default()).unwrap();
        assert!(m.get(0, 0) && !m.get(1, 0));
    }

    #[test]
    fn corrupt_and_oversized_png_are_errors() {
        let err = Mask::from_png_bytes(
            b"\x89PNG\r\n\x1a\nnot really",
            "bad.png",
            &ImageLimits::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bad.png"), "{err}");
        let big = Mask::new(300, 2).to_png_bytes().unwrap();
        let limits = ImageLimits {
            max_side: 256,
            max_pixels: 1 << 20,
        };
        let err = Mask::from_png_bytes(&big, "big.png", &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("300x2") && err.contains("big.png"), "{err}");
    }
}
