//! `platter run`: the whole system in one process on loopback gRPC — coordinator, reward
//! server, a learner service with data-parallel ranks as threads, and rollout workers with the
//! Qwen2.5-VL engine — driven through the same APIs a deployment uses. Before training it
//! evaluates the starting policy on the held-out split, during training it evaluates every
//! `run.eval_every` steps (early stopping on validation gIoU, best weights kept), and after it
//! writes `runs/<id>/`: `metrics.jsonl`, `evals.jsonl`, `checkpoints/`, `best/`, `final/`,
//! `plot.png`, `eval_report.md` and `summary.json`.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::{DType, Device};
use clap::Args;
use platter_coordinator::Learner as _;
use platter_coordinator::{
    Algorithm, CoordinatorClient, CoordinatorConfig, ExperimentConfig, RemoteLearner,
    RemoteLearnerOptions,
};
use platter_data::{BoxSegmenter, Segmenter, Split};
use platter_learner::QwenLearner;
use platter_learner::eval::{EvalOptions, EvalSample, Evaluation, evaluate_policy, load_samples};
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use platter_qwen25vl::{Config as PolicyConfig, Policy, Processor};
use platter_rollout::{QwenEngine, WorkerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::plot::{PALETTE, Panel, Series, render};

/// `platter run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Experiment file: an experiment config (docs/config.md) plus an optional `[run]` table.
    #[arg(long, default_value = "configs/tiny-cpu.toml")]
    pub config: PathBuf,
    /// Algorithm, overriding the file's `algorithm`.
    #[arg(long, value_parser = ["dapo", "grpo"])]
    pub algo: Option<String>,
    /// Training steps, overriding the file's `steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Validation samples per evaluation, overriding `run.eval_samples` (0 = the whole split).
    #[arg(long)]
    pub eval_samples: Option<usize>,
    /// Evaluate every N steps, overriding `run.eval_every` (0 = only before and after).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Parent directory of the run directory, overriding `run.out_dir`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Serve the process's Prometheus `/metrics` here while it runs (e.g. 127.0.0.1:9000).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
}

/// The `[run]` table: how `platter run` hosts and watches the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Rollout workers started in the process.
    pub workers: usize,
    /// Groups each worker generates at once.
    pub groups_per_worker: usize,
    /// Parent directory of `<id>/`.
    pub out_dir: PathBuf,
    /// When `data.manifest` does not exist, the synthetic world is generated next to it with
    /// this seed and this many images (80/10/10 train/val/test).
    pub synth_seed: u64,
    pub synth_images: usize,
    /// The generated world's food size multiplier, most foods per scene and lighting strength
    /// (`platter_data::synth::SynthConfig`).
    pub synth_item_scale: f32,
    pub synth_max_foods: usize,
    pub synth_lighting: f32,
    /// Split evaluated before, during and after training.
    pub eval_split: Split,
    /// Samples of it per evaluation (0 = all).
    pub eval_samples: usize,
    /// Evaluate every this many steps (0 = only before and after).
    pub eval_every: u64,
    /// Stop after this many periodic evaluations without a new best validation gIoU
    /// (0 = never stop early).
    pub patience: u32,
    /// Smallest gIoU gain that counts as an improvement.
    pub min_delta: f64,
    /// Generation limit of evaluation answers (0 = `overlong.max_response_tokens`).
    pub eval_max_new_tokens: usize,
    /// `box` (each predicted box is its mask; no weights) or `sam2`.
    pub segmenter: String,
    /// SAM2 checkpoint (Meta's `.pt` or safetensors) for `segmenter = "sam2"`.
    pub sam2_checkpoint: Option<PathBuf>,
    /// SAM2 YAML config when the size cannot be told from the checkpoint's name.
    pub sam2_config: Option<PathBuf>,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            workers: 2,
            groups_per_worker: 1,
            out_dir: "runs".into(),
            synth_seed: 1,
            synth_images: 300,
            synth_item_scale: 1.0,
            synth_max_foods: 5,
            synth_lighting: 0.0,
            eval_split: Split::Val,
            eval_samples: 30,
            eval_every: 0,
            patience: 0,
            min_delta: 0.0,
            eval_max_new_tokens: 0,
            segmenter: "box".into(),
            sam2_checkpoint: None,
            sam2_config: None,
        }
    }
}

impl RunSection {
    fn validate(&self) -> anyhow::Result<()> {
        if self.workers == 0 {
            bail!("run.workers: must be at least 1");
        }
        if self.groups_per_worker == 0 {
            bail!("run.groups_per_worker: must be at least 1");
        }
        if self.synth_images == 0 {
            bail!("run.synth_images: must be at least 1");
        }
        if !(self.min_delta >= 0.0 && self.min_delta.is_finite()) {
            bail!("run.min_delta: must be a finite number >= 0");
        }
        match self.segmenter.as_str() {
            "box" => {}
            "sam2" if self.sam2_checkpoint.is_some() => {}
            "sam2" => bail!("run.sam2_checkpoint: required with run.segmenter = \"sam2\""),
            other => bail!("run.segmenter: expected \"box\" or \"sam2\", found \"{other}\""),
        }
        Ok(())
    }
}

/// An experiment file split into the experiment (what the coordinator validates and runs) and
/// the `[run]` table.
#[derive(Debug, Clone)]
pub struct RunFile {
    pub experiment: ExperimentConfig,
    pub run: RunSection,
}

impl RunFile {
    /// Parses `text` (from `path`, for messages); errors name the offending key.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        let run = match table.remove("run") {
            Some(v) => v
                .try_into::<RunSection>()
                .with_context(|| format!("{}: [run]", path.display()))?,
            None => RunSection::default(),
        };
        let rest = toml::to_string(&table).context("re-encoding the experiment tables")?;
        let experiment =
            ExperimentConfig::from_toml(&rest).with_context(|| format!("{}", path.display()))?;
        run.validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(Self { experiment, run })
    }
}

/// Validation metrics recorded in `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub policy_version: u64,
    pub giou: f64,
    pub ciou: f64,
    pub parse_rate: f64,
    pub box_ap50: Option<f64>,
    pub mean_reward: f64,
    pub mean_tokens: f64,
    pub seconds: f64,
}

impl EvalPoint {
    fn new(step: u64, version: u64, e: &Evaluation) -> Self {
        Self {
            step,
            policy_version: version,
            giou: e.report.giou,
            ciou: e.report.ciou,
            parse_rate: e.report.parse_rate,
            box_ap50: e.report.box_ap50,
            mean_reward: e.report.rewards.total,
            mean_tokens: e.report.mean_response_tokens,
            seconds: e.report.wall_seconds,
        }
    }
}

/// `runs/<id>/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub algo: String,
    pub policy: PathBuf,
    /// Steps trained.
    pub steps: u64,
    pub steps_planned: u64,
    /// `succeeded`, `early_stopped`, `failed: …`, `cancelled`.
    pub outcome: String,
    pub wall_seconds: f64,
    pub eval_split: String,
    pub eval_samples: usize,
    /// `box` or `sam2`: what turned predicted boxes and points into masks.
    pub segmenter: String,
    pub eval_before: EvalPoint,
    pub eval_after: EvalPoint,
    /// The evaluation with the highest validation gIoU (its weights are `best/`).
    pub best: EvalPoint,
    pub evals: Vec<EvalPoint>,
    pub run_dir: PathBuf,
}

/// One line of `metrics.jsonl`: the coordinator's step summary plus the learner's details.
#[derive(Debug, Clone, Serialize)]
struct StepRecord {
    step: u64,
    policy_version: u64,
    elapsed_seconds: f64,
    reward: f64,
    kept_reward: f64,
    think_format: f64,
    answer_format: f64,
    non_repeat: f64,
    seg: f64,
    seg_iou: f64,
    seg_l1: f64,
    seg_point: f64,
    mask_iou: Option<f64>,
    kept_groups: u32,
    offered_groups: u32,
    kept_fraction: f64,
    generation_rounds: u32,
    generated_tokens: u64,
    discarded_tokens: u64,
    cancelled_leases: u32,
    mean_response_tokens: f64,
    rollout_tokens_per_second: f64,
    loss: f64,
    grad_norm: f64,
    logprob_mismatch: f64,
    assembly_seconds: f64,
    learn_seconds: f64,
    learner: Option<serde_json::Value>,
}

fn step_record(s: &v1::StepSummary, elapsed: f64, learner: &QwenLearner) -> StepRecord {
    let t = s.offered_mean_terms.unwrap_or_default();
    let details = learner
        .last_step()
        .filter(|r| r.step == s.step)
        .and_then(|r| serde_json::to_value(r).ok());
    StepRecord {
        step: s.step,
        policy_version: s.policy_version,
        elapsed_seconds: elapsed,
        reward: t.total,
        kept_reward: s.mean_reward,
        think_format: t.think_format,
        answer_format: t.answer_format,
        non_repeat: t.non_repeat,
        seg: t.seg,
        seg_iou: t.seg_iou,
        seg_l1: t.seg_l1,
        seg_point: t.seg_point,
        mask_iou: t.mask_iou,
        kept_groups: s.kept_groups,
        offered_groups: s.offered_groups,
        kept_fraction: s.kept_fraction,
        generation_rounds: s.generation_rounds,
        generated_tokens: s.generated_tokens,
        discarded_tokens: s.discarded_tokens,
        cancelled_leases: s.cancelled_leases,
        mean_response_tokens: s.mean_response_tokens,
        rollout_tokens_per_second: s.rollout_tokens_per_second,
        loss: s.loss,
        grad_norm: s.grad_norm,
        logprob_mismatch: s.logprob_mismatch,
        assembly_seconds: s.assembly_seconds,
        learn_seconds: s.learn_seconds,
        learner: details,
    }
}

const TABLE_HEADER: &str =
    "  step  reward  format  answer  seg    mIoU   kept   rounds  len    tok/s   loss      time";

fn table_row(r: &StepRecord, planned: u64) -> String {
    let mask = r
        .mask_iou
        .map_or_else(|| "  -  ".to_owned(), |m| format!("{m:.3}"));
    let bar_w = 20usize;
    let done = ((r.step + 1) as usize * bar_w) / planned.max(1) as usize;
    format!(
        "{:>6}  {:>6.3}  {:>6.3}  {:>6.3}  {:>5.3}  {}  {:>4}/{:<3} {:>3}  {:>6.1}  {:>6.0}  {:>8.4}  {:>5.0}s  [{}{}]",
        r.step + 1,
        r.reward,
        r.think_format,
        r.answer_format,
        r.seg,
        mask,
        r.kept_groups,
        r.offered_groups,
        r.generation_rounds,
        r.mean_response_tokens,
        r.rollout_tokens_per_second,
        r.loss,
        r.elapsed_seconds,
        "#".repeat(done.min(bar_w)),
        ".".repeat(bar_w - done.min(bar_w)),
    )
}

fn eval_line(label: &str, p: &EvalPoint) -> String {
    format!(
        "{label}: gIoU {:.4}  cIoU {:.4}  parse {:.3}  AP50 {}  reward {:.3}  tokens {:.1}  ({:.1} s)",
        p.giou,
        p.ciou,
        p.parse_rate,
        p.box_ap50
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}")),
        p.mean_reward,
        p.mean_tokens,
        p.seconds
    )
}

fn load_segmenter(run: &RunSection) -> anyhow::Result<Arc<dyn Segmenter>> {
    match run.segmenter.as_str() {
        "sam2" => {
            let ckpt = run
                .sam2_checkpoint
                .as_deref()
                .context("run.sam2_checkpoint is required with run.segmenter = \"sam2\"")?;
            // The same loader as `platter debug sam2-segment` and `platter eval`.
            let sam = crate::sam2_cmd::load_model(ckpt, run.sam2_config.as_deref()).with_context(
                || format!("run.sam2_checkpoint: loading SAM2 from {}", ckpt.display()),
            )?;
            Ok(Arc::new(sam))
        }
        _ => Ok(Arc::new(BoxSegmenter)),
    }
}

/// Generates the synthetic world at the manifest's directory when the manifest is missing.
fn ensure_dataset(cfg: &ExperimentConfig, run: &RunSection) -> anyhow::Result<()> {
    let manifest = &cfg.data.manifest;
    if manifest.exists() {
        return Ok(());
    }
    if manifest.file_name().and_then(|n| n.to_str()) != Some("manifest.jsonl") {
        bail!(
            "data.manifest: {} does not exist (only a missing `.../manifest.jsonl` is generated)",
            manifest.display()
        );
    }
    let dir = manifest.parent().unwrap_or(Path::new("."));
    println!(
        "generating the synthetic dataset: {} images (seed {}) into {}",
        run.synth_images,
        run.synth_seed,
        dir.display()
    );
    let synth = platter_data::synth::SynthConfig {
        seed: run.synth_seed,
        n: run.synth_images,
        policy_image_size: cfg.data.image_size,
        item_scale: run.synth_item_scale,
        max_foods: run.synth_max_foods,
        lighting: run.synth_lighting,
        ..platter_data::synth::SynthConfig::default()
    };
    platter_data::synth::generate(&synth, dir)
        .with_context(|| format!("generating the synthetic dataset in {}", dir.display()))?;
    Ok(())
}

/// A policy evaluator that can load any published version.
struct Evaluator {
    opts: EvalOptions,
    samples: Vec<EvalSample>,
    cfg: PolicyConfig,
    processor: Processor,
    segmenter: Arc<dyn Segmenter>,
    policy_dir: PathBuf,
}

impl Evaluator {
    fn evaluate_dir(&self) -> anyhow::Result<Evaluation> {
        let policy = Policy::load(&self.policy_dir, &Device::Cpu, DType::F32)
            .with_context(|| format!("loading {}", self.policy_dir.display()))?;
        Ok(evaluate_policy(
            &self.opts,
            &policy,
            &self.processor,
            &self.samples,
            self.segmenter.as_ref(),
            |_, _| {},
        )?)
    }

    fn evaluate_blob(&self, weights: &PolicyWeights) -> anyhow::Result<Evaluation> {
        let tensors = decode_blob(&weights.safetensors)?;
        let policy = Policy::from_tensors(self.cfg.clone(), tensors, &Device::Cpu, DType::F32)
            .with_context(|| format!("building policy version {}", weights.version))?;
        Ok(evaluate_policy(
            &self.opts,
            &policy,
            &self.processor,
            &self.samples,
            self.segmenter.as_ref(),
            |_, _| {},
        )?)
    }
}

fn decode_blob(bytes: &[u8]) -> anyhow::Result<HashMap<String, candle_core::Tensor>> {
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .context("decoding published weights")?;
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect()
}

/// Writes a published version as an HF model directory (the policy's non-weight files plus
/// `model.safetensors`), written to a temporary name and renamed.
fn write_model_dir(weights: &PolicyWeights, policy_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for (name, bytes) in platter_learner::model_dir_files(policy_dir)? {
        std::fs::write(tmp.join(&name), bytes)?;
    }
    // The published blob may be bf16; write f32 so every loader reads it the same way.
    let tensors = decode_blob(&weights.safetensors)?;
    candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    Ok(())
}

/// Copies the files (not subdirectories) of a model directory.
fn copy_model_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).with_context(|| {
                format!("copying {} to {}", entry.path().display(), to.display())
            })?;
        }
    }
    Ok(())
}

fn append_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    serde_json::to_writer(&mut f, value)?;
    f.write_all(b"\n")?;
    Ok(())
}

async fn bind() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((l, url))
}

fn run_id(cfg: &ExperimentConfig) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let algo = match cfg.algorithm {
        Algorithm::Dapo => "dapo",
        Algorithm::Grpo => "grpo",
    };
    format!("{}-{algo}-{secs}", cfg.name)
}

/// Entry point of `platter run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let RunFile {
        mut experiment,
        mut run,
    } = RunFile::parse(&text, &args.config)?;
    if let Some(a) = &args.algo {
        experiment.algorithm = if a == "grpo" {
            Algorithm::Grpo
        } else {
            Algorithm::Dapo
        };
    }
    if let Some(s) = args.steps {
        experiment.steps = s;
    }
    if let Some(n) = args.eval_samples {
        run.eval_samples = n;
    }
    if let Some(n) = args.eval_every {
        run.eval_every = n;
    }
    if let Some(o) = &args.out {
        run.out_dir = o.clone();
    }
    experiment
        .validate()
        .with_context(|| format!("{}", args.config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(experiment, run, args.metrics_listen))
}

async fn run_async(
    mut cfg: ExperimentConfig,
    run: RunSection,
    metrics_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_dataset(&cfg, &run)?;
    let id = run_id(&cfg);
    let dir = run.out_dir.join(&id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if cfg.learner.checkpoint_dir.is_none() {
        cfg.learner.checkpoint_dir = Some(dir.join("checkpoints"));
    }
    let config_toml = toml::to_string(&cfg).context("encoding the experiment config")?;
    let mut saved = config_toml.clone();
    saved.push_str("\n[run]\n");
    saved.push_str(&toml::to_string(&run).context("encoding [run]")?);
    std::fs::write(dir.join("config.toml"), saved)?;
    let algo = match cfg.algorithm {
        Algorithm::Dapo => "dapo",
        Algorithm::Grpo => "grpo",
    };
    println!(
        "run {id}: {algo}, {} steps, policy {}, {} workers, {} learner ranks, data {}",
        cfg.steps,
        cfg.model.policy.display(),
        run.workers,
        cfg.learner.ranks,
        cfg.data.manifest.display()
    );
    println!("writing to {}", dir.display());

    let _metrics = match metrics_listen {
        Some(addr) => {
            let handle = platter_proto::metrics_http::install()?;
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding /metrics on {addr}"))?;
            let (tx, mut rx) = watch::channel(false);
            tokio::spawn(platter_proto::metrics_http::serve(l, handle, async move {
                let _ = rx.wait_for(|v| *v).await;
            }));
            println!("metrics: http://{addr}/metrics");
            Some(tx)
        }
        None => None,
    };

    // Evaluation set and evaluator.
    let segmenter = load_segmenter(&run)?;
    let policy_dir = cfg.model.policy.clone();
    let boot = Policy::load(&policy_dir, &Device::Cpu, DType::F32)
        .with_context(|| format!("model.policy: {}", policy_dir.display()))?;
    let processor = boot.processor(&policy_dir)?;
    let policy_cfg = boot.cfg.clone();
    drop(boot);
    let samples = load_samples(
        &cfg.data.manifest,
        run.eval_split,
        cfg.data.image_size,
        run.eval_samples,
    )?;
    let evaluator = Arc::new(Evaluator {
        opts: EvalOptions {
            image_size: cfg.data.image_size,
            max_new_tokens: if run.eval_max_new_tokens > 0 {
                run.eval_max_new_tokens
            } else {
                cfg.overlong.max_response_tokens
            },
            batch_size: 16,
            limit: 0,
            reward: cfg.reward.clone(),
        },
        samples,
        cfg: policy_cfg,
        processor,
        segmenter: segmenter.clone(),
        policy_dir: policy_dir.clone(),
    });
    println!(
        "evaluating the starting policy on {} {} samples…",
        evaluator.samples.len(),
        serde_json::to_value(run.eval_split)?
            .as_str()
            .unwrap_or("eval")
    );
    let ev = evaluator.clone();
    let before = tokio::task::spawn_blocking(move || ev.evaluate_dir()).await??;
    let before = EvalPoint::new(0, 0, &before);
    println!("{}", eval_line("eval before", &before));
    append_json(&dir.join("evals.jsonl"), &before)?;

    // Services.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let token = format!("run-{}", std::process::id());

    let (reward_l, reward_url) = bind().await?;
    let reward_task = tokio::spawn(platter_reward::serve(
        platter_reward::RewardServerConfig::new(segmenter.clone()),
        reward_l,
        stopped(stop_rx.clone()),
    ));

    let learner = Arc::new(QwenLearner::new());
    let (learner_l, learner_url) = bind().await?;
    let mut learner_cfg = platter_learner::server::LearnerServerConfig::new(learner.clone());
    learner_cfg.auth_token = Some(token.clone());
    let learner_task = tokio::spawn(platter_learner::server::serve(
        learner_cfg,
        learner_l,
        stopped(stop_rx.clone()),
    ));

    let remote = RemoteLearner::new(
        &learner_url,
        RemoteLearnerOptions {
            token: Some(token.clone()),
            ..RemoteLearnerOptions::default()
        },
    )?;
    let (coord_l, coord_url) = bind().await?;
    let mut coord_cfg = CoordinatorConfig::new(dir.join("coordinator.sqlite"), Arc::new(remote));
    coord_cfg.auth_token = Some(token.clone());
    let coord_task = tokio::spawn(platter_coordinator::serve(
        coord_cfg,
        coord_l,
        stopped(stop_rx.clone()),
    ));

    // Workers stop first, so no stream to a service that is already gone is reported.
    let (workers_stop_tx, workers_stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for i in 0..run.workers {
        let dir = policy_dir.clone();
        let engine =
            tokio::task::spawn_blocking(move || QwenEngine::load(&dir, &Device::Cpu, DType::F32))
                .await?
                .with_context(|| format!("loading the rollout policy {}", policy_dir.display()))?;
        let initial = PolicyWeights {
            version: 0,
            safetensors: Arc::new(Vec::new()),
        };
        let mut wc = WorkerConfig::new(&format!("worker-{i}"), &coord_url, &reward_url);
        wc.token = Some(token.clone());
        wc.max_concurrent_groups = run.groups_per_worker;
        wc.weights = Some(platter_rollout::subscribe_weights(&learner_url, initial)?);
        wc.weights_timeout = Duration::from_secs(600);
        workers.push(tokio::spawn(platter_rollout::run(
            wc,
            Arc::new(engine),
            stopped(workers_stop_rx.clone()),
        )));
    }

    // Submit and watch.
    let client = CoordinatorClient::new(&coord_url, Some(token.clone()))?;
    let submitted = client.submit(&config_toml).await?;
    let exp_id = submitted.experiment_id.clone();
    let mut weights_rx = learner.subscribe();
    let mut stream = client.watch(&exp_id, 0).await?;
    let train_started = Instant::now();
    let mut evals = vec![before.clone()];
    let mut best = before.clone();
    let mut since_best = 0u32;
    let mut outcome = String::from("succeeded");
    let mut steps_done = 0u64;
    let mut records: Vec<StepRecord> = Vec::new();
    println!("{TABLE_HEADER}");
    let result: anyhow::Result<()> = async {
        while let Some(s) = stream.next().await? {
            let rec = step_record(&s, train_started.elapsed().as_secs_f64(), &learner);
            println!("{}", table_row(&rec, cfg.steps));
            append_json(&dir.join("metrics.jsonl"), &rec)?;
            records.push(rec);
            steps_done = s.step + 1;
            let periodic = run.eval_every > 0
                && steps_done.is_multiple_of(run.eval_every)
                && steps_done < cfg.steps;
            if periodic {
                let w = weights_rx.borrow_and_update().clone();
                let ev = evaluator.clone();
                let w2 = w.clone();
                let e = tokio::task::spawn_blocking(move || ev.evaluate_blob(&w2)).await??;
                let p = EvalPoint::new(steps_done, w.version, &e);
                println!("{}", eval_line(&format!("eval @ step {steps_done}"), &p));
                append_json(&dir.join("evals.jsonl"), &p)?;
                evals.push(p.clone());
                if p.giou > best.giou + run.min_delta {
                    best = p;
                    since_best = 0;
                    write_model_dir(&w, &policy_dir, &dir.join("best"))?;
                } else {
                    since_best += 1;
                    if run.patience > 0 && since_best >= run.patience {
                        println!(
                            "early stop: validation gIoU has not improved for {since_best} evaluations (best {:.4} at step {})",
                            best.giou, best.step
                        );
                        outcome = "early_stopped".into();
                        client.cancel(&exp_id).await?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        outcome = format!("failed: {e:#}");
    }
    let exp = client.get(&exp_id).await.ok();
    if let Some(exp) = &exp
        && outcome == "succeeded"
    {
        let state = v1::ExperimentState::try_from(exp.state).unwrap_or_default();
        if state != v1::ExperimentState::Succeeded {
            outcome = format!("{}: {}", state.as_str_name().to_lowercase(), exp.error);
        }
    }

    // Final evaluation with the last published weights.
    let last = learner.subscribe().borrow().clone();
    let after = if last.safetensors.is_empty() {
        before.clone()
    } else {
        write_model_dir(&last, &policy_dir, &dir.join("final"))?;
        let ev = evaluator.clone();
        let w = last.clone();
        let e = tokio::task::spawn_blocking(move || ev.evaluate_blob(&w)).await??;
        EvalPoint::new(steps_done, last.version, &e)
    };
    println!("{}", eval_line("eval after", &after));
    append_json(&dir.join("evals.jsonl"), &after)?;
    if after.step != 0 && evals.last().map(|e| e.step) != Some(after.step) {
        evals.push(after.clone());
    }
    if after.giou > best.giou + run.min_delta {
        best = after.clone();
        write_model_dir(&last, &policy_dir, &dir.join("best"))?;
    }

    if !dir.join("best").exists() {
        // The starting policy stayed the best: best/ is a copy of it.
        copy_model_dir(&policy_dir, &dir.join("best"))?;
    }

    // Stop the workers, then the services.
    let _ = workers_stop_tx.send(true);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(30), coord_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "coordinator stopped with an error"),
        Err(_) => tracing::warn!("coordinator did not stop within 30 s"),
        _ => {}
    }
    match tokio::time::timeout(Duration::from_secs(30), learner_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "learner service stopped with an error"),
        Err(_) => tracing::warn!("learner service did not stop within 30 s"),
        _ => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), reward_task).await;

    let summary = RunSummary {
        run_id: id.clone(),
        algo: algo.into(),
        policy: policy_dir.clone(),
        steps: steps_done,
        steps_planned: cfg.steps,
        outcome: outcome.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        eval_split: serde_json::to_value(run.eval_split)?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        eval_samples: evaluator.samples.len(),
        segmenter: run.segmenter.clone(),
        eval_before: before.clone(),
        eval_after: after.clone(),
        best: best.clone(),
        evals: evals.clone(),
        run_dir: dir.clone(),
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    std::fs::write(dir.join("eval_report.md"), eval_report(&summary))?;
    let png = plot(&records, &evals);
    png.save(dir.join("plot.png"))
        .with_context(|| format!("writing {}", dir.join("plot.png").display()))?;
    println!(
        "done in {:.0} s ({outcome}): validation gIoU {:.4} -> {:.4} ({:+.4}), best {:.4} at step {}",
        summary.wall_seconds,
        before.giou,
        after.giou,
        after.giou - before.giou,
        best.giou,
        best.step
    );
    println!(
        "wrote {}/{{summary.json, metrics.jsonl, evals.jsonl, eval_report.md, plot.png, final/, best/, checkpoints/}}",
        dir.display()
    );
    result?;
    if outcome.starts_with("failed") || outcome.starts_with("cancelled") {
        bail!("the experiment did not finish: {outcome}");
    }
    Ok(())
}

fn eval_report(s: &RunSummary) -> String {
    let mut out = format!(
        "# Evaluation of run `{}`\n\n{} on the `{}` split ({} samples), {} segmenter masks; \
         gIoU = mean per-sample mask IoU, cIoU = ΣI/ΣU (METHOD §6).\n\n",
        s.run_id,
        s.algo,
        s.eval_split,
        s.eval_samples,
        if s.segmenter == "sam2" {
            "SAM2"
        } else {
            "predicted-box"
        }
    );
    out.push_str(
        "| policy | step | gIoU | cIoU | parse rate | box AP@0.5 | mean reward | mean tokens |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let ap = |p: &EvalPoint| {
        p.box_ap50
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
    };
    for (name, p) in [
        ("start (SFT)", &s.eval_before),
        ("after RL", &s.eval_after),
        ("best (val gIoU)", &s.best),
    ] {
        out.push_str(&format!(
            "| {name} | {} | {:.4} | {:.4} | {:.3} | {} | {:.3} | {:.1} |\n",
            p.step,
            p.giou,
            p.ciou,
            p.parse_rate,
            ap(p),
            p.mean_reward,
            p.mean_tokens
        ));
    }
    out
}

fn plot(records: &[StepRecord], evals: &[EvalPoint]) -> image::RgbImage {
    let x = |r: &StepRecord| (r.step + 1) as f64;
    let series = |name: &str, k: usize, f: &dyn Fn(&StepRecord) -> f64| Series {
        name: name.into(),
        points: records.iter().map(|r| (x(r), f(r))).collect(),
        color: PALETTE[k % PALETTE.len()],
    };
    let mut mask = Vec::new();
    if records.iter().any(|r| r.mask_iou.is_some()) {
        mask.push(series("MASK IOU", 3, &|r| r.mask_iou.unwrap_or(f64::NAN)));
    }
    let panels = vec![
        Panel {
            title: "REWARD (ALL GENERATED)".into(),
            x_label: "STEP".into(),
            series: vec![
                series("TOTAL", 0, &|r| r.reward),
                series("KEPT GROUPS", 1, &|r| r.kept_reward),
            ],
        },
        Panel {
            title: "REWARD TERMS".into(),
            x_label: "STEP".into(),
            series: [
                vec![
                    series("ANSWER FORMAT", 0, &|r| r.answer_format),
                    series("SEG", 1, &|r| r.seg),
                    series("THINK FORMAT", 2, &|r| r.think_format),
                ],
                mask,
            ]
            .concat(),
        },
        Panel {
            title: "VALIDATION".into(),
            x_label: "STEP".into(),
            series: vec![
                Series {
                    name: "GIOU".into(),
                    points: evals.iter().map(|e| (e.step as f64, e.giou)).collect(),
                    color: PALETTE[0],
                },
                Series {
                    name: "CIOU".into(),
                    points: evals.iter().map(|e| (e.step as f64, e.ciou)).collect(),
                    color: PALETTE[1],
                },
            ],
        },
        Panel {
            title: "KEPT-GROUP FRACTION".into(),
            x_label: "STEP".into(),
            series: vec![series("KEPT / OFFERED", 2, &|r| r.kept_fraction)],
        },
        Panel {
            title: "RESPONSE LENGTH (TOKENS)".into(),
            x_label: "STEP".into(),
            series: vec![series("MEAN", 4, &|r| r.mean_response_tokens)],
        },
        Panel {
            title: "LOSS AND GRAD NORM".into(),
            x_label: "STEP".into(),
            series: vec![
                series("LOSS", 1, &|r| r.loss),
                series("GRAD NORM", 0, &|r| r.grad_norm),
            ],
        },
    ];
    render(&panels, 3, 520, 360)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
name = "t"
steps = 2
[data]
manifest = "x/manifest.jsonl"
image_size = 224
"#;

    #[test]
    fn the_run_table_is_optional_and_split_off() {
        let f = RunFile::parse(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(f.run, RunSection::default());
        assert_eq!(f.experiment.steps, 2);
        let f = RunFile::parse(
            &format!("{MIN}\n[run]\nworkers = 3\neval_every = 4\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!((f.run.workers, f.run.eval_every), (3, 4));
    }

    #[test]
    fn bad_keys_are_named() {
        let e = RunFile::parse(&format!("{MIN}\n[run]\nworkerz = 3\n"), Path::new("t.toml"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("workerz"), "{e:#}");
        let e = RunFile::parse(&format!("{MIN}\n[run]\nworkers = 0\n"), Path::new("t.toml"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("run.workers"), "{e:#}");
        let e = RunFile::parse(
            &format!("{MIN}\n[run]\nsegmenter = \"sam2\"\n"),
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("run.sam2_checkpoint"), "{e:#}");
        let e = RunFile::parse(
            &MIN.replace("steps = 2", "steps = 2\nbogus = 1"),
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    }

    #[test]
    fn the_shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for name in ["tiny-cpu.toml", "paper-dapo.toml", "paper-grpo.toml"] {
            let path = root.join("configs").join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            RunFile::parse(&text, &path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
}
