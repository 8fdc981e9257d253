//! The learner: turns kept batches into a better policy.
//!
//! This crate holds the model-agnostic parts of the update: the [`collective`] abstraction that
//! data-parallel ranks all-reduce through (in-process threads on CPU; NCCL on GPUs), and global
//! gradient-norm clipping ([`clip`]), which candle-nn does not provide; AdamW with checkpointable
//! f32 state ([`optim`]); and the data-parallel update of one step ([`update`]), generic over the
//! policy model through [`PolicyModel`].

pub mod checkpoint;
pub mod clip;
pub mod collective;
pub mod eval; // [eval]
pub mod metrics; // [qwen-learner]
pub mod optim;
pub mod policy;
pub mod qwen_learner; // [qwen-learner]
pub mod server; // [server]
pub mod sft;
pub mod update;

pub use checkpoint::{Checkpoint, CheckpointState, CheckpointStore};
pub use clip::clip_grad_norm;
pub use collective::{Collective, InProcessGroup};
pub use optim::{AdamW, AdamWConfig};
pub use policy::{MODEL_DIR_FILES, QwenPolicy, QwenSequence, model_dir_files};
pub use qwen_learner::{QwenLearner, StepReport}; // [qwen-learner]
pub use update::{
    Algorithm, FrozenLogprobs, PolicyModel, ResponseLogprobs, SkipCounter, TrainItem, UpdateConfig,
    UpdateStats, frozen_logprobs, shard_for_rank, train_step,
};

/// Errors of the learner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A collective did not complete in time: a peer is dead or stuck.
    #[error(
        "collective `{op}` on rank {rank} timed out after {timeout_ms} ms waiting for ranks {missing:?}"
    )]
    CollectiveTimeout {
        op: &'static str,
        rank: usize,
        timeout_ms: u128,
        missing: Vec<usize>,
    },
    /// Ranks disagree about a collective call (different operation or buffer length).
    #[error("collective mismatch on rank {rank}: {detail}")]
    CollectiveMismatch { rank: usize, detail: String },
    /// A configuration value is out of range; `key` names it.
    #[error("invalid value for `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },
    /// Too many consecutive updates had a non-finite loss or gradient.
    #[error(
        "{consecutive} consecutive updates had a non-finite loss or gradient; last batch: {ids:?}"
    )]
    NonFinite { consecutive: u32, ids: Vec<String> },
    /// A checkpoint file could not be written, read or verified.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A loss computation failed.
    #[error(transparent)]
    Loss(#[from] platter_rl::Error),
    /// Bad input data (manifest, image, tokenizer, model output); `context` names the file,
    /// sample or key.
    #[error("{context}: {reason}")]
    Data { context: String, reason: String },
    /// A rank index outside the group.
    #[error("rank {rank} is outside a group of {world}")]
    BadRank { rank: usize, world: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
