//! Shared fixture helpers. Fixtures come from `scripts/oracle/qwen25vl/build_fixtures.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use platter_qwen25vl::{Policy, PreparedPrompt, Processor, load_image};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny")
}

pub fn parity() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("parity.safetensors"), &Device::Cpu)
        .expect("parity fixture")
}

pub struct Cases {
    pub questions: Vec<String>,
    pub prompts: Vec<String>,
    pub responses: Vec<String>,
    pub images: Vec<PathBuf>,
    pub resize_image: PathBuf,
    pub greedy_tokens: usize,
}

pub fn cases() -> Cases {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("cases.json parses");
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    Cases {
        questions: strs("questions"),
        prompts: strs("prompts"),
        responses: strs("responses"),
        images: strs("images").iter().map(|p| fixtures().join(p)).collect(),
        resize_image: fixtures().join(v["resize_image"].as_str().expect("resize_image")),
        greedy_tokens: v["greedy_tokens"].as_u64().expect("greedy_tokens") as usize,
    }
}

/// The two fixture prompts, one image each.
pub fn prompts(processor: &Processor, c: &Cases) -> Vec<PreparedPrompt> {
    c.prompts
        .iter()
        .zip(&c.images)
        .enumerate()
        .map(|(i, (t, p))| {
            let img = load_image(p, processor.max_input_pixels).expect("image");
            processor.prepare(i, t, &[img]).expect("prepare")
        })
        .collect()
}

pub fn load_policy() -> (Policy, Processor) {
    let policy = Policy::load(&tiny(), &Device::Cpu, DType::F32).expect("load tiny");
    let processor = policy.processor(&tiny()).expect("processor");
    (policy, processor)
}

pub fn to_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn to_i64(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// max |a-b| / max |b|.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-12);
    max_abs_diff(a, b) / scale
}
