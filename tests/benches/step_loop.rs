//! The step loop on the tiny setup: per step, generation, scoring, learning and idle time, and
//! generated-then-discarded tokens of streaming dynamic sampling compared with batch-regenerate
//! dynamic sampling (verl's DAPO recipe: generate whole rounds of `prompts_per_step` groups,
//! filter, repeat until enough are kept, drop the overflow) replayed on the same reward trace.
//!
//! `cargo bench -p platter-e2e --bench step_loop` (the services run in the dev or bench profile
//! in one process; the policy is the candidate-response test double with 40 ms per group).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use platter_e2e::{Cluster, ClusterOptions};
use platter_proto::v1::{GroupOutcome, StepSummary};

const STEPS: u64 = 6;
const PROMPTS_PER_STEP: usize = 4;

fn metric_sum(scrape: &str, name_with_labels: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name_with_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Tokens batch-regenerate would discard on `trace` (arrival order), and whether the trace was
/// long enough to fill its batch.
fn batch_regenerate(trace: &[platter_proto::v1::OfferedGroup], per_step: usize) -> (u64, bool) {
    let (mut kept, mut discarded) = (0usize, 0u64);
    for round in trace.chunks(per_step) {
        if round.len() < per_step {
            return (discarded, false);
        }
        for g in round {
            if g.mixed && kept < per_step {
                kept += 1;
            } else {
                discarded += g.tokens;
            }
        }
        if kept >= per_step {
            return (discarded, true);
        }
    }
    (discarded, false)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(ClusterOptions { workers: 2, groups_per_worker: 2, group_time: Duration::from_millis(40), ..ClusterOptions::default() }).await;
        let client = cluster.client();
        let id = client.submit(&cluster.experiment_toml(STEPS, PROMPTS_PER_STEP, 10.0, "")).await.unwrap().experiment_id;
        let mut watch = client.watch(&id, 0).await.unwrap();
        let mut prev = platter_proto::metrics_http::scrape(cluster.coordinator_metrics).await.unwrap();
        let mut prev_ms: Option<i64> = None;
        println!("step | wall s | assembly s | learn s | generate s (worker-busy) | score s (worker-busy) | idle worker-s | rounds | offered | kept | generated tok | discarded tok (streaming) | discarded tok (batch-regenerate)");
        let (mut total_stream, mut total_batch) = (0u64, 0u64);
        while let Some(s) = watch.next().await.unwrap() {
            let now = platter_proto::metrics_http::scrape(cluster.coordinator_metrics).await.unwrap();
            let d = |name: &str| metric_sum(&now, name) - metric_sum(&prev, name);
            let generate = d("platter_rollout_stage_seconds_sum{stage=\"generate\"");
            let score = d("platter_rollout_stage_seconds_sum{stage=\"score\"");
            let wall = prev_ms.map_or(s.assembly_seconds + s.learn_seconds, |p| (s.finished_unix_ms - p) as f64 / 1000.0);
            let idle = (2.0 * 2.0 * wall - generate - score).max(0.0);
            let streaming = trace_discarded(&s);
            let (batch, complete) = batch_regenerate(&s.offered, PROMPTS_PER_STEP);
            total_stream += streaming;
            total_batch += batch;
            println!(
                "{} | {wall:.3} | {:.3} | {:.3} | {generate:.3} | {score:.3} | {idle:.3} | {} | {} | {} | {} | {streaming} | {batch}{}",
                s.step, s.assembly_seconds, s.learn_seconds, s.generation_rounds, s.offered_groups, s.kept_groups, s.generated_tokens,
                if complete { "" } else { " (trace too short: at least)" }
            );
            prev = now;
            prev_ms = Some(s.finished_unix_ms);
        }
        println!("total discarded tokens: streaming {total_stream}, batch-regenerate {total_batch} (same reward trace; idle = 2 workers x 2 slots x wall - busy)");
        cluster.shutdown().await;
    });
}

/// Streaming discards dropped and surplus groups (partially decoded cancelled groups are not
/// reported by workers, so they are not counted).
fn trace_discarded(s: &StepSummary) -> u64 {
    s.offered
        .iter()
        .filter(|g| g.outcome != GroupOutcome::Kept as i32)
        .map(|g| g.tokens)
        .sum()
}
