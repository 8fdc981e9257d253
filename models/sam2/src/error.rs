//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running SAM2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape bug or backend failure).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model config (YAML or built-in name) is invalid.
    #[error("invalid SAM2 model config ({origin}): {message}")]
    Config { origin: String, message: String },
    /// The checkpoint does not hold the tensors this config needs; every mismatch is listed.
    #[error("checkpoint {path} does not match the model config ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    CheckpointMismatch {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// The checkpoint file could not be parsed.
    #[error("cannot load checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// An input (image, embedding) does not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn config_err(origin: &str, message: impl Into<String>) -> Error {
    Error::Config {
        origin: origin.to_string(),
        message: message.into(),
    }
}
