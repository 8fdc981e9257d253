//! Checkpoints: atomic layout, checksums, keep-last-N, fallback past a damaged checkpoint, and
//! kill-and-resume: a run stopped after step k and resumed from its checkpoint gives the same
//! losses and weights as an uninterrupted run, bit for bit (same code, same thread order, and the
//! checkpoint stores every f32 exactly).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{Device, Tensor};
use common::{OPT, TinyLm, batch, cfg};
use platter_learner::{
    AdamW, Algorithm, CheckpointState, CheckpointStore, InProcessGroup, SkipCounter,
    frozen_logprobs, train_step,
};
use platter_rl::DapoLoss;

fn weights_map(m: &TinyLm) -> HashMap<String, Tensor> {
    m.named()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect()
}

fn from_map(w: &HashMap<String, Tensor>) -> TinyLm {
    TinyLm::from_weights(&[w["emb"].clone(), w["w"].clone(), w["head"].clone()])
}

fn steps(model: &TinyLm, opt: &mut AdamW, n: usize) -> Vec<f64> {
    let g = InProcessGroup::new(1, Duration::from_secs(5)).remove(0);
    let c = cfg(Algorithm::Dapo(DapoLoss::default()));
    let items = batch();
    let mut skips = SkipCounter::default();
    let mut losses = Vec::new();
    for _ in 0..n {
        let frozen = frozen_logprobs(model, None, &items, c.micro_batch_size).unwrap();
        let stats = train_step(model, opt, &g, &items, &frozen, &c, &mut skips).unwrap();
        losses.extend(stats.iter().map(|s| s.loss));
    }
    losses
}

#[test]
fn kill_and_resume_is_bit_exact() {
    let straight = TinyLm::from_weights(&common::init_weights());
    let mut opt = AdamW::new(straight.named(), OPT).unwrap();
    let want_losses = steps(&straight, &mut opt, 4);
    let want_weights = straight.weights();

    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 3);
    {
        let model = TinyLm::from_weights(&common::init_weights());
        let mut opt = AdamW::new(model.named(), OPT).unwrap();
        let first = steps(&model, &mut opt, 2);
        assert_eq!(first, want_losses[..4]);
        let (opt_state, opt_step) = opt.state().unwrap();
        store
            .save(
                &weights_map(&model),
                &opt_state,
                &CheckpointState {
                    step: 2,
                    optimizer_step: opt_step,
                    policy_version: 2,
                    extra: serde_json::json!({"sampler_cursor": 16, "rng": [1, 2, 3]}),
                },
                &[("config.json", b"{\"model_type\": \"tiny\"}")],
            )
            .unwrap();
        // The process "dies" here: model and optimizer are dropped.
    }
    let ck = store
        .load_latest(&Device::Cpu)
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(ck.state.step, 2);
    assert_eq!(ck.state.extra["sampler_cursor"], 16);
    assert!(ck.dir.join("config.json").exists());
    let model = from_map(&ck.weights);
    let mut opt = AdamW::new(model.named(), OPT).unwrap();
    opt.load_state(&ck.optimizer, ck.state.optimizer_step)
        .unwrap();
    let rest = steps(&model, &mut opt, 2);
    assert_eq!(rest, want_losses[4..], "losses after resume");
    assert_eq!(model.weights(), want_weights, "weights after resume");
}

#[test]
fn keep_last_and_damaged_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), 2);
    let model = TinyLm::from_weights(&common::init_weights());
    let opt = AdamW::new(model.named(), OPT).unwrap();
    for step in 1..=3 {
        let state = CheckpointState {
            step,
            optimizer_step: step,
            policy_version: step,
            extra: serde_json::Value::Null,
        };
        store
            .save(&weights_map(&model), &opt.state().unwrap().0, &state, &[])
            .unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["step-00000002", "step-00000003"]);

    // Damage the newest: one flipped byte in the weights.
    let newest = dir.path().join("step-00000003/model.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let err = CheckpointStore::verify(&dir.path().join("step-00000003"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("model.safetensors"),
        "{err}"
    );
    // A half-written checkpoint from a crash is ignored too.
    std::fs::create_dir_all(dir.path().join("step-00000009.tmp")).unwrap();
    let ck = store.load_latest(&Device::Cpu).unwrap().unwrap();
    assert_eq!(ck.state.step, 2);

    // Optimizer state with a missing tensor is refused, naming it.
    let mut opt2 = AdamW::new(model.named(), OPT).unwrap();
    let mut partial = ck.optimizer.clone();
    partial.remove("m.head");
    let err = opt2.load_state(&partial, 2).unwrap_err().to_string();
    assert!(err.contains("m.head"), "{err}");
}
