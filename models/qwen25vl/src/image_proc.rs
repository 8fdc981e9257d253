//! Image preprocessing, matching transformers' `Qwen2VLImageProcessor` (torchvision backend).
//!
//! Steps: convert to RGB; `smart_resize` to multiples of `patch_size * merge_size` within
//! `[min_pixels, max_pixels]`; bicubic antialiased resize; fused rescale+normalise
//! `(x - 255*mean) / (255*std)` in f32; replicate the frame `temporal_patch_size` times; flatten
//! patches in merge-block order. Without a resize the output is bit-exact with HF; the resize is
//! a float re-implementation of the PIL/torchvision antialiased bicubic filter and agrees to
//! within one grey level before normalisation (see `docs/policy.md`).

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::config::PreprocessorConfig;
use crate::{Error, Result};

/// Preprocessed pixels of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// Row-major `[grid_t * grid_h * grid_w, channels * temporal_patch * patch * patch]`.
    pub patches: Vec<f32>,
    /// `(t, h, w)` in patches, as HF's `image_grid_thw`.
    pub grid_thw: [usize; 3],
    /// Length of one flattened patch.
    pub patch_dim: usize,
}

impl ProcessedImage {
    /// Number of `<|image_pad|>` tokens this image expands to.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.grid_thw.iter().product::<usize>() / (merge_size * merge_size)
    }
}

/// Decodes an image file, with a clear error for unreadable or oversized inputs.
pub fn load_image(path: &Path, max_input_pixels: usize) -> Result<DynamicImage> {
    let what = path.display().to_string();
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::Image {
            what: what.clone(),
            reason: format!("cannot open: {e}"),
        })?
        .with_guessed_format()
        .map_err(|e| Error::Image {
            what: what.clone(),
            reason: format!("cannot read: {e}"),
        })?;
    let (w, h) = reader.into_dimensions().map_err(|e| Error::Image {
        what: what.clone(),
        reason: format!("cannot decode header: {e}"),
    })?;
    check_input_size(&what, h as usize, w as usize, max_input_pixels)?;
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::Image {
            what: what.clone(),
            reason: format!("cannot read: {e}"),
        })?
        .decode()
        .map_err(|e| Error::Image {
            what,
            reason: format!("cannot decode: {e}"),
        })?;
    Ok(img)
}

/// Rejects images above `max_input_pixels` before any allocation for them.
pub fn check_input_size(what: &str, h: usize, w: usize, max_input_pixels: usize) -> Result<()> {
    if h == 0 || w == 0 {
        return Err(Error::Image {
            what: what.into(),
            reason: format!("empty image ({w}x{h})"),
        });
    }
    if h * w > max_input_pixels {
        return Err(Error::Image {
            what: what.into(),
            reason: format!(
                "{w}x{h} = {} pixels is over the limit of {max_input_pixels} pixels",
                h * w
            ),
        });
    }
    Ok(())
}

/// HF's `smart_resize`: the target `(height, width)`, both multiples of `factor`, with the pixel
/// count in `[min_pixels, max_pixels]` and the aspect ratio kept as closely as possible.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(Error::Image {
            what: format!("{width}x{height}"),
            reason: format!("aspect ratio {:.1} is over 200", h.max(w) / h.min(w)),
        });
    }
    // Python's round() rounds half to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Preprocesses one decoded image into flattened patches.
pub fn preprocess(cfg: &PreprocessorConfig, img: &DynamicImage) -> Result<ProcessedImage> {
    let rgb = img.to_rgb8();
    let (w0, h0) = (rgb.width() as usize, rgb.height() as usize);
    let (min_p, max_p) = cfg.pixel_bounds();
    let factor = cfg.patch_size * cfg.merge_size;
    let (h, w) = smart_resize(h0, w0, factor, min_p, max_p)?;
    let rgb = if (h, w) == (h0, w0) {
        rgb
    } else {
        resize_bicubic_aa(&rgb, h, w)?
    };
    // Fused rescale + normalise exactly as HF: mean/std scaled by 1/rescale_factor in f32.
    let inv = (1.0 / cfg.rescale_factor) as f32;
    let mean: [f32; 3] = std::array::from_fn(|c| cfg.image_mean[c] * inv);
    let std: [f32; 3] = std::array::from_fn(|c| cfg.image_std[c] * inv);
    let (p, m, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let (gh, gw) = (h / p, w / p);
    let patch_dim = 3 * tp * p * p;
    let mut out = Vec::with_capacity(gh * gw * patch_dim);
    let raw = rgb.as_raw();
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (py, px) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    for c in 0..3 {
                        for _t in 0..tp {
                            for y in 0..p {
                                let row = ((py + y) * w + px) * 3;
                                for x in 0..p {
                                    let v = f32::from(raw[row + x * 3 + c]);
                                    out.push((v - mean[c]) / std[c]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ProcessedImage {
        patches: out,
        grid_thw: [1, gh, gw],
        patch_dim,
    })
}

/// Keys' cubic convolution kernel with a = -0.5, as PIL and torchvision's antialiased path use.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output index: first input index and normalised weights (PIL's `precompute_coeffs`).
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(in_size);
            let mut ws: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = ws.iter().sum();
            if total != 0.0 {
                ws.iter_mut().for_each(|w| *w /= total);
            }
            (xmin, ws)
        })
        .collect()
}

fn clip8(v: f64) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Separable antialiased bicubic resize (horizontal pass, then vertical), rounding to u8 after
/// each pass like PIL and torchvision's uint8 kernels.
fn resize_bicubic_aa(src: &RgbImage, out_h: usize, out_w: usize) -> Result<RgbImage> {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let raw = src.as_raw();
    let hc = coeffs(in_w, out_w);
    let mut tmp = vec![0u8; in_h * out_w * 3];
    for y in 0..in_h {
        for (x, (x0, ws)) in hc.iter().enumerate() {
            for c in 0..3 {
                let s: f64 = ws
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * f64::from(raw[(y * in_w + x0 + k) * 3 + c]))
                    .sum();
                tmp[(y * out_w + x) * 3 + c] = clip8(s);
            }
        }
    }
    let vc = coeffs(in_h, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for (y, (y0, ws)) in vc.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let s: f64 = ws
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * f64::from(tmp[((y0 + k) * out_w + x) * 3 + c]))
                    .sum();
                out[(y * out_w + x) * 3 + c] = clip8(s);
            }
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).ok_or_else(|| Error::Image {
        what: format!("{in_w}x{in_h}"),
        reason: format!("resize to {out_w}x{out_h} produced a buffer of the wrong size"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_hf_examples() {
        // HF: smart_resize(224, 224) = (224, 224); (150, 205) -> round(5.36)=5, round(7.32)=7 -> (140, 196).
        assert_eq!(
            smart_resize(224, 224, 28, 3136, 1_003_520).ok(),
            Some((224, 224))
        );
        assert_eq!(
            smart_resize(150, 205, 28, 3136, 1_003_520).ok(),
            Some((140, 196))
        );
        // Too small: scaled up to reach min_pixels; 20x20 -> beta=2.8 -> ceil(56/28)*28 = 56.
        assert_eq!(
            smart_resize(20, 20, 28, 3136, 1_003_520).ok(),
            Some((56, 56))
        );
        // Too large: 2000x2000 with max 1_003_520 -> beta=1.9959 -> floor(35.78)*28 = 980.
        assert_eq!(
            smart_resize(2000, 2000, 28, 3136, 1_003_520).ok(),
            Some((980, 980))
        );
        assert!(smart_resize(10, 2500, 28, 3136, 1_003_520).is_err());
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 7]));
        assert_eq!(resize_bicubic_aa(&img, 7, 9).ok(), Some(img));
    }
}
