//! SFT training samples: the METHOD §1 prompt and a target response built from the ground
//! truth (one reasoning sentence from the knowledge table plus the answer JSON).

use std::path::Path;

use image::RgbImage;
use platter_data::synth::knowledge::{FOODS, Food};
use platter_data::{GtObject, ImageLimits, PolicySpace, Split, read_manifest};
use platter_qwen25vl::{PreparedPrompt, Processor};
use platter_rl::reward::GroundTruthObject;
use serde::Serialize;

use super::msg;
use crate::Result;
use crate::eval::prepare_prompt;

/// One training sample: the question and its picture, the GT-built response and its ground
/// truth. The policy input ([`SftSample::prompt`]) is built when a batch needs it, so a split
/// costs its decoded pictures in memory (about 0.2 MB each at 320 × 240), not the prepared
/// pixel patches (about 1.2 MB each at 224 px).
#[derive(Debug, Clone)]
pub struct SftSample {
    /// Manifest sample id.
    pub id: String,
    /// Position of the sample in its split (the prompt's index).
    pub index: usize,
    /// The question.
    pub question: String,
    /// The picture as stored (resized to the policy input when the prompt is built).
    pub image: RgbImage,
    /// Side of the square policy input.
    pub image_size: u32,
    /// The target response text (without the stop token).
    pub response: String,
    /// Response token ids, ending in `<|im_end|>`.
    pub response_ids: Vec<u32>,
    /// GT objects in policy space.
    pub ground_truth: Vec<GroundTruthObject>,
}

impl SftSample {
    /// The METHOD §1 prompt with the image, prepared for the policy (the same as
    /// [`prepare_prompt`] gives evaluation and rollouts).
    pub fn prompt(&self, processor: &Processor) -> Result<PreparedPrompt> {
        prepare_prompt(
            processor,
            self.index,
            &self.question,
            &self.image,
            self.image_size,
        )
        .map_err(|e| msg(&format!("sample {}", self.id), e))
    }
}

fn food_by_name(name: &str) -> Option<&'static Food> {
    FOODS
        .iter()
        .find(|f| f.name == name || f.plural == Some(name))
}

fn serde_word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One reasoning sentence for `question` about the targets `names`, from the knowledge table:
/// the fact the question turns on (a nutrient, an allergen, the cooking method, cuisine, course
/// or group) for each distinct target. No '.' inside, so it stays one sentence for the
/// non-repeat term. Unknown names (not in the synthetic table) are mentioned by name only.
pub fn reasoning(question: &str, names: &[String]) -> String {
    let q = question.to_lowercase();
    let mut distinct: Vec<&str> = Vec::new();
    for n in names {
        if !distinct.contains(&n.as_str()) {
            distinct.push(n);
        }
    }
    let nutrient = ["protein", "fat", "sugar", "fibre"]
        .into_iter()
        .find(|n| q.contains(n));
    let allergen = platter_data::synth::knowledge::ALLERGENS
        .into_iter()
        .find(|a| q.contains(a));
    let facts: Vec<String> = distinct
        .iter()
        .map(|name| {
            let Some(f) = food_by_name(name) else {
                return format!("the {name} matches");
            };
            let method = serde_word(&f.method);
            let group = serde_word(&f.group);
            if let Some(n) = nutrient {
                let g = match n {
                    "protein" => f.protein,
                    "fat" => f.fat,
                    "sugar" => f.sugar,
                    _ => f.fibre,
                };
                format!("the {name} has {} g of {n} per 100 g", g.round())
            } else if let Some(a) = allergen {
                format!("the {name} contains {a}")
            } else if q.contains("cuisine") {
                format!("the {name} is from {} cuisine", f.cuisine)
            } else if q.contains(&method) {
                format!("the {name} is {method}")
            } else if q.contains("largest") {
                format!("the {name} is the largest item")
            } else if q.contains("vegetarian") || q.contains("point out") {
                format!("the {name} is {group}")
            } else {
                format!("the {name} is a {} dish", serde_word(&f.course))
            }
        })
        .collect();
    format!("{}, so it matches", facts.join(" and "))
}

/// The answer JSON of METHOD §1 for `objects`, integer pixels, in the prompt example's style.
pub fn answer_json(objects: &[GtObject]) -> String {
    let items: Vec<String> = objects
        .iter()
        .map(|o| {
            let b = o.bbox_2d.map(|v| v.round() as i64);
            let p = o.point_2d.map(|v| v.round() as i64);
            format!(
                "{{\"bbox_2d\": [{},{},{},{}], \"point_2d\": [{},{}]}}",
                b[0], b[1], b[2], b[3], p[0], p[1]
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The full target response for one sample.
pub fn target_response(question: &str, names: &[String], objects: &[GtObject]) -> String {
    format!(
        "<think>{}</think><answer>{}</answer>",
        reasoning(question, names),
        answer_json(objects)
    )
}

/// Loads and prepares the samples of `split` (at most `limit`, 0 = all, in manifest order).
pub fn load_split(
    manifest: &Path,
    split: Split,
    processor: &Processor,
    image_size: u32,
    limit: usize,
) -> Result<Vec<SftSample>> {
    let root = manifest.parent().unwrap_or(Path::new("."));
    let space = PolicySpace::new(image_size).map_err(|e| msg("sft.image_size", e))?;
    let limits = ImageLimits::default();
    let im_end = processor
        .token_id("<|im_end|>")
        .map_err(|e| msg("tokenizer", e))?;
    let mut out = Vec::new();
    let records =
        read_manifest(manifest).map_err(|e| msg(&format!("{}", manifest.display()), e))?;
    for rec in records {
        if rec.split != split {
            continue;
        }
        if limit > 0 && out.len() >= limit {
            break;
        }
        let loaded = rec
            .load(root, &limits)
            .map_err(|e| msg(&manifest.display().to_string(), e))?;
        let objects = loaded.objects(&space);
        let response = target_response(&rec.question, &rec.target_names, &objects);
        let mut response_ids = processor
            .encode(&response)
            .map_err(|e| msg(&format!("sample {}", rec.id), e))?;
        response_ids.push(im_end);
        let ground_truth = objects
            .iter()
            .map(|o| GroundTruthObject {
                bbox_2d: o.bbox_2d,
                point_2d: o.point_2d,
            })
            .collect();
        let sample = SftSample {
            id: rec.id,
            index: out.len(),
            question: rec.question,
            image: loaded.image,
            image_size,
            response,
            response_ids,
            ground_truth,
        };
        // Built once here so that a bad sample fails the load, naming it, rather than a step.
        sample.prompt(processor)?;
        out.push(sample);
    }
    Ok(out)
}
