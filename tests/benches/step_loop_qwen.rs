//! The step loop with the real pieces: two rollout workers running the Qwen2.5-VL engine on the
//! built-in tiny SFT policy (`assets/tiny-sft`, 224-pixel input), the reward server with the box
//! segmenter, and the two-rank Qwen2.5-VL learner, on synthetic data of the world the policy was
//! trained on. Per step: generation, scoring, learning and idle time, and generated-then-discarded
//! tokens of streaming dynamic sampling (cancelled in-flight groups counted as far as they got)
//! compared with batch-regenerate dynamic sampling (verl's DAPO recipe) replayed on the same
//! reward trace (`platter_e2e::step_report`).
//!
//! `cargo bench -p platter-e2e --bench step_loop_qwen` (optimised build; the services run in
//! one process over loopback gRPC). `PLATTER_BENCH_STEPS` overrides the 6 steps,
//! `PLATTER_BENCH_MASK_WEIGHT` the dense mask reward weight (3, as in `configs/tiny-cpu.toml`;
//! 0 leaves the METHOD §3 reward alone), `PLATTER_BENCH_TEMPERATURE` the sampling temperature
//! (1; lower makes a group's responses alike, so more groups are uniformly rewarded).

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use platter_data::synth::SynthConfig;
use platter_e2e::{Cluster, ClusterOptions, ClusterPolicy, step_report};

const PROMPTS_PER_STEP: usize = 4;
const GROUP_SIZE: usize = 8;
const WORKERS: usize = 2;
/// One group per worker: each engine decodes one group at a time, so the tokens of a cancelled
/// group are counted exactly (see `StoppedLease.decoded_tokens`).
const GROUPS_PER_WORKER: usize = 1;

fn main() {
    let steps: u64 = std::env::var("PLATTER_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let mask_weight: f64 = std::env::var("PLATTER_BENCH_MASK_WEIGHT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let temperature: f64 = std::env::var("PLATTER_BENCH_TEMPERATURE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny-sft");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Cluster::start(ClusterOptions {
            workers: WORKERS,
            groups_per_worker: GROUPS_PER_WORKER,
            policy: ClusterPolicy::Qwen {
                model_dir: policy.clone(),
            },
            // The world the SFT policy was trained on (seed 1), 320 x 240 images.
            synth: SynthConfig {
                seed: 1,
                n: 64,
                policy_image_size: 224,
                threads: 1,
                ..SynthConfig::default()
            },
            ..ClusterOptions::default()
        })
        .await;
        // configs/tiny-cpu.toml without evaluation, on-policy (max_staleness 0).
        let toml = format!(
            "name = \"bench-qwen\"\nalgorithm = \"dapo\"\nsteps = {steps}\nseed = 0\n\n\
             [data]\nmanifest = \"{}\"\nimage_size = 224\n\n\
             [model]\npolicy = \"{}\"\n\n\
             [rollout]\ngroup_size = {GROUP_SIZE}\ntemperature = {temperature:?}\nlease_timeout_seconds = 300.0\n\n\
             [sampling]\nprompts_per_step = {PROMPTS_PER_STEP}\nmax_generation_rounds = 8\non_round_limit = \"train_partial\"\n\n\
             [reward]\nmask_reward_weight = {mask_weight:?}\n\n\
             [overlong]\nmax_response_tokens = 128\noverlong_buffer = 32\noverlong_penalty = 0.1\n\n\
             [optim]\nlr = 3e-5\nweight_decay = 0.0\n\n\
             [learner]\nranks = 2\nmini_batches_per_step = 2\nmicro_batch_size = 8\n",
            cluster.manifest.display(),
            policy.display()
        );
        let report = step_report::measure_report(
            cluster,
            &toml,
            WORKERS * GROUPS_PER_WORKER,
            PROMPTS_PER_STEP,
            Duration::from_secs(10),
        )
        .await;
        println!("{report}");
    });
}
