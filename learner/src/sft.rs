//! Supervised cold start (SFT) before RL: teach a policy the METHOD §1 response format on the
//! synthetic food world.
//!
//! Each training sample's target response is built from its ground truth:
//! `<think>` one reasoning sentence from the knowledge table `</think><answer>` the GT objects
//! as JSON in policy-space pixels `</answer>`, followed by `<|im_end|>`. The loss is the
//! teacher-forced cross-entropy over response tokens only (token mean over the batch), computed
//! through the policy's differentiable path; AdamW with global grad-norm clipping updates it.
//! Periodic evaluation decodes greedily on the validation split and scores the answers with
//! [`platter_rl::reward::score_response`].
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use platter_data::synth::knowledge::{FOODS, Food};
use platter_data::{GtObject, ImageLimits, PolicySpace, Split, read_manifest};
use platter_qwen25vl::{
    FinishReason, Group, Policy, PreparedPrompt, Processor, ResponseBatch, SamplingParams,
};
use platter_rl::ParsedResponse;
use platter_rl::prompt::{DEFAULT_ANSWER_EXAMPLE, SYSTEM_MESSAGE, user_prompt};
use platter_rl::reward::{GroundTruthObject, RewardConfig, score_response};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::clip::clip_grad_norm;
use crate::optim::{AdamW, AdamWConfig};
use crate::policy::model_dir_files;
use crate::{Error, Result};

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

/// One prepared sample: the templated prompt, the GT-built response and its ground truth.
#[derive(Debug, Clone)]
pub struct SftSample {
    pub id: String,
    pub prompt: PreparedPrompt,
    /// The target response text (without the stop token).
    pub response: String,
    /// Response token ids, ending in `<|im_end|>`.
    pub response_ids: Vec<u32>,
    /// GT objects in policy space.
    pub ground_truth: Vec<GroundTruthObject>,
}

/// Mean reward terms and parse rate of greedy answers on a split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub samples: usize,
    /// Fraction whose first `<answer>` parses as a JSON list.
    pub parse_rate: f64,
    /// Fraction that ended with the stop token rather than the length limit.
    pub stop_rate: f64,
    pub think_format: f64,
    pub answer_format: f64,
    pub non_repeat: f64,
    pub seg_iou: f64,
    pub seg_l1: f64,
    pub seg_point: f64,
    pub seg: f64,
    pub total: f64,
    pub mean_objects: f64,
    pub mean_tokens: f64,
    /// One decoded answer, for eyeballing.
    pub example: String,
    /// Wall time of the evaluation.
    pub seconds: f64,
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

// The crate's `Error` has no data variant; data and tokenizer failures travel as a message that
// keeps the original text (file, line, sample id).
fn msg(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Candle(candle_core::Error::Msg(format!("{context}: {e}")))
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

/// The policy's input image: `image` resized (aspect not kept, METHOD §1) to `size` × `size`
/// with bicubic filtering.
pub fn policy_input_image(image: &RgbImage, size: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::imageops::resize(
        image,
        size,
        size,
        FilterType::CatmullRom,
    ))
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
        let text = processor.format_user_prompt(
            Some(SYSTEM_MESSAGE),
            &user_prompt(&rec.question, DEFAULT_ANSWER_EXAMPLE),
            1,
        );
        let img = policy_input_image(&loaded.image, image_size);
        let prompt = processor
            .prepare(out.len(), &text, std::slice::from_ref(&img))
            .map_err(|e| msg(&format!("sample {}", rec.id), e))?;
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
        out.push(SftSample {
            id: rec.id,
            prompt,
            response,
            response_ids,
            ground_truth,
        });
    }
    Ok(out)
}

/// Mean negative log-likelihood of the response tokens of `batch` (token mean over the batch);
/// differentiable with respect to the policy's variables. `pad_token_id` is the processor's.
pub fn sft_loss(
    policy: &Policy,
    batch: &[&SftSample],
    pad_token_id: u32,
    freeze_vision: bool,
) -> Result<Tensor> {
    let prompts: Vec<&PreparedPrompt> = batch.iter().map(|s| &s.prompt).collect();
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

/// Greedy answers for `samples` (decoded in chunks of `chunk`), scored with METHOD §3's terms.
pub fn evaluate(
    policy: &Policy,
    processor: &Processor,
    samples: &[SftSample],
    max_new_tokens: usize,
    reward: &RewardConfig,
    chunk: usize,
) -> Result<EvalSummary> {
    let start = Instant::now();
    let im_end = processor
        .token_id("<|im_end|>")
        .map_err(|e| msg("tokenizer", e))?;
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens,
        stop_token_ids: vec![im_end, processor.pad_token_id],
        seed: 0,
    };
    let mut sum = EvalSummary {
        samples: samples.len(),
        ..EvalSummary::default()
    };
    for part in samples.chunks(chunk.max(1)) {
        let groups: Vec<Group> = part
            .iter()
            .map(|s| Group {
                prompt: &s.prompt,
                num_samples: 1,
            })
            .collect();
        let out = policy
            .generate(&groups, &params, processor.pad_token_id)
            .map_err(|e| msg("sft eval generation", e))?;
        for (s, group) in part.iter().zip(out) {
            for sample in group {
                let mut tokens = sample.tokens.as_slice();
                if let [rest @ .., last] = tokens
                    && params.stop_token_ids.contains(last)
                {
                    tokens = rest;
                }
                let text = processor
                    .decode(tokens)
                    .map_err(|e| msg(&format!("sample {}", s.id), e))?;
                let r = score_response(&text, &s.ground_truth, reward);
                let parsed = ParsedResponse::parse(&text, reward.max_objects);
                sum.parse_rate += f64::from(u8::from(parsed.answer_parsed()));
                sum.stop_rate += f64::from(u8::from(sample.finish_reason == FinishReason::Stop));
                sum.think_format += r.think_format;
                sum.answer_format += r.answer_format;
                sum.non_repeat += r.non_repeat;
                sum.seg_iou += r.seg_iou;
                sum.seg_l1 += r.seg_l1;
                sum.seg_point += r.seg_point;
                sum.seg += r.seg;
                sum.total += r.total;
                sum.mean_objects += r.num_objects as f64;
                sum.mean_tokens += sample.tokens.len() as f64;
                if sum.example.is_empty() {
                    sum.example = text;
                }
            }
        }
    }
    let n = samples.len().max(1) as f64;
    for v in [
        &mut sum.parse_rate,
        &mut sum.stop_rate,
        &mut sum.think_format,
        &mut sum.answer_format,
        &mut sum.non_repeat,
        &mut sum.seg_iou,
        &mut sum.seg_l1,
        &mut sum.seg_point,
        &mut sum.seg,
        &mut sum.total,
        &mut sum.mean_objects,
        &mut sum.mean_tokens,
    ] {
        *v /= n;
    }
    sum.seconds = start.elapsed().as_secs_f64();
    Ok(sum)
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

fn keep_best(
    best: &mut (usize, f64, HashMap<String, Tensor>),
    evals: &[(usize, EvalSummary)],
    vars: &[(String, Var)],
) -> Result<()> {
    if let Some((step, e)) = evals.last()
        && e.total > best.1
    {
        *best = (*step, e.total, snapshot(vars)?);
    }
    Ok(())
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
/// `out_dir/model/` (last weights), `out_dir/best/` (weights of the evaluation with the highest
/// mean total reward) and `out_dir/report.json`. `on_event` sees every step and evaluation.
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
    let val_set = load_split(
        &paths.manifest,
        Split::Val,
        &processor,
        cfg.image_size,
        cfg.eval_samples,
    )?;
    if train_set.is_empty() {
        return Err(Error::InvalidConfig {
            key: "manifest",
            reason: format!("{} has no train samples", paths.manifest.display()),
        });
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
    let eval_chunk = 16;
    let eval_now = || {
        evaluate(
            &policy,
            &processor,
            &val_set,
            cfg.max_new_tokens,
            &cfg.reward,
            eval_chunk,
        )
    };
    push_eval(&mut evals, &mut on_event, 0, eval_now()?);
    // The weights of the evaluation with the highest mean reward: greedy decoding of a tiny
    // policy can fall into repetition late in a constant-lr run.
    let mut best = (0usize, evals[0].1.total, snapshot(&vars.vars)?);
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
        let loss = sft_loss(&policy, &batch, processor.pad_token_id, cfg.freeze_vision)?;
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
            keep_best(&mut best, &evals, &vars.vars)?;
        }
    }
    if cfg.steps > 0 {
        push_eval(&mut evals, &mut on_event, cfg.steps, eval_now()?);
        keep_best(&mut best, &evals, &vars.vars)?;
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
