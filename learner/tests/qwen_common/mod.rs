//! Test support for the Qwen2.5-VL learner tests: the tiny random-weight policy fixture of
//! `models/qwen25vl` (built by `scripts/oracle/qwen25vl/build_fixtures.py`) and a fixed batch of
//! real sequences prepared by its processor from the fixture images.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use platter_learner::{AdamWConfig, QwenPolicy, QwenSequence, TrainItem};
use platter_qwen25vl::load_image;

/// The tiny fixture model directory.
pub fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/qwen25vl/tests/fixtures/tiny")
}

fn image(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/qwen25vl/tests/fixtures/images")
        .join(name)
}

pub fn load(freeze_vision: bool) -> QwenPolicy {
    QwenPolicy::load_trainable(&tiny(), &Device::Cpu, DType::F32, freeze_vision)
        .expect("load tiny policy")
}

const QUESTIONS: [&str; 4] = [
    "Which item has the most protein?",
    "Point at the sweetest food.",
    "Box the vegetables.",
    "Is there rice?",
];

const RESPONSES: [&str; 8] = [
    "<think>chicken</think>",
    "<think>The cake is sweet.</think>{\"point_2d\": [40, 52]}",
    "<think>broccoli</think>{\"bbox_2d\": [1, 2, 30, 40]}",
    "no",
    "<think>egg</think>",
    "<think>fruit</think>{\"point_2d\": [7, 9]}",
    "{\"bbox_2d\": [10, 12, 80, 90]}",
    "<think>yes, rice</think>",
];

/// `n` (≤ 8) sequences: the two fixture images × four questions, with ragged responses ending
/// in `<|im_end|>`, and the given advantages cycled.
pub fn batch(policy: &QwenPolicy, n: usize, advantages: &[f32]) -> Vec<TrainItem<QwenSequence>> {
    let processor = policy.policy().processor(&tiny()).expect("processor");
    let im_end = processor.token_id("<|im_end|>").expect("im_end");
    let imgs = ["img0.png", "img1.png"]
        .map(|f| load_image(&image(f), processor.max_input_pixels).expect("fixture image"));
    (0..n)
        .map(|i| {
            let text = processor.format_user_prompt(None, QUESTIONS[i % 4], 1);
            let prompt = processor
                .prepare(i, &text, std::slice::from_ref(&imgs[i % 2]))
                .expect("prepare");
            let mut response = processor.encode(RESPONSES[i]).expect("encode");
            response.push(im_end);
            TrainItem {
                id: format!("p{}/s{}", i / 4, i % 4),
                sequence: QwenSequence {
                    prompt: std::sync::Arc::new(prompt),
                    response,
                },
                advantage: advantages[i % advantages.len()],
            }
        })
        .collect()
}

pub fn opt(lr: f64, weight_decay: f64) -> AdamWConfig {
    AdamWConfig {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        warmup_steps: 0,
        decay_steps: 0,
        min_lr: 0.0,
    }
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to f32 vec")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
