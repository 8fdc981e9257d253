//! Writes a learner checkpoint of a trained Qwen2.5-VL policy, for
//! `scripts/oracle/learner/check_hf_load.py`, which loads it with HF transformers.
//!
//! `cargo run -p platter-learner --example write_checkpoint -- MODEL_DIR FIXTURES_DIR OUT_DIR`
//!
//! Loads `MODEL_DIR` (e.g. `models/qwen25vl/tests/fixtures/tiny`), runs two DAPO steps on the
//! fixture prompts of `FIXTURES_DIR/cases.json` with their responses, saves a checkpoint through
//! `CheckpointStore` under `OUT_DIR`, and writes `OUT_DIR/rust_logits.safetensors`: the trained
//! policy's logits (`[B, L, V]`) and input ids on the fixture prompts (as the processor lays them
//! out, left-padded). Prints the checkpoint directory.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use platter_learner::{
    AdamW, AdamWConfig, Algorithm, CheckpointState, CheckpointStore, InProcessGroup, QwenPolicy,
    QwenSequence, SkipCounter, TrainItem, UpdateConfig, frozen_logprobs, train_step,
};
use platter_qwen25vl::{PromptBatch, load_image};
use platter_rl::DapoLoss;

fn strings(v: &serde_json::Value, key: &str) -> Result<Vec<String>, Box<dyn Error>> {
    v[key]
        .as_array()
        .ok_or_else(|| format!("cases.json: `{key}` must be an array of strings"))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("cases.json: `{key}` holds a non-string").into())
        })
        .collect()
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: write_checkpoint MODEL_DIR FIXTURES_DIR OUT_DIR".into());
    }
    let (model_dir, fixtures, out) = (
        Path::new(&args[1]),
        Path::new(&args[2]),
        PathBuf::from(&args[3]),
    );
    let device = Device::Cpu;
    let model = QwenPolicy::load_trainable(model_dir, &device, DType::F32, false)?;
    let processor = model.policy().processor(model_dir)?;
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("cases.json"))?)?;
    let (prompts, responses, images) = (
        strings(&cases, "prompts")?,
        strings(&cases, "responses")?,
        strings(&cases, "images")?,
    );
    let im_end = processor.token_id("<|im_end|>")?;
    let mut items = Vec::new();
    for (i, ((text, resp), img)) in prompts.iter().zip(&responses).zip(&images).enumerate() {
        let image = load_image(&fixtures.join(img), processor.max_input_pixels)?;
        let prompt = processor.prepare(i, text, &[image])?;
        let mut response = processor.encode(resp)?;
        response.push(im_end);
        items.push(TrainItem {
            id: format!("case{i}"),
            sequence: QwenSequence {
                prompt: std::sync::Arc::new(prompt),
                response,
            },
            advantage: if i % 2 == 0 { 1.0 } else { -0.5 },
        });
    }

    let group = InProcessGroup::new(1, Duration::from_secs(60)).remove(0);
    let mut adam = AdamW::new(
        model.trainable(),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )?;
    let cfg = UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss::default()),
        mini_batches_per_step: 1,
        micro_batch_size: 2,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    };
    let mut skips = SkipCounter::default();
    let steps = 2u64;
    for _ in 0..steps {
        let frozen = frozen_logprobs(&model, None, &items, cfg.micro_batch_size)?;
        train_step(&model, &mut adam, &group, &items, &frozen, &cfg, &mut skips)?;
    }

    let store = CheckpointStore::new(&out, 1);
    let state = CheckpointState {
        step: steps,
        optimizer_step: adam.step_count(),
        policy_version: steps,
        extra: serde_json::json!({ "written_by": "learner/examples/write_checkpoint.rs" }),
    };
    let dir = model.save_checkpoint(&store, model_dir, &adam.state()?.0, &state)?;

    let refs: Vec<_> = items.iter().map(|i| i.sequence.prompt.as_ref()).collect();
    let batch = PromptBatch::new(&refs, processor.pad_token_id, &device)?;
    let logits = model.policy().forward_logits(&batch)?;
    let tensors = HashMap::from([
        ("logits".to_string(), logits),
        (
            "input_ids".to_string(),
            batch.input_ids.to_dtype(DType::I64)?,
        ),
        (
            "attention_mask".to_string(),
            batch.attention_mask.to_dtype(DType::I64)?,
        ),
    ]);
    candle_core::safetensors::save(&tensors, out.join("rust_logits.safetensors"))?;
    println!("{}", dir.display());
    Ok(())
}
