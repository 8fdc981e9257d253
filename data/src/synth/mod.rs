//! The synthetic food world: `platter data synth --seed S --n N --out DIR`.
//!
//! Each image is a table with a plate, tray or bento box holding a few foods from the
//! [`knowledge`] table (several of a kind, partial occlusion, sauce and cutlery distractors), and
//! each question needs both the table and the picture. Image `i` is drawn from its own ChaCha8
//! stream (`seed`, stream `i`), so output is identical for a seed whatever the thread count.
//! Splits are by image (`i mod 10`: 0–7 train, 8 val, 9 test), so no image is shared.
//!
//! Written twice: FoodReasonSeg's native layout (so the native reader runs on real-format data)
//! and `manifest.jsonl` with exact per-instance COCO RLE masks and precomputed objects.

pub mod knowledge;
pub mod questions;
pub mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::coords::PolicySpace;
use crate::error::{Error, Result};
use crate::foodreasonseg::{Dish, FoodReasonSeg, Turn};
use crate::gt::GtRegion;
use crate::manifest::{ManifestRecord, MaskSource, PrecomputedObjects, Split, write_manifest};
use crate::mask::Mask;
use knowledge::{FOODS, OTHER_INGREDIENTS};
use questions::{Present, Qa};
use render::{Canvas, Item};

/// Settings of the generator.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Seed of the world.
    pub seed: u64,
    /// Number of images (one sample per question; `questions_per_image` per image).
    pub n: usize,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Questions asked about each image.
    pub questions_per_image: usize,
    /// Side of the policy input space the precomputed objects are in.
    pub policy_image_size: u32,
    /// JPEG quality of the images.
    pub jpeg_quality: u8,
    /// Worker threads (output does not depend on it).
    pub threads: usize,
    /// Multiplier on every food's drawn size (1 = the table's sizes).
    pub item_scale: f32,
    /// Most distinct foods in one scene (each scene has 2 to this many).
    pub max_foods: usize,
    /// Strength of the scene lighting: a warm light on the left and a cool one at the top
    /// fall off across the picture, so each channel's brightness drifts with the position
    /// (0 = evenly lit). The exact masks do not change.
    pub lighting: f32,
}

impl Default for SynthConfig {
    /// 320 × 240 images, one question each, objects for a 336-pixel policy input.
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            n: 1000,
            width: 320,
            height: 240,
            questions_per_image: 1,
            policy_image_size: 336,
            jpeg_quality: 90,
            threads: 2,
            item_scale: 1.0,
            max_foods: 5,
            lighting: 0.0,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<()> {
        if !(64..=4096).contains(&self.width) || !(48..=4096).contains(&self.height) {
            return Err(Error::Config(format!(
                "synth width must be in 64..=4096 and height in 48..=4096, found {}x{}",
                self.width, self.height
            )));
        }
        if self.questions_per_image == 0 || self.questions_per_image > 8 {
            return Err(Error::Config(format!(
                "questions_per_image must be in 1..=8, found {}",
                self.questions_per_image
            )));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(Error::Config(format!(
                "jpeg_quality must be in 1..=100, found {}",
                self.jpeg_quality
            )));
        }
        if !(self.item_scale.is_finite() && (0.25..=3.0).contains(&self.item_scale)) {
            return Err(Error::Config(format!(
                "item_scale must be in 0.25..=3.0, found {}",
                self.item_scale
            )));
        }
        if !(2..=5).contains(&self.max_foods) {
            return Err(Error::Config(format!(
                "max_foods must be in 2..=5, found {}",
                self.max_foods
            )));
        }
        if !(self.lighting.is_finite() && (0.0..=0.5).contains(&self.lighting)) {
            return Err(Error::Config(format!(
                "lighting must be in 0.0..=0.5, found {}",
                self.lighting
            )));
        }
        PolicySpace::new(self.policy_image_size)?;
        Ok(())
    }
}

/// Split of image `index`.
pub fn split_of(index: usize) -> Split {
    match index % 10 {
        8 => Split::Val,
        9 => Split::Test,
        _ => Split::Train,
    }
}

/// One generated image with its questions and exact masks.
#[derive(Debug)]
pub struct Scene {
    /// Dish id (`000042`).
    pub dish_id: String,
    /// Its split.
    pub split: Split,
    /// Picture, label map and instance map.
    pub canvas: Canvas,
    /// Class id and visible mask of every instance (index = instance id − 1).
    pub instances: Vec<(u8, Mask)>,
    /// Questions with their answer turns.
    pub qas: Vec<Qa>,
}

/// Scenes redrawn before giving up on an image (only reachable with tiny images).
const MAX_ATTEMPTS: usize = 500;

/// Draw scene `index` of the world.
pub fn scene(cfg: &SynthConfig, index: usize) -> Result<Scene> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(index as u64);
    let (w, h) = (cfg.width, cfg.height);
    let side = w.min(h) as f32;
    for _ in 0..MAX_ATTEMPTS {
        let mut canvas = render::table(w, h, &mut rng);
        let container = render::container(&mut canvas, &mut rng);
        if rng.random_bool(0.5) {
            render::cutlery(&mut canvas, &mut rng);
        }
        if rng.random_bool(0.3) {
            render::sauce(&mut canvas, &container, &mut rng, OTHER_INGREDIENTS);
        }
        let mut foods: Vec<&'static knowledge::Food> = FOODS.iter().collect();
        foods.shuffle(&mut rng);
        let k = rng.random_range(2..=cfg.max_foods);
        let mut items: Vec<Item> = Vec::new();
        for food in &foods[..k] {
            let copies = match rng.random_range(0..20) {
                0..12 => 1,
                12..17 => 2,
                _ => 3,
            };
            for _ in 0..copies {
                if items.len() >= 8 {
                    break;
                }
                let r = food.size * side * rng.random_range(1.0..1.35) * cfg.item_scale;
                // Best of a few tries: the spot overlapping its neighbours least.
                let mut best = (f32::MIN, (0.0, 0.0));
                for _ in 0..15 {
                    let (cx, cy) = container.sample_point(&mut rng, r * 0.6);
                    let clearance = items
                        .iter()
                        .map(|it| ((it.cx - cx).hypot(it.cy - cy) - it.r - r) / r)
                        .fold(f32::MAX, f32::min);
                    if clearance > best.0 {
                        best = (clearance, (cx, cy));
                    }
                }
                items.push(Item::new(food, best.1.0, best.1.1, r, &mut rng));
            }
        }
        for (i, item) in items.iter().enumerate() {
            // At most 8 items, so the instance id fits a byte.
            item.paint(&mut canvas, item.food.id, (i + 1) as u8);
        }
        let instances: Vec<(u8, Mask)> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let id = (i + 1) as u8;
                (
                    it.food.id,
                    Mask::from_fn(w, h, |x, y| canvas.instances.get_pixel(x, y)[0] == id),
                )
            })
            .collect();
        render::light(&mut canvas, cfg.lighting);
        // Redraw when occlusion left an instance too small to see.
        let min_area = (side * side * 0.0015).max(12.0) as u64;
        if instances.iter().any(|(_, m)| m.count() < min_area) {
            continue;
        }
        let mut present: Vec<Present> = Vec::new();
        for (item, (_, m)) in items.iter().zip(&instances) {
            match present.iter_mut().find(|p| p.food.id == item.food.id) {
                Some(p) => p.areas.push(m.count()),
                None => present.push(Present {
                    food: item.food,
                    areas: vec![m.count()],
                }),
            }
        }
        let mut qas: Vec<Qa> = Vec::new();
        for _ in 0..cfg.questions_per_image * 4 {
            if qas.len() == cfg.questions_per_image {
                break;
            }
            if let Some(qa) = questions::ask(&present, container.noun(), &mut rng)
                && qas.iter().all(|q| q.question != qa.question)
            {
                qas.push(qa);
            }
        }
        if qas.is_empty() {
            continue;
        }
        return Ok(Scene {
            dish_id: format!("{index:06}"),
            split: split_of(index),
            canvas,
            instances,
            qas,
        });
    }
    Err(Error::Dataset(format!(
        "image {index}: no scene with visible foods and a well-defined question after \
         {MAX_ATTEMPTS} attempts at {w}x{h}; use larger images"
    )))
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SynthReport {
    /// Images per split.
    pub images: BTreeMap<&'static str, usize>,
    /// Samples (questions) per split.
    pub samples: BTreeMap<&'static str, usize>,
    /// Samples per question template.
    pub kinds: BTreeMap<&'static str, usize>,
    /// Questions whose answer spans two turns.
    pub multi_turn: usize,
    /// The manifest path.
    pub manifest: PathBuf,
}

struct Written {
    split: Split,
    dish: Dish,
    records: Vec<ManifestRecord>,
    kinds: Vec<&'static str>,
    multi_turn: usize,
}

fn write_scene(cfg: &SynthConfig, out: &Path, s: Scene) -> Result<Written> {
    let image_rel = FoodReasonSeg::image_path(s.split, &s.dish_id)?;
    let ann_rel = FoodReasonSeg::ann_path(s.split, &s.dish_id)?;
    let image_path = out.join(&image_rel);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&image_path).map_err(|e| Error::io(&image_path, e))?,
    );
    JpegEncoder::new_with_quality(&mut file, cfg.jpeg_quality)
        .encode_image(&s.canvas.rgb)
        .map_err(|source| Error::Image {
            what: image_path.display().to_string(),
            source,
        })?;
    let ann_path = out.join(&ann_rel);
    s.canvas
        .labels
        .save(&ann_path)
        .map_err(|source| Error::Image {
            what: ann_path.display().to_string(),
            source,
        })?;
    let space = PolicySpace::new(cfg.policy_image_size)?;
    let mut conversations = Vec::new();
    let mut records = Vec::new();
    let mut kinds = Vec::new();
    let mut multi_turn = 0;
    for (qi, qa) in s.qas.iter().enumerate() {
        let prefix = if qi == 0 { "<image>\n" } else { "" };
        conversations.push(Turn {
            form: "question".into(),
            value: format!("{prefix}{}", qa.question),
        });
        for (text, _) in &qa.turns {
            conversations.push(Turn {
                form: "answer".into(),
                value: text.clone(),
            });
        }
        let all: Vec<u8> = qa.turns.iter().flat_map(|t| t.1.iter().copied()).collect();
        let first = &qa.turns[0].1;
        let pick = |classes: &[u8]| -> Vec<&(u8, Mask)> {
            s.instances
                .iter()
                .filter(|(c, _)| classes.contains(c))
                .collect()
        };
        let targets = pick(&all);
        let objects = targets
            .iter()
            .filter_map(|(_, m)| GtRegion::from_mask(m.clone()))
            .map(|r| r.to_gt_object(&space))
            .collect();
        records.push(ManifestRecord {
            id: format!("{}-q{qi}", s.dish_id),
            split: s.split,
            image: image_rel.clone(),
            question: qa.question.clone(),
            masks: targets
                .iter()
                .map(|(_, m)| MaskSource::Rle {
                    rle: m.to_coco_rle(),
                })
                .collect(),
            eval_masks: (qa.turns.len() > 1).then(|| {
                pick(first)
                    .iter()
                    .map(|(_, m)| MaskSource::Rle {
                        rle: m.to_coco_rle(),
                    })
                    .collect()
            }),
            target_names: targets
                .iter()
                .map(|(c, _)| knowledge::food(*c).map_or_else(String::new, |f| f.name.to_owned()))
                .collect(),
            objects: Some(PrecomputedObjects {
                image_size: cfg.policy_image_size,
                items: objects,
            }),
        });
        kinds.push(qa.kind);
        multi_turn += usize::from(qa.turns.len() > 1);
    }
    Ok(Written {
        split: s.split,
        dish: Dish {
            dish_id: s.dish_id,
            conversations,
        },
        records,
        kinds,
        multi_turn,
    })
}

/// Generate the world into `out` (created if missing): FoodReasonSeg layout, `knowledge.json`
/// and `manifest.jsonl`.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<SynthReport> {
    cfg.validate()?;
    let splits = [Split::Train, Split::Val, Split::Test];
    for split in splits {
        for dir in ["img_dir", "ann_dir"] {
            let d = out.join("Images").join(dir).join(split.as_str());
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
    }
    let write = |p: PathBuf, text: String| std::fs::write(&p, text).map_err(|e| Error::io(&p, e));
    write(out.join("category_id.txt"), knowledge::category_id_txt())?;
    let table =
        serde_json::to_string_pretty(&FOODS[..]).map_err(|e| Error::Dataset(e.to_string()))?;
    write(out.join("knowledge.json"), table)?;

    let threads = cfg.threads.clamp(1, 64);
    let results: Vec<Result<Written>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..cfg.n)
                        .step_by(threads)
                        .map(|i| write_scene(cfg, out, scene(cfg, i)?))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut per_thread: Vec<std::vec::IntoIter<Result<Written>>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(Error::Dataset("a synth worker panicked".into()))])
                    .into_iter()
            })
            .collect();
        // Re-interleave into index order.
        let mut ordered = Vec::with_capacity(cfg.n);
        for i in 0..cfg.n {
            if let Some(r) = per_thread[i % threads].next() {
                ordered.push(r);
            }
        }
        ordered
    });

    let mut report = SynthReport {
        manifest: out.join("manifest.jsonl"),
        ..SynthReport::default()
    };
    let mut dishes: BTreeMap<&'static str, Vec<Dish>> = BTreeMap::new();
    let mut records = Vec::new();
    for r in results {
        let w = r?;
        *report.images.entry(w.split.as_str()).or_default() += 1;
        *report.samples.entry(w.split.as_str()).or_default() += w.records.len();
        for k in w.kinds {
            *report.kinds.entry(k).or_default() += 1;
        }
        report.multi_turn += w.multi_turn;
        dishes.entry(w.split.as_str()).or_default().push(w.dish);
        records.extend(w.records);
    }
    for split in splits {
        let list = dishes.remove(split.as_str()).unwrap_or_default();
        let json =
            serde_json::to_string_pretty(&list).map_err(|e| Error::Dataset(e.to_string()))?;
        write(
            out.join(format!("FoodReasonSeg_{}.json", split.as_str())),
            json,
        )?;
    }
    write_manifest(&report.manifest, &records)?;
    tracing::info!(images = cfg.n, samples = records.len(), out = %out.display(), "synthetic world written");
    Ok(report)
}
