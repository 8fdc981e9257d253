//! The experiment config a researcher submits (TOML), validated the same way by the CLI and the
//! coordinator. Unknown keys and out-of-range values are errors that name the key.
//!
//! ```toml
//! name = "tiny-dapo"
//! algorithm = "dapo"          # or "grpo"
//! steps = 3
//! seed = 0
//! max_staleness = 0           # 0 = strictly on-policy
//!
//! [data]
//! manifest = "data/synth/manifest.jsonl"
//! split = "train"
//! image_size = 336            # policy input side (METHOD §1)
//!
//! [rollout]
//! group_size = 8
//! temperature = 1.0
//! top_p = 1.0
//! lease_timeout_seconds = 60.0
//!
//! [sampling]                  # platter_rl::AssemblerConfig
//! prompts_per_step = 16
//!
//! [reward]                    # platter_rl::RewardConfig
//! [overlong]                  # platter_rl::OverlongConfig (max_response_tokens lives here)
//! [dapo]                      # platter_rl::DapoLoss
//! [grpo]                      # platter_rl::GrpoLoss
//! [optim]
//! lr = 1e-6
//!
//! [model]
//! policy = "assets/tiny-sft"  # HF model directory: initial policy and GRPO reference
//! publish_dtype = "f32"       # or "bf16"
//!
//! [learner]
//! ranks = 1                   # data-parallel ranks (threads on CPU)
//! micro_batch_size = 4
//! ```

use std::path::PathBuf;

use platter_data::Split;
use platter_rl::{AssemblerConfig, DapoLoss, GrpoLoss, OverlongConfig, RewardConfig};
use serde::{Deserialize, Serialize};

/// A config that failed to parse or validate; `key` is the dotted TOML key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown key, or a value of the wrong type (the message names the key).
    #[error("experiment config: {0}")]
    Parse(String),
    /// A value out of its range.
    #[error("experiment config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// Which loss trains the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// DAPO: dynamic sampling, token-mean loss, decoupled clip, overlong shaping.
    #[default]
    Dapo,
    /// GRPO: every group kept, sequence-mean loss with KL.
    Grpo,
}

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// JSONL manifest (see `platter_data::manifest`); relative paths resolve against the
    /// coordinator's working directory.
    pub manifest: PathBuf,
    /// Split to train on.
    #[serde(default = "default_split")]
    pub split: Split,
    /// Side of the policy's square input (METHOD §1).
    #[serde(default = "default_image_size")]
    pub image_size: u32,
}

fn default_split() -> Split {
    Split::Train
}
fn default_image_size() -> u32 {
    840
}

/// Group sampling and leasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Responses per prompt (G).
    pub group_size: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus threshold.
    pub top_p: f64,
    /// A lease not renewed by a heartbeat for this long is leased again.
    pub lease_timeout_seconds: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            group_size: 8,
            temperature: 1.0,
            top_p: 1.0,
            lease_timeout_seconds: 60.0,
        }
    }
}

/// Optimizer settings (METHOD §4); the learner turns them into its AdamW settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// AdamW learning rate (after warmup).
    pub lr: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warmup from 0 to `lr` over this many optimizer updates (0 = constant lr).
    pub warmup_steps: u64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 0,
            grad_clip: 1.0,
        }
    }
}

/// Element type of the published weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishDtype {
    /// 32-bit floats: the learner's weights exactly.
    #[default]
    F32,
    /// bfloat16: half the bytes; rollout workers then sample from rounded weights.
    Bf16,
}

/// The policy model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// HF model directory of the initial policy (config, tokenizer, safetensors); GRPO's frozen
    /// reference is the same weights. Relative paths resolve against the learner's working
    /// directory.
    pub policy: PathBuf,
    /// Detach the image features and leave `visual.*` untrained.
    pub freeze_vision: bool,
    /// Element type of the weights published to rollout workers.
    pub publish_dtype: PublishDtype,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            policy: PathBuf::from("assets/tiny-sft"),
            freeze_vision: false,
            publish_dtype: PublishDtype::F32,
        }
    }
}

/// How the learner splits and checkpoints its work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// Data-parallel ranks (threads of one learner process on CPU, one per GPU otherwise).
    pub ranks: u32,
    /// Optimizer updates per rollout batch (the batch is split into this many mini-batches).
    pub mini_batches_per_step: u32,
    /// Sequences per forward/backward on one rank (gradients accumulate over micro-batches).
    pub micro_batch_size: u32,
    /// Consecutive updates with a non-finite loss or gradient (each skipped) before the
    /// experiment stops with an error.
    pub max_consecutive_skips: u32,
    /// Seconds a rank waits for its peers in a collective before failing the step.
    pub collective_timeout_seconds: f64,
    /// Directory of checkpoints (weights as an HF model directory, optimizer state, step);
    /// none = no checkpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Write a checkpoint every this many steps (and after the last step); 0 = only after the
    /// last step.
    pub checkpoint_every: u64,
    /// Checkpoints kept (the oldest are deleted).
    pub keep_checkpoints: u32,
    /// ZeRO-1: each rank keeps the AdamW state of 1/ranks of the parameters (gradients are
    /// reduce-scattered, each rank updates its chunk, weights are all-gathered), so a model
    /// whose optimizer state does not fit one GPU fits several.
    pub shard_optimizer: bool,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            ranks: 1,
            mini_batches_per_step: 1,
            micro_batch_size: 4,
            max_consecutive_skips: 3,
            collective_timeout_seconds: 600.0,
            checkpoint_dir: None,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            shard_optimizer: false,
        }
    }
}

/// One experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Human-readable name.
    pub name: String,
    /// DAPO or GRPO.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Training steps.
    pub steps: u64,
    /// Seed of the prompt sampler and of sampling seeds.
    #[serde(default)]
    pub seed: u64,
    /// Largest policy-version lag of a trained group (0 = on-policy).
    #[serde(default)]
    pub max_staleness: u64,
    /// Dataset.
    pub data: DataConfig,
    /// Sampling and leasing.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Batch assembly (dynamic sampling applies with DAPO only).
    #[serde(default)]
    pub sampling: AssemblerConfig,
    /// Reward terms.
    #[serde(default)]
    pub reward: RewardConfig,
    /// Overlong shaping (DAPO only) and the generation limit.
    #[serde(default)]
    pub overlong: OverlongConfig,
    /// DAPO loss constants.
    #[serde(default)]
    pub dapo: DapoLoss,
    /// GRPO loss constants.
    #[serde(default)]
    pub grpo: GrpoLoss,
    /// Optimizer.
    #[serde(default)]
    pub optim: OptimConfig,
    /// The policy model.
    #[serde(default)]
    pub model: ModelConfig,
    /// Learner ranks, batching and checkpoints.
    #[serde(default)]
    pub learner: LearnerConfig,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Re-keys a platter-rl range error under the TOML table it lives in.
fn rekey(table: &str, e: platter_rl::Error) -> ConfigError {
    match e {
        platter_rl::Error::InvalidConfig { key, reason } => {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            invalid(&format!("{table}.{leaf}"), reason)
        }
        other => invalid(table, other.to_string()),
    }
}

impl LearnerConfig {
    /// Checks every range; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("learner.ranks", u64::from(self.ranks)),
            (
                "learner.mini_batches_per_step",
                u64::from(self.mini_batches_per_step),
            ),
            ("learner.micro_batch_size", u64::from(self.micro_batch_size)),
            (
                "learner.max_consecutive_skips",
                u64::from(self.max_consecutive_skips),
            ),
            ("learner.keep_checkpoints", u64::from(self.keep_checkpoints)),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(invalid(key, "must be at least 1, found 0"));
            }
        }
        if !(self.collective_timeout_seconds.is_finite() && self.collective_timeout_seconds > 0.0) {
            return Err(invalid(
                "learner.collective_timeout_seconds",
                "must be a positive number",
            ));
        }
        if self.checkpoint_every > 0 && self.checkpoint_dir.is_none() {
            return Err(invalid(
                "learner.checkpoint_every",
                "needs `learner.checkpoint_dir` (where to write them)",
            ));
        }
        if self
            .checkpoint_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(invalid("learner.checkpoint_dir", "must not be empty"));
        }
        Ok(())
    }
}

impl ExperimentConfig {
    /// Parses and validates TOML.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every range; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.steps == 0 {
            return Err(invalid("steps", "must be at least 1"));
        }
        if self.data.image_size == 0 {
            return Err(invalid("data.image_size", "must be at least 1"));
        }
        let r = &self.rollout;
        if r.group_size < 2 {
            return Err(invalid(
                "rollout.group_size",
                format!(
                    "must be at least 2 (advantages need a group), found {}",
                    r.group_size
                ),
            ));
        }
        if !(r.temperature.is_finite() && r.temperature >= 0.0) {
            return Err(invalid(
                "rollout.temperature",
                "must be a finite number >= 0",
            ));
        }
        if !(r.top_p > 0.0 && r.top_p <= 1.0) {
            return Err(invalid("rollout.top_p", "must be in (0, 1]"));
        }
        if !(r.lease_timeout_seconds.is_finite() && r.lease_timeout_seconds > 0.0) {
            return Err(invalid(
                "rollout.lease_timeout_seconds",
                "must be a positive number",
            ));
        }
        self.sampling.validate().map_err(|e| rekey("sampling", e))?;
        self.reward.validate().map_err(|e| rekey("reward", e))?;
        self.overlong.validate().map_err(|e| rekey("overlong", e))?;
        self.dapo.validate().map_err(|e| rekey("dapo", e))?;
        self.grpo.validate().map_err(|e| rekey("grpo", e))?;
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(invalid("optim.lr", "must be a positive number"));
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(invalid("optim.betas", "both must be in [0, 1)"));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(invalid(
                "optim.weight_decay",
                "must be a finite number >= 0",
            ));
        }
        if !(o.grad_clip.is_finite() && o.grad_clip > 0.0) {
            return Err(invalid("optim.grad_clip", "must be a positive number"));
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(invalid("optim.eps", "must be a positive number"));
        }
        if self.model.policy.as_os_str().is_empty() {
            return Err(invalid("model.policy", "must name a model directory"));
        }
        self.learner.validate()
    }

    /// The assembler settings in effect: dynamic sampling only with DAPO.
    pub fn assembler(&self) -> AssemblerConfig {
        AssemblerConfig {
            dynamic_sampling: self.sampling.dynamic_sampling && self.algorithm == Algorithm::Dapo,
            ..self.sampling.clone()
        }
    }

    /// The overlong shaping in effect: DAPO only.
    pub fn overlong_in_effect(&self) -> OverlongConfig {
        OverlongConfig {
            enabled: self.overlong.enabled && self.algorithm == Algorithm::Dapo,
            ..self.overlong.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "name = \"t\"\nsteps = 2\n[data]\nmanifest = \"m.jsonl\"\n";

    #[test]
    fn minimal_config_gets_method_defaults() {
        let c = ExperimentConfig::from_toml(MIN).unwrap();
        assert_eq!(c.algorithm, Algorithm::Dapo);
        assert_eq!(c.rollout.group_size, 8);
        assert_eq!(c.sampling.prompts_per_step, 16);
        assert_eq!(c.dapo.clip_high, 0.28);
        assert_eq!(c.data.image_size, 840);
        assert!(c.assembler().dynamic_sampling);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = format!("{MIN}[sampling]\npromts_per_step = 4\n");
        let e = ExperimentConfig::from_toml(&unknown)
            .unwrap_err()
            .to_string();
        assert!(e.contains("promts_per_step"), "{e}");
        let zero = format!("{MIN}[sampling]\nprompts_per_step = 0\n");
        let e = ExperimentConfig::from_toml(&zero).unwrap_err().to_string();
        assert!(e.contains("`sampling.prompts_per_step`"), "{e}");
        let clip = format!("{MIN}[dapo]\nclip_low = 2.0\n");
        let e = ExperimentConfig::from_toml(&clip).unwrap_err().to_string();
        assert!(e.contains("`dapo.clip_low`"), "{e}");
        let g = format!("{MIN}[rollout]\ngroup_size = 1\n");
        let e = ExperimentConfig::from_toml(&g).unwrap_err().to_string();
        assert!(e.contains("`rollout.group_size`"), "{e}");
        let e = ExperimentConfig::from_toml("steps = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("name"), "{e}");
    }

    #[test]
    fn model_learner_and_optim_keys() {
        let c = ExperimentConfig::from_toml(MIN).unwrap();
        assert_eq!(c.model.policy, PathBuf::from("assets/tiny-sft"));
        assert_eq!(c.model.publish_dtype, PublishDtype::F32);
        assert!(!c.model.freeze_vision);
        assert_eq!(c.learner, LearnerConfig::default());
        assert_eq!((c.optim.eps, c.optim.warmup_steps), (1e-8, 0));
        let full = format!(
            "{MIN}[model]\npolicy = \"m\"\nfreeze_vision = true\npublish_dtype = \"bf16\"\n\
             [learner]\nranks = 2\nmini_batches_per_step = 2\nmicro_batch_size = 1\n\
             checkpoint_dir = \"ck\"\ncheckpoint_every = 5\nkeep_checkpoints = 1\n\
             [optim]\neps = 1e-6\nwarmup_steps = 10\n"
        );
        let c = ExperimentConfig::from_toml(&full).unwrap();
        assert_eq!(c.model.publish_dtype, PublishDtype::Bf16);
        assert_eq!((c.learner.ranks, c.learner.checkpoint_every), (2, 5));
        assert_eq!(c.optim.warmup_steps, 10);
        for (extra, key) in [
            ("[learner]\nranks = 0\n", "`learner.ranks`"),
            (
                "[learner]\nmicro_batch_size = 0\n",
                "`learner.micro_batch_size`",
            ),
            (
                "[learner]\ncheckpoint_every = 2\n",
                "`learner.checkpoint_every`",
            ),
            ("[optim]\neps = 0.0\n", "`optim.eps`"),
            ("[model]\npolicy = \"\"\n", "`model.policy`"),
        ] {
            let e = ExperimentConfig::from_toml(&format!("{MIN}{extra}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e = ExperimentConfig::from_toml(&format!("{MIN}[model]\npublish_dtype = \"f16\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("publish_dtype"), "{e}");
        let e = ExperimentConfig::from_toml(&format!("{MIN}[learner]\nrank = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank"), "{e}");
    }

    #[test]
    fn grpo_keeps_every_group_and_has_no_overlong_shaping() {
        let c = ExperimentConfig::from_toml(&format!("algorithm = \"grpo\"\n{MIN}")).unwrap();
        assert!(!c.assembler().dynamic_sampling);
        assert!(!c.overlong_in_effect().enabled);
    }
}
