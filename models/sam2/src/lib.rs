//! SAM2 (SAM2.1) image predictor in candle: Meta's official checkpoints (`.pt`) or safetensors,
//! built-in configs for the four official sizes or Meta's YAML model config, one image
//! embedding reused for many prompts, prompts decoded in batches.
//!
//! Start with [`Sam2::load`], then [`Sam2::set_image`] and [`Sam2::predict`]. Parity with Meta's
//! `sam2` package is tested against fixtures written by `scripts/oracle/sam2/build_fixtures.py`;
//! see `docs/sam2.md`.

mod checkpoint;
pub mod config;
mod encoder;
mod error;
mod hiera;
mod mask_decoder;
mod neck;
mod ops;
mod predictor;
pub mod prompt;
mod prompt_encoder;
mod resample;
mod segmenter;
mod transformer;

pub use checkpoint::read_checkpoint;
pub use config::{FpnInterp, HieraConfig, NeckConfig, OfficialSize, Sam2Config};
pub use encoder::{EncoderOutput, preprocess};
pub use error::{Error, Result};
pub use neck::sine_position_encoding;
pub use predictor::{ImageEmbedding, PromptPrediction, Sam2};
pub use prompt::{BadPrompt, PointPrompt, Prompt, PromptCounterSnapshot, PromptCounters};
