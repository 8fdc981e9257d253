//! Qwen2.5-VL policy in candle: HF-compatible loading, the processor, batched group sampling
//! with a forked KV cache, and a differentiable teacher-forced forward for training.
//!
//! ```no_run
//! # fn main() -> platter_qwen25vl::Result<()> {
//! use platter_qwen25vl::{Group, Policy, SamplingParams};
//! let dir = std::path::Path::new("models/qwen25vl/tests/fixtures/tiny");
//! let device = candle_core::Device::Cpu;
//! let policy = Policy::load(dir, &device, candle_core::DType::F32)?;
//! let processor = policy.processor(dir)?;
//! let image = platter_qwen25vl::load_image(&dir.join("../images/img0.png"), processor.max_input_pixels)?;
//! let text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n";
//! let prompt = processor.prepare(0, text, &[image])?;
//! let params = SamplingParams {
//!     temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 16,
//!     stop_token_ids: vec![processor.token_id("<|im_end|>")?], seed: 7,
//! };
//! let samples = policy.generate(&[Group { prompt: &prompt, num_samples: 8 }], &params, processor.pad_token_id)?;
//! # let _ = samples; Ok(()) }
//! ```
//!
//! See `docs/policy.md` for the API tour, loading rules and measured parity with transformers.

mod config;
mod error;
mod generate;
mod image_proc;
mod loader;
mod model;
mod ops;
mod processor;
mod text;
mod train;
mod vision;

pub use config::{Config, PreprocessorConfig, TextConfig, VisionConfig};
pub use error::{Error, Result};
pub use generate::{FinishReason, Group, Sample, SamplingParams, sample_token};
pub use image_proc::{ProcessedImage, load_image, preprocess, smart_resize};
pub use loader::{checkpoint_files, expected_tensors, load_checked};
pub use model::{CounterSnapshot, Policy, PolicyVars};
pub use processor::{DEFAULT_SYSTEM_PROMPT, PreparedPrompt, Processor, PromptBatch};
pub use text::{KvCache, mrope_tables};
pub use train::{GroupedResponseBatch, ResponseBatch, TokenLogProbs};
pub use vision::{VisionModel, WindowLayout, tokens_per_image};
