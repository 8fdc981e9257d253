//! The Qwen2.5-VL policy behind the learner's [`PolicyModel`] trait.
//!
//! ```no_run
//! # fn main() -> platter_learner::Result<()> {
//! use platter_learner::{AdamW, AdamWConfig, QwenPolicy};
//! let dir = std::path::Path::new("models/qwen25vl/tests/fixtures/tiny");
//! let device = candle_core::Device::Cpu;
//! // Trainable weights; `true` freezes the vision tower.
//! let policy = QwenPolicy::load_trainable(dir, &device, candle_core::DType::F32, true)?;
//! let opt = AdamW::new(policy.trainable(), AdamWConfig::default())?;
//! # let _ = opt; Ok(()) }
//! ```
//!
//! Log-probs come from [`platter_qwen25vl::Policy::response_logprobs`], the policy's
//! differentiable teacher-forced path; a micro-batch is laid out as a
//! [`platter_qwen25vl::ResponseBatch`] (prompts left-padded, responses right-padded).
//! [`QwenPolicy::weights`] and [`model_dir_files`] give what
//! [`crate::CheckpointStore::save`] needs to write a directory that loads back in
//! [`platter_qwen25vl::Policy::load`] and in HF transformers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use platter_qwen25vl::{GroupedResponseBatch, Policy, PolicyVars, PreparedPrompt};

use crate::checkpoint::{CheckpointState, CheckpointStore};
use crate::update::{PolicyModel, ResponseLogprobs};
use crate::{Error, Result};

/// Files of an HF model directory, besides the weights, that a checkpoint carries so that it
/// is itself a loadable model directory (missing ones are skipped, except `config.json`).
pub const MODEL_DIR_FILES: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// One training sequence: the prepared prompt (token ids with the image placeholders
/// expanded, M-RoPE positions, preprocessed pixels and grid) and the sampled response ids
/// (including the stop token when one was generated).
///
/// The prompt is shared: the G responses of a group hold the same `Arc`, and a micro-batch
/// runs each distinct prompt once ([`sequence_logprobs`]).
#[derive(Debug, Clone)]
pub struct QwenSequence {
    pub prompt: Arc<PreparedPrompt>,
    pub response: Vec<u32>,
}

/// Log-probs (at `temperature`) of the responses of `seqs` under `policy`, through the
/// differentiable grouped path: sequences whose prompts are the same `Arc` share one vision
/// encoding and one prefill.
pub(crate) fn sequence_logprobs(
    policy: &Policy,
    pad_token_id: u32,
    freeze_vision: bool,
    temperature: f64,
    seqs: &[&QwenSequence],
    entropy: bool,
) -> candle_core::Result<ResponseLogprobs> {
    let mut prompts: Vec<&PreparedPrompt> = Vec::new();
    let mut rows = Vec::with_capacity(seqs.len());
    for s in seqs {
        let row = match prompts
            .iter()
            .position(|p| std::ptr::eq(*p, s.prompt.as_ref()))
        {
            Some(row) => row,
            None => {
                prompts.push(s.prompt.as_ref());
                prompts.len() - 1
            }
        };
        rows.push(row);
    }
    let responses: Vec<Vec<u32>> = seqs.iter().map(|s| s.response.clone()).collect();
    let batch = GroupedResponseBatch::new(
        &prompts,
        &rows,
        &responses,
        pad_token_id,
        policy.cfg.text.max_position_embeddings,
        policy.device(),
    )
    .map_err(candle_core::Error::wrap)?;
    let out = policy
        .grouped_response_logprobs_at(&batch, freeze_vision, temperature)
        .map_err(candle_core::Error::wrap)?;
    Ok(ResponseLogprobs {
        logp: out.logp,
        mask: out.mask,
        entropy: entropy.then_some(out.entropy),
    })
}

/// A Qwen2.5-VL policy for training: the model, its variables by HF checkpoint name, and
/// whether the vision tower is frozen.
#[derive(Debug)]
pub struct QwenPolicy {
    policy: Policy,
    vars: PolicyVars,
    freeze_vision: bool,
    pad_token_id: u32,
}

fn policy_err(e: platter_qwen25vl::Error) -> Error {
    Error::Candle(candle_core::Error::wrap(e))
}

impl QwenPolicy {
    /// Loads an HF model directory with every weight a [`Var`]. With `freeze_vision` the image
    /// features are detached and `visual.*` is left out of [`QwenPolicy::trainable`].
    pub fn load_trainable(
        dir: &Path,
        device: &Device,
        dtype: DType,
        freeze_vision: bool,
    ) -> Result<Self> {
        let (policy, vars) = Policy::load_trainable(dir, device, dtype).map_err(policy_err)?;
        let pad = policy.processor(dir).map_err(policy_err)?.pad_token_id;
        Ok(Self::from_parts(policy, vars, freeze_vision, pad))
    }

    /// Loads a frozen copy (no variables): GRPO's reference policy.
    pub fn load_frozen(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let policy = Policy::load(dir, device, dtype).map_err(policy_err)?;
        let pad = policy.processor(dir).map_err(policy_err)?.pad_token_id;
        Ok(Self::from_parts(
            policy,
            PolicyVars { vars: Vec::new() },
            true,
            pad,
        ))
    }

    /// Wraps an already loaded policy and its variables (empty for a frozen policy);
    /// `pad_token_id` is the processor's.
    pub fn from_parts(
        policy: Policy,
        vars: PolicyVars,
        freeze_vision: bool,
        pad_token_id: u32,
    ) -> Self {
        Self {
            policy,
            vars,
            freeze_vision,
            pad_token_id,
        }
    }

    /// The wrapped policy (generation, processor, config).
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the vision tower is frozen.
    pub fn freeze_vision(&self) -> bool {
        self.freeze_vision
    }

    /// The variables the optimizer updates, by HF name (`visual.*` left out when frozen).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.vars.trainable(self.freeze_vision)
    }

    /// Every weight (trainable or not) by HF checkpoint name, as the checkpoint stores them
    /// (empty for a copy from [`QwenPolicy::load_frozen`], which holds no variables).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.vars
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes a checkpoint of this policy into `store`: every weight under its HF name, the
    /// optimizer's state, `state`, and the non-weight files of the model directory `model_dir`
    /// (config, tokenizer, preprocessor), so that the checkpoint directory is itself an HF model
    /// directory. Returns the directory written.
    pub fn save_checkpoint(
        &self,
        store: &CheckpointStore,
        model_dir: &Path,
        optimizer: &HashMap<String, Tensor>,
        state: &CheckpointState,
    ) -> Result<PathBuf> {
        if self.vars.vars.is_empty() {
            return Err(Error::InvalidConfig {
                key: "checkpoint.weights",
                reason: "this policy was loaded frozen (no variables): nothing to save; load it \
                         with QwenPolicy::load_trainable"
                    .into(),
            });
        }
        let files = model_dir_files(model_dir)?;
        let extra: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        store.save(&self.weights(), optimizer, state, &extra)
    }
}

/// Reads the non-weight files of the model directory `dir` (see [`MODEL_DIR_FILES`]) as
/// `(name, bytes)` for [`crate::CheckpointStore::save`]'s `extra_files`.
pub fn model_dir_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in MODEL_DIR_FILES {
        let path = dir.join(name);
        if !path.exists() && name != "config.json" {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            reason: format!("cannot read model-directory file to copy into the checkpoint: {e}"),
        })?;
        out.push((name.to_string(), bytes));
    }
    Ok(out)
}

impl PolicyModel for QwenPolicy {
    type Sequence = QwenSequence;

    fn response_logprobs(
        &self,
        seqs: &[&QwenSequence],
        entropy: bool,
    ) -> candle_core::Result<ResponseLogprobs> {
        sequence_logprobs(
            &self.policy,
            self.pad_token_id,
            self.freeze_vision,
            1.0,
            seqs,
            entropy,
        )
    }
}
