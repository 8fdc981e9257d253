//! Evaluation of a policy on a split (METHOD §6): greedy decoding, the segmenter's masks, gIoU
//! and cIoU, parse rate, box AP@0.5, mean response tokens, latency and the reward terms.
//!
//! The split is loaded once ([`load_samples`]) and can be evaluated for several policies:
//!
//! ```no_run
//! # fn main() -> platter_learner::Result<()> {
//! use platter_data::{BoxSegmenter, Split};
//! use platter_learner::eval::{EvalOptions, evaluate, load_samples, markdown_tables};
//! let opts = EvalOptions { image_size: 224, ..EvalOptions::default() };
//! let samples = load_samples("/tmp/synth/manifest.jsonl".as_ref(), Split::Val, 224, 0)?;
//! let run = evaluate(&opts, "assets/tiny-sft".as_ref(), &samples, &BoxSegmenter)?;
//! println!("{}", markdown_tables(&[run.report]));
//! # Ok(()) }
//! ```
//!
//! Every figure of [`EvalReport`] is a function of the per-sample [`SampleRecord`]s
//! ([`EvalReport::from_records`]); `docs/eval.md` defines each.

mod report;
mod samples;
mod score;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use platter_data::{GtObject, Segmenter};
use platter_qwen25vl::{FinishReason, Group, Policy, PreparedPrompt, Processor, SamplingParams};
use platter_rl::reward::RewardConfig;
use serde::{Deserialize, Serialize};

pub use report::{EvalReport, RewardMeans, SampleRecord, markdown_tables};
pub use samples::{
    DEFAULT_IMAGE_SIZE, EvalSample, check_image_size, default_image_size, load_samples,
    pinned_image_size, policy_input_image, prepare_prompt,
};
pub use score::{
    BOX_AP_IOU, BoxCounts, PredictedMask, ResponseScore, match_boxes, predict_mask,
    score_response_text,
};

use crate::sft::answer_json;
use crate::{Error, Result};

/// Settings of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalOptions {
    /// Side of the square policy input (METHOD §1 `image_size`); the samples' GT objects must
    /// be in this space.
    pub image_size: u32,
    /// Generation limit per response (METHOD §6: 1024).
    pub max_new_tokens: usize,
    /// Prompts decoded together (batched greedy generation).
    pub batch_size: usize,
    /// Evaluate at most this many samples (0 = all), in the given order.
    pub limit: usize,
    /// Reward constants for the reward terms (and `max_objects` for parsing).
    pub reward: RewardConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            image_size: DEFAULT_IMAGE_SIZE,
            max_new_tokens: 1024,
            batch_size: 8,
            limit: 0,
            reward: RewardConfig::default(),
        }
    }
}

impl EvalOptions {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, reason: String| Err(Error::InvalidConfig { key, reason });
        if self.image_size == 0 || !self.image_size.is_multiple_of(28) {
            return bad(
                "eval.image_size",
                format!(
                    "must be a positive multiple of 28, found {}",
                    self.image_size
                ),
            );
        }
        if self.max_new_tokens == 0 {
            return bad("eval.max_new_tokens", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("eval.batch_size", "must be at least 1".into());
        }
        self.reward.validate()?;
        Ok(())
    }
}

/// A report and the per-sample records it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Split-level metrics.
    pub report: EvalReport,
    /// One record per sample, in sample order.
    pub records: Vec<SampleRecord>,
}

/// Loads the policy in `policy_dir` (f32; the first CUDA device when built with `cuda` and one
/// is present, else the CPU) and evaluates it with [`evaluate_policy`]. The report's `policy`
/// is the directory as given.
pub fn evaluate(
    opts: &EvalOptions,
    policy_dir: &Path,
    samples: &[EvalSample],
    segmenter: &dyn Segmenter,
) -> Result<Evaluation> {
    let dir_err = |e: platter_qwen25vl::Error| Error::Data {
        context: format!("policy {}", policy_dir.display()),
        reason: e.to_string(),
    };
    let device = Device::cuda_if_available(0)?;
    let policy = Policy::load(policy_dir, &device, DType::F32).map_err(dir_err)?;
    let processor = policy.processor(policy_dir).map_err(dir_err)?;
    let mut run = evaluate_policy(opts, &policy, &processor, samples, segmenter, |_, _| {})?;
    run.report.policy = policy_dir.display().to_string();
    Ok(run)
}

/// Evaluates an already loaded policy on `samples` (at most `opts.limit`): greedy decoding in
/// batches of `opts.batch_size`, each response scored with [`score_response_text`].
/// `on_record(done, record)` sees every sample as it finishes. The report's `policy` is empty
/// for the caller to name.
pub fn evaluate_policy(
    opts: &EvalOptions,
    policy: &Policy,
    processor: &Processor,
    samples: &[EvalSample],
    segmenter: &dyn Segmenter,
    mut on_record: impl FnMut(usize, &SampleRecord),
) -> Result<Evaluation> {
    opts.validate()?;
    check_image_size(processor, opts.image_size)?;
    let samples = match opts.limit {
        0 => samples,
        n => &samples[..n.min(samples.len())],
    };
    if samples.is_empty() {
        return Err(Error::Data {
            context: "evaluation".into(),
            reason: "no samples to evaluate".into(),
        });
    }
    if let Some(s) = samples.iter().find(|s| s.image_size != opts.image_size) {
        return Err(Error::InvalidConfig {
            key: "eval.image_size",
            reason: format!(
                "sample {} has GT objects in a {}-pixel policy space, the evaluation uses {}",
                s.id, s.image_size, opts.image_size
            ),
        });
    }
    let start = Instant::now();
    let mut records = Vec::with_capacity(samples.len());
    for part in samples.chunks(opts.batch_size) {
        let prompts = part
            .iter()
            .enumerate()
            .map(|(i, s)| {
                prepare_prompt(processor, i, &s.question, &s.image, opts.image_size).map_err(|e| {
                    Error::Data {
                        context: format!("sample {}", s.id),
                        reason: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let gen_start = Instant::now();
        let responses = greedy_responses(policy, processor, &prompts, opts.max_new_tokens)
            .map_err(|e| Error::Data {
                context: format!("samples {}..={}", part[0].id, part[part.len() - 1].id),
                reason: e.to_string(),
            })?;
        let gen_share = gen_start.elapsed().as_secs_f64() / part.len() as f64;
        for (s, response) in part.iter().zip(responses) {
            let score_start = Instant::now();
            let (score, _mask) = score_response_text(&response.text, s, segmenter, &opts.reward)?;
            records.push(SampleRecord {
                id: s.id.clone(),
                question: s.question.clone(),
                response: response.text,
                stopped: response.stopped,
                response_tokens: response.tokens,
                score,
                generate_seconds: gen_share,
                score_seconds: score_start.elapsed().as_secs_f64(),
            });
            if let Some(r) = records.last() {
                on_record(records.len(), r);
            }
        }
    }
    let report = EvalReport::from_records(
        "",
        segmenter.name(),
        &records,
        opts,
        start.elapsed().as_secs_f64(),
    );
    Ok(Evaluation { report, records })
}

/// One greedy response.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyResponse {
    /// Decoded text, the stop token removed.
    pub text: String,
    /// Generated tokens, the stop token included.
    pub tokens: usize,
    /// Ended on a stop token (`<|im_end|>` or padding) rather than the length limit.
    pub stopped: bool,
}

/// Greedy decoding (METHOD §6) of `prompts` as one batch, stopping at `<|im_end|>`.
pub fn greedy_responses(
    policy: &Policy,
    processor: &Processor,
    prompts: &[PreparedPrompt],
    max_new_tokens: usize,
) -> Result<Vec<GreedyResponse>> {
    let model_err = |what: &str, e: platter_qwen25vl::Error| Error::Data {
        context: what.to_owned(),
        reason: e.to_string(),
    };
    let im_end = processor
        .token_id("<|im_end|>")
        .map_err(|e| model_err("tokenizer", e))?;
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens,
        stop_token_ids: vec![im_end, processor.pad_token_id],
        seed: 0,
    };
    let groups: Vec<Group> = prompts
        .iter()
        .map(|prompt| Group {
            prompt,
            num_samples: 1,
        })
        .collect();
    let out = policy
        .generate(&groups, &params, processor.pad_token_id)
        .map_err(|e| model_err("greedy generation", e))?;
    let mut responses = Vec::with_capacity(prompts.len());
    for (i, group) in out.into_iter().enumerate() {
        let Some(sample) = group.into_iter().next() else {
            return Err(Error::Data {
                context: format!("greedy generation, prompt {i}"),
                reason: "no response returned".into(),
            });
        };
        let mut tokens = sample.tokens.as_slice();
        if let [rest @ .., last] = tokens
            && params.stop_token_ids.contains(last)
        {
            tokens = rest;
        }
        let text = processor
            .decode(tokens)
            .map_err(|e| model_err(&format!("decoding response {i}"), e))?;
        responses.push(GreedyResponse {
            text,
            tokens: sample.tokens.len(),
            stopped: sample.finish_reason == FinishReason::Stop,
        });
    }
    Ok(responses)
}

/// The evaluation ground truth written as an answer: `<think>ground truth</think>` and the
/// evaluation objects as the answer JSON.
pub fn gt_answer(sample: &EvalSample) -> String {
    let objects: Vec<GtObject> = sample
        .eval_objects
        .iter()
        .map(|o| GtObject {
            bbox_2d: o.bbox_2d,
            point_2d: o.point_2d,
        })
        .collect();
    format!(
        "<think>ground truth</think><answer>{}</answer>",
        answer_json(&objects)
    )
}

/// Scores [`gt_answer`] for every sample through the same path as a policy's responses: the
/// ceiling the segmenter allows (with the box segmenter, the GT boxes filled as masks). Token
/// counts and generation times are 0; the report's `policy` is `ground truth`.
pub fn evaluate_gt_answers(
    opts: &EvalOptions,
    samples: &[EvalSample],
    segmenter: &dyn Segmenter,
) -> Result<Evaluation> {
    opts.validate()?;
    let samples = match opts.limit {
        0 => samples,
        n => &samples[..n.min(samples.len())],
    };
    let start = Instant::now();
    let mut records = Vec::with_capacity(samples.len());
    for s in samples {
        let text = gt_answer(s);
        let score_start = Instant::now();
        let (score, _) = score_response_text(&text, s, segmenter, &opts.reward)?;
        records.push(SampleRecord {
            id: s.id.clone(),
            question: s.question.clone(),
            response: text,
            stopped: true,
            response_tokens: 0,
            score,
            generate_seconds: 0.0,
            score_seconds: score_start.elapsed().as_secs_f64(),
        });
    }
    let report = EvalReport::from_records(
        "ground truth",
        segmenter.name(),
        &records,
        opts,
        start.elapsed().as_secs_f64(),
    );
    Ok(Evaluation { report, records })
}
