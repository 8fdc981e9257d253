//! The image predictor: load a checkpoint, embed an image once, decode many prompts in batches.
//!
//! ```no_run
//! # fn main() -> platter_sam2::Result<()> {
//! use platter_sam2::{Prompt, Sam2, Sam2Config, OfficialSize};
//! let device = candle_core::Device::Cpu;
//! let cfg = Sam2Config::official(OfficialSize::Tiny);
//! let sam = Sam2::load(std::path::Path::new("sam2.1_hiera_tiny.pt"), cfg, &device)?;
//! let image = image::RgbImage::new(640, 480);
//! let emb = sam.set_image(&image)?;
//! let prompts = [Prompt::new().with_box([10.0, 20.0, 200.0, 240.0]).with_point(100.0, 120.0, true)];
//! for pred in sam.predict(&emb, &prompts, true)? {
//!     let pred = pred.expect("a finite prompt");
//!     let best = pred.best_index();
//!     let logits = sam.upscale_to_original(&pred.low_res_logits, emb.orig_hw())?; // [3, 480, 640]
//!     # let _ = (best, logits);
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

use crate::checkpoint::{ShapeRecorder, check_tensors, read_checkpoint, var_builder};
use crate::config::Sam2Config;
use crate::encoder::{EncoderOutput, ImageEncoder, preprocess};
use crate::error::{Error, Result};
use crate::mask_decoder::{DecoderOutput, MaskDecoder, stability_scores};
use crate::prompt::{BadPrompt, Prompt, PromptCounterSnapshot, PromptCounters, sanitize};
use crate::prompt_encoder::{PromptEncoder, TokenLabel};
use crate::resample::resize_bilinear;

/// A prompt's sparse tokens in model-input pixels.
type PromptTokens = Vec<([f32; 2], TokenLabel)>;

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// The reusable result of [`Sam2::set_image`]: image embedding, high-res features, original size.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// [1, C, S/16, S/16], `no_mem_embed` included.
    pub image_embed: Tensor,
    /// ([1, C/8, S/4, S/4], [1, C/4, S/8, S/8]) when the model uses high-res features.
    pub high_res: Option<(Tensor, Tensor)>,
    orig_hw: (usize, usize),
}

impl ImageEmbedding {
    /// Original image (height, width) in pixels.
    pub fn orig_hw(&self) -> (usize, usize) {
        self.orig_hw
    }
}

/// Masks for one prompt.
#[derive(Debug, Clone)]
pub struct PromptPrediction {
    /// [M, S/4, S/4] mask logits (M = 3 with multimask output, else 1), not clamped.
    pub low_res_logits: Tensor,
    /// Predicted IoU per mask.
    pub iou_scores: Vec<f32>,
    /// Object-presence logit (positive = object present).
    pub object_score_logit: f32,
}

impl PromptPrediction {
    /// Index of the mask with the highest predicted IoU (first on ties).
    pub fn best_index(&self) -> usize {
        let mut best = 0;
        for (i, &v) in self.iou_scores.iter().enumerate() {
            if v > self.iou_scores[best] {
                best = i;
            }
        }
        best
    }
}

/// A loaded SAM2 image predictor. Cheap to share across threads (`&self` everywhere).
#[derive(Debug)]
pub struct Sam2 {
    cfg: Sam2Config,
    encoder: ImageEncoder,
    prompt_encoder: PromptEncoder,
    decoder: MaskDecoder,
    device: Device,
    counters: PromptCounters,
}

impl Sam2 {
    /// Every tensor name and shape that `cfg` needs from a checkpoint.
    pub fn expected_tensors(cfg: &Sam2Config) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(Self::record_shapes(cfg)?
            .into_iter()
            .map(|(n, s)| (n, s.dims().to_vec()))
            .collect())
    }

    /// Runs the constructors against a recording backend. Weight shapes do not depend on the
    /// image size (that is why one checkpoint serves any size), so the smallest valid size is
    /// used to keep the size-dependent precomputations (position embeddings) cheap.
    fn record_shapes(cfg: &Sam2Config) -> Result<Vec<(String, candle_core::Shape)>> {
        let mut small = cfg.clone();
        let w0 = cfg.trunk.window_spec.first().copied().unwrap_or(1).max(1);
        small.image_size = lcm(32, 4 * w0).max(cfg.backbone_stride);
        if small.validate("shape check").is_err() {
            small.image_size = cfg.image_size;
        }
        let rec = ShapeRecorder::default();
        let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
        Self::build(&small, vb)?;
        let seen = rec
            .seen
            .lock()
            .map_err(|_| Error::Input("shape recorder poisoned".into()))?;
        Ok(seen.clone())
    }

    /// Loads a Meta `.pt` or a `.safetensors` checkpoint after checking every name and shape.
    pub fn load(checkpoint: &Path, cfg: Sam2Config, device: &Device) -> Result<Self> {
        let tensors = read_checkpoint(checkpoint, device)?;
        Self::from_tensors(tensors, cfg, device, checkpoint)
    }

    /// Builds the model from tensors already in memory; `origin` names them in errors.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: Sam2Config,
        device: &Device,
        origin: &Path,
    ) -> Result<Self> {
        cfg.validate(&origin.display().to_string())?;
        let expected = Self::record_shapes(&cfg)?;
        let problems = check_tensors(&expected, &tensors);
        if !problems.is_empty() {
            return Err(Error::CheckpointMismatch {
                path: origin.to_path_buf(),
                problems,
            });
        }
        let unused = tensors.len().saturating_sub(expected.len());
        tracing::debug!(checkpoint = %origin.display(), used = expected.len(), unused, "SAM2 weights checked");
        let vb = var_builder(tensors, device);
        let (encoder, prompt_encoder, decoder) = Self::build(&cfg, vb)?;
        Ok(Self {
            cfg,
            encoder,
            prompt_encoder,
            decoder,
            device: device.clone(),
            counters: PromptCounters::default(),
        })
    }

    fn build(
        cfg: &Sam2Config,
        vb: VarBuilder,
    ) -> Result<(ImageEncoder, PromptEncoder, MaskDecoder)> {
        let encoder = ImageEncoder::new(cfg, vb.clone())?;
        let prompt_encoder = PromptEncoder::new(
            cfg.neck.d_model,
            cfg.embedding_size(),
            cfg.image_size,
            vb.pp("sam_prompt_encoder"),
        )?;
        let decoder = MaskDecoder::new(cfg, vb.pp("sam_mask_decoder"))?;
        Ok((encoder, prompt_encoder, decoder))
    }

    pub fn config(&self) -> &Sam2Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Counts of prompts fixed or rejected so far (for metrics).
    pub fn prompt_counters(&self) -> PromptCounterSnapshot {
        self.counters.snapshot()
    }

    /// The model input for an image: [1, 3, S, S], resized and normalised.
    pub fn preprocess(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(preprocess(image, self.cfg.image_size, &self.device)?)
    }

    /// Runs the image encoder on a preprocessed input, keeping the intermediates.
    pub fn encode(&self, input: &Tensor) -> Result<EncoderOutput> {
        Ok(self.encoder.forward(input)?)
    }

    /// Embeds an image once; reuse the result for any number of [`Sam2::predict`] calls.
    pub fn set_image(&self, image: &RgbImage) -> Result<ImageEmbedding> {
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::Input(format!(
                "image is {}x{}; expected a non-empty image",
                image.width(),
                image.height()
            )));
        }
        let input = self.preprocess(image)?;
        let out = self.encode(&input)?;
        Ok(ImageEmbedding {
            image_embed: out.image_embed,
            high_res: out.high_res,
            orig_hw: (image.height() as usize, image.width() as usize),
        })
    }

    /// Decodes many prompts (original-image pixels) against one embedding, batching all prompts
    /// that have the same number of tokens. Each prompt gets its own result: bad coordinates are
    /// fixed or rejected per prompt (see [`sanitize`]) and counted.
    ///
    /// With `multimask` the three multimask outputs are returned; otherwise one mask, falling
    /// back to the best multimask output when the single mask is unstable, as Meta's predictor.
    pub fn predict(
        &self,
        emb: &ImageEmbedding,
        prompts: &[Prompt],
        multimask: bool,
    ) -> Result<Vec<std::result::Result<PromptPrediction, BadPrompt>>> {
        let (h, w) = emb.orig_hw;
        let s = self.cfg.image_size as f32;
        let mut results: Vec<Option<std::result::Result<PromptPrediction, BadPrompt>>> =
            (0..prompts.len()).map(|_| None).collect();
        let mut groups: BTreeMap<usize, Vec<(usize, PromptTokens)>> = BTreeMap::new();
        for (i, p) in prompts.iter().enumerate() {
            let clean = match sanitize(p, w, h, &self.counters) {
                Ok(c) => c,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let to_model = |x: f32, y: f32| [x / w as f32 * s, y / h as f32 * s];
            let mut tokens = Vec::with_capacity(clean.points.len() + 3);
            if let Some([x1, y1, x2, y2]) = clean.bbox {
                tokens.push((to_model(x1, y1), TokenLabel::BoxTopLeft));
                tokens.push((to_model(x2, y2), TokenLabel::BoxBottomRight));
            }
            for pt in &clean.points {
                let label = if pt.positive {
                    TokenLabel::Positive
                } else {
                    TokenLabel::Negative
                };
                tokens.push((to_model(pt.x, pt.y), label));
            }
            tokens.push(([0.0, 0.0], TokenLabel::Padding));
            groups.entry(tokens.len()).or_default().push((i, tokens));
        }
        for (n_tokens, members) in groups {
            // Identical prompts (common when several responses name the same object) are decoded
            // once; `slot[k]` is the unique prompt that member k maps to.
            let mut unique: Vec<&PromptTokens> = Vec::new();
            let mut slot = Vec::with_capacity(members.len());
            for (_, toks) in &members {
                let same = |u: &&PromptTokens| {
                    u.iter().zip(toks.iter()).all(|((a, la), (b, lb))| {
                        la == lb
                            && a[0].to_bits() == b[0].to_bits()
                            && a[1].to_bits() == b[1].to_bits()
                    })
                };
                match unique.iter().position(same) {
                    Some(k) => slot.push(k),
                    None => {
                        slot.push(unique.len());
                        unique.push(toks);
                    }
                }
            }
            let b = unique.len();
            let mut data = Vec::with_capacity(b * n_tokens * self.cfg.neck.d_model);
            for toks in &unique {
                data.extend(self.prompt_encoder.embed_tokens(toks));
            }
            let sparse =
                Tensor::from_vec(data, (b, n_tokens, self.cfg.neck.d_model), &self.device)?;
            let out = self.decoder.forward(
                &emb.image_embed,
                &self.prompt_encoder.dense_pe,
                &self.prompt_encoder.no_mask_embed,
                &sparse,
                emb.high_res.as_ref(),
            )?;
            let preds = self.select(out, multimask)?;
            for ((i, _), k) in members.iter().zip(slot) {
                results[*i] = Some(Ok(preds[k].clone()));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Err(BadPrompt::Empty)))
            .collect())
    }

    fn select(&self, out: DecoderOutput, multimask: bool) -> Result<Vec<PromptPrediction>> {
        let iou = out.iou.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let obj = out
            .object_score
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let stability = if !multimask && self.cfg.dynamic_multimask_via_stability {
            let s = stability_scores(
                &out.masks.narrow(1, 0, 1)?,
                self.cfg.dynamic_multimask_stability_delta,
            )?;
            Some(s.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        let mut preds = Vec::with_capacity(iou.len());
        for (b, row) in iou.iter().enumerate() {
            let masks_b = out.masks.i(b)?;
            let (logits, scores) = if multimask {
                (masks_b.narrow(0, 1, 3)?, row[1..].to_vec())
            } else {
                let stable = stability
                    .as_ref()
                    .is_none_or(|s| s[b] >= self.cfg.dynamic_multimask_stability_thresh);
                if stable {
                    (masks_b.narrow(0, 0, 1)?, vec![row[0]])
                } else {
                    let mut best = 1;
                    for k in 2..row.len() {
                        if row[k] > row[best] {
                            best = k;
                        }
                    }
                    (masks_b.narrow(0, best, 1)?, vec![row[best]])
                }
            };
            preds.push(PromptPrediction {
                low_res_logits: logits.contiguous()?,
                iou_scores: scores,
                object_score_logit: obj.get(b).copied().unwrap_or(10.0),
            });
        }
        Ok(preds)
    }

    /// Bilinearly resizes low-res logits ([M, h, w] or [B, M, h, w]) to the original image size,
    /// as the predictor's post-processing does (align_corners = false).
    pub fn upscale_to_original(&self, low_res: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
        let rank = low_res.rank();
        if !(3..=4).contains(&rank) {
            return Err(Error::Input(format!(
                "low-res logits must be rank 3 or 4, found rank {rank}"
            )));
        }
        let x = if rank == 3 {
            low_res.unsqueeze(0)?
        } else {
            low_res.clone()
        };
        let out = if x.device().is_cpu() {
            // Multi-threaded; candle's CPU kernel runs on one core.
            let (b, m, lh, lw) = x.dims4()?;
            let data = x.flatten_all()?.to_vec1::<f32>()?;
            let up = resize_bilinear(&data, b * m, (lh, lw), (h, w));
            Tensor::from_vec(up, (b, m, h, w), x.device())?
        } else {
            x.upsample_bilinear2d(h, w, false)?
        };
        Ok(if rank == 3 { out.squeeze(0)? } else { out })
    }
}
