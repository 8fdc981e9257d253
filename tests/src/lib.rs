//! Test support for cross-service tests on loopback: a candidate-response policy (a test double
//! behind `platter_rollout::Policy`, never used outside tests), a cluster of real services
//! (coordinator with SQLite store, reward server with the box segmenter, rollout workers, and
//! either the test policy with the one-rank stand-in learner or the Qwen2.5-VL engine with the
//! real learner) on port 0, and the per-step accounting the step-loop benchmarks print.

mod cluster;
mod policy;
pub mod step_report;

pub use cluster::{
    Cluster, ClusterOptions, ClusterPolicy, WorkerHandle, small_synth, synth_dataset,
};
pub use policy::{CANDIDATE_TOKENS, CANDIDATES, CandidatePolicy};
