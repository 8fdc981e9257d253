//! Test support for cross-service tests on loopback: a candidate-response policy (a test double
//! behind `platter_rollout::Policy`, never used outside tests), and a cluster of real services
//! (coordinator with SQLite store and the one-rank learner, reward server with the box
//! segmenter, rollout workers) on port 0.

mod cluster;
mod policy;

pub use cluster::{Cluster, ClusterOptions, WorkerHandle, synth_dataset};
pub use policy::{CANDIDATE_TOKENS, CANDIDATES, CandidatePolicy};
