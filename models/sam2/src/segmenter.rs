//! [`Segmenter`] for SAM2: one image embedding per call, all prompts batched, and per prompt the
//! multimask output with the highest predicted IoU, thresholded at 0 (METHOD §1).

use candle_core::{Device, Tensor};
use image::RgbImage;
use platter_data::mask::Mask;
use platter_data::segment::{ObjectPrompt, SegmentError, Segmenter};

use crate::error::Result;
use crate::predictor::Sam2;
use crate::prompt::{PointPrompt, Prompt};

impl From<&ObjectPrompt> for Prompt {
    fn from(p: &ObjectPrompt) -> Self {
        Prompt {
            bbox: p.bbox,
            points: p
                .points
                .iter()
                .map(|q| PointPrompt {
                    x: q.xy[0],
                    y: q.xy[1],
                    positive: q.positive,
                })
                .collect(),
        }
    }
}

impl Sam2 {
    /// Best-IoU binary mask per prompt at the original resolution; `None` for rejected prompts.
    pub fn segment_prompts(
        &self,
        image: &RgbImage,
        prompts: &[Prompt],
    ) -> Result<Vec<Option<Mask>>> {
        let (w, h) = (image.width(), image.height());
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let emb = self.set_image(image)?;
        let preds = self.predict(&emb, prompts, true)?;
        let mut chosen = Vec::new();
        for p in preds.iter().flatten() {
            chosen.push(p.low_res_logits.narrow(0, p.best_index(), 1)?);
        }
        let mut masks_iter = if chosen.is_empty() {
            Vec::new().into_iter()
        } else {
            // One resize for all kept masks: [P, 1, h, w] -> [P, 1, H, W].
            let low = Tensor::stack(&chosen, 0)?;
            let full = self
                .upscale_to_original(&low, emb.orig_hw())?
                .to_device(&Device::Cpu)?;
            let flat = full.flatten_all()?.to_vec1::<f32>()?;
            let per = (w as usize) * (h as usize);
            (0..chosen.len())
                .map(|i| {
                    let plane = &flat[i * per..(i + 1) * per];
                    Mask::from_fn(w, h, |x, y| {
                        plane[y as usize * w as usize + x as usize] > 0.0
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
        };
        let mut out = Vec::with_capacity(preds.len());
        for (i, p) in preds.iter().enumerate() {
            match p {
                Ok(_) => out.push(masks_iter.next()),
                Err(e) => {
                    tracing::debug!(prompt = i, reason = %e, "SAM2 prompt rejected");
                    out.push(None);
                }
            }
        }
        Ok(out)
    }
}

impl Segmenter for Sam2 {
    fn name(&self) -> &str {
        "sam2"
    }

    fn segment(
        &self,
        image: &RgbImage,
        prompts: &[ObjectPrompt],
    ) -> std::result::Result<Vec<Option<Mask>>, SegmentError> {
        let prompts: Vec<Prompt> = prompts.iter().map(Prompt::from).collect();
        Ok(self.segment_prompts(image, &prompts)?)
    }
}
