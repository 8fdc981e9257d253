//! Supervised cold start (SFT) before RL: teach a policy the METHOD §1 response format on the
//! synthetic food world.
//!
//! Each training sample's target response is built from its ground truth:
//! `<think>` one reasoning sentence from the knowledge table `</think><answer>` the GT objects
//! as JSON in policy-space pixels `</answer>`, followed by `<|im_end|>`. The loss is the
//! teacher-forced cross-entropy over response tokens only (token mean over the batch), computed
//! through the policy's differentiable path; AdamW with global grad-norm clipping updates it.
//! Periodic evaluation decodes greedily on the validation split with [`crate::eval`] (the box
//! segmenter turns answers into masks) and reports the reward terms, parse rate and gIoU.
//!
//! ```no_run
//! # fn main() -> platter_learner::Result<()> {
//! use platter_learner::sft::{SftConfig, SftPaths, train};
//! let paths = SftPaths {
//!     manifest: "/tmp/synth/manifest.jsonl".into(),
//!     base_model: "assets/tiny-base".into(),
//!     out_dir: "/tmp/sft-out".into(),
//! };
//! let report = train(&SftConfig::default(), &paths, |_event| {})?;
//! println!("{:?}", report.after);
//! # Ok(()) }
//! ```

mod data;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use platter_data::{BoxSegmenter, Split};
use platter_qwen25vl::{Policy, PreparedPrompt, Processor, ResponseBatch};
use platter_rl::reward::RewardConfig;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::eval::policy_input_image;
pub use data::{SftSample, answer_json, load_split, reasoning, target_response};

use crate::clip::clip_grad_norm;
use crate::eval::{EvalOptions, EvalSample, Evaluation, evaluate_policy, load_samples};
use crate::optim::{AdamW, AdamWConfig};
use crate::policy::model_dir_files;
use crate::{Error, Result};

/// The measure that picks the best evaluation (ties go to the earlier one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectBy {
    /// Validation gIoU of the greedy answers (box masks): how well the policy localises.
    Giou,
    /// Mean total reward: format terms dominate it.
    Total,
}

impl SelectBy {
    fn score(self, e: &EvalSummary) -> f64 {
        match self {
            SelectBy::Giou => e.giou,
            SelectBy::Total => e.total,
        }
    }
}

/// Settings of one SFT run (the `[sft]` table of `configs/sft-tiny.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Side of the square policy input (METHOD §1 `image_size`); a multiple of 28.
    pub image_size: u32,
    /// Optimizer updates.
    pub steps: usize,
    /// Sequences per update.
    pub batch_size: usize,
    /// Seed of the sample order.
    pub seed: u64,
    /// Global grad-norm clip.
    pub max_grad_norm: f64,
    /// Detach the image features and leave `visual.*` untrained.
    pub freeze_vision: bool,
    /// Use at most this many training samples (0 = all).
    pub max_train_samples: usize,
    /// Evaluate every this many steps (0 = only before and after training).
    pub eval_every: usize,
    /// Validation samples decoded per evaluation (0 = all).
    pub eval_samples: usize,
    /// Generation limit during evaluation.
    pub max_new_tokens: usize,
    /// Which evaluation's weights `best/` keeps.
    pub select_by: SelectBy,
    /// AdamW settings (SFT wants a much larger lr than RL's METHOD default).
    pub optim: AdamWConfig,
    /// Reward constants used to score the evaluation answers.
    pub reward: RewardConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            image_size: 224,
            steps: 120,
            batch_size: 8,
            seed: 0,
            max_grad_norm: 1.0,
            freeze_vision: false,
            max_train_samples: 0,
            eval_every: 20,
            eval_samples: 30,
            max_new_tokens: 160,
            select_by: SelectBy::Giou,
            optim: AdamWConfig {
                lr: 3e-3,
                warmup_steps: 10,
                ..AdamWConfig::default()
            },
            reward: RewardConfig::default(),
        }
    }
}

impl SftConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: &str| {
            Err(Error::InvalidConfig {
                key,
                reason: reason.into(),
            })
        };
        if self.image_size == 0 || !self.image_size.is_multiple_of(28) {
            return bad(
                "sft.image_size",
                &format!(
                    "must be a positive multiple of 28, found {}",
                    self.image_size
                ),
            );
        }
        if self.batch_size == 0 {
            return bad("sft.batch_size", "must be at least 1");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("sft.max_grad_norm", "must be a positive finite number");
        }
        if self.max_new_tokens == 0 {
            return bad("sft.max_new_tokens", "must be at least 1");
        }
        self.optim.validate()?;
        self.reward.validate()?;
        Ok(())
    }
}

/// Where an SFT run reads and writes.
#[derive(Debug, Clone)]
pub struct SftPaths {
    /// JSONL manifest (e.g. from `platter data synth`); its `train` and `val` splits are used.
    pub manifest: PathBuf,
    /// HF model directory to start from.
    pub base_model: PathBuf,
    /// Output: `model/` (last weights), `best/` (best evaluation) and `report.json`.
    pub out_dir: PathBuf,
}

/// Mean reward terms, parse rate and mask IoU (box segmenter) of greedy answers on a split: a
/// summary of [`crate::eval::EvalReport`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Samples decoded.
    pub samples: usize,
    /// Fraction whose first `<answer>` parses as a JSON list.
    pub parse_rate: f64,
    /// Fraction that ended with the stop token rather than the length limit.
    pub stop_rate: f64,
    /// Mean `R_tf`.
    pub think_format: f64,
    /// Mean `R_af`.
    pub answer_format: f64,
    /// Mean `R_nr`.
    pub non_repeat: f64,
    /// Mean box-IoU hits of `R_seg`.
    pub seg_iou: f64,
    /// Mean box-L1 hits of `R_seg`.
    pub seg_l1: f64,
    /// Mean point hits of `R_seg`.
    pub seg_point: f64,
    /// Mean `R_seg`.
    pub seg: f64,
    /// Mean total reward.
    pub total: f64,
    /// Mean answer objects.
    pub mean_objects: f64,
    /// Mean generated tokens (stop token included).
    pub mean_tokens: f64,
    /// gIoU of the answers' boxes as masks (`BoxSegmenter`) against the GT masks.
    #[serde(default)]
    pub giou: f64,
    /// cIoU, likewise.
    #[serde(default)]
    pub ciou: f64,
    /// Box AP@0.5 (`docs/eval.md`); `None` without GT boxes.
    #[serde(default)]
    pub box_ap50: Option<f64>,
    /// One decoded answer, for eyeballing.
    pub example: String,
    /// Wall time of the evaluation.
    pub seconds: f64,
}

impl From<&Evaluation> for EvalSummary {
    fn from(e: &Evaluation) -> Self {
        let (r, m) = (&e.report, &e.report.rewards);
        EvalSummary {
            samples: r.samples,
            parse_rate: r.parse_rate,
            stop_rate: r.stop_rate,
            think_format: m.think_format,
            answer_format: m.answer_format,
            non_repeat: m.non_repeat,
            seg_iou: m.seg_iou,
            seg_l1: m.seg_l1,
            seg_point: m.seg_point,
            seg: m.seg,
            total: m.total,
            mean_objects: r.mean_objects,
            mean_tokens: r.mean_response_tokens,
            giou: r.giou,
            ciou: r.ciou,
            box_ap50: r.box_ap50,
            example: e
                .records
                .first()
                .map(|s| s.response.clone())
                .unwrap_or_default(),
            seconds: r.wall_seconds,
        }
    }
}

/// Progress of a run, for the caller to print.
#[derive(Debug, Clone)]
pub enum SftEvent {
    /// One update: loss (mean response-token NLL), grad norm before clipping, lr.
    Step {
        step: usize,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        /// Wall time of this update.
        seconds: f64,
    },
    /// An evaluation after `step` updates.
    Eval { step: usize, summary: EvalSummary },
}

/// What [`train`] returns (also written to `out_dir/report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftReport {
    pub config: SftConfig,
    pub train_samples: usize,
    pub val_samples: usize,
    /// `(step, loss)` of every update.
    pub losses: Vec<(usize, f64)>,
    /// Evaluations `(step, summary)`, the first before any update.
    pub evals: Vec<(usize, EvalSummary)>,
    pub before: EvalSummary,
    pub after: EvalSummary,
    pub wall_seconds: f64,
    /// The model directory after the last update (`out_dir/model`).
    pub model_dir: PathBuf,
    /// Step of the evaluation with the highest mean total reward (0 = the base).
    pub best_step: usize,
    /// Its weights as a model directory (`out_dir/best`).
    pub best_dir: PathBuf,
}

fn msg(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Data {
        context: context.to_owned(),
        reason: e.to_string(),
    }
}

/// Mean negative log-likelihood of the response tokens of `batch` (token mean over the batch);
/// differentiable with respect to the policy's variables. The prompts are prepared here with
/// `processor` ([`SftSample::prompt`]).
pub fn sft_loss(
    policy: &Policy,
    processor: &Processor,
    batch: &[&SftSample],
    freeze_vision: bool,
) -> Result<Tensor> {
    let pad_token_id = processor.pad_token_id;
    let prepared = batch
        .iter()
        .map(|s| s.prompt(processor))
        .collect::<Result<Vec<_>>>()?;
    let prompts: Vec<&PreparedPrompt> = prepared.iter().collect();
    let responses: Vec<Vec<u32>> = batch.iter().map(|s| s.response_ids.clone()).collect();
    let rb = ResponseBatch::new(
        &prompts,
        &responses,
        pad_token_id,
        policy.cfg.text.max_position_embeddings,
        policy.device(),
    )
    .map_err(|e| msg("sft batch", e))?;
    let out = policy
        .response_logprobs(&rb, freeze_vision)
        .map_err(|e| msg("sft forward", e))?;
    let tokens = out.mask.sum_all()?;
    Ok(((out.logp * &out.mask)?.sum_all()?.neg()? / tokens)?)
}

/// A deep copy of every weight by HF name (the optimizer updates the variables in place).
pub fn snapshot(vars: &[(String, Var)]) -> Result<HashMap<String, Tensor>> {
    vars.iter()
        .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// Writes `weights` with the non-weight files of `base_dir` (config, tokenizer, preprocessor,
/// chat template) into `dir`, an HF model directory that [`platter_qwen25vl::Policy::load`] and
/// transformers load.
pub fn save_model_dir(
    weights: &HashMap<String, Tensor>,
    base_dir: &Path,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("cannot create the model directory: {e}"),
    })?;
    for (name, bytes) in model_dir_files(base_dir)? {
        let path = dir.join(&name);
        std::fs::write(&path, bytes).map_err(|e| Error::Checkpoint {
            path,
            reason: e.to_string(),
        })?;
    }
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    Ok(())
}

/// After an evaluation: keeps the weights when they are the best so far and writes both
/// directories, so that a long run can be inspected, or stopped, without losing its best.
fn keep_best(
    best: &mut (usize, f64, HashMap<String, Tensor>),
    evals: &[(usize, EvalSummary)],
    vars: &[(String, Var)],
    select_by: SelectBy,
    paths: &SftPaths,
) -> Result<()> {
    let current = snapshot(vars)?;
    if let Some((step, e)) = evals.last()
        && select_by.score(e) > best.1
    {
        *best = (*step, select_by.score(e), current.clone());
        save_model_dir(&best.2, &paths.base_model, &paths.out_dir.join("best"))?;
    }
    save_model_dir(&current, &paths.base_model, &paths.out_dir.join("model"))
}

fn push_eval(
    evals: &mut Vec<(usize, EvalSummary)>,
    on_event: &mut impl FnMut(&SftEvent),
    step: usize,
    summary: EvalSummary,
) {
    on_event(&SftEvent::Eval {
        step,
        summary: summary.clone(),
    });
    evals.push((step, summary));
}

/// Runs SFT: loads `paths.base_model` and the manifest's train/val splits, trains
/// `cfg.steps` updates, evaluates before, every `cfg.eval_every` steps and after, and writes
/// `out_dir/model/` (the weights at the latest evaluation), `out_dir/best/` (the weights of the
/// best evaluation by `select_by`; both rewritten as the run goes) and `out_dir/report.json`. `on_event` sees every step and evaluation.
pub fn train(
    cfg: &SftConfig,
    paths: &SftPaths,
    mut on_event: impl FnMut(&SftEvent),
) -> Result<SftReport> {
    cfg.validate()?;
    let start = Instant::now();
    let device = Device::Cpu;
    let (policy, vars) = Policy::load_trainable(&paths.base_model, &device, DType::F32)
        .map_err(|e| msg(&paths.base_model.display().to_string(), e))?;
    let processor = policy
        .processor(&paths.base_model)
        .map_err(|e| msg(&paths.base_model.display().to_string(), e))?;
    let train_set = load_split(
        &paths.manifest,
        Split::Train,
        &processor,
        cfg.image_size,
        cfg.max_train_samples,
    )?;
    let val_set: Vec<EvalSample> = load_samples(
        &paths.manifest,
        Split::Val,
        cfg.image_size,
        cfg.eval_samples,
    )?;
    for (split, n) in [("train", train_set.len()), ("val", val_set.len())] {
        if n == 0 {
            return Err(Error::InvalidConfig {
                key: "manifest",
                reason: format!("{} has no {split} samples", paths.manifest.display()),
            });
        }
    }
    tracing::info!(
        train = train_set.len(),
        val = val_set.len(),
        "sft data loaded"
    );
    let mut opt = AdamW::new(vars.trainable(cfg.freeze_vision), cfg.optim.clone())?;
    let opt_vars = opt.vars();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut losses = Vec::with_capacity(cfg.steps);
    let mut evals = Vec::new();
    let eval_opts = EvalOptions {
        image_size: cfg.image_size,
        max_new_tokens: cfg.max_new_tokens,
        batch_size: 16,
        limit: 0,
        reward: cfg.reward.clone(),
    };
    let eval_now = || -> Result<EvalSummary> {
        let run = evaluate_policy(
            &eval_opts,
            &policy,
            &processor,
            &val_set,
            &BoxSegmenter,
            |_, _| {},
        )?;
        Ok(EvalSummary::from(&run))
    };
    push_eval(&mut evals, &mut on_event, 0, eval_now()?);
    // The weights of the best evaluation (`select_by`): greedy decoding of a tiny policy can
    // fall into repetition late in a run.
    let mut best = (
        0usize,
        cfg.select_by.score(&evals[0].1),
        snapshot(&vars.vars)?,
    );
    for step in 1..=cfg.steps {
        let mut batch = Vec::with_capacity(cfg.batch_size);
        while batch.len() < cfg.batch_size {
            // Epochs of a seeded permutation: every sample once before any repeats.
            if order.is_empty() {
                order = (0..train_set.len()).collect();
                order.shuffle(&mut rng);
            }
            if let Some(i) = order.pop() {
                batch.push(&train_set[i]);
            }
        }
        let step_start = Instant::now();
        let loss = sft_loss(&policy, &processor, &batch, cfg.freeze_vision)?;
        let loss_v = f64::from(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        let mut g: Vec<Option<Tensor>> = opt_vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        let norm = clip_grad_norm(&mut g, cfg.max_grad_norm)?;
        if !(loss_v.is_finite() && norm.is_finite()) {
            return Err(Error::NonFinite {
                consecutive: 1,
                ids: batch.iter().map(|s| s.id.clone()).collect(),
            });
        }
        let lr = opt.current_lr();
        opt.step(&g)?;
        losses.push((step, loss_v));
        on_event(&SftEvent::Step {
            step,
            loss: loss_v,
            grad_norm: norm,
            lr,
            seconds: step_start.elapsed().as_secs_f64(),
        });
        if cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every) && step != cfg.steps {
            push_eval(&mut evals, &mut on_event, step, eval_now()?);
            keep_best(&mut best, &evals, &vars.vars, cfg.select_by, paths)?;
        }
    }
    if cfg.steps > 0 {
        push_eval(&mut evals, &mut on_event, cfg.steps, eval_now()?);
        keep_best(&mut best, &evals, &vars.vars, cfg.select_by, paths)?;
    }
    let model_dir = paths.out_dir.join("model");
    save_model_dir(&snapshot(&vars.vars)?, &paths.base_model, &model_dir)?;
    let best_dir = paths.out_dir.join("best");
    save_model_dir(&best.2, &paths.base_model, &best_dir)?;
    let before = evals.first().map(|e| e.1.clone()).unwrap_or_default();
    let after = evals.last().map(|e| e.1.clone()).unwrap_or_default();
    let report = SftReport {
        config: cfg.clone(),
        train_samples: train_set.len(),
        val_samples: val_set.len(),
        losses,
        evals,
        before,
        after,
        wall_seconds: start.elapsed().as_secs_f64(),
        model_dir,
        best_step: best.0,
        best_dir,
    };
    let path = paths.out_dir.join("report.json");
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Checkpoint {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, json).map_err(|e| Error::Checkpoint {
        path,
        reason: e.to_string(),
    })?;
    Ok(report)
}
