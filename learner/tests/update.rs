//! The data-parallel update: 2 ranks (threads, in-process collective) give the same weights as
//! 1 rank on the same global batch, for DAPO and GRPO, with several mini- and micro-batches;
//! non-finite updates are skipped and then stop the step.
//!
//! The policy is the small token model of `common/` behind the same `PolicyModel` trait as
//! Qwen2.5-VL, so the test isolates the update logic: sharding, normalisers, accumulation,
//! all-reduce, clipping, AdamW.

use std::thread;
use std::time::Duration;

mod common;

use common::{OPT, TinyLm, batch, cfg, init_weights};
use platter_learner::{
    AdamW, Algorithm, Collective, InProcessGroup, SkipCounter, frozen_logprobs, shard_for_rank,
    train_step,
};
use platter_rl::{DapoLoss, GrpoLoss};

/// Runs `steps` training steps on `world` ranks; returns each rank's final weights and losses.
fn run(world: usize, algorithm: Algorithm, steps: usize) -> Vec<(Vec<Vec<f32>>, Vec<f64>)> {
    let groups = InProcessGroup::new(world, Duration::from_secs(30));
    let handles: Vec<_> = groups
        .into_iter()
        .map(|g| {
            let algorithm = algorithm.clone();
            thread::spawn(move || {
                let w0 = init_weights();
                let model = TinyLm::from_weights(&w0);
                let reference = TinyLm::from_weights(&w0);
                let mut opt = AdamW::new(model.named(), OPT).unwrap();
                let c = cfg(algorithm.clone());
                let items =
                    shard_for_rank(&batch(), g.rank(), g.world_size(), c.mini_batches_per_step);
                let mut losses = Vec::new();
                let mut skips = SkipCounter::default();
                for _ in 0..steps {
                    let frozen = frozen_logprobs(
                        &model,
                        matches!(algorithm, Algorithm::Grpo(_)).then_some(&reference),
                        &items,
                        c.micro_batch_size,
                    )
                    .unwrap();
                    let stats =
                        train_step(&model, &mut opt, &g, &items, &frozen, &c, &mut skips).unwrap();
                    assert_eq!(stats.len(), 2);
                    assert!(stats.iter().all(|s| !s.skipped && s.grad_norm > 0.0));
                    losses.extend(stats.iter().map(|s| s.loss));
                }
                (model.weights(), losses)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn two_ranks_match_one_rank() {
    for algorithm in [
        Algorithm::Dapo(DapoLoss::default()),
        Algorithm::Dapo(DapoLoss {
            dual_clip: Some(3.0),
            entropy_coef: 0.01,
            ..Default::default()
        }),
        Algorithm::Grpo(GrpoLoss {
            kl_coef: 0.1,
            ..Default::default()
        }),
    ] {
        let one = run(1, algorithm.clone(), 3);
        let two = run(2, algorithm.clone(), 3);
        // Ranks stay bit-identical.
        assert_eq!(two[0].0, two[1].0, "{algorithm:?}: ranks diverged");
        let d = max_abs_diff(&one[0].0, &two[0].0);
        assert!(d <= 1e-5, "{algorithm:?}: 1 rank vs 2 ranks differ by {d}");
        for (a, b) in one[0].1.iter().zip(&two[0].1) {
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                "{algorithm:?}: loss {a} vs {b}"
            );
        }
        // And the weights did move.
        let moved = max_abs_diff(&one[0].0, &TinyLm::from_weights(&init_weights()).weights());
        assert!(
            moved > 1e-3,
            "{algorithm:?}: weights barely moved ({moved})"
        );
    }
}

#[test]
fn non_finite_updates_are_skipped_then_fail() {
    let g = InProcessGroup::new(1, Duration::from_secs(5)).remove(0);
    let w0 = init_weights();
    let model = TinyLm::from_weights(&w0);
    let before = model.weights();
    let mut opt = AdamW::new(model.named(), OPT).unwrap();
    let mut items = batch();
    items[0].advantage = f32::NAN;
    let mut c = cfg(Algorithm::Dapo(DapoLoss::default()));
    c.mini_batches_per_step = 1;
    let mut skips = SkipCounter::default();
    let frozen = frozen_logprobs(&model, None, &items, 2).unwrap();
    let stats = train_step(&model, &mut opt, &g, &items, &frozen, &c, &mut skips).unwrap();
    assert!(stats[0].skipped);
    assert_eq!(
        model.weights(),
        before,
        "a skipped update must not touch the weights"
    );
    assert_eq!(opt.step_count(), 0);
    train_step(&model, &mut opt, &g, &items, &frozen, &c, &mut skips).unwrap();
    let err = train_step(&model, &mut opt, &g, &items, &frozen, &c, &mut skips).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("3 consecutive") && msg.contains("p0/s0"),
        "{msg}"
    );
    assert_eq!(skips.total(), 3);
}
