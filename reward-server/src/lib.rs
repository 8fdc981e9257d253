//! The reward server: a bidirectional gRPC stream of groups in and per-response reward terms,
//! mask IoU and timings out (METHOD §1, §3, §4).
//!
//! ```no_run
//! # async fn run() -> platter_reward::Result<()> {
//! use std::sync::Arc;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = platter_reward::RewardServerConfig::new(Arc::new(platter_data::BoxSegmenter));
//! platter_reward::serve(config, listener, std::future::pending()).await
//! # }
//! ```
//!
//! Scoring is a pure function of the request, so retries are idempotent. At most
//! `max_concurrent_groups` groups are scored at once; beyond that the server stops reading the
//! stream, and HTTP/2 flow control pushes back on the client.

mod client;
pub mod metrics;
pub mod score;
mod server;

pub use client::{RewardClient, RewardClientOptions};
pub use score::{configs_to_settings, mask_to_rle, score_group, settings_to_configs};
pub use server::{RewardServerConfig, serve};

/// Errors of the reward server and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("invalid score request: {0}")]
    Request(String),
    /// The reward settings are out of range; the error names the key.
    #[error("invalid reward settings: {0}")]
    Settings(#[source] platter_rl::Error),
    /// The segmenter failed or returned the wrong number of masks.
    #[error("segmenter: {0}")]
    Segmenter(String),
    /// The server reported an error for one group.
    #[error("reward server could not score `{request_id}`: {message}")]
    Scoring { request_id: String, message: String },
    /// No answer within the client's request timeout (the server may be down).
    #[error("no score for `{request_id}` within {seconds:.1} s (reward server at {endpoint})")]
    Timeout {
        request_id: String,
        seconds: f64,
        endpoint: String,
    },
    /// The client's background stream task is gone.
    #[error("reward client closed")]
    Closed,
    /// A bad endpoint address.
    #[error("reward server endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    /// Transport failure of the server.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// Socket errors.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] platter_proto::metrics_http::MetricsError),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
