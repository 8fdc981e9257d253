//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading, preprocessing, running or sampling the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, preprocessor config, shard index) is malformed or misses a key.
    #[error("invalid {path}: {reason}")]
    Json { path: PathBuf, reason: String },
    /// The configuration is self-inconsistent (e.g. mrope sections that do not sum to head_dim/2).
    #[error("invalid config: {0}")]
    Config(String),
    /// A safetensors shard is missing, truncated or otherwise unreadable.
    #[error("bad checkpoint file {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// The checkpoint's tensors disagree with what the config expects; every mismatch is listed.
    #[error("checkpoint does not match config ({} problem(s)):\n  {}", .0.len(), .0.join("\n  "))]
    WeightMismatch(Vec<String>),
    /// The tokenizer file could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An image could not be decoded or is outside the accepted size range.
    #[error("image {what}: {reason}")]
    Image { what: String, reason: String },
    /// A prompt and its images disagree, or a prompt is too long.
    #[error("prompt {index}: {reason}")]
    Prompt { index: usize, reason: String },
    /// Model inputs that disagree with each other (e.g. image tokens vs image features).
    #[error("model input: {0}")]
    Input(String),
    /// Invalid sampling or generation parameters.
    #[error("generation: {0}")]
    Generation(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
