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

/// Optimizer settings (METHOD §4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            betas: [0.9, 0.999],
            weight_decay: 0.01,
            grad_clip: 1.0,
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
        Ok(())
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
    fn grpo_keeps_every_group_and_has_no_overlong_shaping() {
        let c = ExperimentConfig::from_toml(&format!("algorithm = \"grpo\"\n{MIN}")).unwrap();
        assert!(!c.assembler().dynamic_sampling);
        assert!(!c.overlong_in_effect().enabled);
    }
}
