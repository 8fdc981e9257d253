//! `platter eval`: evaluate policy checkpoints on a split and write a Table-1-style report
//! (`docs/eval.md`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use platter_data::{BoxSegmenter, Segmenter, Split, read_manifest};
use platter_learner::eval::{
    EvalOptions, EvalReport, EvalSample, Evaluation, default_image_size, evaluate_gt_answers,
    evaluate_policy, load_samples, markdown_tables,
};
use platter_qwen25vl::{Policy, Processor};
use platter_rl::eval::EMPTY_UNION_CONVENTION;

/// Which segmenter turns answers into masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SegmenterKind {
    /// Each answer box filled as its mask (no weights needed).
    Box,
    /// SAM2 (needs `--sam2-checkpoint`).
    Sam2,
}

/// The segmenter flags shared by `platter eval` and `platter segment`.
#[derive(Debug, Args)]
pub struct SegmenterArgs {
    /// `box`: each answer box filled as its mask (no weights; masks are boxes, not SAM2 masks);
    /// `sam2`: SAM2 from `--sam2-checkpoint` (METHOD §1).
    #[arg(long, value_enum, default_value = "box")]
    pub segmenter: SegmenterKind,
    /// SAM2 checkpoint: Meta's `.pt` or `.safetensors` (with `--segmenter sam2`).
    #[arg(long)]
    pub sam2_checkpoint: Option<PathBuf>,
    /// Meta's YAML model config (default: the official size named by the checkpoint file).
    #[arg(long)]
    pub sam2_config: Option<PathBuf>,
}

impl SegmenterArgs {
    /// Checks the flags without loading anything.
    pub fn check(&self) -> anyhow::Result<()> {
        match (self.segmenter, &self.sam2_checkpoint) {
            (SegmenterKind::Sam2, None) => bail!("--segmenter sam2 needs --sam2-checkpoint FILE"),
            (SegmenterKind::Sam2, Some(p)) if !p.is_file() => {
                bail!("--sam2-checkpoint {}: no such file", p.display())
            }
            (SegmenterKind::Box, Some(_)) => {
                bail!("--sam2-checkpoint is only used with --segmenter sam2")
            }
            _ => Ok(()),
        }
    }

    /// Loads the segmenter.
    pub fn load(&self) -> anyhow::Result<Box<dyn Segmenter>> {
        self.check()?;
        match (self.segmenter, &self.sam2_checkpoint) {
            (SegmenterKind::Sam2, Some(ckpt)) => {
                let sam = crate::sam2_cmd::load_model(ckpt, self.sam2_config.as_deref())
                    .with_context(|| format!("loading SAM2 from {}", ckpt.display()))?;
                Ok(Box::new(sam))
            }
            _ => {
                tracing::warn!("segmenter `box`: masks are the predicted boxes, not SAM2 masks");
                Ok(Box::new(BoxSegmenter))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Val,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Evaluate policy checkpoints on a split: gIoU, cIoU, parse rate, box AP@0.5, tokens, latency.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// HF model directory of a policy (repeat for one table row each).
    #[arg(long = "checkpoint", required = true)]
    checkpoints: Vec<PathBuf>,
    /// Row name for each `--checkpoint`, in order (default: the directory as given).
    #[arg(long = "name")]
    names: Vec<String>,
    /// JSONL manifest, or a directory holding `manifest.jsonl`.
    #[arg(long)]
    data: PathBuf,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    #[command(flatten)]
    segmenter: SegmenterArgs,
    /// Evaluate the first N samples of the split (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Generation limit per response (METHOD §6).
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Prompts decoded together; latency per sample is the batch time shared out.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Policy input side (default: the size the checkpoint's preprocessor pins, else 840).
    #[arg(long)]
    image_size: Option<u32>,
    /// Add a row scoring the ground-truth boxes and points as the answer: the ceiling the
    /// segmenter allows.
    #[arg(long)]
    gt_row: bool,
    /// Output directory: `report.md`, `report.json`, `<name>.samples.jsonl`.
    #[arg(long)]
    out: PathBuf,
}

/// The manifest a `--data` argument names.
pub fn resolve_manifest(data: &Path) -> anyhow::Result<PathBuf> {
    let manifest = if data.is_dir() {
        data.join("manifest.jsonl")
    } else {
        data.to_path_buf()
    };
    if !manifest.is_file() {
        bail!(
            "--data {}: no such manifest (expected a JSONL manifest or a directory holding \
             manifest.jsonl, e.g. from `platter data synth`)",
            data.display()
        );
    }
    Ok(manifest)
}

/// Checks that `dir` looks like an HF model directory before anything is loaded.
pub fn check_checkpoint(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("--checkpoint {}: no such directory", dir.display());
    }
    if !dir.join("config.json").is_file() {
        bail!(
            "--checkpoint {}: no config.json (expected an HF model directory: config.json, \
             *.safetensors, tokenizer.json)",
            dir.display()
        );
    }
    Ok(())
}

/// Loads a policy on the first CUDA device when there is one, else the CPU.
pub fn load_policy(dir: &Path) -> anyhow::Result<(Policy, Processor)> {
    let device = candle_core::Device::cuda_if_available(0)?;
    let policy = Policy::load(dir, &device, candle_core::DType::F32)
        .with_context(|| format!("loading the policy from {}", dir.display()))?;
    let processor = policy
        .processor(dir)
        .with_context(|| format!("loading the processor of {}", dir.display()))?;
    Ok((policy, processor))
}

/// A file-name-safe form of a row name.
fn file_stem(name: &str, used: &mut HashSet<String>) -> String {
    let mut stem: String = name
        .trim_matches(|c: char| c == '/' || c == '.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        stem = "policy".into();
    }
    let mut candidate = stem.clone();
    let mut i = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{stem}-{i}");
        i += 1;
    }
    candidate
}

fn write_samples(path: &Path, run: &Evaluation) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for r in &run.records {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn markdown_report(a: &EvalArgs, manifest: &Path, reports: &[EvalReport]) -> String {
    let split = Split::from(a.split).as_str();
    let samples = reports.first().map_or(0, |r| r.samples);
    let segmenter = reports.first().map_or("box", |r| r.segmenter.as_str());
    let sizes: Vec<String> = reports
        .iter()
        .map(|r| format!("{} ({} px)", r.policy, r.options.image_size))
        .collect();
    format!(
        "# Evaluation\n\n\
         - data: `{}`, split `{split}`, {samples} samples\n\
         - segmenter: `{segmenter}`{}\n\
         - greedy decoding, at most {} new tokens, {} prompts per batch; policy input: {}\n\n\
         {}\n\
         gIoU is the mean of per-sample mask IoU and cIoU is ΣI / ΣU, both on \
         original-resolution masks. An unparseable answer gives an empty mask, and {}.\n\n\
         Box AP@0.5: every predicted box gets the same score. Predicted and ground-truth boxes \
         are matched one-to-one per sample with IoU ≥ 0.5 (maximum matching), so AP = \
         precision × recall over the split.\n\n\
         Mean tokens counts the stop token. Latency (s / sample) is the sample's share of its \
         batch's generation time plus its segmentation and scoring time.\n\n\
         The second table gives the mean METHOD §3 reward terms. Per-sample records are in \
         `*.samples.jsonl`, and every figure above is recomputed from them \
         (`docs/eval.md`).\n",
        manifest.display(),
        if segmenter == "box" {
            " (each answer box filled as its mask, not SAM2)"
        } else {
            ""
        },
        a.max_new_tokens,
        a.batch_size,
        sizes.join(", "),
        markdown_tables(reports),
        EMPTY_UNION_CONVENTION,
    )
}

/// Runs `platter eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    // Everything that can be checked without loading a model, first.
    for c in &a.checkpoints {
        check_checkpoint(c)?;
    }
    if !a.names.is_empty() && a.names.len() != a.checkpoints.len() {
        bail!(
            "{} --name given for {} --checkpoint; give one per checkpoint or none",
            a.names.len(),
            a.checkpoints.len()
        );
    }
    a.segmenter.check()?;
    let manifest = resolve_manifest(&a.data)?;
    let split = Split::from(a.split);
    let in_split = read_manifest(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?
        .iter()
        .filter(|r| r.split == split)
        .count();
    if in_split == 0 {
        bail!(
            "{}: no samples in split `{}`",
            manifest.display(),
            split.as_str()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let segmenter = a.segmenter.load()?;

    let mut stdout = std::io::stdout().lock();
    let mut samples_by_size: HashMap<u32, Vec<EvalSample>> = HashMap::new();
    let mut reports = Vec::new();
    let mut used = HashSet::new();
    let mut first_size = None;
    for (i, dir) in a.checkpoints.iter().enumerate() {
        let name = a
            .names
            .get(i)
            .cloned()
            .unwrap_or_else(|| dir.display().to_string());
        let (policy, processor) = load_policy(dir)?;
        let image_size = a
            .image_size
            .unwrap_or_else(|| default_image_size(&processor));
        first_size.get_or_insert(image_size);
        let samples = match samples_by_size.entry(image_size) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                load_samples(&manifest, split, image_size, a.limit)
                    .with_context(|| format!("loading {}", manifest.display()))?,
            ),
        };
        let opts = EvalOptions {
            image_size,
            max_new_tokens: a.max_new_tokens,
            batch_size: a.batch_size,
            limit: a.limit,
            ..EvalOptions::default()
        };
        let total = samples.len();
        let mut run = evaluate_policy(
            &opts,
            &policy,
            &processor,
            samples,
            segmenter.as_ref(),
            |done, r| {
                eprintln!(
                    "[{name}] {done}/{total} {}: iou={:.3} parsed={} objects={} tokens={}",
                    r.id, r.score.iou, r.score.parsed, r.score.num_objects, r.response_tokens
                );
            },
        )
        .with_context(|| format!("evaluating {}", dir.display()))?;
        run.report.policy = name.clone();
        let path = a
            .out
            .join(format!("{}.samples.jsonl", file_stem(&name, &mut used)));
        write_samples(&path, &run)?;
        reports.push(run.report);
    }
    if a.gt_row
        && let Some(size) = first_size
        && let Some(samples) = samples_by_size.get(&size)
    {
        let opts = EvalOptions {
            image_size: size,
            limit: a.limit,
            ..EvalOptions::default()
        };
        let run = evaluate_gt_answers(&opts, samples, segmenter.as_ref())?;
        let path = a.out.join(format!(
            "{}.samples.jsonl",
            file_stem("ground-truth", &mut used)
        ));
        write_samples(&path, &run)?;
        reports.push(run.report);
    }
    let md = markdown_report(&a, &manifest, &reports);
    let md_path = a.out.join("report.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let json_path = a.out.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&reports)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    writeln!(stdout, "{}", markdown_tables(&reports))?;
    writeln!(
        stdout,
        "wrote {}, {} and the per-sample records in {}",
        md_path.display(),
        json_path.display(),
        a.out.display()
    )?;
    Ok(())
}
