//! `platter sft`: supervised cold start of the policy on the synthetic world (`docs/sft.md`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use platter_data::synth::{SynthConfig, generate};
use platter_learner::sft::{EvalSummary, SftConfig, SftEvent, SftPaths, train};
use serde::Deserialize;

/// Supervised cold start: teach the policy the answer format from GT-built responses.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// Experiment file (TOML with `[data]`, `[model]` and `[sft]` tables).
    #[arg(long, default_value = "configs/sft-tiny.toml")]
    config: PathBuf,
    /// Dataset directory holding `manifest.jsonl` (generated there when missing); overrides
    /// `data.dir`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// HF model directory to start from; overrides `model.base`.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Output directory (`model/`, `report.json`); overrides `model.out`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of updates; overrides `sft.steps`.
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the sample order; overrides `sft.seed`.
    #[arg(long)]
    seed: Option<u64>,
}

/// The experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftFile {
    data: DataSection,
    model: ModelSection,
    #[serde(default)]
    sft: SftConfig,
}

/// Where the data comes from; the synthetic world is generated with these settings when
/// `dir/manifest.jsonl` does not exist.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSection {
    dir: PathBuf,
    #[serde(default = "default_synth_seed")]
    synth_seed: u64,
    #[serde(default = "default_synth_n")]
    synth_images: usize,
    #[serde(default = "default_item_scale")]
    synth_item_scale: f32,
    #[serde(default = "default_max_foods")]
    synth_max_foods: usize,
    #[serde(default)]
    synth_lighting: f32,
}

fn default_item_scale() -> f32 {
    SynthConfig::default().item_scale
}
fn default_max_foods() -> usize {
    SynthConfig::default().max_foods
}

fn default_synth_seed() -> u64 {
    1
}
fn default_synth_n() -> usize {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSection {
    base: PathBuf,
    out: PathBuf,
}

fn eval_line(step: usize, s: &EvalSummary) -> String {
    format!(
        "eval @ {step:>4}: n={} parse={:.3} stop={:.3} think={:.3} answer={:.3} non_repeat={:.3} \
         seg_iou={:.3} seg_l1={:.3} seg_point={:.3} seg={:.3} total={:.3} giou={:.3} objects={:.2} tokens={:.1} ({:.1} s)",
        s.samples,
        s.parse_rate,
        s.stop_rate,
        s.think_format,
        s.answer_format,
        s.non_repeat,
        s.seg_iou,
        s.seg_l1,
        s.seg_point,
        s.seg,
        s.total,
        s.giou,
        s.mean_objects,
        s.mean_tokens,
        s.seconds
    )
}

fn ensure_data(dir: &Path, d: &DataSection, image_size: u32) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("manifest.jsonl");
    if manifest.exists() {
        return Ok(manifest);
    }
    tracing::info!(dir = %dir.display(), images = d.synth_images, "generating the synthetic world");
    let cfg = SynthConfig {
        seed: d.synth_seed,
        n: d.synth_images,
        policy_image_size: image_size,
        item_scale: d.synth_item_scale,
        max_foods: d.synth_max_foods,
        lighting: d.synth_lighting,
        ..SynthConfig::default()
    };
    generate(&cfg, dir)
        .with_context(|| format!("generating synthetic data in {}", dir.display()))?;
    Ok(manifest)
}

/// Runs `platter sft`.
pub fn run(a: SftArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut file: SftFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", a.config.display()))?;
    if let Some(s) = a.steps {
        file.sft.steps = s;
    }
    if let Some(s) = a.seed {
        file.sft.seed = s;
    }
    let data_dir = a.data.unwrap_or_else(|| file.data.dir.clone());
    let manifest = ensure_data(&data_dir, &file.data, file.sft.image_size)?;
    let paths = SftPaths {
        manifest,
        base_model: a.base.unwrap_or(file.model.base),
        out_dir: a.out.unwrap_or(file.model.out),
    };
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let report = train(&file.sft, &paths, |e| {
        let line = match e {
            SftEvent::Step {
                step,
                loss,
                grad_norm,
                lr,
                seconds,
            } => format!(
                "step {step:>4}: loss={loss:.4} grad_norm={grad_norm:.3} lr={lr:.2e} ({seconds:.2} s)"
            ),
            SftEvent::Eval { step, summary } => format!(
                "{}\n  example: {}",
                eval_line(*step, summary),
                summary.example.chars().take(240).collect::<String>()
            ),
        };
        if let Err(err) = writeln!(out, "{line}") {
            write_err.get_or_insert(err);
        }
    })
    .context("sft")?;
    if let Some(e) = write_err {
        return Err(e).context("writing progress to stdout");
    }
    writeln!(out, "before: {}", eval_line(0, &report.before))?;
    writeln!(
        out,
        "after:  {}",
        eval_line(report.config.steps, &report.after)
    )?;
    writeln!(out, "example answer after SFT: {}", report.after.example)?;
    writeln!(
        out,
        "wrote {} (last step) and {} (best eval, step {}) ({} train, {} val samples, {:.1} s)",
        report.model_dir.display(),
        report.best_dir.display(),
        report.best_step,
        report.train_samples,
        report.val_samples,
        report.wall_seconds
    )?;
    Ok(())
}
