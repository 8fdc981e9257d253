//! SAM2 commands: `platter debug sam2-masks` (raw multimask logits for comparison with another
//! implementation) and `platter debug sam2-segment` (a mask for a prompt a person gives
//! directly).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use platter_data::ImageLimits;
use platter_data::imageio::read_rgb;
use platter_sam2::{OfficialSize, Prompt, Sam2, Sam2Config};
use serde::Deserialize;

/// Arguments of `platter debug sam2-masks`.
#[derive(Debug, clap::Args)]
pub struct Sam2MasksArgs {
    /// SAM2 checkpoint: Meta's `.pt` (`{"model": state_dict}`) or `.safetensors`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Meta's YAML model config; without it the size is taken from an official file name
    /// (`sam2.1_hiera_{tiny,small,base_plus,large}.pt`).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// The image (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// JSON list of prompts in original-image pixels:
    /// `[{"box": [x1,y1,x2,y2], "points": [[x,y],...], "labels": [1|0,...]}, ...]`
    /// (every field optional; labels default to 1).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output safetensors: `masks` [P, 3, H, W] f32 logits at the original resolution and
    /// `iou_scores` [P, 3].
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `platter debug sam2-segment`: one object's prompt given directly.
#[derive(Debug, clap::Args)]
pub struct Sam2SegmentArgs {
    /// The image (PNG or JPEG).
    pub image: PathBuf,
    /// SAM2 checkpoint: Meta's `.pt` or `.safetensors`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Meta's YAML model config (default: the official size named by the checkpoint file).
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Box `x1,y1,x2,y2` in original-image pixels.
    #[arg(long = "box", value_parser = parse_box)]
    pub bbox: Option<[f32; 4]>,
    /// Foreground point `x,y` in original-image pixels (repeatable).
    #[arg(long, value_parser = parse_point)]
    pub point: Vec<[f32; 2]>,
    /// Background point `x,y` (repeatable).
    #[arg(long, value_parser = parse_point)]
    pub negative_point: Vec<[f32; 2]>,
    /// Directory for `mask.png` and `overlay.png` (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
}

fn parse_floats<const N: usize>(s: &str) -> Result<[f32; N], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|e| format!("{p:?} is not a number: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let n = v.len();
    v.try_into()
        .map_err(|_| format!("expected {N} comma-separated numbers, found {n}"))
}

fn parse_box(s: &str) -> Result<[f32; 4], String> {
    parse_floats::<4>(s)
}

fn parse_point(s: &str) -> Result<[f32; 2], String> {
    parse_floats::<2>(s)
}

/// Loads SAM2 from a checkpoint, with its config from Meta's YAML or the official size in the
/// file name.
pub(crate) fn load_model(checkpoint: &Path, model_config: Option<&Path>) -> anyhow::Result<Sam2> {
    let cfg = match model_config {
        Some(path) => Sam2Config::from_yaml_file(path)?,
        None => match OfficialSize::from_file_name(checkpoint) {
            Some(size) => Sam2Config::official(size),
            None => bail!(
                "cannot tell the model size from {}; pass --model-config (Meta's YAML)",
                checkpoint.display()
            ),
        },
    };
    let device = Device::cuda_if_available(0)?;
    Ok(Sam2::load(checkpoint, cfg, &device)?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPrompt {
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
    points: Option<Vec<[f32; 2]>>,
    labels: Option<Vec<u8>>,
}

fn read_prompts(path: &Path) -> anyhow::Result<Vec<Prompt>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let raw: Vec<JsonPrompt> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of {{box?, points?, labels?}}",
            path.display()
        )
    })?;
    raw.into_iter()
        .enumerate()
        .map(|(i, p)| {
            let points = p.points.unwrap_or_default();
            let labels = p.labels.unwrap_or_else(|| vec![1; points.len()]);
            if labels.len() != points.len() {
                bail!(
                    "{} prompt {i}: {} points but {} labels",
                    path.display(),
                    points.len(),
                    labels.len()
                );
            }
            let mut prompt = Prompt {
                bbox: p.bbox,
                points: Vec::new(),
            };
            for ([x, y], l) in points.into_iter().zip(labels) {
                if l > 1 {
                    bail!(
                        "{} prompt {i}: label {l}; expected 1 (foreground) or 0 (background)",
                        path.display()
                    );
                }
                prompt = prompt.with_point(x, y, l == 1);
            }
            Ok(prompt)
        })
        .collect()
}

/// Predicts each prompt separately with multimask output and writes logits and IoU scores.
pub fn sam2_masks(args: Sam2MasksArgs) -> anyhow::Result<()> {
    let sam = load_model(&args.checkpoint, args.model_config.as_deref())?;
    let image = read_rgb(&args.image, &ImageLimits::default())?;
    let prompts = read_prompts(&args.prompts)?;
    if prompts.is_empty() {
        bail!("{}: no prompts", args.prompts.display());
    }
    let emb = sam.set_image(&image)?;
    let (mut masks, mut ious) = (Vec::new(), Vec::new());
    for (i, p) in prompts.iter().enumerate() {
        let pred = sam
            .predict(&emb, std::slice::from_ref(p), true)?
            .pop()
            .context("no prediction returned")?
            .with_context(|| format!("{} prompt {i}", args.prompts.display()))?;
        masks.push(sam.upscale_to_original(&pred.low_res_logits, emb.orig_hw())?);
        ious.push(Tensor::new(pred.iou_scores.as_slice(), &Device::Cpu)?);
    }
    let out: HashMap<String, Tensor> = HashMap::from([
        (
            "masks".to_string(),
            Tensor::stack(&masks, 0)?.to_device(&Device::Cpu)?,
        ),
        ("iou_scores".to_string(), Tensor::stack(&ious, 0)?),
    ]);
    candle_core::safetensors::save(&out, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let c = sam.prompt_counters();
    tracing::info!(
        prompts = prompts.len(),
        boxes_clipped = c.boxes_clipped,
        boxes_inverted = c.boxes_inverted,
        points_clipped = c.points_clipped,
        "wrote {}",
        args.out.display()
    );
    Ok(())
}

/// Segments one object and writes `mask.png` (white = object) and `overlay.png`.
pub fn sam2_segment(args: Sam2SegmentArgs) -> anyhow::Result<()> {
    let mut prompt = Prompt {
        bbox: args.bbox,
        points: Vec::new(),
    };
    for [x, y] in &args.point {
        prompt = prompt.with_point(*x, *y, true);
    }
    for [x, y] in &args.negative_point {
        prompt = prompt.with_point(*x, *y, false);
    }
    if prompt.bbox.is_none() && prompt.points.is_empty() {
        bail!("give at least one of --box, --point, --negative-point");
    }
    let sam = load_model(&args.checkpoint, args.model_config.as_deref())?;
    let image = read_rgb(&args.image, &ImageLimits::default())?;
    let emb = sam.set_image(&image)?;
    let pred = sam
        .predict(&emb, std::slice::from_ref(&prompt), true)?
        .pop()
        .context("no prediction returned")??;
    let best = pred.best_index();
    let logits =
        sam.upscale_to_original(&pred.low_res_logits.narrow(0, best, 1)?, emb.orig_hw())?;
    let logits = logits
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (w, h) = (image.width(), image.height());
    let mask = platter_data::Mask::from_fn(w, h, |x, y| logits[(y * w + x) as usize] > 0.0);

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let mask_path = args.out_dir.join("mask.png");
    mask.write_png(&mask_path)?;
    let mut overlay = image.clone();
    for (x, y, px) in overlay.enumerate_pixels_mut() {
        if mask.get(x, y) {
            let tint = [255u16, 40, 140];
            for (v, t) in px.0.iter_mut().zip(tint) {
                *v = ((u16::from(*v) + t) / 2) as u8;
            }
        }
    }
    if let Some([x1, y1, x2, y2]) = prompt.bbox {
        let clampx = |v: f32| v.clamp(0.0, (w - 1) as f32) as u32;
        let clampy = |v: f32| v.clamp(0.0, (h - 1) as f32) as u32;
        let (x1, x2, y1, y2) = (
            clampx(x1.min(x2)),
            clampx(x1.max(x2)),
            clampy(y1.min(y2)),
            clampy(y1.max(y2)),
        );
        for x in x1..=x2 {
            overlay.get_pixel_mut(x, y1).0 = [0, 255, 0];
            overlay.get_pixel_mut(x, y2).0 = [0, 255, 0];
        }
        for y in y1..=y2 {
            overlay.get_pixel_mut(x1, y).0 = [0, 255, 0];
            overlay.get_pixel_mut(x2, y).0 = [0, 255, 0];
        }
    }
    for p in &prompt.points {
        let color = if p.positive { [0, 255, 0] } else { [255, 0, 0] };
        let (cx, cy) = (p.x.round() as i64, p.y.round() as i64);
        for dy in -2i64..=2 {
            for dx in -2i64..=2 {
                let (x, y) = (cx + dx, cy + dy);
                if x >= 0 && y >= 0 && x < i64::from(w) && y < i64::from(h) {
                    overlay.get_pixel_mut(x as u32, y as u32).0 = color;
                }
            }
        }
    }
    let overlay_path = args.out_dir.join("overlay.png");
    overlay
        .save(&overlay_path)
        .with_context(|| format!("writing {}", overlay_path.display()))?;
    println!(
        "mask: {} ({} px, predicted IoU {:.3}, object score {:.2}); overlay: {}",
        mask_path.display(),
        mask.count(),
        pred.iou_scores[best],
        pred.object_score_logit,
        overlay_path.display()
    );
    Ok(())
}
