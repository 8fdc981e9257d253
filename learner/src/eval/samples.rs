//! Evaluation samples and the policy's view of one: the resized input image and the METHOD §1
//! prompt.

use std::path::Path;

use image::{DynamicImage, RgbImage, imageops::FilterType};
use platter_data::gt::regions_from_masks;
use platter_data::manifest::load_mask;
use platter_data::{ImageLimits, LoadedSample, Mask, PolicySpace, Split, read_manifest};
use platter_qwen25vl::{PreparedPrompt, Processor, smart_resize};
use platter_rl::prompt::{DEFAULT_ANSWER_EXAMPLE, SYSTEM_MESSAGE, user_prompt};
use platter_rl::reward::GroundTruthObject;

use crate::{Error, Result};

/// METHOD §1's policy input side, used when a checkpoint's preprocessor does not pin one.
pub const DEFAULT_IMAGE_SIZE: u32 = 840;

/// One evaluation sample: the original image, the evaluation GT mask and the GT objects in the
/// policy space of `image_size` pixels.
#[derive(Debug, Clone)]
pub struct EvalSample {
    /// Manifest sample id.
    pub id: String,
    /// The question as asked.
    pub question: String,
    /// The original image; masks and IoU are computed at its resolution.
    pub image: RgbImage,
    /// Evaluation GT mask (the manifest's `eval_masks`, or the union of `masks`).
    pub gt_mask: Mask,
    /// Training GT objects (one per target mask, METHOD §2), the reward terms' ground truth.
    pub ground_truth: Vec<GroundTruthObject>,
    /// Evaluation GT objects (one per `eval_masks` entry; the training objects when the manifest
    /// has no `eval_masks`): the ground truth of box AP@0.5.
    pub eval_objects: Vec<GroundTruthObject>,
    /// Side of the policy space the objects are in.
    pub image_size: u32,
}

fn data_err(context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Data {
        context: context.into(),
        reason: e.to_string(),
    }
}

fn to_gt(objects: Vec<platter_data::GtObject>) -> Vec<GroundTruthObject> {
    objects
        .into_iter()
        .map(|o| GroundTruthObject {
            bbox_2d: o.bbox_2d,
            point_2d: o.point_2d,
        })
        .collect()
}

impl EvalSample {
    /// Builds the sample from a loaded manifest record; `root` is the directory its relative
    /// paths are resolved against (the manifest's).
    pub fn from_loaded(loaded: LoadedSample, root: &Path, image_size: u32) -> Result<EvalSample> {
        let id = loaded.record.id.clone();
        let space = PolicySpace::new(image_size).map_err(|e| data_err("image_size", e))?;
        let ground_truth = to_gt(loaded.objects(&space));
        let eval_objects = match &loaded.record.eval_masks {
            None => ground_truth.clone(),
            Some(sources) => {
                let limits = ImageLimits::default();
                let masks = sources
                    .iter()
                    .map(|s| load_mask(root, s, &limits))
                    .collect::<platter_data::Result<Vec<Mask>>>()
                    .map_err(|e| data_err(format!("sample {id}: eval_masks"), e))?;
                to_gt(
                    regions_from_masks(masks)
                        .iter()
                        .map(|r| r.to_gt_object(&space))
                        .collect(),
                )
            }
        };
        Ok(EvalSample {
            id,
            question: loaded.record.question,
            image: loaded.image,
            gt_mask: loaded.eval_mask,
            ground_truth,
            eval_objects,
            image_size,
        })
    }
}

/// Loads the samples of `split` from a JSONL manifest (at most `limit`, 0 = all, in manifest
/// order), with GT objects in a policy space of `image_size` pixels. An empty split gives an
/// empty list; errors name the manifest and the sample.
pub fn load_samples(
    manifest: &Path,
    split: Split,
    image_size: u32,
    limit: usize,
) -> Result<Vec<EvalSample>> {
    let root = manifest.parent().unwrap_or(Path::new("."));
    let limits = ImageLimits::default();
    let records = read_manifest(manifest).map_err(|e| data_err("manifest", e))?;
    let mut out = Vec::new();
    for rec in records.into_iter().filter(|r| r.split == split) {
        if limit > 0 && out.len() >= limit {
            break;
        }
        let loaded = rec
            .load(root, &limits)
            .map_err(|e| data_err(manifest.display().to_string(), e))?;
        out.push(EvalSample::from_loaded(loaded, root, image_size)?);
    }
    Ok(out)
}

/// The policy's input image: `image` resized (aspect not kept, METHOD §1) to `size` × `size`
/// with bicubic filtering.
pub fn policy_input_image(image: &RgbImage, size: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::imageops::resize(
        image,
        size,
        size,
        FilterType::CatmullRom,
    ))
}

/// The METHOD §1 chat for one question about `image`, prepared for generation as prompt
/// `index` of a batch: system message, the image resized to `image_size`, the user prompt with
/// the fixed answer example.
pub fn prepare_prompt(
    processor: &Processor,
    index: usize,
    question: &str,
    image: &RgbImage,
    image_size: u32,
) -> Result<PreparedPrompt> {
    let text = processor.format_user_prompt(
        Some(SYSTEM_MESSAGE),
        &user_prompt(question, DEFAULT_ANSWER_EXAMPLE),
        1,
    );
    let img = policy_input_image(image, image_size);
    processor
        .prepare(index, &text, std::slice::from_ref(&img))
        .map_err(|e| data_err("prompt", e))
}

/// The policy input side a checkpoint's preprocessor pins: `s` when `min_pixels` =
/// `max_pixels` = `s²` with `s` a multiple of `patch_size · merge_size` (the tiny policies
/// under `assets/`); `None` when it accepts a range (real Qwen2.5-VL checkpoints, which use
/// METHOD §1's 840).
pub fn pinned_image_size(processor: &Processor) -> Option<u32> {
    let cfg = &processor.image;
    let (min, max) = (cfg.min_pixels?, cfg.max_pixels?);
    let side = (min as f64).sqrt().round() as usize;
    let factor = cfg.patch_size * cfg.merge_size;
    (min == max && side * side == min && factor > 0 && side.is_multiple_of(factor))
        .then(|| u32::try_from(side).ok())
        .flatten()
}

/// The image size to evaluate a checkpoint at: [`pinned_image_size`], else
/// [`DEFAULT_IMAGE_SIZE`].
pub fn default_image_size(processor: &Processor) -> u32 {
    pinned_image_size(processor).unwrap_or(DEFAULT_IMAGE_SIZE)
}

/// Checks that an `image_size` × `image_size` input reaches the model unchanged: the
/// preprocessor would otherwise resize it again and the answer's pixels would be in another
/// space than the ground truth's.
pub fn check_image_size(processor: &Processor, image_size: u32) -> Result<()> {
    let cfg = &processor.image;
    let factor = cfg.patch_size * cfg.merge_size;
    let side = image_size as usize;
    let min = cfg.min_pixels.unwrap_or(0);
    let max = cfg.max_pixels.unwrap_or(usize::MAX);
    let resized =
        smart_resize(side, side, factor, min, max).map_err(|e| data_err("image_size", e))?;
    if resized != (side, side) {
        return Err(Error::InvalidConfig {
            key: "image_size",
            reason: format!(
                "the checkpoint's preprocessor (min_pixels {min}, max_pixels {max}, factor \
                 {factor}) turns a {side}x{side} input into {}x{}; use a size it keeps{}",
                resized.1,
                resized.0,
                pinned_image_size(processor)
                    .map(|s| format!(" (this checkpoint: {s})"))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(())
}
