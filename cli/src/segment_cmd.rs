//! `platter segment IMAGE "question" --checkpoint DIR`: ask the policy a question about one
//! image, print its reasoning and answer, and write the mask and an overlay.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use platter_data::imageio::read_rgb;
use platter_data::{GtObject, ImageLimits, ImageSize, PolicyBox, PolicyPoint, PolicySpace};
use platter_learner::eval::{
    check_image_size, default_image_size, greedy_responses, predict_mask, prepare_prompt,
};
use platter_rl::ParsedResponse;
use platter_rl::parse::Answer;
use platter_rl::reward::RewardConfig;
use serde::Serialize;

use crate::eval_cmd::{SegmenterArgs, check_checkpoint, load_policy};

/// Ask the policy a question about an image; prints its reasoning, writes mask and overlay PNGs.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// The image (PNG or JPEG).
    image: PathBuf,
    /// The question, e.g. "What should a person allergic to nuts avoid?".
    question: String,
    /// HF model directory of the policy.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    segmenter: SegmenterArgs,
    /// Policy input side (default: the size the checkpoint's preprocessor pins, else 840).
    #[arg(long)]
    image_size: Option<u32>,
    /// Generation limit.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Enlargement of the overlay (1 to 8).
    #[arg(long, default_value_t = 2)]
    zoom: u32,
    /// Directory for `mask.png`, `overlay.png` and `response.json` (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
}

/// One answer object in both coordinate spaces.
#[derive(Debug, Serialize)]
struct ObjectOut {
    bbox_2d: [f64; 4],
    point_2d: [f64; 2],
    original_box: [f64; 4],
    original_point: [f64; 2],
}

/// What `response.json` holds.
#[derive(Debug, Serialize)]
struct ResponseOut<'a> {
    question: &'a str,
    checkpoint: String,
    segmenter: &'a str,
    image_size: u32,
    response: &'a str,
    reasoning: Option<&'a str>,
    think_format_ok: bool,
    answer_parsed: bool,
    objects: Vec<ObjectOut>,
    response_tokens: usize,
    stopped: bool,
    mask_pixels: u64,
}

fn answer_status(parsed: &ParsedResponse) -> String {
    match &parsed.answer {
        Answer::Missing => "no <answer>…</answer> in the response".into(),
        Answer::NotJson(reason) => format!("the answer is not JSON ({reason})"),
        Answer::NotAList => "the answer is JSON but not a list".into(),
        Answer::Objects { total_items, .. } => format!("{total_items} object(s)"),
    }
}

/// Runs `platter segment`.
pub fn run(a: SegmentArgs) -> anyhow::Result<()> {
    if a.question.trim().is_empty() {
        bail!("the question is empty");
    }
    check_checkpoint(&a.checkpoint)?;
    a.segmenter.check()?;
    let image = read_rgb(&a.image, &ImageLimits::default())
        .with_context(|| format!("reading the image {}", a.image.display()))?;
    let (policy, processor) = load_policy(&a.checkpoint)?;
    let image_size = a
        .image_size
        .unwrap_or_else(|| default_image_size(&processor));
    check_image_size(&processor, image_size)?;
    let segmenter = a.segmenter.load()?;

    let prompt = prepare_prompt(&processor, 0, &a.question, &image, image_size)?;
    let response = greedy_responses(
        &policy,
        &processor,
        std::slice::from_ref(&prompt),
        a.max_new_tokens,
    )?
    .pop()
    .context("the policy returned no response")?;
    let reward = RewardConfig::default();
    let parsed = ParsedResponse::parse(&response.text, reward.max_objects);
    let space = PolicySpace::new(image_size)?;
    let predicted = predict_mask(&parsed, &image, &space, segmenter.as_ref())?;

    let size = ImageSize {
        width: image.width(),
        height: image.height(),
    };
    let valid: Vec<GtObject> = parsed
        .objects()
        .iter()
        .filter(|o| o.is_valid())
        .filter_map(|o| {
            Some(GtObject {
                bbox_2d: o.bbox_2d?,
                point_2d: o.point_2d?,
            })
        })
        .collect();
    let objects: Vec<ObjectOut> = valid
        .iter()
        .map(|o| ObjectOut {
            bbox_2d: o.bbox_2d,
            point_2d: o.point_2d,
            original_box: space.box_to_original(PolicyBox(o.bbox_2d), size).0,
            original_point: space.point_to_original(PolicyPoint(o.point_2d), size).0,
        })
        .collect();

    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let mask_path = a.out_dir.join("mask.png");
    predicted.mask.write_png(&mask_path)?;
    let overlay =
        platter_data::overlay::overlay(&image, &predicted.mask, &valid, &space, a.zoom.max(1))?;
    let overlay_path = a.out_dir.join("overlay.png");
    overlay
        .save(&overlay_path)
        .with_context(|| format!("writing {}", overlay_path.display()))?;
    let json_path = a.out_dir.join("response.json");
    let out = ResponseOut {
        question: &a.question,
        checkpoint: a.checkpoint.display().to_string(),
        segmenter: segmenter.name(),
        image_size,
        response: &response.text,
        reasoning: parsed.reasoning.as_deref(),
        think_format_ok: parsed.think_format_ok,
        answer_parsed: parsed.answer_parsed(),
        objects,
        response_tokens: response.tokens,
        stopped: response.stopped,
        mask_pixels: predicted.mask.count(),
    };
    std::fs::write(&json_path, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", json_path.display()))?;

    let mut w = std::io::stdout().lock();
    writeln!(
        w,
        "reasoning: {}",
        parsed
            .reasoning
            .as_deref()
            .unwrap_or("(no <think>…</think>)")
    )?;
    writeln!(w, "answer: {}", answer_status(&parsed))?;
    for (i, o) in out.objects.iter().enumerate() {
        writeln!(
            w,
            "  {}. box {:?} point {:?} ({image_size}-px policy space) -> box {:?} point {:?} (image pixels)",
            i + 1,
            o.bbox_2d,
            o.point_2d,
            o.original_box,
            o.original_point
        )?;
    }
    let skipped = parsed.objects().len() - valid.len();
    if skipped > 0 {
        writeln!(
            w,
            "  ({skipped} object(s) without a valid box and point were not segmented)"
        )?;
    }
    if !response.stopped {
        writeln!(
            w,
            "  (the response hit the {}-token limit)",
            a.max_new_tokens
        )?;
    }
    let total = u64::from(size.width) * u64::from(size.height);
    writeln!(
        w,
        "mask: {} ({} px, {:.1} % of the image, segmenter `{}`); overlay: {}; response: {}",
        mask_path.display(),
        predicted.mask.count(),
        100.0 * predicted.mask.count() as f64 / total.max(1) as f64,
        segmenter.name(),
        overlay_path.display(),
        json_path.display()
    )?;
    Ok(())
}
