//! A `TrainStepRequest` checked and turned into training items: every group's prompt rebuilt
//! exactly as the rollout engine built it, advantages from the shaped rewards.

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::Tensor;
use image::RgbImage;
use platter_coordinator::dataset::PromptSource;
use platter_data::ImageLimits;
use platter_proto::v1;
use platter_qwen25vl::{PreparedPrompt, Processor};
use platter_rl::group_advantages;
use platter_rl::prompt::SYSTEM_MESSAGE;

use crate::policy::sequence_logprobs;
use crate::sft::policy_input_image;
use crate::update::{PolicyModel, ResponseLogprobs, TrainItem};
use crate::{Error, QwenPolicy, QwenSequence, Result};

/// The global batch of one step, in request order (group by group).
#[derive(Debug)]
pub(crate) struct GlobalBatch {
    pub items: Vec<TrainItem<QwenSequence>>,
    /// Policy version that generated each item.
    pub versions: Vec<u64>,
    /// Log-probs the rollout worker reported for each item (empty when none were).
    pub rollout_logprobs: Vec<Vec<f32>>,
    /// Response tokens of the whole batch.
    pub tokens: u64,
}

/// The prompt of one group, built as the rollout engine builds it: the image resized to
/// `image_size` × `image_size` ([`policy_input_image`]), the METHOD §1 user text wrapped in the
/// Qwen2.5-VL chat template with the system message, one image.
pub fn prepare_prompt(
    processor: &Processor,
    prompt_text: &str,
    image: &RgbImage,
    image_size: u32,
) -> Result<PreparedPrompt> {
    let text = processor.format_user_prompt(Some(SYSTEM_MESSAGE), prompt_text, 1);
    let img = policy_input_image(image, image_size);
    processor
        .prepare(0, &text, std::slice::from_ref(&img))
        .map_err(|e| Error::Candle(candle_core::Error::wrap(e)))
}

/// What checking a request needs to know about the learner's state.
pub(crate) struct BatchRules<'a> {
    pub processor: &'a Processor,
    pub image_size: u32,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Version of the weights the learner holds now.
    pub version: u64,
    pub max_staleness: u64,
    /// Older versions whose weights are still held (log π_old of their groups).
    pub held: BTreeSet<u64>,
    pub mini_batches: usize,
}

fn bad(step: u64, where_: String, reason: impl Into<String>) -> Error {
    Error::Data {
        context: format!("train step {step}, {where_}"),
        reason: reason.into(),
    }
}

impl BatchRules<'_> {
    /// Checks every group of `req` and builds the batch; the error names the step and the
    /// offending `prompt_index` (and response).
    pub fn build(
        &self,
        req: &v1::TrainStepRequest,
        source: &mut PromptSource,
    ) -> Result<GlobalBatch> {
        let step = req.step;
        if req.groups.is_empty() {
            return Err(bad(step, "batch".into(), "holds no groups"));
        }
        let mut items = Vec::new();
        let mut versions = Vec::new();
        let mut rollout_logprobs = Vec::new();
        let mut tokens = 0u64;
        for (g, group) in req.groups.iter().enumerate() {
            let at = format!("group {g} (prompt_index {})", group.prompt_index);
            self.check_version(step, &at, group.policy_version)?;
            if group.responses.is_empty() {
                return Err(bad(step, at, "has no responses"));
            }
            let rewards: Vec<f64> = group.responses.iter().map(|r| r.shaped_reward).collect();
            if let Some((j, r)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
                return Err(bad(
                    step,
                    format!("{at}, response {j}"),
                    format!("shaped_reward is {r}; rewards must be finite"),
                ));
            }
            let prompt = Arc::new(self.prompt(step, &at, group.prompt_index, source)?);
            let advantages = group_advantages(&rewards);
            for (j, (resp, adv)) in group.responses.iter().zip(advantages).enumerate() {
                let at = format!("{at}, response {j}");
                self.check_response(step, &at, &prompt, resp)?;
                tokens += resp.token_ids.len() as u64;
                items.push(TrainItem {
                    id: format!("prompt_index {}/response {j}", group.prompt_index),
                    sequence: QwenSequence {
                        prompt: Arc::clone(&prompt),
                        response: resp.token_ids.clone(),
                    },
                    advantage: adv as f32,
                });
                versions.push(group.policy_version);
                rollout_logprobs.push(resp.rollout_logprobs.clone());
            }
        }
        let n = items.len();
        if self.mini_batches > 1 && !n.is_multiple_of(self.mini_batches) {
            return Err(bad(
                step,
                "batch".into(),
                format!(
                    "{n} sequences do not split into `learner.mini_batches_per_step` = {} equal \
                     mini-batches",
                    self.mini_batches
                ),
            ));
        }
        Ok(GlobalBatch {
            items,
            versions,
            rollout_logprobs,
            tokens,
        })
    }

    fn check_version(&self, step: u64, at: &str, v: u64) -> Result<()> {
        if v > self.version {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "generated by policy version {v}, but the learner has only reached version {}",
                    self.version
                ),
            ));
        }
        let lag = self.version - v;
        if lag > self.max_staleness {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "generated by policy version {v}, {lag} version(s) behind the learner's {}: \
                     more than max_staleness = {}",
                    self.version, self.max_staleness
                ),
            ));
        }
        if lag > 0 && !self.held.contains(&v) {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "generated by policy version {v}, whose weights the learner no longer holds \
                     (after a resume only the checkpoint's version is held)"
                ),
            ));
        }
        Ok(())
    }

    fn prompt(
        &self,
        step: u64,
        at: &str,
        prompt_index: u64,
        source: &mut PromptSource,
    ) -> Result<PreparedPrompt> {
        let sample = source.index_at(prompt_index);
        let payload = source
            .payload(sample)
            .map_err(|e| bad(step, at.into(), e.to_string()))?;
        let what = format!("image of sample `{}`", payload.sample_id);
        let image =
            platter_data::imageio::decode_image(&payload.image, &what, &ImageLimits::default())
                .map_err(|e| bad(step, at.into(), e.to_string()))?
                .to_rgb8();
        prepare_prompt(
            self.processor,
            &payload.prompt_text,
            &image,
            self.image_size,
        )
        .map_err(|e| {
            bad(
                step,
                at.into(),
                format!("sample `{}`: {e}", payload.sample_id),
            )
        })
    }

    fn check_response(
        &self,
        step: u64,
        at: &str,
        prompt: &PreparedPrompt,
        r: &v1::TrainResponse,
    ) -> Result<()> {
        let n = r.token_ids.len();
        if n == 0 {
            return Err(bad(step, at.into(), "has no tokens"));
        }
        if let Some((t, id)) = r
            .token_ids
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= self.vocab_size)
        {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "token {t} has id {id}, outside the policy's vocabulary of {}",
                    self.vocab_size
                ),
            ));
        }
        if !r.rollout_logprobs.is_empty() && r.rollout_logprobs.len() != n {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "{} rollout log-probs for {n} tokens (expected one per token, or none)",
                    r.rollout_logprobs.len()
                ),
            ));
        }
        if let Some((t, lp)) = r
            .rollout_logprobs
            .iter()
            .enumerate()
            .find(|(_, lp)| !lp.is_finite())
        {
            return Err(bad(
                step,
                at.into(),
                format!("rollout log-prob of token {t} is {lp}; log-probs must be finite"),
            ));
        }
        let len = prompt.input_ids.len() + n;
        if len > self.max_positions {
            return Err(bad(
                step,
                at.into(),
                format!(
                    "prompt ({} tokens) + response ({n} tokens) exceed the policy's context of {}",
                    prompt.input_ids.len(),
                    self.max_positions
                ),
            ));
        }
        Ok(())
    }
}

/// A rank's view of a policy for the update: shared-prompt sequences in, log-probs out, with
/// the time spent in forward passes.
pub(crate) struct RankModel<'a> {
    pub policy: &'a QwenPolicy,
    pub pad_token_id: u32,
    /// The rollout temperature: log-probs are those of `softmax(logits / temperature)`, the
    /// distribution the workers sampled from, so ratios compare like with like.
    pub temperature: f64,
    forward: std::cell::Cell<std::time::Duration>,
}

impl<'a> RankModel<'a> {
    pub fn new(policy: &'a QwenPolicy, pad_token_id: u32, temperature: f64) -> Self {
        Self {
            policy,
            pad_token_id,
            temperature,
            forward: std::cell::Cell::new(std::time::Duration::ZERO),
        }
    }

    /// Time spent in [`PolicyModel::response_logprobs`] so far.
    pub fn forward_time(&self) -> std::time::Duration {
        self.forward.get()
    }
}

impl PolicyModel for RankModel<'_> {
    type Sequence = QwenSequence;

    fn response_logprobs(
        &self,
        seqs: &[&QwenSequence],
        entropy: bool,
    ) -> candle_core::Result<ResponseLogprobs> {
        let started = std::time::Instant::now();
        let out = sequence_logprobs(
            self.policy.policy(),
            self.pad_token_id,
            self.policy.freeze_vision(),
            self.temperature,
            seqs,
            entropy,
        );
        self.forward.set(self.forward.get() + started.elapsed());
        out
    }
}

/// Detached per-sequence log-prob rows (`[1, len]`) of `seqs` under `model`, in micro-batches
/// of `micro_batch_size`.
pub(crate) fn logprob_rows(
    model: &RankModel,
    seqs: &[&QwenSequence],
    micro_batch_size: usize,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(micro_batch_size.max(1)) {
        let lp = model.response_logprobs(chunk, false)?;
        let logp = lp.logp.detach().to_dtype(candle_core::DType::F32)?;
        for (r, s) in chunk.iter().enumerate() {
            out.push(logp.narrow(0, r, 1)?.narrow(1, 0, s.response.len())?);
        }
    }
    Ok(out)
}
