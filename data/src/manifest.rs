//! The one dataset format every source converts to: JSONL, one sample (one question) per line.
//!
//! ```json
//! {"id": "synth-000003-q1", "split": "train", "image": "images/000003.png",
//!  "question": "Which item is the dessert?",
//!  "masks": [{"png": "masks/000003_2.png"}, {"rle": {"size": [240, 320], "counts": "..."}},
//!            {"label_png": "ann/000003.png", "classes": [7]}],
//!  "eval_masks": [{"png": "masks/000003_2.png"}],
//!  "target_names": ["cake"],
//!  "objects": {"image_size": 840, "items": [{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3]}]}}
//! ```
//! `masks` are the training targets, one object each; their union is the training GT mask.
//! `eval_masks` (default: `masks`) give the evaluation GT. Paths are relative to the manifest's
//! directory unless absolute. See `docs/data.md`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::coords::PolicySpace;
use crate::error::{Error, Result};
use crate::gt::{GtObject, GtRegion};
use crate::imageio::{self, ImageLimits};
use crate::mask::Mask;
use crate::rle::CocoRle;
use crate::segment::merge_masks;

/// Dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Val,
    /// Test / evaluation.
    Test,
}

impl Split {
    /// Lower-case name as in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Where one target mask comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum MaskSource {
    /// A binary mask PNG (any non-zero pixel is on).
    Png {
        /// Path of the PNG.
        png: PathBuf,
    },
    /// A COCO RLE.
    Rle {
        /// The encoded mask.
        rle: CocoRle,
    },
    /// The pixels of a semantic label map whose value is one of `classes`.
    Label {
        /// Path of the 8-bit label map PNG.
        label_png: PathBuf,
        /// Class ids that make up this target.
        classes: Vec<u8>,
    },
}

/// Objects computed ahead of time, in a policy space of `image_size` pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecomputedObjects {
    /// Side of the policy space the coordinates are in.
    pub image_size: u32,
    /// The objects.
    pub items: Vec<GtObject>,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    /// Unique sample id.
    pub id: String,
    /// Split of the sample.
    pub split: Split,
    /// Image path (PNG or JPEG).
    pub image: PathBuf,
    /// The question as asked (METHOD §1 lower-cases it when building the prompt).
    pub question: String,
    /// Training targets, one object per entry; their union is the training GT.
    pub masks: Vec<MaskSource>,
    /// Evaluation GT when it differs from `masks` (FoodReasonSeg-Single).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_masks: Option<Vec<MaskSource>>,
    /// Names of the targets, parallel to `masks` when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_names: Vec<String>,
    /// Precomputed objects, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<PrecomputedObjects>,
}

/// Read a JSONL manifest. Blank lines are skipped; a malformed line or a repeated id is an error
/// naming the file and line.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestRecord>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::Parse {
            path: path.to_owned(),
            line: line_no,
            message: format!("cannot read line: {e}"),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let record: ManifestRecord = serde_json::from_str(&line).map_err(|e| Error::Parse {
            path: path.to_owned(),
            line: line_no,
            message: format!("invalid manifest record: {e}"),
        })?;
        if let Some(first) = seen.insert(record.id.clone(), line_no) {
            return Err(Error::Parse {
                path: path.to_owned(),
                line: line_no,
                message: format!("sample id {:?} already used on line {first}", record.id),
            });
        }
        records.push(record);
    }
    Ok(records)
}

/// Write records as JSONL (one compact JSON object per line).
pub fn write_manifest(path: &Path, records: &[ManifestRecord]) -> Result<()> {
    let mut out = Vec::new();
    for r in records {
        // Serialising plain data structs cannot fail.
        let line = serde_json::to_string(r).map_err(|e| Error::Dataset(e.to_string()))?;
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&out).map_err(|e| Error::io(path, e))
}

/// A sample with its image and masks loaded and checked.
#[derive(Debug, Clone)]
pub struct LoadedSample {
    /// The manifest line.
    pub record: ManifestRecord,
    /// The image.
    pub image: RgbImage,
    /// One mask per training target, each the image's size.
    pub target_masks: Vec<Mask>,
    /// Union of the training targets.
    pub train_mask: Mask,
    /// Evaluation GT mask.
    pub eval_mask: Mask,
}

fn resolve(root: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        root.join(p)
    }
}

/// Load one mask source relative to `root`.
pub fn load_mask(root: &Path, source: &MaskSource, limits: &ImageLimits) -> Result<Mask> {
    match source {
        MaskSource::Png { png } => Mask::read_png(&resolve(root, png), limits),
        MaskSource::Rle { rle } => Mask::from_coco_rle_with_limits(rle, limits),
        MaskSource::Label { label_png, classes } => {
            let labels = imageio::read_label_map(&resolve(root, label_png), limits)?;
            Ok(Mask::from_fn(labels.width(), labels.height(), |x, y| {
                classes.contains(&labels.get_pixel(x, y)[0])
            }))
        }
    }
}

fn load_all(
    root: &Path,
    sources: &[MaskSource],
    limits: &ImageLimits,
    image: &RgbImage,
    what: &str,
) -> Result<Vec<Mask>> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let m = load_mask(root, s, limits)?;
            if (m.width(), m.height()) != image.dimensions() {
                return Err(Error::SizeMismatch {
                    what: format!("{what} {i} against the image"),
                    expected_w: image.width(),
                    expected_h: image.height(),
                    found_w: m.width(),
                    found_h: m.height(),
                });
            }
            Ok(m)
        })
        .collect()
}

impl ManifestRecord {
    /// Load the image and masks (paths relative to `root`), checking every mask has the image's
    /// size. Errors name the sample id.
    pub fn load(&self, root: &Path, limits: &ImageLimits) -> Result<LoadedSample> {
        let inner = || -> Result<LoadedSample> {
            let image = imageio::read_rgb(&resolve(root, &self.image), limits)?;
            let (w, h) = image.dimensions();
            let target_masks = load_all(root, &self.masks, limits, &image, "target mask")?;
            let train_mask = merge_masks(w, h, &target_masks)?;
            let eval_mask = match &self.eval_masks {
                Some(sources) => {
                    merge_masks(w, h, &load_all(root, sources, limits, &image, "eval mask")?)?
                }
                None => train_mask.clone(),
            };
            Ok(LoadedSample {
                record: self.clone(),
                image,
                target_masks,
                train_mask,
                eval_mask,
            })
        };
        inner().map_err(|e| e.in_sample(&self.id))
    }
}

impl LoadedSample {
    /// Ground-truth objects in `space`: the precomputed ones when their `image_size` matches,
    /// otherwise one per target mask (METHOD §2).
    pub fn objects(&self, space: &PolicySpace) -> Vec<GtObject> {
        if let Some(pre) = &self.record.objects
            && pre.image_size == space.image_size()
        {
            return pre.items.clone();
        }
        self.regions()
            .iter()
            .map(|r| r.to_gt_object(space))
            .collect()
    }

    /// Regions (original pixels) of the non-empty target masks.
    pub fn regions(&self) -> Vec<GtRegion> {
        crate::gt::regions_from_masks(self.target_masks.iter().cloned())
    }
}
