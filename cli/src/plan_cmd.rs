//! `platter plan CONFIG --gpus 4 --gpu-memory 48GiB [--compose deploy/docker-compose.yml]`:
//! the per-GPU memory budget of an experiment and a verdict.
//!
//! The model's dimensions come from `config.json` in the experiment's `model.policy` directory
//! (or `--model DIR`), or from the built-in Qwen2.5-VL-3B / 7B configs when `--model` names one.
//! Every figure is an estimate from the dimensions, written out below so it can be checked by
//! hand (`cli/tests/plan.rs` does so for Qwen2.5-VL-3B):
//!
//! - **weights**: every parameter in the weight dtype (`w` bytes: bf16 2, f32 4).
//! - **gradients**: every trainable parameter in the weight dtype (candle keeps a gradient per
//!   variable, in the variable's dtype).
//! - **optimizer**: AdamW's f32 first and second moments plus, when the weights are not f32, an
//!   f32 master copy: 8 or 12 bytes per trainable parameter, divided by the ranks with ZeRO-1
//!   sharding (rounded up).
//! - **activations** of one micro-batch, what candle's autograd graph keeps on the training path
//!   of `platter-qwen25vl` (f32 RMSNorm and softmax, plain rope, repeated KV heads). Per text
//!   layer and sequence of `s` tokens: `s·((24+4w)·H + w·(15·H + 9·kv + 4·I)) + (20+3w)·a·s²`
//!   bytes (`H` hidden, `kv` key/value width, `I` MLP width, `a` heads). The vision tower is
//!   the same per block with `kv = H_v` and attention spans of the window (64 patches) or the
//!   whole image on its full-attention blocks; a frozen tower (`model.freeze_vision`) is only a
//!   transient peak before the text forward (its weights are still variables, so candle keeps
//!   its graph until the features are detached). With activation checkpointing each layer keeps
//!   only its input (`s·H·w`) and one layer's activations are live again during recompute.
//! - **logits** of the response positions: bf16/f32 logits, their f32 copy, log-softmax, exp
//!   and the entropy product: `V·(12 + w + 4·[w≠4])` bytes per response token.
//! - **KV cache** of a rollout worker: `G` copies of prompt + response per group (the prompt's
//!   cache is forked `G` ways), `2·L·kv·w` bytes per token, times the groups it decodes at once;
//!   plus the largest transient of a prefill (the image's full-attention scores).
//! - **SAM2**: Meta's published parameter counts in f32, plus 24 live tensors of the image
//!   encoder's first stage (256×256 tokens × its width) per image scored at once.
//! - **CUDA context**: 512 MiB per process and GPU (context, cuBLAS workspace).
//!
//! A GPU *fits* when its total stays under `(1 − headroom)` of its memory (10% by default, for
//! the allocator's fragmentation), is *tight* under the full memory, and otherwise does not fit;
//! then the command fails.

mod budget;
mod compose;

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use budget::{
    Dtype, GIB, LearnerBudget, LearnerOptions, ParamCounts, RewardBudget, Sam2Size, WorkerBudget,
    Workload, learner_budget, param_counts, parse_memory, resolve_model, reward_budget,
    worker_budget, workload,
};
use compose::{Role, compose_services, default_services};

/// Per-GPU memory budget of an experiment (weights, gradients, optimizer, activations, KV cache,
/// SAM2), checked against a compose placement; fails when it does not fit.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Experiment config (TOML).
    config: PathBuf,
    /// GPUs on the node.
    #[arg(long, default_value_t = 4)]
    gpus: usize,
    /// Memory of one GPU, e.g. `48GiB`, `80GB`, `24576MiB`.
    #[arg(long, default_value = "48GiB")]
    gpu_memory: String,
    /// Check this compose file's GPU placement (device reservations) instead of the default
    /// layout (learner rank r on GPU r, a rollout worker on every GPU but the last, the reward
    /// server on the last: the layout of deploy/docker-compose.yml).
    #[arg(long)]
    compose: Option<PathBuf>,
    /// Model: a Qwen2.5-VL directory with `config.json`, or `qwen2.5-vl-3b` / `qwen2.5-vl-7b`
    /// (default: the config's `model.policy`).
    #[arg(long)]
    model: Option<String>,
    /// Weight dtype of the learner and the rollout workers.
    #[arg(long, value_enum, default_value_t = Dtype::Bf16)]
    dtype: Dtype,
    /// AdamW state sharding across learner ranks (`zero1`: each rank keeps 1/R of it). The
    /// default is the config's `learner.shard_optimizer`.
    #[arg(long, value_enum)]
    optimizer_sharding: Option<Sharding>,
    /// Activation checkpointing on the learner (recompute each layer in backward). The
    /// default is what the learner does today.
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    activation_checkpointing: Switch,
    /// Text tokens of a prompt besides the image (chat template, system prompt, question).
    #[arg(long, default_value_t = 128)]
    prompt_text_tokens: u64,
    /// Groups a rollout worker decodes at once (a compose service's
    /// `PLATTER_ROLLOUT_CONCURRENCY` / `--max-concurrent-groups` wins).
    #[arg(long, default_value_t = 1)]
    worker_concurrency: u64,
    /// SAM2 size of the reward server (a compose service's checkpoint name or `--segmenter
    /// box` wins).
    #[arg(long, value_enum, default_value_t = Sam2Size::Large)]
    sam2: Sam2Size,
    /// Groups the reward server scores at once (a compose service's
    /// `PLATTER_REWARD_CONCURRENCY` / `--max-concurrent-groups` wins).
    #[arg(long, default_value_t = 2)]
    reward_concurrency: u64,
    /// Share of each GPU's memory kept free for allocator fragmentation.
    #[arg(long, default_value_t = 0.1)]
    headroom: f64,
    /// Print the plan as JSON (bytes) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Optimizer-state sharding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    None,
    Zero1,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    On,
    Off,
}

/// One process on one GPU.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub service: String,
    pub role: Role,
    pub bytes: u64,
}

/// A GPU's processes and verdict.
#[derive(Debug, Clone, Serialize)]
pub struct GpuPlan {
    pub gpu: usize,
    pub services: Vec<Placed>,
    pub total: u64,
    pub capacity: u64,
    pub verdict: Verdict,
}

/// Whether a GPU (or the node) fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Fits,
    Tight,
    DoesNotFit,
}

/// The whole plan, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub config: String,
    pub model: String,
    pub params: ParamCounts,
    pub dtype: Dtype,
    pub optimizer_sharding: Sharding,
    pub activation_checkpointing: Switch,
    pub freeze_vision: bool,
    pub workload: Workload,
    pub learner_rank: LearnerBudget,
    /// A learner rank's total with ZeRO-1 sharding and activation checkpointing, for
    /// comparison when the plan uses neither.
    pub learner_rank_zero1_checkpointing: u64,
    pub rollout_worker: WorkerBudget,
    pub reward_server: RewardBudget,
    pub placement: String,
    pub gpus: Vec<GpuPlan>,
    pub verdict: Verdict,
    pub problems: Vec<String>,
}

fn build_plan(args: &PlanArgs) -> anyhow::Result<Plan> {
    if args.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if !(0.0..1.0).contains(&args.headroom) {
        bail!("--headroom must be in [0, 1), found {}", args.headroom);
    }
    let capacity = parse_memory(&args.gpu_memory)?;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    // An experiment file may carry `platter run`'s `[run]` table; the plan needs the experiment.
    let exp = crate::run_cmd::RunFile::parse(&text, &args.config)?.experiment;
    let spec = match &args.model {
        Some(m) => m.clone(),
        None => exp.model.policy.display().to_string(),
    };
    let (model, cfg) = resolve_model(&spec)?;
    let params = param_counts(&cfg);
    let load = workload(&exp, &cfg, args.prompt_text_tokens)?;
    let w = args.dtype.bytes();
    let options = LearnerOptions {
        w,
        zero1: match args.optimizer_sharding {
            Some(s) => s == Sharding::Zero1,
            None => exp.learner.shard_optimizer,
        },
        checkpointing: args.activation_checkpointing == Switch::On,
        freeze_vision: exp.model.freeze_vision,
    };
    let learner = learner_budget(&cfg, params, &load, &options);
    let paper = learner_budget(
        &cfg,
        params,
        &load,
        &LearnerOptions {
            zero1: true,
            checkpointing: true,
            ..options
        },
    );

    let (placement, services) = match &args.compose {
        Some(path) => (
            path.display().to_string(),
            compose_services(path, args.gpus)?,
        ),
        None => (
            "default layout (deploy/docker-compose.yml's)".to_owned(),
            default_services(args.gpus, load.ranks as usize),
        ),
    };
    let mut problems = Vec::new();
    let learner_gpus: usize = services
        .iter()
        .filter(|s| s.role == Role::LearnerRank)
        .map(|s| s.gpus.len())
        .sum();
    if learner_gpus as u64 != load.ranks {
        problems.push(format!(
            "learner.ranks = {} in {}, but the placement gives the learner {learner_gpus} GPU(s)",
            load.ranks,
            args.config.display()
        ));
    }
    let default_worker = worker_budget(&cfg, params, &load, w, args.worker_concurrency);
    let default_sam2 = Some(args.sam2);
    let mut default_reward = reward_budget(default_sam2, args.reward_concurrency);
    let mut per_gpu: Vec<Vec<Placed>> = vec![Vec::new(); args.gpus];
    for s in &services {
        match s.role {
            Role::LearnerRank => {
                for (rank, &g) in s.gpus.iter().enumerate() {
                    per_gpu[g].push(Placed {
                        service: format!("{} rank {rank}", s.name),
                        role: s.role,
                        bytes: learner.total,
                    });
                }
            }
            Role::RolloutWorker => {
                let wb = s.dtype.map_or(w, Dtype::bytes);
                let b = worker_budget(
                    &cfg,
                    params,
                    &load,
                    wb,
                    s.concurrency.unwrap_or(args.worker_concurrency),
                );
                for &g in &s.gpus {
                    per_gpu[g].push(Placed {
                        service: s.name.clone(),
                        role: s.role,
                        bytes: b.total,
                    });
                }
            }
            Role::RewardServer => {
                let sam2 = s.sam2.unwrap_or(default_sam2);
                let b = reward_budget(sam2, s.concurrency.unwrap_or(args.reward_concurrency));
                if args.compose.is_some() {
                    default_reward = b.clone();
                }
                for &g in &s.gpus {
                    per_gpu[g].push(Placed {
                        service: s.name.clone(),
                        role: s.role,
                        bytes: b.total,
                    });
                }
            }
        }
    }
    let limit = (capacity as f64 * (1.0 - args.headroom)) as u64;
    let gpus: Vec<GpuPlan> = per_gpu
        .into_iter()
        .enumerate()
        .map(|(gpu, services)| {
            let total = services.iter().map(|s| s.bytes).sum();
            let verdict = if total <= limit {
                Verdict::Fits
            } else if total <= capacity {
                Verdict::Tight
            } else {
                Verdict::DoesNotFit
            };
            GpuPlan {
                gpu,
                services,
                total,
                capacity,
                verdict,
            }
        })
        .collect();
    let mut verdict = gpus
        .iter()
        .map(|g| g.verdict)
        .max()
        .unwrap_or(Verdict::Fits);
    if !problems.is_empty() {
        verdict = Verdict::DoesNotFit;
    }
    Ok(Plan {
        config: args.config.display().to_string(),
        model,
        params,
        dtype: args.dtype,
        optimizer_sharding: if options.zero1 {
            Sharding::Zero1
        } else {
            Sharding::None
        },
        activation_checkpointing: args.activation_checkpointing,
        freeze_vision: exp.model.freeze_vision,
        workload: load,
        learner_rank: learner,
        learner_rank_zero1_checkpointing: paper.total,
        rollout_worker: default_worker,
        reward_server: default_reward,
        placement,
        gpus,
        verdict,
        problems,
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / GIB)
}

fn print_table(p: &Plan) {
    let l = &p.learner_rank;
    let wl = &p.workload;
    println!("plan for {}", p.config);
    println!(
        "  model      {}: {:.3} B parameters ({:.3} B text, {:.3} B vision), {} weights",
        p.model,
        (p.params.text + p.params.vision) as f64 / 1e9,
        p.params.text as f64 / 1e9,
        p.params.vision as f64 / 1e9,
        p.dtype.name()
    );
    println!(
        "  sequence   {} image + {} text prompt tokens + {} response tokens = {} ({} image patches); G = {}",
        wl.image_tokens,
        wl.prompt_tokens - wl.image_tokens,
        wl.response_tokens,
        wl.sequence_tokens,
        wl.image_patches,
        wl.group_size
    );
    println!(
        "  learner    {} rank(s), micro-batch {}, optimizer sharding {}, activation checkpointing {}{}",
        wl.ranks,
        wl.micro_batch_size,
        match p.optimizer_sharding {
            Sharding::None => "none",
            Sharding::Zero1 => "ZeRO-1",
        },
        match p.activation_checkpointing {
            Switch::On => "on",
            Switch::Off => "off",
        },
        if p.freeze_vision {
            ", vision tower frozen"
        } else {
            ""
        }
    );
    println!();
    println!("learner rank (each)");
    println!("  weights                 {:>12}", gib(l.weights));
    println!(
        "  gradients               {:>12}   ({:.3} B trainable parameters)",
        gib(l.gradients),
        l.trainable_params as f64 / 1e9
    );
    println!(
        "  optimizer (AdamW f32)   {:>12}   (unsharded {}, ZeRO-1 over {} ranks {})",
        gib(l.optimizer),
        gib(l.optimizer_unsharded),
        wl.ranks,
        gib(l.optimizer_zero1)
    );
    println!(
        "  activations             {:>12}   (checkpointing on {}, off {})",
        gib(l.activations),
        gib(l.activations_with_checkpointing),
        gib(l.activations_without_checkpointing)
    );
    println!("  response logits         {:>12}", gib(l.logits));
    println!("  CUDA context            {:>12}", gib(l.cuda_context));
    println!("  total                   {:>12}", gib(l.total));
    let r = &p.rollout_worker;
    println!();
    println!("rollout worker (each, {} group(s) at once)", r.concurrency);
    println!("  weights                 {:>12}", gib(r.weights));
    println!("  KV cache                {:>12}", gib(r.kv_cache));
    println!("  prefill working set     {:>12}", gib(r.working_set));
    println!("  CUDA context            {:>12}", gib(r.cuda_context));
    println!("  total                   {:>12}", gib(r.total));
    let s = &p.reward_server;
    println!();
    match s.sam2 {
        Some(size) => println!(
            "reward server (SAM2.1 {}, {} group(s) at once)",
            match size {
                Sam2Size::Tiny => "tiny",
                Sam2Size::Small => "small",
                Sam2Size::BasePlus => "base+",
                Sam2Size::Large => "large",
            },
            s.concurrency
        ),
        None => println!("reward server (box segmenter: no SAM2)"),
    }
    println!("  SAM2 weights (f32)      {:>12}", gib(s.weights));
    println!("  image encoder working   {:>12}", gib(s.working_set));
    println!("  CUDA context            {:>12}", gib(s.cuda_context));
    println!("  total                   {:>12}", gib(s.total));
    println!();
    println!("placement: {}", p.placement);
    for g in &p.gpus {
        let parts: Vec<String> = g
            .services
            .iter()
            .map(|s| format!("{} {}", s.service, gib(s.bytes)))
            .collect();
        println!(
            "  GPU {}: {:>11} of {}  {:<13} {}",
            g.gpu,
            gib(g.total),
            gib(g.capacity),
            verdict_word(g.verdict),
            if parts.is_empty() {
                "(idle)".to_owned()
            } else {
                parts.join(" + ")
            }
        );
    }
    for problem in &p.problems {
        println!("  problem: {problem}");
    }
    println!();
    println!("verdict: {}", verdict_word(p.verdict));
    if p.verdict != Verdict::Fits
        && (p.optimizer_sharding == Sharding::None || p.activation_checkpointing == Switch::Off)
    {
        println!(
            "hint: with --optimizer-sharding zero1 --activation-checkpointing on a learner rank needs {}",
            gib(p.learner_rank_zero1_checkpointing)
        );
    }
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Fits => "fits",
        Verdict::Tight => "tight",
        Verdict::DoesNotFit => "DOES NOT FIT",
    }
}

/// Runs `platter plan`; fails (after printing the plan) when a GPU does not fit.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let plan = build_plan(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_table(&plan);
    }
    if plan.verdict == Verdict::DoesNotFit {
        let worst = plan.gpus.iter().rev().max_by_key(|g| g.total);
        match (plan.problems.first(), worst) {
            (Some(problem), _) => bail!("the plan is refused: {problem}"),
            (None, Some(g)) => bail!(
                "does not fit: GPU {} needs {} of {}",
                g.gpu,
                gib(g.total),
                gib(g.capacity)
            ),
            (None, None) => bail!("does not fit"),
        }
    }
    Ok(())
}
