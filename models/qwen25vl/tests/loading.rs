//! Config layouts, sharded checkpoints and load-time errors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::*;
use platter_qwen25vl::{Config, Error, Policy, PromptBatch};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("platter-qwen25vl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn flat_v4_and_nested_v5_configs_agree() {
    let v5 = Config::from_file(&tiny().join("config.json")).unwrap();
    let v4 = Config::from_file(&tiny().join("config_v4.json")).unwrap();
    assert_eq!(v4, v5);
    assert_eq!(v5.text.mrope_section, vec![4, 6, 6]);
    assert_eq!(v5.vision.fullatt_block_indexes, vec![1]);
    assert!(!v5.text.tie_word_embeddings);
    let tied = Config::from_file(&fixtures().join("tiny_tied/config_v4.json")).unwrap();
    assert!(tied.text.tie_word_embeddings);
}

#[test]
fn bad_mrope_section_is_rejected() {
    let text = std::fs::read_to_string(tiny().join("config_v4.json"))
        .unwrap()
        .replace(
            "\"mrope_section\": [\n      4,",
            "\"mrope_section\": [\n      5,",
        );
    let err = Config::from_json_str(&text, Path::new("config_v4.json")).unwrap_err();
    assert!(err.to_string().contains("mrope_section"), "{err}");
}

#[test]
fn sharded_checkpoint_loads_identically() {
    let dir = tmpdir("sharded");
    copy_dir(&tiny(), &dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let all =
        candle_core::safetensors::load(tiny().join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = all.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: HashMap<String, Tensor> =
            part.iter().map(|n| (n.clone(), all[n].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join(file)).unwrap();
        for n in part {
            map.insert(n.clone(), serde_json::Value::String(file.into()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let sharded = Policy::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let (single, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let refs: Vec<_> = prompts.iter().collect();
    let batch = PromptBatch::new(&refs, processor.pad_token_id, &Device::Cpu).unwrap();
    let d = max_abs_diff(
        &to_f32(&sharded.forward_logits(&batch).unwrap()),
        &to_f32(&single.forward_logits(&batch).unwrap()),
    );
    assert_eq!(d, 0.0);

    // A missing shard is named.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Policy::load(&dir, &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { .. }) && err.to_string().contains("model-00002-of-00002"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let dir = tmpdir("truncated");
    copy_dir(&tiny(), &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = Policy::load(&dir, &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_weight_disagreement_lists_every_mismatch() {
    let dir = tmpdir("mismatch");
    copy_dir(&tiny(), &dir);
    // Claim 3 text layers and a wider vision MLP: one layer's tensors are missing and every
    // vision MLP tensor has the wrong shape.
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3")
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 160");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let err = Policy::load(&dir, &Device::Cpu, DType::F32).unwrap_err();
    let Error::WeightMismatch(problems) = &err else {
        panic!("expected WeightMismatch, got {err}")
    };
    let missing = problems
        .iter()
        .filter(|p| p.contains("missing tensor `model.layers.2."))
        .count();
    let shapes = problems
        .iter()
        .filter(|p| p.contains("visual.blocks.") && p.contains("has shape"))
        .count();
    assert_eq!(missing, 12, "{problems:#?}");
    assert_eq!(shapes, 3 * 5, "{problems:#?}"); // gate/up weight+bias, down weight, per block
    let _ = std::fs::remove_dir_all(&dir);
}
