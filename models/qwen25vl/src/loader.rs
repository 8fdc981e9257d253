//! Reading a checkpoint: single or sharded safetensors, checked against the config before use.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::{Error, Result};

/// Every tensor the model needs, by checkpoint (hub) key, with its shape.
pub fn expected_tensors(cfg: &Config) -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let v = &cfg.vision;
    let (vh, vi) = (v.hidden_size, v.intermediate_size);
    let mut put = |k: String, s: Vec<usize>| {
        m.insert(k, s);
    };
    put(
        "visual.patch_embed.proj.weight".into(),
        vec![
            vh,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
    );
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        put(format!("{p}.norm1.weight"), vec![vh]);
        put(format!("{p}.norm2.weight"), vec![vh]);
        put(format!("{p}.attn.qkv.weight"), vec![3 * vh, vh]);
        put(format!("{p}.attn.qkv.bias"), vec![3 * vh]);
        put(format!("{p}.attn.proj.weight"), vec![vh, vh]);
        put(format!("{p}.attn.proj.bias"), vec![vh]);
        for n in ["gate_proj", "up_proj"] {
            put(format!("{p}.mlp.{n}.weight"), vec![vi, vh]);
            put(format!("{p}.mlp.{n}.bias"), vec![vi]);
        }
        put(format!("{p}.mlp.down_proj.weight"), vec![vh, vi]);
        put(format!("{p}.mlp.down_proj.bias"), vec![vh]);
    }
    let merged = vh * v.spatial_merge_size * v.spatial_merge_size;
    put("visual.merger.ln_q.weight".into(), vec![vh]);
    put("visual.merger.mlp.0.weight".into(), vec![merged, merged]);
    put("visual.merger.mlp.0.bias".into(), vec![merged]);
    put(
        "visual.merger.mlp.2.weight".into(),
        vec![v.out_hidden_size, merged],
    );
    put("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]);

    let t = &cfg.text;
    let (d, hd) = (t.hidden_size, t.head_dim());
    let (q, kv) = (t.num_attention_heads * hd, t.num_key_value_heads * hd);
    put("model.embed_tokens.weight".into(), vec![t.vocab_size, d]);
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), vec![d]);
        put(format!("{p}.post_attention_layernorm.weight"), vec![d]);
        put(format!("{p}.self_attn.q_proj.weight"), vec![q, d]);
        put(format!("{p}.self_attn.q_proj.bias"), vec![q]);
        put(format!("{p}.self_attn.k_proj.weight"), vec![kv, d]);
        put(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
        put(format!("{p}.self_attn.v_proj.weight"), vec![kv, d]);
        put(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
        put(format!("{p}.self_attn.o_proj.weight"), vec![d, q]);
        put(
            format!("{p}.mlp.gate_proj.weight"),
            vec![t.intermediate_size, d],
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            vec![t.intermediate_size, d],
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![d, t.intermediate_size],
        );
    }
    put("model.norm.weight".into(), vec![d]);
    if !t.tie_word_embeddings {
        put("lm_head.weight".into(), vec![t.vocab_size, d]);
    }
    m
}

/// transformers v5 may save in-memory names; map them to the hub names used everywhere here.
fn canonical_key(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.language_model.") {
        format!("model.{rest}")
    } else if let Some(rest) = name.strip_prefix("model.visual.") {
        format!("visual.{rest}")
    } else {
        name.to_string()
    }
}

/// The safetensors files of a model directory: `model.safetensors`, or the shards named in
/// `model.safetensors.index.json`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!(
            "neither model.safetensors nor a readable model.safetensors.index.json ({e})"
        ),
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: index.clone(),
        reason: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Json {
            path: index.clone(),
            reason: "missing object `weight_map`".into(),
        })?;
    let mut files: Vec<String> = Vec::new();
    for (key, f) in map {
        let f = f.as_str().ok_or_else(|| Error::Json {
            path: index.clone(),
            reason: format!("weight_map[{key}] must be a file name, found {f}"),
        })?;
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Checkpoint {
            path: index,
            reason: format!(
                "shard file(s) listed in the index are missing: {}",
                missing.join(", ")
            ),
        });
    }
    Ok(paths)
}

/// Reads every tensor of the checkpoint in `dir`, checks names and shapes against `cfg` (all
/// mismatches reported together), and returns them converted to `dtype` on `device`.
pub fn load_checked(
    dir: &Path,
    cfg: &Config,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let expected = expected_tensors(cfg);
    let mut found: HashMap<String, (Vec<usize>, PathBuf)> = HashMap::new();
    let mut buffers = Vec::new();
    for path in checkpoint_files(dir)? {
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        {
            let st =
                safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
                    path: path.clone(),
                    reason: format!("not a readable safetensors file (truncated or corrupt?): {e}"),
                })?;
            for (name, view) in st.tensors() {
                found.insert(canonical_key(&name), (view.shape().to_vec(), path.clone()));
            }
        }
        buffers.push((path, bytes));
    }
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match found.get(name) {
            None => problems.push(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            )),
            Some((s, p)) if s != shape => problems.push(format!(
                "tensor `{name}` in {} has shape {s:?}, config expects {shape:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    let tied_head = cfg.text.tie_word_embeddings;
    let mut unexpected: Vec<&String> = found
        .keys()
        .filter(|k| {
            // A tied model may still ship lm_head.weight (HF ignores it); so do we.
            let ignored_head = tied_head && k.as_str() == "lm_head.weight";
            !expected.contains_key(*k) && !ignored_head
        })
        .collect();
    unexpected.sort();
    for k in unexpected {
        problems.push(format!("unexpected tensor `{k}` (not used by this config)"));
    }
    if !problems.is_empty() {
        return Err(Error::WeightMismatch(problems));
    }
    let mut out = HashMap::with_capacity(expected.len());
    for (path, bytes) in buffers {
        let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            Error::Checkpoint {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        for (name, t) in tensors {
            let name = canonical_key(&name);
            if expected.contains_key(&name) {
                out.insert(name, t.to_dtype(dtype)?);
            }
        }
    }
    Ok(out)
}
