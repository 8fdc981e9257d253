//! SFT cold start on a handful of synthetic samples with the tiny base policy of `assets/`
//! (built by `scripts/sft/build_tiny_base.py`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use platter_data::synth::{SynthConfig, generate};
use platter_learner::AdamWConfig;
use platter_learner::sft::{SftConfig, SftPaths, load_split, sft_loss, target_response, train};
use platter_qwen25vl::Policy;
use platter_rl::reward::{RewardConfig, score_response};

fn base() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny-base")
}

/// Ten synthetic images (eight train, one val, one test) with objects in a 224-pixel space.
fn synth(dir: &Path) -> PathBuf {
    let cfg = SynthConfig {
        seed: 3,
        n: 10,
        policy_image_size: 224,
        threads: 1,
        ..SynthConfig::default()
    };
    generate(&cfg, dir).expect("synthetic world");
    dir.join("manifest.jsonl")
}

fn tiny_cfg(steps: usize) -> SftConfig {
    SftConfig {
        steps,
        batch_size: 2,
        max_train_samples: 2,
        eval_every: 0,
        eval_samples: 1,
        max_new_tokens: 4,
        optim: AdamWConfig {
            lr: 3e-3,
            warmup_steps: 0,
            ..AdamWConfig::default()
        },
        ..SftConfig::default()
    }
}

#[test]
fn gt_response_earns_every_reward_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = synth(dir.path());
    let policy = Policy::load(&base(), &Device::Cpu, DType::F32).expect("tiny base");
    let processor = policy.processor(&base()).expect("processor");
    let samples =
        load_split(&manifest, platter_data::Split::Train, &processor, 224, 0).expect("train split");
    assert_eq!(samples.len(), 8);
    for s in &samples {
        let r = score_response(&s.response, &s.ground_truth, &RewardConfig::default());
        assert_eq!(
            (r.think_format, r.answer_format, r.non_repeat, r.seg),
            (1.0, 2.0, 1.0, 3.0),
            "sample {}: {}",
            s.id,
            s.response
        );
        assert_eq!(
            s.response_ids.last(),
            processor.token_id("<|im_end|>").ok().as_ref()
        );
    }
    let r = target_response("Which item is richest in protein?", &["steak".into()], &[]);
    assert_eq!(
        r,
        "<think>the steak has 26 g of protein per 100 g, so it matches</think><answer>[]</answer>"
    );
}

#[test]
fn a_few_steps_lower_the_loss_and_the_checkpoint_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = synth(&dir.path().join("data"));
    let paths = SftPaths {
        manifest: manifest.clone(),
        base_model: base(),
        out_dir: dir.path().join("out"),
    };
    let mut events = 0;
    let report = train(&tiny_cfg(4), &paths, |_| events += 1).expect("sft");
    assert_eq!(
        events,
        4 + 2,
        "4 steps and the evaluations before and after"
    );
    let losses: Vec<f64> = report.losses.iter().map(|l| l.1).collect();
    assert_eq!(losses.len(), 4);
    assert!(
        losses[3] < losses[0] - 0.1,
        "loss did not go down over the same 2 samples: {losses:?}"
    );

    // The written directory is an HF model directory, and it holds the trained weights: its
    // loss on the training samples is the loss after the last update, below the first one.
    let trained = Policy::load(&report.model_dir, &Device::Cpu, DType::F32).expect("load sft'd");
    let processor = trained.processor(&report.model_dir).expect("processor");
    let samples =
        load_split(&manifest, platter_data::Split::Train, &processor, 224, 2).expect("split");
    let refs: Vec<_> = samples.iter().collect();
    let after = sft_loss(&trained, &processor, &refs, false)
        .and_then(|l| Ok(f64::from(l.to_scalar::<f32>()?)))
        .expect("loss");
    assert!(
        after < losses[3],
        "reloaded loss {after} vs last step {losses:?}"
    );
    assert!(dir.path().join("out/report.json").exists());

    // Seeded: a second run repeats the first losses exactly.
    let paths2 = SftPaths {
        out_dir: dir.path().join("out2"),
        ..paths
    };
    let again = train(&tiny_cfg(2), &paths2, |_| {}).expect("sft again");
    assert_eq!(again.losses[..], report.losses[..2]);
}
