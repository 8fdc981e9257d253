//! `platter data …`: generate, convert, summarise and look at datasets.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use platter_data::foodreasonseg::{FoodReasonSeg, ReadOptions, UnknownNamePolicy};
use platter_data::synth::{SynthConfig, generate};
use platter_data::{
    ImageLimits, ManifestRecord, PolicySpace, Split, read_manifest, write_manifest,
};

/// Datasets: generate the synthetic world, convert FoodReasonSeg, stats, show a sample.
#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Convert FoodReasonSeg (native layout) to a FoodReasonSeg-Single manifest.
    Convert(ConvertArgs),
    /// Counts, objects per sample, mask areas and class histogram of a manifest.
    Stats(StatsArgs),
    /// Write an overlay PNG of sample N (0-based line of the manifest) with its boxes and points.
    Show(ShowArgs),
    /// Generate the synthetic food world (FoodReasonSeg layout + manifest).
    Synth(SynthArgs),
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum UnknownArg {
    Fail,
    Skip,
}

#[derive(Debug, Args)]
struct ConvertArgs {
    /// FoodReasonSeg root (holds category_id.txt, FoodReasonSeg_*.json, Images/).
    #[arg(long)]
    root: PathBuf,
    /// Splits to convert.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["train", "test"])]
    split: Vec<SplitArg>,
    /// Output manifest (default: ROOT/foodreasonseg_single.jsonl). Paths inside are relative
    /// to ROOT when the manifest lies in ROOT, absolute otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// What to do with a target name that matches no class.
    #[arg(long, value_enum, default_value = "fail")]
    unknown_names: UnknownArg,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Manifest (JSONL).
    manifest: PathBuf,
    /// Policy input size used for objects that are not precomputed.
    #[arg(long, default_value_t = 840)]
    image_size: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// 0-based index of the sample in the manifest.
    n: usize,
    /// Manifest (JSONL).
    #[arg(long)]
    manifest: PathBuf,
    /// Output PNG.
    #[arg(long, default_value = "sample.png")]
    out: PathBuf,
    /// Policy input size used for objects that are not precomputed.
    #[arg(long, default_value_t = 840)]
    image_size: u32,
    /// Integer zoom of the picture (1–8; default: enough for ~640 px width).
    #[arg(long)]
    zoom: Option<u32>,
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// World seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of images (each gives `--questions-per-image` samples).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Image width.
    #[arg(long, default_value_t = 320)]
    width: u32,
    /// Image height.
    #[arg(long, default_value_t = 240)]
    height: u32,
    /// Questions per image.
    #[arg(long, default_value_t = 1)]
    questions_per_image: usize,
    /// Policy input size of the precomputed objects.
    #[arg(long, default_value_t = 336)]
    policy_size: u32,
    /// Worker threads (the output does not depend on it).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Multiplier on every food's drawn size.
    #[arg(long, default_value_t = 1.0)]
    item_scale: f32,
    /// Most distinct foods in one scene (2..=5).
    #[arg(long, default_value_t = 5)]
    max_foods: usize,
    /// Scene lighting strength in 0..=0.5 (colour balance drifts with the position; 0 = even).
    #[arg(long, default_value_t = 0.0)]
    lighting: f32,
}

/// Run `platter data …`.
pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let result = match args.command {
        DataCommand::Convert(a) => convert(a),
        DataCommand::Stats(a) => stats(a),
        DataCommand::Show(a) => show(a),
        DataCommand::Synth(a) => synth(a),
    };
    // `platter data stats … | head` closes stdout early: that is not a failure.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn manifest_root(manifest: &Path) -> PathBuf {
    manifest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let ds = FoodReasonSeg::open(&a.root)?;
    let opts = ReadOptions {
        unknown_names: match a.unknown_names {
            UnknownArg::Fail => UnknownNamePolicy::Fail,
            UnknownArg::Skip => UnknownNamePolicy::Skip,
        },
        limits: ImageLimits::default(),
    };
    let manifest_path = a
        .out
        .unwrap_or_else(|| a.root.join("foodreasonseg_single.jsonl"));
    let root_abs = a
        .root
        .canonicalize()
        .with_context(|| format!("{}", a.root.display()))?;
    let out_dir = manifest_root(&manifest_path).canonicalize().ok();
    let relative = out_dir.as_deref() == Some(root_abs.as_path());
    let mut all: Vec<ManifestRecord> = Vec::new();
    for split in a.split {
        let (mut records, stats) = ds.single(split.into(), &opts)?;
        writeln!(
            out,
            "{}: {}",
            Split::from(split).as_str(),
            serde_json::to_string(&stats)?
        )?;
        if !relative {
            for r in &mut records {
                rebase(r, &root_abs);
            }
        }
        all.extend(records);
    }
    write_manifest(&manifest_path, &all)?;
    writeln!(
        out,
        "wrote {} samples to {}",
        all.len(),
        manifest_path.display()
    )?;
    Ok(())
}

fn rebase(r: &mut ManifestRecord, root: &Path) {
    use platter_data::MaskSource;
    r.image = root.join(&r.image);
    for m in r.masks.iter_mut().chain(r.eval_masks.iter_mut().flatten()) {
        match m {
            MaskSource::Png { png } => *png = root.join(&*png),
            MaskSource::Label { label_png, .. } => *label_png = root.join(&*label_png),
            MaskSource::Rle { .. } => {}
        }
    }
}

fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let records = read_manifest(&a.manifest)?;
    let space = PolicySpace::new(a.image_size)?;
    let s = platter_data::stats::dataset_stats(
        &records,
        &manifest_root(&a.manifest),
        &ImageLimits::default(),
        &space,
    )?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(out, "samples per split: {:?}", s.samples)?;
    writeln!(out, "images per split:  {:?}", s.images)?;
    let o = &s.objects_per_sample;
    writeln!(
        out,
        "objects/sample:    min {} mean {:.2} median {} max {}",
        o.min, o.mean, o.median, o.max
    )?;
    let m = &s.train_mask_area_fraction;
    writeln!(
        out,
        "mask area / image: min {:.4} mean {:.4} median {:.4} max {:.4}",
        m.min, m.mean, m.median, m.max
    )?;
    writeln!(
        out,
        "eval GT differs from merged train GT: {} samples",
        s.eval_differs
    )?;
    let mut classes: Vec<_> = s.classes.iter().collect();
    classes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    writeln!(out, "classes (samples naming each):")?;
    for (name, n) in classes {
        writeln!(out, "  {n:6}  {name}")?;
    }
    Ok(())
}

fn show(a: ShowArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let records = read_manifest(&a.manifest)?;
    let record = records.get(a.n).with_context(|| {
        format!(
            "sample {} requested, {} has {} samples",
            a.n,
            a.manifest.display(),
            records.len()
        )
    })?;
    let sample = record.load(&manifest_root(&a.manifest), &ImageLimits::default())?;
    let space = match &record.objects {
        Some(p) => PolicySpace::new(p.image_size)?,
        None => PolicySpace::new(a.image_size)?,
    };
    let objects = sample.objects(&space);
    let zoom = a
        .zoom
        .unwrap_or_else(|| (640 / sample.image.width().max(1)).clamp(1, 8));
    let img =
        platter_data::overlay::overlay(&sample.image, &sample.train_mask, &objects, &space, zoom)?;
    img.save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    writeln!(out, "{}: {}", record.id, record.question)?;
    writeln!(out, "targets: {:?}", record.target_names)?;
    writeln!(
        out,
        "objects ({}-px policy space): {}",
        space.image_size(),
        serde_json::to_string(&objects)?
    )?;
    writeln!(out, "wrote {}", a.out.display())?;
    Ok(())
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let cfg = SynthConfig {
        seed: a.seed,
        n: a.n,
        width: a.width,
        height: a.height,
        questions_per_image: a.questions_per_image,
        policy_image_size: a.policy_size,
        threads: a.threads,
        item_scale: a.item_scale,
        max_foods: a.max_foods,
        lighting: a.lighting,
        ..SynthConfig::default()
    };
    let start = Instant::now();
    let report = generate(&cfg, &a.out)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    writeln!(
        out,
        "generated {} images in {:.2} s",
        a.n,
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}
