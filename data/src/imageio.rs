//! Guarded image decoding: every image and mask this crate reads goes through here, so size limits
//! (decompression bombs), corrupt files and unexpected pixel formats become clear errors.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, GrayImage, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Limits checked against an image header before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted width or height in pixels.
    pub max_side: u32,
    /// Largest accepted width × height.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 16384 px per side and 64 Mpx: far above FoodSeg103 (at most ~4k per side) and far below
    /// what would exhaust memory on a laptop.
    fn default() -> Self {
        ImageLimits {
            max_side: 16_384,
            max_pixels: 64 * 1024 * 1024,
        }
    }
}

impl ImageLimits {
    /// Error unless `width`×`height` fits these limits.
    pub fn check(&self, what: &str, width: u32, height: u32) -> Result<()> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_side || height > self.max_side || pixels > self.max_pixels {
            return Err(Error::ImageTooLarge {
                what: what.to_owned(),
                width,
                height,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }
}

/// Read a whole file, turning a missing or unreadable file into an error naming the path.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Decode an image (format guessed from its bytes) after checking its header against `limits`.
pub fn decode_image(bytes: &[u8], what: &str, limits: &ImageLimits) -> Result<DynamicImage> {
    let image_err = |source| Error::Image {
        what: what.to_owned(),
        source,
    };
    let io_err = |e: std::io::Error| Error::Image {
        what: what.to_owned(),
        source: image::ImageError::IoError(e),
    };
    let (width, height) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(io_err)?
        .into_dimensions()
        .map_err(image_err)?;
    limits.check(what, width, height)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(io_err)?;
    // Second line of defence: the decoder itself refuses to allocate past the limit.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    reader.limits(decoder_limits);
    reader.decode().map_err(image_err)
}

/// Read an RGB image (PNG or JPEG) from a file with size limits.
pub fn read_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let bytes = read_bytes(path)?;
    Ok(decode_image(&bytes, &path.display().to_string(), limits)?.to_rgb8())
}

/// Decode a semantic label map: an 8-bit single-channel PNG whose pixel values are class ids.
///
/// Colour or palette PNGs are refused rather than guessed at, since converting colours to grey
/// would silently change class ids.
pub fn decode_label_map(bytes: &[u8], what: &str, limits: &ImageLimits) -> Result<GrayImage> {
    match decode_image(bytes, what, limits)? {
        DynamicImage::ImageLuma8(img) => Ok(img),
        other => Err(Error::Format {
            what: what.to_owned(),
            expected: "an 8-bit grayscale label map (pixel = class id)".to_owned(),
            found: format!("{:?}", other.color()),
        }),
    }
}

/// Read a semantic label map from a file; see [`decode_label_map`].
pub fn read_label_map(path: &Path, limits: &ImageLimits) -> Result<GrayImage> {
    let bytes = read_bytes(path)?;
    decode_label_map(&bytes, &path.display().to_string(), limits)
}

/// Width and height from an image file's header, checked against `limits`, without decoding.
pub fn image_dimensions(path: &Path, limits: &ImageLimits) -> Result<(u32, u32)> {
    let what = path.display().to_string();
    let (w, h) = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .into_dimensions()
        .map_err(|source| Error::Image {
            what: what.clone(),
            source,
        })?;
    limits.check(&what, w, h)?;
    Ok((w, h))
}
