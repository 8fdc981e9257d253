//! A learner checkpoint of the Qwen2.5-VL policy is an HF model directory: after a training
//! step, the directory written through `CheckpointStore` loads back in the policy loader with
//! identical logits, and resuming the optimizer from it is possible. (Loading it in HF
//! transformers: `scripts/oracle/learner/check_hf_load.py`, run by hand, see docs/benchmarks.md.)

mod qwen_common;

use std::time::Duration;

use candle_core::{DType, Device};
use platter_learner::{
    AdamW, Algorithm, CheckpointState, CheckpointStore, InProcessGroup, MODEL_DIR_FILES,
    QwenPolicy, SkipCounter, UpdateConfig, frozen_logprobs, train_step,
};
use platter_qwen25vl::{Policy, PromptBatch};
use platter_rl::DapoLoss;
use qwen_common::{batch, flat, load, max_abs_diff, opt, tiny};

#[test]
fn checkpoint_loads_in_the_policy_loader_with_identical_logits() {
    let model = load(false);
    let group = InProcessGroup::new(1, Duration::from_secs(30)).remove(0);
    let mut adam = AdamW::new(model.trainable(), opt(1e-3, 0.01)).unwrap();
    let items = batch(&model, 4, &[1.0, -0.5]);
    let cfg = UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss::default()),
        mini_batches_per_step: 1,
        micro_batch_size: 2,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    };
    let frozen = frozen_logprobs(&model, None, &items, 2).unwrap();
    train_step(
        &model,
        &mut adam,
        &group,
        &items,
        &frozen,
        &cfg,
        &mut SkipCounter::default(),
    )
    .unwrap();

    let root = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(root.path(), 2);
    let state = CheckpointState {
        step: 1,
        optimizer_step: adam.step_count(),
        policy_version: 1,
        extra: serde_json::json!({}),
    };
    let dir = model
        .save_checkpoint(&store, &tiny(), &adam.state().unwrap().0, &state)
        .unwrap();
    CheckpointStore::verify(&dir).unwrap();
    for name in MODEL_DIR_FILES {
        assert_eq!(
            dir.join(name).exists(),
            tiny().join(name).exists(),
            "{name} copied into the checkpoint"
        );
    }

    // Logits of the trained in-memory policy vs the reloaded checkpoint vs the untrained fixture.
    let prompts: Vec<_> = items.iter().map(|i| i.sequence.prompt.as_ref()).collect();
    let processor = model.policy().processor(&tiny()).unwrap();
    let pb = PromptBatch::new(&prompts, processor.pad_token_id, &Device::Cpu).unwrap();
    let trained = flat(&model.policy().forward_logits(&pb).unwrap());
    let reloaded = Policy::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let back = flat(&reloaded.forward_logits(&pb).unwrap());
    assert_eq!(trained, back, "reloaded checkpoint gives different logits");
    let original = Policy::load(&tiny(), &Device::Cpu, DType::F32).unwrap();
    let d = max_abs_diff(&flat(&original.forward_logits(&pb).unwrap()), &trained);
    assert!(d > 1e-4, "the step did not change the logits ({d})");

    // The optimizer state resumes from the same directory.
    let ckpt = CheckpointStore::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(ckpt.state, state);
    let resumed = load(false);
    let mut adam2 = AdamW::new(resumed.trainable(), opt(1e-3, 0.01)).unwrap();
    adam2
        .load_state(&ckpt.optimizer, ckpt.state.optimizer_step)
        .unwrap();
    assert_eq!(adam2.step_count(), 1);

    // A frozen copy (GRPO's reference) holds no variables and refuses to write an empty model.
    let reference = QwenPolicy::load_frozen(&tiny(), &Device::Cpu, DType::F32).unwrap();
    let err = reference
        .save_checkpoint(&store, &tiny(), &adam.state().unwrap().0, &state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("loaded frozen"), "{err}");
}
