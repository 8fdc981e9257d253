//! The learner's update on the real Qwen2.5-VL policy (tiny random-weight fixture): every
//! trainable tensor moves, the DAPO loss falls on a fixed batch, and a frozen vision tower stays
//! put.

mod qwen_common;

use std::collections::HashMap;
use std::time::Duration;

use platter_learner::{
    AdamW, Algorithm, InProcessGroup, SkipCounter, UpdateConfig, frozen_logprobs, train_step,
};
use platter_rl::DapoLoss;
use qwen_common::{batch, flat, load, max_abs_diff, opt};

fn dapo(mini_batches: usize, micro: usize) -> UpdateConfig {
    UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss::default()),
        mini_batches_per_step: mini_batches,
        micro_batch_size: micro,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    }
}

fn snapshot(weights: &HashMap<String, candle_core::Tensor>) -> HashMap<String, Vec<f32>> {
    weights.iter().map(|(k, t)| (k.clone(), flat(t))).collect()
}

#[test]
fn every_trainable_tensor_moves_and_the_dapo_loss_falls() {
    let model = load(false);
    let group = InProcessGroup::new(1, Duration::from_secs(30)).remove(0);
    // No weight decay: a weight that moves was moved by its gradient.
    let mut adam = AdamW::new(model.trainable(), opt(1e-3, 0.0)).unwrap();
    let items = batch(&model, 4, &[1.0, 0.5]);
    let cfg = dapo(1, 2);
    let before = snapshot(&model.weights());
    // Old log-probs stay those of the initial weights, so the ratio (and the loss) can move.
    let frozen = frozen_logprobs(&model, None, &items, 2).unwrap();
    let mut skips = SkipCounter::default();
    let mut losses = Vec::new();
    for _ in 0..4 {
        let stats =
            train_step(&model, &mut adam, &group, &items, &frozen, &cfg, &mut skips).unwrap();
        assert!(
            stats
                .iter()
                .all(|s| !s.skipped && s.grad_norm.is_finite() && s.grad_norm > 0.0)
        );
        losses.extend(stats.iter().map(|s| s.loss));
    }
    let after = snapshot(&model.weights());
    let mut still = Vec::new();
    for (name, _) in model.trainable() {
        let (b, a) = (&before[&name], &after[&name]);
        assert!(
            a.iter().all(|x| x.is_finite()),
            "{name}: non-finite weights"
        );
        if max_abs_diff(a, b) == 0.0 {
            still.push(name);
        }
    }
    assert!(
        still.is_empty(),
        "trainable tensors that did not move: {still:?}"
    );
    assert_eq!(model.trainable().len(), model.weights().len());
    for w in losses.windows(2) {
        assert!(w[1] < w[0], "DAPO loss did not fall: {losses:?}");
    }
}

#[test]
fn frozen_vision_tower_does_not_move() {
    let model = load(true);
    let group = InProcessGroup::new(1, Duration::from_secs(30)).remove(0);
    let mut adam = AdamW::new(model.trainable(), opt(1e-3, 0.01)).unwrap();
    let items = batch(&model, 2, &[1.0]);
    let before = snapshot(&model.weights());
    let frozen = frozen_logprobs(&model, None, &items, 2).unwrap();
    let mut skips = SkipCounter::default();
    train_step(
        &model,
        &mut adam,
        &group,
        &items,
        &frozen,
        &dapo(1, 2),
        &mut skips,
    )
    .unwrap();
    let after = snapshot(&model.weights());
    let trainable: Vec<String> = model.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(!trainable.is_empty() && trainable.iter().all(|n| !n.starts_with("visual.")));
    for (name, b) in &before {
        let moved = max_abs_diff(&after[name], b) > 0.0;
        assert_eq!(
            moved,
            !name.starts_with("visual."),
            "{name}: moved = {moved}"
        );
    }
}
