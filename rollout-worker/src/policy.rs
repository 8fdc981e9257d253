//! The generation interface a policy engine implements ([`crate::QwenEngine`] is the
//! Qwen2.5-VL one): one prompt and image in, G sampled responses out, with token ids, per-token
//! log-probs and finish reasons, under hot-swappable versioned weights.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use platter_proto::weights::PolicyWeights;

/// Error type of policy implementations (each engine keeps its own error type).
pub type PolicyError = Box<dyn std::error::Error + Send + Sync>;

/// What to generate for one group.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The user prompt text (METHOD §1); the engine applies the chat template.
    pub prompt_text: String,
    /// The original image; the engine resizes it to `image_size` × `image_size`.
    pub image: image::RgbImage,
    /// Side of the policy's square input.
    pub image_size: u32,
    /// Responses to sample (G); the prompt is prefilled once and its KV cache forked G ways.
    pub group_size: usize,
    /// Generation limit in tokens.
    pub max_response_tokens: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus threshold.
    pub top_p: f64,
    /// Seed of this group's sampling.
    pub seed: u64,
}

/// Why a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token.
    Stop,
    /// `max_response_tokens` reached.
    Length,
}

impl FinishReason {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledResponse {
    /// Decoded text.
    pub text: String,
    /// Generated token ids, the stop token included when one ended the response (the
    /// sequence the learner teacher-forces; `text` leaves the stop token out).
    pub token_ids: Vec<u32>,
    /// log π of each generated token at sampling time.
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub finish: FinishReason,
}

/// A group and the version that generated it.
#[derive(Debug, Clone)]
pub struct GeneratedGroup {
    /// The G responses.
    pub responses: Vec<SampledResponse>,
    /// Weights version used for every response.
    pub policy_version: u64,
}

/// Cooperative cancellation of one group: the engine checks it between decoding steps and
/// returns early. The engine also records on it how many response tokens it has decoded so far,
/// so a worker whose group is cancelled mid-generation can count the work thrown away.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag {
    cancelled: Arc<AtomicBool>,
    decoded_tokens: Arc<AtomicU64>,
}

impl CancelFlag {
    /// Asks the holder to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
    /// Whether stopping was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    /// Records the response tokens decoded so far for this group, summed over its responses
    /// (engines call it as decoding goes, at least whenever they poll [`Self::is_cancelled`]).
    pub fn set_decoded_tokens(&self, tokens: u64) {
        self.decoded_tokens.store(tokens, Ordering::SeqCst);
    }
    /// The last count given to [`Self::set_decoded_tokens`] (0 if the engine records none).
    pub fn decoded_tokens(&self) -> u64 {
        self.decoded_tokens.load(Ordering::SeqCst)
    }
}

/// A generation engine. Calls block (the worker runs them on blocking threads).
pub trait Policy: Send + Sync + 'static {
    /// Version of the weights loaded now.
    fn version(&self) -> u64;
    /// Replaces the weights (hot swap between groups); the version becomes `weights.version`.
    fn load_weights(&self, weights: &PolicyWeights) -> Result<(), PolicyError>;
    /// Samples a group; returns `Ok(None)` when `cancel` was raised before it finished, after
    /// recording on `cancel` the response tokens decoded until then.
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelFlag,
    ) -> Result<Option<GeneratedGroup>, PolicyError>;
}
