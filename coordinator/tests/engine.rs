//! Leasing and streaming dynamic sampling of one step, driven directly (no network), on a small
//! synthetic dataset.

use std::time::{Duration, Instant};

use platter_coordinator::ExperimentConfig;
use platter_coordinator::dataset::PromptSource;
use platter_coordinator::engine::{Readiness, Run};
use platter_data::synth::{SynthConfig, generate};
use platter_proto::v1::{self, GroupOutcome};

fn run_with(extra: &str) -> (Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let synth = SynthConfig {
        n: 10,
        width: 64,
        height: 48,
        policy_image_size: 112,
        threads: 1,
        ..SynthConfig::default()
    };
    let manifest = generate(&synth, &dir.path().join("d")).unwrap().manifest;
    let toml = format!(
        "name = \"t\"\nsteps = 1\n[data]\nmanifest = \"{}\"\nimage_size = 112\n[rollout]\ngroup_size = 2\nlease_timeout_seconds = 1.0\n{extra}",
        manifest.display()
    );
    let cfg = ExperimentConfig::from_toml(&toml).unwrap();
    let source = PromptSource::open(&cfg.data, 0).unwrap();
    let mut run = Run::new("e".into(), cfg, source, 0, 0, 0);
    run.begin_step(Instant::now());
    (run, dir)
}

fn scored(lease: &v1::PromptLease, rewards: [f64; 2]) -> v1::SubmitScoredGroupRequest {
    v1::SubmitScoredGroupRequest {
        worker_id: "w".into(),
        lease_id: lease.lease_id.clone(),
        experiment_id: lease.experiment_id.clone(),
        step: lease.step,
        prompt_index: lease.prompt_index,
        attempt: lease.attempt,
        policy_version: 0,
        responses: rewards
            .iter()
            .map(|r| v1::ScoredResponse {
                token_ids: vec![0, 1, 2],
                logprobs: vec![-1.0; 3],
                finish_reason: "stop".into(),
                reward: Some(v1::RewardTerms {
                    total: *r,
                    shaped_reward: *r,
                    ..Default::default()
                }),
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn leases_carry_the_sample_and_settings() {
    let (mut run, _d) = run_with("[sampling]\nprompts_per_step = 2\n");
    let now = Instant::now();
    let leases = run.lease("w", 5, now);
    // Up to 5 leases: rounds of 2 prompts keep starting while the batch is not full.
    assert_eq!(leases.len(), 5);
    let l = &leases[0];
    assert_eq!(
        (l.step, l.attempt, l.group_size, l.policy_image_size),
        (0, 1, 2, 112)
    );
    assert!(!l.image.is_empty() && !l.ground_truth.is_empty());
    assert!(l.ground_truth_mask.is_some() && l.reward.is_some());
    assert!(l.prompt_text.contains("with bboxs and points"));
    let draws: std::collections::HashSet<u64> = leases.iter().map(|l| l.prompt_index).collect();
    assert_eq!(draws.len(), 5, "every lease is a distinct draw");
    assert_eq!(run.cursor, 6);
}

#[test]
fn expired_lease_is_leased_again_and_the_first_result_wins() {
    let (mut run, _d) = run_with("[sampling]\nprompts_per_step = 1\n");
    let t0 = Instant::now();
    let first = run.lease("w1", 1, t0).remove(0);
    run.expire(t0 + Duration::from_secs(2));
    assert_eq!(run.counters.expired_leases, 1);
    let second = run.lease("w2", 1, t0 + Duration::from_secs(2)).remove(0);
    assert_eq!(
        (second.prompt_index, second.attempt),
        (first.prompt_index, 2)
    );
    // The late first attempt still arrives first: kept, and the second attempt is cancelled.
    assert_eq!(run.submit(scored(&first, [0.0, 1.0])), GroupOutcome::Kept);
    let stop = run.heartbeat(
        "w2",
        std::slice::from_ref(&second.lease_id),
        t0 + Duration::from_secs(2),
    );
    assert_eq!(stop, vec![second.lease_id.clone()]);
    assert_eq!(
        run.submit(scored(&second, [0.0, 1.0])),
        GroupOutcome::Duplicate
    );
    assert_eq!(
        run.submit(scored(&first, [0.0, 1.0])),
        GroupOutcome::Duplicate
    );
    assert_eq!(*run.readiness(), Readiness::Ready);
    let batch = run.take_batch().unwrap();
    assert_eq!(batch.groups.len(), 1);
    assert_eq!(run.counters.duplicates, 2);
}

#[test]
fn full_batch_cancels_outstanding_leases_and_counts_surplus() {
    let (mut run, _d) = run_with("[sampling]\nprompts_per_step = 1\n");
    let now = Instant::now();
    let leases = run.lease("w", 3, now);
    assert_eq!(leases.len(), 3);
    assert_eq!(
        run.submit(scored(&leases[0], [1.0, 1.0])),
        GroupOutcome::Dropped
    );
    assert_eq!(
        run.submit(scored(&leases[1], [0.0, 3.0])),
        GroupOutcome::Kept
    );
    // Full: the third lease is cancelled; if its group still arrives it is surplus.
    let stop = run.heartbeat("w", std::slice::from_ref(&leases[2].lease_id), now);
    assert_eq!(stop.len(), 1);
    assert!(
        run.lease("w", 1, now).is_empty(),
        "no leases once the batch is full"
    );
    assert_eq!(
        run.submit(scored(&leases[2], [0.0, 2.0])),
        GroupOutcome::Surplus
    );
    let batch = run.take_batch().unwrap();
    let s = batch.stats;
    assert_eq!(
        (s.offered, s.kept, s.dropped, s.surplus, s.rounds),
        (3, 1, 1, 1, 3)
    );
    assert_eq!(s.discarded_tokens, 12);
    assert_eq!(run.counters.cancelled_leases, 1);
}

#[test]
fn round_bound_fails_or_trains_partial_as_configured() {
    let (mut run, _d) = run_with("[sampling]\nprompts_per_step = 1\nmax_generation_rounds = 2\n");
    let now = Instant::now();
    for _ in 0..2 {
        let l = run.lease("w", 1, now).remove(0);
        assert_eq!(run.submit(scored(&l, [2.0, 2.0])), GroupOutcome::Dropped);
    }
    assert!(run.lease("w", 1, now).is_empty());
    match run.readiness() {
        Readiness::Failed(e) => assert!(e.contains("max_generation_rounds = 2"), "{e}"),
        other => panic!("expected a failure, got {other:?}"),
    }

    let (mut run, _d) = run_with(
        "[sampling]\nprompts_per_step = 2\nmax_generation_rounds = 1\non_round_limit = \"train_partial\"\n",
    );
    let l = run.lease("w", 2, now);
    assert_eq!(run.submit(scored(&l[0], [0.0, 1.0])), GroupOutcome::Kept);
    assert_eq!(run.submit(scored(&l[1], [1.0, 1.0])), GroupOutcome::Dropped);
    assert!(run.lease("w", 1, now).is_empty());
    assert_eq!(*run.readiness(), Readiness::Ready);
    let batch = run.take_batch().unwrap();
    assert!(batch.stats.partial);
    assert_eq!(batch.groups.len(), 1);
}

#[test]
fn results_of_another_step_or_experiment_are_ignored() {
    let (mut run, _d) = run_with("[sampling]\nprompts_per_step = 1\n");
    let l = run.lease("w", 1, Instant::now()).remove(0);
    let mut other = scored(&l, [0.0, 1.0]);
    other.step = 7;
    assert_eq!(run.submit(other), GroupOutcome::Ignored);
    let mut future = scored(&l, [0.0, 1.0]);
    future.policy_version = 5;
    assert_eq!(run.submit(future), GroupOutcome::Stale);
}
