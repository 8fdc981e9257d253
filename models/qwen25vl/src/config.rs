//! `config.json` and `preprocessor_config.json` of a Qwen2.5-VL checkpoint.
//!
//! Two layouts exist and both are accepted:
//! - the hub's flat v4 layout (text keys at the top level, `rope_theta`, and
//!   `rope_scaling: {type: "mrope", mrope_section: [..]}`, vision keys in `vision_config`);
//! - transformers v5's nested layout (`text_config`, `vision_config`, `rope_parameters`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// Language-model hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Split of the rotary half-dimension among (temporal, height, width); sums to `head_dim / 2`.
    pub mrope_section: Vec<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl TextConfig {
    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Vision-tower hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub out_hidden_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Attention window side in pixels (112 in every released model: 4x4 merged tokens).
    pub window_size: usize,
    /// Blocks that attend over the whole image instead of within windows.
    pub fullatt_block_indexes: Vec<usize>,
    pub rope_theta: f64,
}

impl VisionConfig {
    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Length of one flattened patch: channels x temporal patch x patch x patch.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// The whole model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|x| !x.is_null())
}

struct Reader<'a> {
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Json {
            path: self.path.to_path_buf(),
            reason,
        }
    }
    fn usize_in(
        &self,
        obj: &Value,
        scope: &str,
        key: &str,
        default: Option<usize>,
    ) -> Result<usize> {
        match get(obj, key) {
            Some(x) => x.as_u64().map(|u| u as usize).ok_or_else(|| {
                self.err(format!(
                    "`{scope}{key}` must be a non-negative integer, found {x}"
                ))
            }),
            None => default.ok_or_else(|| self.err(format!("missing key `{scope}{key}`"))),
        }
    }
    fn f64_in(&self, obj: &Value, scope: &str, key: &str, default: Option<f64>) -> Result<f64> {
        match get(obj, key) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.err(format!("`{scope}{key}` must be a number, found {x}"))),
            None => default.ok_or_else(|| self.err(format!("missing key `{scope}{key}`"))),
        }
    }
    fn usize_list(&self, x: &Value, what: &str) -> Result<Vec<usize>> {
        x.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|e| e.as_u64().map(|u| u as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                self.err(format!(
                    "`{what}` must be a list of non-negative integers, found {x}"
                ))
            })
    }
}

impl Config {
    /// Reads and validates `config.json` (either layout).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses a config from JSON text; `path` is only used in error messages.
    pub fn from_json_str(json: &str, path: &Path) -> Result<Self> {
        let root: Value = serde_json::from_str(json).map_err(|e| Error::Json {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let r = Reader { path };
        // v5 nests the language model under `text_config`; v4 keeps it at the top level.
        let (t, ts) = match get(&root, "text_config") {
            Some(t) => (t, "text_config."),
            None => (&root, ""),
        };
        let rope = get(t, "rope_parameters")
            .or_else(|| get(t, "rope_scaling"))
            .or_else(|| get(&root, "rope_scaling"));
        let mrope_section = match rope.and_then(|r| get(r, "mrope_section")) {
            Some(s) => r.usize_list(s, "mrope_section")?,
            None => {
                return Err(r.err(
                    "missing `mrope_section` (in `rope_scaling` or `rope_parameters`)".into(),
                ));
            }
        };
        let rope_theta = match rope.and_then(|r| get(r, "rope_theta")) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| r.err(format!("`rope_theta` must be a number, found {x}")))?,
            None => r.f64_in(t, ts, "rope_theta", Some(1_000_000.0))?,
        };
        let hidden_size = r.usize_in(t, ts, "hidden_size", None)?;
        let num_attention_heads = r.usize_in(t, ts, "num_attention_heads", None)?;
        let tie = get(t, "tie_word_embeddings")
            .or_else(|| get(&root, "tie_word_embeddings"))
            .map(|x| {
                x.as_bool().ok_or_else(|| {
                    r.err(format!("`tie_word_embeddings` must be a bool, found {x}"))
                })
            })
            .transpose()?
            .unwrap_or(false);
        let text = TextConfig {
            vocab_size: r.usize_in(t, ts, "vocab_size", None)?,
            hidden_size,
            intermediate_size: r.usize_in(t, ts, "intermediate_size", None)?,
            num_hidden_layers: r.usize_in(t, ts, "num_hidden_layers", None)?,
            num_attention_heads,
            num_key_value_heads: r.usize_in(
                t,
                ts,
                "num_key_value_heads",
                Some(num_attention_heads),
            )?,
            rms_norm_eps: r.f64_in(t, ts, "rms_norm_eps", Some(1e-6))?,
            rope_theta,
            mrope_section,
            max_position_embeddings: r.usize_in(t, ts, "max_position_embeddings", Some(32768))?,
            tie_word_embeddings: tie,
        };
        let v =
            get(&root, "vision_config").ok_or_else(|| r.err("missing `vision_config`".into()))?;
        let vs = "vision_config.";
        let patch_size = match get(v, "patch_size") {
            Some(_) => r.usize_in(v, vs, "patch_size", None)?,
            None => r.usize_in(v, vs, "spatial_patch_size", Some(14))?,
        };
        let in_channels = match get(v, "in_channels") {
            Some(_) => r.usize_in(v, vs, "in_channels", None)?,
            None => r.usize_in(v, vs, "in_chans", Some(3))?,
        };
        let fullatt = match get(v, "fullatt_block_indexes") {
            Some(x) => r.usize_list(x, "vision_config.fullatt_block_indexes")?,
            None => vec![7, 15, 23, 31],
        };
        let vision_theta = match get(v, "rope_parameters").and_then(|p| get(p, "rope_theta")) {
            Some(x) => x
                .as_f64()
                .ok_or_else(|| r.err(format!("vision `rope_theta` must be a number, found {x}")))?,
            None => 10_000.0,
        };
        let vision = VisionConfig {
            depth: r.usize_in(v, vs, "depth", None)?,
            hidden_size: r.usize_in(v, vs, "hidden_size", None)?,
            intermediate_size: r.usize_in(v, vs, "intermediate_size", None)?,
            num_heads: r.usize_in(v, vs, "num_heads", None)?,
            in_channels,
            out_hidden_size: r.usize_in(v, vs, "out_hidden_size", None)?,
            patch_size,
            temporal_patch_size: r.usize_in(v, vs, "temporal_patch_size", Some(2))?,
            spatial_merge_size: r.usize_in(v, vs, "spatial_merge_size", Some(2))?,
            window_size: r.usize_in(v, vs, "window_size", Some(112))?,
            fullatt_block_indexes: fullatt,
            rope_theta: vision_theta,
        };
        let id = |key: &str, default: usize| -> Result<u32> {
            Ok(r.usize_in(&root, "", key, Some(default))? as u32)
        };
        let cfg = Config {
            text,
            vision,
            image_token_id: id("image_token_id", 151_655)?,
            video_token_id: id("video_token_id", 151_656)?,
            vision_start_token_id: id("vision_start_token_id", 151_652)?,
            vision_end_token_id: id("vision_end_token_id", 151_653)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the relations between hyper-parameters that the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let t = &self.text;
        let v = &self.vision;
        let mut bad = Vec::new();
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            bad.push(format!(
                "hidden_size {} not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        } else if !t.head_dim().is_multiple_of(2) {
            bad.push(format!("text head_dim {} must be even", t.head_dim()));
        } else if t.mrope_section.iter().sum::<usize>() != t.head_dim() / 2 {
            bad.push(format!(
                "mrope_section {:?} sums to {}, expected head_dim/2 = {}",
                t.mrope_section,
                t.mrope_section.iter().sum::<usize>(),
                t.head_dim() / 2
            ));
        }
        if t.num_key_value_heads == 0
            || !t.num_attention_heads.is_multiple_of(t.num_key_value_heads)
        {
            bad.push(format!(
                "num_attention_heads {} not divisible by num_key_value_heads {}",
                t.num_attention_heads, t.num_key_value_heads
            ));
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !v.head_dim().is_multiple_of(4)
        {
            bad.push(format!(
                "vision hidden_size {} / num_heads {} must give a head_dim divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        let unit = v.patch_size * v.spatial_merge_size;
        if v.patch_size == 0
            || v.spatial_merge_size == 0
            || !v.window_size.is_multiple_of(unit)
            || v.window_size == 0
        {
            bad.push(format!(
                "window_size {} must be a positive multiple of patch_size*merge = {unit}",
                v.window_size
            ));
        }
        if let Some(b) = v.fullatt_block_indexes.iter().find(|b| **b >= v.depth) {
            bad.push(format!(
                "fullatt_block_indexes holds {b}, but depth is {}",
                v.depth
            ));
        }
        for (name, id) in [
            ("image_token_id", self.image_token_id),
            ("vision_start_token_id", self.vision_start_token_id),
        ] {
            if id as usize >= t.vocab_size {
                bad.push(format!(
                    "{name} {id} is outside vocab_size {}",
                    t.vocab_size
                ));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(bad.join("; ")))
        }
    }
}

/// Image preprocessing parameters (`preprocessor_config.json`, or the `image_processor` object of
/// transformers v5's `processor_config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    /// Lower bound on resized pixel count (`min_pixels`, or `size.shortest_edge`).
    #[serde(default)]
    pub min_pixels: Option<usize>,
    /// Upper bound on resized pixel count (`max_pixels`, or `size.longest_edge`).
    #[serde(default)]
    pub max_pixels: Option<usize>,
    #[serde(default)]
    size: Option<SizeDict>,
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    #[serde(default = "default_two")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_two")]
    pub merge_size: usize,
    #[serde(default = "default_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "default_std")]
    pub image_std: [f32; 3],
    #[serde(default = "default_rescale")]
    pub rescale_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct SizeDict {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

fn default_patch() -> usize {
    14
}
fn default_two() -> usize {
    2
}
fn default_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn default_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}
fn default_rescale() -> f64 {
    1.0 / 255.0
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: Some(56 * 56),
            max_pixels: Some(28 * 28 * 1280),
            size: None,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: default_mean(),
            image_std: default_std(),
            rescale_factor: default_rescale(),
        }
    }
}

impl PreprocessorConfig {
    /// Reads `preprocessor_config.json`, or falls back to `processor_config.json`'s
    /// `image_processor` object, in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pre = dir.join("preprocessor_config.json");
        let (path, nested) = if pre.exists() {
            (pre, false)
        } else {
            (dir.join("processor_config.json"), true)
        };
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let mut v: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if nested {
            v = v
                .get("image_processor")
                .cloned()
                .ok_or_else(|| Error::Json {
                    path: path.clone(),
                    reason: "missing `image_processor` object".into(),
                })?;
        }
        let mut cfg: Self = serde_json::from_value(v).map_err(|e| Error::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(size) = cfg.size.take() {
            cfg.min_pixels = cfg.min_pixels.or(size.shortest_edge);
            cfg.max_pixels = cfg.max_pixels.or(size.longest_edge);
        }
        cfg.min_pixels = cfg.min_pixels.or(Some(56 * 56));
        cfg.max_pixels = cfg.max_pixels.or(Some(28 * 28 * 1280));
        if cfg.patch_size == 0 || cfg.merge_size == 0 || cfg.temporal_patch_size == 0 {
            return Err(Error::Json {
                path,
                reason: "patch_size, merge_size and temporal_patch_size must be > 0".into(),
            });
        }
        Ok(cfg)
    }

    /// Resized pixel-count bounds `(min, max)`.
    pub fn pixel_bounds(&self) -> (usize, usize) {
        (
            self.min_pixels.unwrap_or(56 * 56),
            self.max_pixels.unwrap_or(28 * 28 * 1280),
        )
    }
}
