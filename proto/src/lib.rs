//! `platter.v1`: the versioned gRPC contract between the coordinator, rollout workers, reward
//! servers and the learner, plus the plumbing every server shares: the standard gRPC health
//! service, bearer-token checks and a `/metrics` endpoint.
//!
//! The generated types live in [`v1`]; service crates wrap them in typed clients and servers
//! (`platter_reward::RewardClient`, `platter_coordinator::CoordinatorClient`, ...) so that callers
//! work with domain types and one error enum per crate.

pub mod auth;
pub mod logging;
pub mod metrics_http;
pub mod weights;

/// Generated messages, clients and servers of package `platter.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("platter.v1");
}

pub use tonic_health;

/// A health reporter and the standard `grpc.health.v1.Health` service to add to a server.
/// `service_name` is marked SERVING at once (callers mark NOT_SERVING on shutdown).
pub async fn health_service(
    service_name: &str,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service_name, tonic_health::ServingStatus::Serving)
        .await;
    (reporter, service)
}

/// Fully qualified gRPC service names, for health checks.
pub mod service_names {
    /// The coordinator.
    pub const COORDINATOR: &str = "platter.v1.Coordinator";
    /// The reward server.
    pub const REWARD_SERVER: &str = "platter.v1.RewardServer";
    /// The learner.
    pub const LEARNER: &str = "platter.v1.Learner";
}

/// Converts a TCP listener into the incoming-connection stream tonic's server takes.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
