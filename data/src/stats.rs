//! Dataset statistics for `platter data stats`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::coords::PolicySpace;
use crate::error::Result;
use crate::imageio::ImageLimits;
use crate::manifest::ManifestRecord;

/// Summary of a distribution.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median (lower middle).
    pub median: f64,
    /// Largest.
    pub max: f64,
}

impl Summary {
    /// Summarise `values` (empty → all zero).
    pub fn of(mut values: Vec<f64>) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Summary {
            n,
            min: values[0],
            mean: values.iter().sum::<f64>() / n as f64,
            median: values[(n - 1) / 2],
            max: values[n - 1],
        }
    }
}

/// What `platter data stats` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatasetStats {
    /// Samples per split.
    pub samples: BTreeMap<String, usize>,
    /// Distinct images per split.
    pub images: BTreeMap<String, usize>,
    /// GT objects per sample.
    pub objects_per_sample: Summary,
    /// Training GT mask area as a fraction of the image.
    pub train_mask_area_fraction: Summary,
    /// Samples whose evaluation GT differs from the training GT (multi-turn merging).
    pub eval_differs: usize,
    /// Samples naming each target class.
    pub classes: BTreeMap<String, usize>,
}

/// Load every sample (checking files and sizes) and summarise. Errors name the sample id.
pub fn dataset_stats(
    records: &[ManifestRecord],
    root: &Path,
    limits: &ImageLimits,
    space: &PolicySpace,
) -> Result<DatasetStats> {
    let mut stats = DatasetStats::default();
    let mut images: BTreeMap<String, std::collections::BTreeSet<&Path>> = BTreeMap::new();
    let mut objects = Vec::new();
    let mut areas = Vec::new();
    for r in records {
        let split = r.split.as_str().to_owned();
        *stats.samples.entry(split.clone()).or_default() += 1;
        images.entry(split).or_default().insert(r.image.as_path());
        let s = r.load(root, limits)?;
        objects.push(s.objects(space).len() as f64);
        let pixels = f64::from(s.image.width()) * f64::from(s.image.height());
        areas.push(s.train_mask.count() as f64 / pixels.max(1.0));
        stats.eval_differs += usize::from(s.eval_mask != s.train_mask);
        let mut names: Vec<&String> = r.target_names.iter().collect();
        names.sort();
        names.dedup();
        for n in names {
            *stats.classes.entry(n.clone()).or_default() += 1;
        }
    }
    stats.images = images.into_iter().map(|(k, v)| (k, v.len())).collect();
    stats.objects_per_sample = Summary::of(objects);
    stats.train_mask_area_fraction = Summary::of(areas);
    Ok(stats)
}
