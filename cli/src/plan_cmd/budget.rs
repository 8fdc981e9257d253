//! The memory model: model dimensions, parameter counts and the per-process budgets (the
//! formulas are written out in the docs of `plan_cmd`).

use std::path::Path;

use anyhow::{Context, bail};
use platter_coordinator::ExperimentConfig;
use platter_qwen25vl::Config as ModelConfig;
use serde::Serialize;

pub(super) const GIB: f64 = (1u64 << 30) as f64;
const CUDA_CONTEXT_BYTES: u64 = 512 << 20;
/// Image tokens are `image_size` rounded to multiples of patch × merge (HF `smart_resize`
/// bounds of the Qwen2.5-VL processor).
const MIN_PIXELS: usize = 3136;
const MAX_PIXELS: usize = 12_845_056;

/// Weight element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    Bf16,
    F16,
    F32,
}

impl Dtype {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }
    pub(super) fn bytes(self) -> u64 {
        match self {
            Self::Bf16 | Self::F16 => 2,
            Self::F32 => 4,
        }
    }
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "bf16" => Some(Self::Bf16),
            "f16" => Some(Self::F16),
            "f32" => Some(Self::F32),
            _ => None,
        }
    }
}

/// SAM2.1 sizes (Meta's checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sam2Size {
    Tiny,
    Small,
    BasePlus,
    Large,
}

impl Sam2Size {
    /// Meta's published parameter counts of the SAM2.1 checkpoints.
    fn params(self) -> u64 {
        match self {
            Self::Tiny => 38_900_000,
            Self::Small => 46_000_000,
            Self::BasePlus => 80_800_000,
            Self::Large => 224_400_000,
        }
    }
    /// Channels of the Hiera image encoder's first stage.
    fn stage1_channels(self) -> u64 {
        match self {
            Self::Tiny | Self::Small => 96,
            Self::BasePlus => 112,
            Self::Large => 144,
        }
    }
    pub(super) fn from_checkpoint(path: &str) -> Option<Self> {
        use platter_sam2::OfficialSize as O;
        Some(match O::from_file_name(Path::new(path))? {
            O::Tiny => Self::Tiny,
            O::Small => Self::Small,
            O::BasePlus => Self::BasePlus,
            O::Large => Self::Large,
        })
    }
}

/// Built-in model configs (the `config.json` of the HF checkpoints, the keys the budget and the
/// config reader need).
const QWEN25VL_3B: &str = r#"{
  "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
  "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
  "tie_word_embeddings": true, "rope_theta": 1000000.0,
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31]}
}"#;
const QWEN25VL_7B: &str = r#"{
  "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
  "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
  "tie_word_embeddings": false, "rope_theta": 1000000.0,
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31]}
}"#;

/// Finds the model: a directory with `config.json`, else a built-in by name.
pub(super) fn resolve_model(spec: &str) -> anyhow::Result<(String, ModelConfig)> {
    let dir = Path::new(spec);
    let file = dir.join("config.json");
    if file.is_file() {
        let cfg = ModelConfig::from_file(&file)
            .with_context(|| format!("reading the model config {}", file.display()))?;
        return Ok((spec.to_owned(), cfg));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
        .replace('_', "-");
    let builtin = if name.contains("qwen2.5-vl-3b") {
        Some(("Qwen2.5-VL-3B", QWEN25VL_3B))
    } else if name.contains("qwen2.5-vl-7b") {
        Some(("Qwen2.5-VL-7B", QWEN25VL_7B))
    } else {
        None
    };
    let Some((label, json)) = builtin else {
        bail!(
            "model `{spec}`: no {} and not a built-in name (qwen2.5-vl-3b, qwen2.5-vl-7b); pass --model",
            file.display()
        );
    };
    let cfg = ModelConfig::from_json_str(json, Path::new(label))
        .with_context(|| format!("built-in config of {label}"))?;
    Ok((format!("{label} (built-in dimensions)"), cfg))
}

/// Parameter counts of the checkpoint tensors `platter-qwen25vl` loads.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ParamCounts {
    pub text: u64,
    pub vision: u64,
}

pub(super) fn param_counts(cfg: &ModelConfig) -> ParamCounts {
    let t = &cfg.text;
    let (h, i, v) = (
        t.hidden_size as u64,
        t.intermediate_size as u64,
        t.vocab_size as u64,
    );
    let kv = (t.num_key_value_heads * t.head_dim()) as u64;
    // q (with bias), k and v (with bias), o (no bias), gate/up/down (no bias), two RMSNorms.
    let layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h;
    let lm_head = if t.tie_word_embeddings { 0 } else { v * h };
    let text = v * h + t.num_hidden_layers as u64 * layer + h + lm_head;

    let vc = &cfg.vision;
    let (hv, iv) = (vc.hidden_size as u64, vc.intermediate_size as u64);
    let patch = (vc.in_channels * vc.temporal_patch_size * vc.patch_size * vc.patch_size) as u64;
    // Two RMSNorms, qkv and proj (with biases), gate/up/down (with biases).
    let block =
        2 * hv + (hv * 3 * hv + 3 * hv) + (hv * hv + hv) + 2 * (hv * iv + iv) + (iv * hv + hv);
    let merged = hv * (vc.spatial_merge_size * vc.spatial_merge_size) as u64;
    let out = vc.out_hidden_size as u64;
    let merger = hv + (merged * merged + merged) + (merged * out + out);
    let vision = patch * hv + vc.depth as u64 * block + merger;
    ParamCounts { text, vision }
}

/// Token counts of one sequence.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    pub image_patches: u64,
    pub image_tokens: u64,
    pub prompt_tokens: u64,
    pub response_tokens: u64,
    pub sequence_tokens: u64,
    pub group_size: u64,
    pub micro_batch_size: u64,
    pub ranks: u64,
}

pub(super) fn workload(
    exp: &ExperimentConfig,
    cfg: &ModelConfig,
    prompt_text_tokens: u64,
) -> anyhow::Result<Workload> {
    let v = &cfg.vision;
    let factor = v.patch_size * v.spatial_merge_size;
    let side = exp.data.image_size as usize;
    let (h, w) = platter_qwen25vl::smart_resize(side, side, factor, MIN_PIXELS, MAX_PIXELS)
        .with_context(|| format!("data.image_size {side}"))?;
    let image_patches = ((h / v.patch_size) * (w / v.patch_size)) as u64;
    let image_tokens = image_patches / (v.spatial_merge_size * v.spatial_merge_size) as u64;
    let prompt_tokens = image_tokens + prompt_text_tokens;
    let response_tokens = exp.overlong.max_response_tokens as u64;
    Ok(Workload {
        image_patches,
        image_tokens,
        prompt_tokens,
        response_tokens,
        sequence_tokens: prompt_tokens + response_tokens,
        group_size: u64::from(exp.rollout.group_size),
        micro_batch_size: u64::from(exp.learner.micro_batch_size),
        ranks: u64::from(exp.learner.ranks),
    })
}

/// Bytes one transformer layer keeps for backward over `s` tokens attending over `span` keys
/// each (see the module docs).
fn layer_activation_bytes(s: u64, span: u64, h: u64, kv: u64, i: u64, heads: u64, w: u64) -> u64 {
    s * ((24 + 4 * w) * h + w * (15 * h + 9 * kv + 4 * i)) + (20 + 3 * w) * heads * s * span
}

/// Activations of one sequence through the text layers.
fn text_activation_bytes(cfg: &ModelConfig, s: u64, w: u64, checkpointing: bool) -> u64 {
    let t = &cfg.text;
    let (h, i, a, l) = (
        t.hidden_size as u64,
        t.intermediate_size as u64,
        t.num_attention_heads as u64,
        t.num_hidden_layers as u64,
    );
    let kv = (t.num_key_value_heads * t.head_dim()) as u64;
    let layer = layer_activation_bytes(s, s, h, kv, i, a, w);
    if checkpointing {
        l * s * h * w + layer
    } else {
        l * layer
    }
}

/// Activations of one image through the vision blocks.
fn vision_activation_bytes(cfg: &ModelConfig, patches: u64, w: u64, checkpointing: bool) -> u64 {
    let v = &cfg.vision;
    let (h, i, a) = (
        v.hidden_size as u64,
        v.intermediate_size as u64,
        v.num_heads as u64,
    );
    let window = ((v.window_size / v.patch_size) * (v.window_size / v.patch_size)) as u64;
    let full_blocks = v.fullatt_block_indexes.len() as u64;
    let window_blocks = v.depth as u64 - full_blocks;
    let full = layer_activation_bytes(patches, patches, h, h, i, a, w);
    let windowed = layer_activation_bytes(patches, window.min(patches), h, h, i, a, w);
    if checkpointing {
        let largest = if full_blocks > 0 { full } else { windowed };
        v.depth as u64 * patches * h * w + largest
    } else {
        full_blocks * full + window_blocks * windowed
    }
}

/// One learner rank's memory.
#[derive(Debug, Clone, Serialize)]
pub struct LearnerBudget {
    pub trainable_params: u64,
    pub weights: u64,
    pub gradients: u64,
    pub optimizer: u64,
    pub optimizer_unsharded: u64,
    pub optimizer_zero1: u64,
    pub activations: u64,
    pub activations_without_checkpointing: u64,
    pub activations_with_checkpointing: u64,
    pub logits: u64,
    pub cuda_context: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct LearnerOptions {
    pub w: u64,
    pub zero1: bool,
    pub checkpointing: bool,
    pub freeze_vision: bool,
}

pub(super) fn learner_budget(
    cfg: &ModelConfig,
    params: ParamCounts,
    load: &Workload,
    o: &LearnerOptions,
) -> LearnerBudget {
    let w = o.w;
    let total_params = params.text + params.vision;
    let trainable = if o.freeze_vision {
        params.text
    } else {
        total_params
    };
    let optimizer_per_param = if w == 4 { 8 } else { 12 };
    let optimizer_unsharded = trainable * optimizer_per_param;
    let optimizer_zero1 = optimizer_unsharded.div_ceil(load.ranks.max(1));
    let m = load.micro_batch_size;
    let acts = |ckpt: bool| -> u64 {
        let text = m * text_activation_bytes(cfg, load.sequence_tokens, w, ckpt);
        if o.freeze_vision {
            // Features are detached: the tower's graph is freed before the text forward runs.
            text.max(m * vision_activation_bytes(cfg, load.image_patches, w, ckpt))
        } else {
            text + m * vision_activation_bytes(cfg, load.image_patches, w, ckpt)
        }
    };
    let (with_ckpt, without_ckpt) = (acts(true), acts(false));
    let activations = if o.checkpointing {
        with_ckpt
    } else {
        without_ckpt
    };
    let vocab = cfg.text.vocab_size as u64;
    let logits_per_token = vocab * (12 + w + if w == 4 { 0 } else { 4 });
    let logits = m * load.response_tokens * logits_per_token;
    let weights = total_params * w;
    let gradients = trainable * w;
    let optimizer = if o.zero1 {
        optimizer_zero1
    } else {
        optimizer_unsharded
    };
    LearnerBudget {
        trainable_params: trainable,
        weights,
        gradients,
        optimizer,
        optimizer_unsharded,
        optimizer_zero1,
        activations,
        activations_without_checkpointing: without_ckpt,
        activations_with_checkpointing: with_ckpt,
        logits,
        cuda_context: CUDA_CONTEXT_BYTES,
        total: weights + gradients + optimizer + activations + logits + CUDA_CONTEXT_BYTES,
    }
}

/// One rollout worker's memory.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerBudget {
    pub concurrency: u64,
    pub weights: u64,
    pub kv_cache: u64,
    pub working_set: u64,
    pub cuda_context: u64,
    pub total: u64,
}

pub(super) fn worker_budget(
    cfg: &ModelConfig,
    params: ParamCounts,
    load: &Workload,
    w: u64,
    concurrency: u64,
) -> WorkerBudget {
    let t = &cfg.text;
    let kv = (t.num_key_value_heads * t.head_dim()) as u64;
    let per_token = 2 * t.num_hidden_layers as u64 * kv * w;
    let kv_cache = concurrency * load.group_size * load.sequence_tokens * per_token;
    // Largest transient of a prefill: attention scores (dtype, f32, softmax, back to dtype) of
    // the image's full-attention blocks or of the prompt, whichever is larger.
    let scores = |heads: u64, s: u64| heads * s * s * (2 * w + 8);
    let transient = scores(cfg.vision.num_heads as u64, load.image_patches)
        .max(scores(t.num_attention_heads as u64, load.prompt_tokens));
    let working_set = concurrency * transient;
    let weights = (params.text + params.vision) * w;
    WorkerBudget {
        concurrency,
        weights,
        kv_cache,
        working_set,
        cuda_context: CUDA_CONTEXT_BYTES,
        total: weights + kv_cache + working_set + CUDA_CONTEXT_BYTES,
    }
}

/// The reward server's memory.
#[derive(Debug, Clone, Serialize)]
pub struct RewardBudget {
    pub sam2: Option<Sam2Size>,
    pub concurrency: u64,
    pub weights: u64,
    pub working_set: u64,
    pub cuda_context: u64,
    pub total: u64,
}

pub(super) fn reward_budget(sam2: Option<Sam2Size>, concurrency: u64) -> RewardBudget {
    let (weights, working_set) = match sam2 {
        Some(size) => (
            size.params() * 4,
            concurrency * 24 * 256 * 256 * size.stage1_channels() * 4,
        ),
        None => (0, 0),
    };
    RewardBudget {
        sam2,
        concurrency,
        weights,
        working_set,
        cuda_context: CUDA_CONTEXT_BYTES,
        total: weights + working_set + CUDA_CONTEXT_BYTES,
    }
}

/// Parses `48GiB`, `48 GB`, `49152MiB`, `51539607552` (bytes).
pub fn parse_memory(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("--gpu-memory `{s}`: expected a number and a unit, e.g. 48GiB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" | "g" => GIB,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => bail!("--gpu-memory `{s}`: unknown unit `{other}` (use GiB, GB, MiB or MB)"),
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0) {
        bail!("--gpu-memory `{s}` must be a positive size");
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory("48GiB").unwrap(), 48 << 30);
        assert_eq!(parse_memory("48 GB").unwrap(), 48_000_000_000);
        assert_eq!(parse_memory("24576MiB").unwrap(), 24 << 30);
        assert_eq!(parse_memory("1024").unwrap(), 1024);
        assert!(parse_memory("48 parsecs").is_err());
        assert!(parse_memory("GiB").is_err());
        assert!(parse_memory("0GiB").is_err());
    }
}
