//! The pure algorithm of Platter: everything METHOD §1 (prompt), §3 (rewards), §4 (advantages and
//! losses), §5 (dynamic sampling) and §6 (evaluation accumulators) define, with no I/O.
//!
//! - [`parse`]: `<think>`/`<answer>` extraction and the answer JSON, total over any input.
//! - [`reward`]: the four reward terms, Hungarian matching, overlong shaping.
//! - [`advantage`]: group-normalised advantages.
//! - [`loss`]: GRPO and DAPO policy losses in candle, differentiable in the new log-probs.
//! - [`filter`]: the dynamic-sampling group filter and the batch assembler the coordinator drives.
//! - [`eval`]: gIoU / cIoU accumulators with the conventions of METHOD §6.
//! - [`prompt`]: the user prompt of METHOD §1.

pub mod advantage;
pub mod eval;
pub mod filter;
pub mod json;
pub mod loss;
pub mod parse;
pub mod prompt;
pub mod reward;
mod text;

pub use advantage::group_advantages;
pub use filter::{AssemblerConfig, BatchAssembler, FilterMetric, RoundLimitOutcome};
pub use loss::{DapoLoss, GrpoLoss, LossDiagnostics, LossOutput, PolicyLossInput};
pub use parse::{ParsedResponse, PredictedObject};
pub use reward::{GroundTruthObject, OverlongConfig, RewardBreakdown, RewardConfig};

/// Errors of the algorithm crate: invalid configuration values and tensor shape mismatches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of its allowed range; `key` is the config key.
    #[error("invalid config value for `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// Loss inputs whose shapes disagree.
    #[error("loss input `{name}`: expected shape {expected}, found {found:?}")]
    Shape {
        name: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    /// The dynamic-sampling round bound was reached with the `fail` outcome.
    #[error(
        "dynamic sampling hit max_generation_rounds = {max_rounds} with {kept} of {needed} mixed-reward groups kept (on_round_limit = fail)"
    )]
    RoundLimit {
        max_rounds: u32,
        kept: usize,
        needed: usize,
    },
    /// A loss normaliser (global token or sequence count) that is not a positive finite number.
    #[error("loss normaliser `{name}` must be a positive finite number, found {value}")]
    Normaliser { name: &'static str, value: f64 },
    /// An error from candle while computing a loss.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
