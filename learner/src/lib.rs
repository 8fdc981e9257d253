//! The learner: turns kept batches into a better policy.
//!
//! This crate holds the model-agnostic parts of the update: the [`collective`] abstraction that
//! data-parallel ranks all-reduce through (in-process threads on CPU; NCCL on GPUs), and global
//! gradient-norm clipping ([`clip`]), which candle-nn does not provide.

pub mod clip;
pub mod collective;

pub use clip::clip_grad_norm;
pub use collective::{Collective, InProcessGroup};

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
    /// A rank index outside the group.
    #[error("rank {rank} is outside a group of {world}")]
    BadRank { rank: usize, world: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
