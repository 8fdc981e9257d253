//! The data-parallel check on the real policy (tiny Qwen2.5-VL fixture): 2 ranks
//! (threads, in-process collective) produce the same updated weights (≤ 1e-5) as 1 rank on the
//! same global batch, for DAPO and GRPO (against a frozen reference copy), with 2 mini-batches of
//! several micro-batches each. lr is small (1e-4) so that summation-order rounding in the
//! all-reduce, amplified by Adam's `m/√v` on near-zero gradients, stays far below the tolerance.

// The measured differences are printed so test logs record the agreement achieved.
#![allow(clippy::print_stderr)]

mod qwen_common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use candle_core::{DType, Device};
use platter_learner::{
    AdamW, Algorithm, Collective, InProcessGroup, QwenPolicy, SkipCounter, UpdateConfig,
    frozen_logprobs, shard_for_rank, train_step,
};
use platter_rl::{DapoLoss, GrpoLoss};
use qwen_common::{batch, flat, load, max_abs_diff, opt, tiny};

const ADVANTAGES: [f32; 8] = [1.2, -0.7, 0.3, -1.1, 0.9, -0.2, 0.05, -0.45];
const STEPS: usize = 2;

type Run = (HashMap<String, Vec<f32>>, Vec<f64>);

/// `STEPS` steps on `world` ranks; each rank's final weights and per-update losses.
fn run(world: usize, cfg: &UpdateConfig) -> Vec<Run> {
    let handles: Vec<_> = InProcessGroup::new(world, Duration::from_secs(60))
        .into_iter()
        .map(|g| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let model = load(false);
                let grpo = matches!(cfg.algorithm, Algorithm::Grpo(_));
                let reference = grpo
                    .then(|| QwenPolicy::load_frozen(&tiny(), &Device::Cpu, DType::F32).unwrap());
                let mut adam = AdamW::new(model.trainable(), opt(1e-4, 0.01)).unwrap();
                let global = batch(&model, 8, &ADVANTAGES);
                let items =
                    shard_for_rank(&global, g.rank(), g.world_size(), cfg.mini_batches_per_step);
                let mut skips = SkipCounter::default();
                let mut losses = Vec::new();
                for _ in 0..STEPS {
                    let frozen =
                        frozen_logprobs(&model, reference.as_ref(), &items, cfg.micro_batch_size)
                            .unwrap();
                    let stats =
                        train_step(&model, &mut adam, &g, &items, &frozen, &cfg, &mut skips)
                            .unwrap();
                    assert_eq!(stats.len(), cfg.mini_batches_per_step);
                    assert!(stats.iter().all(|s| !s.skipped && s.grad_norm > 0.0));
                    losses.extend(stats.iter().map(|s| s.loss));
                }
                let weights = model
                    .weights()
                    .iter()
                    .map(|(k, t)| (k.clone(), flat(t)))
                    .collect();
                (weights, losses)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn check(cfg: UpdateConfig) {
    let one = run(1, &cfg);
    let two = run(2, &cfg);
    let what = format!("{:?}", cfg.algorithm);
    assert_eq!(two[0].0, two[1].0, "{what}: ranks diverged");
    let mut worst = 0f32;
    for (name, w1) in &one[0].0 {
        worst = worst.max(max_abs_diff(w1, &two[0].0[name]));
    }
    eprintln!("{what}: max |w(1 rank) - w(2 ranks)| = {worst:.3e}");
    assert!(worst <= 1e-5, "{what}: 1 rank vs 2 ranks differ by {worst}");
    assert_eq!(one[0].1.len(), STEPS * cfg.mini_batches_per_step);
    for (a, b) in one[0].1.iter().zip(&two[0].1) {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
            "{what}: loss {a} vs {b}"
        );
    }
    // The weights did move (by far more than the tolerance).
    let init = load(false).weights();
    let moved = one[0]
        .0
        .iter()
        .map(|(k, w)| max_abs_diff(w, &flat(&init[k])))
        .fold(0f32, f32::max);
    eprintln!(
        "{what}: max weight change {moved:.3e}; losses {:?}",
        one[0].1
    );
    assert!(moved > 1e-4, "{what}: weights barely moved ({moved})");
}

#[test]
fn dapo_two_ranks_match_one_rank() {
    // 8 sequences, 2 mini-batches of 4: 1 rank runs 4 micro-batches of 1 per mini-batch, each of
    // 2 ranks runs 2. Entropy bonus and dual clip on, so those paths are exercised too.
    check(UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss {
            dual_clip: Some(3.0),
            entropy_coef: 0.01,
            ..Default::default()
        }),
        mini_batches_per_step: 2,
        micro_batch_size: 1,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    });
}

#[test]
fn grpo_two_ranks_match_one_rank() {
    // Micro-batches of 2 (padded prompts and responses within a micro-batch): 1 rank runs 2 per
    // mini-batch, each of 2 ranks runs 1 holding the same pair.
    check(UpdateConfig {
        algorithm: Algorithm::Grpo(GrpoLoss {
            kl_coef: 0.1,
            ..Default::default()
        }),
        mini_batches_per_step: 2,
        micro_batch_size: 2,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    });
}
