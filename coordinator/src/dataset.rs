//! Prompts of an experiment: the manifest's samples of one split, visited in a seeded
//! permutation per epoch. The sampler cursor (prompts drawn so far) is all the state needed to
//! resume without repeating or skipping data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use platter_data::{ImageLimits, ManifestRecord, PolicySpace, read_manifest};
use platter_proto::v1;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::DataConfig;
use crate::{Error, Result};

/// What a lease carries about one prompt.
#[derive(Debug, Clone)]
pub struct PromptPayload {
    /// Dataset sample id.
    pub sample_id: String,
    /// METHOD §1 user prompt.
    pub prompt_text: String,
    /// Encoded original image, as stored.
    pub image: Vec<u8>,
    /// GT objects in the policy space.
    pub ground_truth: Vec<v1::GroundTruthObject>,
    /// Training GT mask (union of targets), original pixels.
    pub ground_truth_mask: v1::RleMask,
}

/// The samples of one split and the per-epoch permutation.
#[derive(Debug)]
pub struct PromptSource {
    root: PathBuf,
    records: Vec<ManifestRecord>,
    space: PolicySpace,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
    cache: HashMap<usize, PromptPayload>,
}

impl PromptSource {
    /// Reads the manifest and keeps the configured split; an empty split is an error.
    pub fn open(cfg: &DataConfig, seed: u64) -> Result<Self> {
        let records: Vec<_> = read_manifest(&cfg.manifest)
            .map_err(|e| Error::Data(e.to_string()))?
            .into_iter()
            .filter(|r| r.split == cfg.split)
            .collect();
        if records.is_empty() {
            return Err(Error::Data(format!(
                "{}: no samples in split `{}`",
                cfg.manifest.display(),
                cfg.split.as_str()
            )));
        }
        let root = cfg
            .manifest
            .parent()
            .map_or_else(PathBuf::new, Path::to_path_buf);
        let space = PolicySpace::new(cfg.image_size).map_err(|e| Error::Data(e.to_string()))?;
        Ok(Self {
            root,
            records,
            space,
            seed,
            epoch: None,
            cache: HashMap::new(),
        })
    }

    /// Samples in the split.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the split is empty (never, after `open`).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The prompt index drawn at `cursor`: position `cursor mod n` of epoch `cursor / n`'s
    /// permutation (seeded by the experiment seed and the epoch).
    pub fn index_at(&mut self, cursor: u64) -> usize {
        let n = self.records.len() as u64;
        let epoch = cursor / n;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..self.records.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch);
            perm.shuffle(&mut rng);
            self.epoch = Some((epoch, perm));
        }
        self.epoch
            .as_ref()
            .map_or(0, |(_, perm)| perm[(cursor % n) as usize])
    }

    /// Loads (and caches) what a lease of prompt `index` carries.
    pub fn payload(&mut self, index: usize) -> Result<PromptPayload> {
        if let Some(p) = self.cache.get(&index) {
            return Ok(p.clone());
        }
        let record = self.records.get(index).ok_or_else(|| {
            Error::Data(format!(
                "prompt index {index} out of range (split has {})",
                self.records.len()
            ))
        })?;
        let limits = ImageLimits::default();
        let sample = record
            .load(&self.root, &limits)
            .map_err(|e| Error::Data(e.to_string()))?;
        let image_path = if record.image.is_absolute() {
            record.image.clone()
        } else {
            self.root.join(&record.image)
        };
        let image = platter_data::imageio::read_bytes(&image_path)
            .map_err(|e| Error::Data(e.to_string()))?;
        let payload = PromptPayload {
            sample_id: record.id.clone(),
            prompt_text: platter_rl::prompt::user_prompt(
                &record.question,
                platter_rl::prompt::DEFAULT_ANSWER_EXAMPLE,
            ),
            image,
            ground_truth: sample
                .objects(&self.space)
                .into_iter()
                .map(|o| v1::GroundTruthObject {
                    bbox_2d: o.bbox_2d.to_vec(),
                    point_2d: o.point_2d.to_vec(),
                })
                .collect(),
            ground_truth_mask: platter_reward::mask_to_rle(&sample.train_mask),
        };
        self.cache.insert(index, payload.clone());
        Ok(payload)
    }
}
