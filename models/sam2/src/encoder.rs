//! The image path: preprocessing, trunk + neck, `no_mem_embed` and the decoder's high-res
//! projections, as `SAM2ImagePredictor.set_image` computes them.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use image::RgbImage;

use crate::config::Sam2Config;
use crate::hiera::Hiera;
use crate::neck::FpnNeck;
use crate::resample::resize_bilinear_aa;

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Converts an RGB image to the model input [1, 3, S, S]: scale to [0, 1], antialiased bilinear
/// resize to `size × size` (aspect not kept, as torchvision's `Resize((S, S))`), ImageNet
/// normalisation.
pub fn preprocess(image: &RgbImage, size: usize, device: &Device) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let mut planes = vec![0f32; 3 * h * w];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planes[c * h * w + i] = px[c] as f32 / 255.0;
        }
    }
    let mut out = resize_bilinear_aa(&planes, 3, (h, w), (size, size));
    for c in 0..3 {
        for v in &mut out[c * size * size..(c + 1) * size * size] {
            *v = (*v - MEAN[c]) / STD[c];
        }
    }
    Tensor::from_vec(out, (1, 3, size, size), device)
}

/// Everything `set_image` produces, including intermediates for inspection.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// Trunk stage outputs, finest first (NCHW).
    pub trunk: Vec<Tensor>,
    /// FPN features after scalp, finest first (before the decoder's conv_s0/conv_s1).
    pub fpn: Vec<Tensor>,
    /// Lowest-resolution kept level plus `no_mem_embed`: [1, C, S/16, S/16].
    pub image_embed: Tensor,
    /// `conv_s0(fpn[0])`, `conv_s1(fpn[1])` when the config uses high-res features.
    pub high_res: Option<(Tensor, Tensor)>,
}

#[derive(Debug, Clone)]
pub struct ImageEncoder {
    trunk: Hiera,
    neck: FpnNeck,
    no_mem_embed: Tensor,
    conv_s0: Option<Conv2d>,
    conv_s1: Option<Conv2d>,
    scalp: usize,
    add_no_mem: bool,
}

impl ImageEncoder {
    /// `vb` is the checkpoint root (keys `image_encoder.*`, `no_mem_embed`, `sam_mask_decoder.conv_s*`).
    pub fn new(cfg: &Sam2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.neck.d_model;
        let (conv_s0, conv_s1) = if cfg.use_high_res_features_in_sam {
            let dvb = vb.pp("sam_mask_decoder");
            (
                Some(candle_nn::conv2d(
                    d,
                    d / 8,
                    1,
                    Default::default(),
                    dvb.pp("conv_s0"),
                )?),
                Some(candle_nn::conv2d(
                    d,
                    d / 4,
                    1,
                    Default::default(),
                    dvb.pp("conv_s1"),
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            trunk: Hiera::new(cfg, vb.pp("image_encoder.trunk"))?,
            neck: FpnNeck::new(&cfg.neck, vb.pp("image_encoder.neck"))?,
            no_mem_embed: vb.get((1, 1, d), "no_mem_embed")?.reshape((1, d, 1, 1))?,
            conv_s0,
            conv_s1,
            scalp: cfg.scalp,
            add_no_mem: cfg.directly_add_no_mem_embed,
        })
    }

    /// Encodes a preprocessed [1, 3, S, S] image.
    pub fn forward(&self, input: &Tensor) -> Result<EncoderOutput> {
        let trunk = self.trunk.forward(input)?;
        let mut fpn = self.neck.forward(&trunk)?;
        fpn.truncate(fpn.len() - self.scalp);
        let last = fpn
            .last()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no FPN level".into()))?;
        let image_embed = if self.add_no_mem {
            last.broadcast_add(&self.no_mem_embed)?
        } else {
            last
        };
        let high_res = match (&self.conv_s0, &self.conv_s1) {
            (Some(c0), Some(c1)) => Some((c0.forward(&fpn[0])?, c1.forward(&fpn[1])?)),
            _ => None,
        };
        Ok(EncoderOutput {
            trunk,
            fpn,
            image_embed,
            high_res,
        })
    }
}
