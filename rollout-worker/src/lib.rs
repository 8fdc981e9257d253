//! The rollout worker: registers with the coordinator, leases prompts, generates each group
//! through a [`Policy`], streams it to the reward server, and returns the scored group tagged
//! with the policy version that produced it. Cancelled leases (the batch filled up, or the
//! lease expired) stop generation at the next decoding step.

pub mod metrics;
mod policy;
mod qwen;
mod weights;
mod worker;

pub use policy::{
    CancelFlag, FinishReason, GeneratedGroup, GenerationRequest, Policy, PolicyError,
    SampledResponse,
};
pub use qwen::{QwenEngine, QwenEngineError, build_prompt, policy_input_image};
pub use weights::subscribe_weights;
pub use worker::{WorkerConfig, WorkerReport, run};

/// Errors of the rollout worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A coordinator call failed.
    #[error(transparent)]
    Coordinator(#[from] platter_coordinator::Error),
    /// Scoring failed.
    #[error(transparent)]
    Reward(#[from] platter_reward::Error),
    /// The policy engine failed.
    #[error("policy engine on lease `{lease_id}`: {message}")]
    Policy { lease_id: String, message: String },
    /// A bad learner endpoint.
    #[error("learner endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    /// A lease carried something unusable (e.g. an undecodable image).
    #[error("lease `{lease_id}`: {message}")]
    Lease { lease_id: String, message: String },
    /// The lease needs a newer policy and no weights arrived in time.
    #[error(
        "lease `{lease_id}` needs policy version {needed}, have {have}; no newer weights within {seconds:.1} s"
    )]
    WeightsTimeout {
        lease_id: String,
        needed: u64,
        have: u64,
        seconds: f64,
    },
    /// Socket errors.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] platter_proto::metrics_http::MetricsError),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
