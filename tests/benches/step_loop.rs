//! The step loop on the tiny setup with the test policy: per step, generation, scoring,
//! learning and idle time, and generated-then-discarded tokens of streaming dynamic sampling
//! compared with batch-regenerate dynamic sampling (verl's DAPO recipe: generate whole rounds of
//! `prompts_per_step` groups, filter, repeat until enough are kept, drop the overflow) replayed on
//! the same reward trace (`platter_e2e::step_report`).
//!
//! `cargo bench --profile dev -p platter-e2e --bench step_loop` (the services run in one
//! process; the policy is the candidate-response test double with 40 ms per group, the learner
//! the coordinator's one-rank stand-in). `step_loop_qwen` runs the same loop with the real
//! policy and learner.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use platter_e2e::{Cluster, ClusterOptions, step_report};

const STEPS: u64 = 6;
const PROMPTS_PER_STEP: usize = 4;
const WORKERS: usize = 2;
const GROUPS_PER_WORKER: usize = 2;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(ClusterOptions {
            workers: WORKERS,
            groups_per_worker: GROUPS_PER_WORKER,
            group_time: Duration::from_millis(40),
            ..ClusterOptions::default()
        })
        .await;
        let toml = cluster.experiment_toml(STEPS, PROMPTS_PER_STEP, 10.0, "");
        let report = step_report::measure_report(
            cluster,
            &toml,
            WORKERS * GROUPS_PER_WORKER,
            PROMPTS_PER_STEP,
            Duration::from_secs(5),
        )
        .await;
        println!("{report}");
    });
}
