//! Model configuration: the four official SAM2.1 sizes built in, or Meta's YAML model config.
//!
//! Only the image path is configured here; video-memory settings in the YAML are ignored. Values
//! missing from a YAML take the defaults of Meta's constructors (`Hiera`, `FpnNeck`, `SAM2Base`),
//! and `build_sam2`'s decoder post-processing arguments (dynamic multimask via stability, delta
//! 0.05, threshold 0.98) are always on, as in Meta's builder.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result, config_err};

/// How the FPN upsamples the coarser level before adding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpnInterp {
    Nearest,
    Bilinear,
}

/// SAM2's Hiera trunk (`sam2.modeling.backbones.hieradet.Hiera`).
#[derive(Debug, Clone, PartialEq)]
pub struct HieraConfig {
    pub embed_dim: usize,
    pub num_heads: usize,
    /// Blocks per stage.
    pub stages: Vec<usize>,
    /// Blocks (global index) that use global instead of windowed attention.
    pub global_att_blocks: Vec<usize>,
    /// Window size per stage.
    pub window_spec: Vec<usize>,
    /// Spatial size (h, w) of the background position embedding.
    pub window_pos_embed_bkg_spatial_size: (usize, usize),
    /// Number of stage transitions that pool the queries.
    pub q_pool: usize,
    pub q_stride: (usize, usize),
    pub dim_mul: f64,
    pub head_mul: f64,
}

/// The FPN neck (`FpnNeck`) and its sine position encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct NeckConfig {
    pub d_model: usize,
    /// Trunk channels from the coarsest stage to the finest.
    pub backbone_channel_list: Vec<usize>,
    /// Levels that receive top-down features.
    pub fpn_top_down_levels: Vec<usize>,
    pub fpn_interp: FpnInterp,
    /// `fuse_type: avg` halves the sum.
    pub fuse_avg: bool,
    pub pos_num_feats: usize,
    pub pos_temperature: f64,
    pub pos_normalize: bool,
    pub pos_scale: Option<f64>,
}

/// A full SAM2 image-predictor configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Sam2Config {
    pub trunk: HieraConfig,
    pub neck: NeckConfig,
    /// Number of coarsest FPN levels dropped.
    pub scalp: usize,
    /// Square side the image is resized to.
    pub image_size: usize,
    pub backbone_stride: usize,
    pub use_high_res_features_in_sam: bool,
    pub iou_prediction_use_sigmoid: bool,
    pub pred_obj_scores: bool,
    pub pred_obj_scores_mlp: bool,
    pub directly_add_no_mem_embed: bool,
    pub dynamic_multimask_via_stability: bool,
    pub dynamic_multimask_stability_delta: f32,
    pub dynamic_multimask_stability_thresh: f32,
}

/// The official SAM2.1 checkpoint sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfficialSize {
    Tiny,
    Small,
    BasePlus,
    Large,
}

impl OfficialSize {
    /// Parses `tiny`, `small`, `base_plus` (or `base-plus`, `b+`) and `large` (also `t`, `s`, `l`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "tiny" | "t" | "hiera_t" => Some(Self::Tiny),
            "small" | "s" | "hiera_s" => Some(Self::Small),
            "base_plus" | "base-plus" | "b+" | "hiera_b+" => Some(Self::BasePlus),
            "large" | "l" | "hiera_l" => Some(Self::Large),
            _ => None,
        }
    }

    /// Guesses the size from an official file name such as `sam2.1_hiera_base_plus.pt`.
    pub fn from_file_name(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        [
            ("base_plus", Self::BasePlus),
            ("b+", Self::BasePlus),
            ("tiny", Self::Tiny),
            ("small", Self::Small),
            ("large", Self::Large),
        ]
        .into_iter()
        .find(|(k, _)| name.contains(k))
        .map(|(_, v)| v)
    }
}

impl Sam2Config {
    /// Built-in config of an official SAM2.1 size (Meta's `configs/sam2.1/sam2.1_hiera_*.yaml`).
    pub fn official(size: OfficialSize) -> Self {
        let (embed_dim, num_heads, stages, global, bkg, window) = match size {
            OfficialSize::Tiny => (
                96,
                1,
                vec![1, 2, 7, 2],
                vec![5, 7, 9],
                (7, 7),
                vec![8, 4, 14, 7],
            ),
            OfficialSize::Small => (
                96,
                1,
                vec![1, 2, 11, 2],
                vec![7, 10, 13],
                (7, 7),
                vec![8, 4, 14, 7],
            ),
            OfficialSize::BasePlus => (
                112,
                2,
                vec![2, 3, 16, 3],
                vec![12, 16, 20],
                (14, 14),
                vec![8, 4, 14, 7],
            ),
            OfficialSize::Large => (
                144,
                2,
                vec![2, 6, 36, 4],
                vec![23, 33, 43],
                (7, 7),
                vec![8, 4, 16, 8],
            ),
        };
        let channels: Vec<usize> = (0..4).rev().map(|i| embed_dim << i).collect();
        Self {
            trunk: HieraConfig {
                embed_dim,
                num_heads,
                stages,
                global_att_blocks: global,
                window_spec: window,
                window_pos_embed_bkg_spatial_size: bkg,
                q_pool: 3,
                q_stride: (2, 2),
                dim_mul: 2.0,
                head_mul: 2.0,
            },
            neck: NeckConfig {
                d_model: 256,
                backbone_channel_list: channels,
                fpn_top_down_levels: vec![2, 3],
                fpn_interp: FpnInterp::Nearest,
                fuse_avg: false,
                pos_num_feats: 256,
                pos_temperature: 10000.0,
                pos_normalize: true,
                pos_scale: None,
            },
            scalp: 1,
            image_size: 1024,
            backbone_stride: 16,
            use_high_res_features_in_sam: true,
            iou_prediction_use_sigmoid: true,
            pred_obj_scores: true,
            pred_obj_scores_mlp: true,
            directly_add_no_mem_embed: true,
            dynamic_multimask_via_stability: true,
            dynamic_multimask_stability_delta: 0.05,
            dynamic_multimask_stability_thresh: 0.98,
        }
    }

    /// Reads Meta's YAML model config (`model:` with `image_encoder.trunk/neck` etc.).
    pub fn from_yaml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Parses Meta's YAML model config from a string; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self> {
        let file: YamlFile = serde_norway::from_str(text)
            .map_err(|e| config_err(origin, format!("not a SAM2 model YAML: {e}")))?;
        let m = file.model;
        let enc = m.image_encoder;
        let t = enc.trunk;
        let n = enc.neck;
        if let Some(target) = t.target.as_ref().filter(|t| !t.ends_with("hieradet.Hiera")) {
            return Err(config_err(
                origin,
                format!(
                    "model.image_encoder.trunk._target_: expected sam2.modeling.backbones.hieradet.Hiera, found {target}"
                ),
            ));
        }
        let pair =
            |v: Option<Vec<usize>>, key: &str, default: (usize, usize)| -> Result<(usize, usize)> {
                match v {
                    None => Ok(default),
                    Some(v) if v.len() == 2 => Ok((v[0], v[1])),
                    Some(v) => Err(config_err(
                        origin,
                        format!("{key}: expected 2 values, found {v:?}"),
                    )),
                }
            };
        let pe = n.position_encoding.unwrap_or_default();
        let interp = match n.fpn_interp_model.as_deref().unwrap_or("bilinear") {
            "nearest" => FpnInterp::Nearest,
            "bilinear" => FpnInterp::Bilinear,
            other => {
                return Err(config_err(
                    origin,
                    format!(
                        "model.image_encoder.neck.fpn_interp_model: expected nearest or bilinear, found {other}"
                    ),
                ));
            }
        };
        let fuse_avg = match n.fuse_type.as_deref().unwrap_or("sum") {
            "sum" => false,
            "avg" => true,
            other => {
                return Err(config_err(
                    origin,
                    format!(
                        "model.image_encoder.neck.fuse_type: expected sum or avg, found {other}"
                    ),
                ));
            }
        };
        let extra = m.sam_mask_decoder_extra_args.unwrap_or_default();
        let d_model = n
            .d_model
            .ok_or_else(|| config_err(origin, "model.image_encoder.neck.d_model is missing"))?;
        let backbone_channel_list = n.backbone_channel_list.ok_or_else(|| {
            config_err(
                origin,
                "model.image_encoder.neck.backbone_channel_list is missing",
            )
        })?;
        let n_levels = backbone_channel_list.len();
        let cfg = Self {
            trunk: HieraConfig {
                embed_dim: t.embed_dim.unwrap_or(96),
                num_heads: t.num_heads.unwrap_or(1),
                stages: t.stages.unwrap_or_else(|| vec![2, 3, 16, 3]),
                global_att_blocks: t.global_att_blocks.unwrap_or_else(|| vec![12, 16, 20]),
                window_spec: t.window_spec.unwrap_or_else(|| vec![8, 4, 14, 7]),
                window_pos_embed_bkg_spatial_size: pair(
                    t.window_pos_embed_bkg_spatial_size,
                    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size",
                    (14, 14),
                )?,
                q_pool: t.q_pool.unwrap_or(3),
                q_stride: pair(t.q_stride, "model.image_encoder.trunk.q_stride", (2, 2))?,
                dim_mul: t.dim_mul.unwrap_or(2.0),
                head_mul: t.head_mul.unwrap_or(2.0),
            },
            neck: NeckConfig {
                d_model,
                backbone_channel_list,
                fpn_top_down_levels: n
                    .fpn_top_down_levels
                    .unwrap_or_else(|| (0..n_levels).collect()),
                fpn_interp: interp,
                fuse_avg,
                pos_num_feats: pe.num_pos_feats.unwrap_or(d_model),
                pos_temperature: pe.temperature.unwrap_or(10000.0),
                pos_normalize: pe.normalize.unwrap_or(true),
                pos_scale: pe.scale,
            },
            scalp: enc.scalp.unwrap_or(0),
            image_size: m.image_size.unwrap_or(512),
            backbone_stride: m.backbone_stride.unwrap_or(16),
            use_high_res_features_in_sam: m.use_high_res_features_in_sam.unwrap_or(false),
            iou_prediction_use_sigmoid: m.iou_prediction_use_sigmoid.unwrap_or(false),
            pred_obj_scores: m.pred_obj_scores.unwrap_or(false),
            pred_obj_scores_mlp: m.pred_obj_scores_mlp.unwrap_or(false),
            directly_add_no_mem_embed: m.directly_add_no_mem_embed.unwrap_or(false),
            dynamic_multimask_via_stability: extra.dynamic_multimask_via_stability.unwrap_or(true),
            dynamic_multimask_stability_delta: extra
                .dynamic_multimask_stability_delta
                .unwrap_or(0.05),
            dynamic_multimask_stability_thresh: extra
                .dynamic_multimask_stability_thresh
                .unwrap_or(0.98),
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Trunk output channels per stage, from the coarsest to the finest (Meta's `channel_list`).
    pub fn trunk_channel_list(&self) -> Vec<usize> {
        let t = &self.trunk;
        let mut dims = Vec::with_capacity(t.stages.len());
        let mut dim = t.embed_dim;
        for (s, _) in t.stages.iter().enumerate() {
            if s > 0 {
                dim = (dim as f64 * t.dim_mul) as usize;
            }
            dims.push(dim);
        }
        dims.reverse();
        dims
    }

    /// Side of the image embedding grid (`image_size / backbone_stride`).
    pub fn embedding_size(&self) -> usize {
        self.image_size / self.backbone_stride
    }

    /// Checks the invariants Meta's constructors assert, naming the offending key.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let t = &self.trunk;
        let n_stages = t.stages.len();
        if n_stages == 0 || t.stages.contains(&0) {
            return Err(config_err(
                origin,
                format!(
                    "trunk.stages: expected non-empty positive counts, found {:?}",
                    t.stages
                ),
            ));
        }
        if t.window_spec.len() != n_stages {
            return Err(config_err(
                origin,
                format!(
                    "trunk.window_spec: expected {n_stages} entries (one per stage), found {:?}",
                    t.window_spec
                ),
            ));
        }
        if t.q_pool > n_stages - 1 {
            return Err(config_err(
                origin,
                format!(
                    "trunk.q_pool: expected at most {}, found {}",
                    n_stages - 1,
                    t.q_pool
                ),
            ));
        }
        if self.trunk_channel_list() != self.neck.backbone_channel_list {
            return Err(config_err(
                origin,
                format!(
                    "neck.backbone_channel_list: expected the trunk's channels {:?}, found {:?}",
                    self.trunk_channel_list(),
                    self.neck.backbone_channel_list
                ),
            ));
        }
        if !self.neck.pos_num_feats.is_multiple_of(2) {
            return Err(config_err(
                origin,
                "neck.position_encoding.num_pos_feats must be even",
            ));
        }
        let levels = self.neck.backbone_channel_list.len();
        if self.scalp >= levels {
            return Err(config_err(
                origin,
                format!(
                    "image_encoder.scalp: expected < {levels}, found {}",
                    self.scalp
                ),
            ));
        }
        let kept = levels - self.scalp;
        if self.use_high_res_features_in_sam && kept < 3 {
            return Err(config_err(
                origin,
                format!(
                    "use_high_res_features_in_sam needs 3 FPN levels after scalp, found {kept}"
                ),
            ));
        }
        let patch_hw = self.image_size / 4;
        if !self.image_size.is_multiple_of(32) || !patch_hw.is_multiple_of(t.window_spec[0]) {
            return Err(config_err(
                origin,
                format!(
                    "image_size: expected a multiple of 32 whose /4 grid is a multiple of window_spec[0]={}, found {}",
                    t.window_spec[0], self.image_size
                ),
            ));
        }
        if self.image_size / self.backbone_stride * self.backbone_stride != self.image_size {
            return Err(config_err(
                origin,
                "image_size must be a multiple of backbone_stride",
            ));
        }
        if !self.neck.d_model.is_multiple_of(8) {
            return Err(config_err(
                origin,
                "neck.d_model must be a multiple of 8 (mask decoder heads)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct YamlFile {
    model: YamlModel,
}

#[derive(Debug, Deserialize)]
struct YamlModel {
    image_encoder: YamlEncoder,
    image_size: Option<usize>,
    backbone_stride: Option<usize>,
    use_high_res_features_in_sam: Option<bool>,
    iou_prediction_use_sigmoid: Option<bool>,
    pred_obj_scores: Option<bool>,
    pred_obj_scores_mlp: Option<bool>,
    directly_add_no_mem_embed: Option<bool>,
    sam_mask_decoder_extra_args: Option<YamlDecoderExtra>,
}

#[derive(Debug, Deserialize)]
struct YamlEncoder {
    scalp: Option<usize>,
    trunk: YamlTrunk,
    neck: YamlNeck,
}

#[derive(Debug, Deserialize)]
struct YamlTrunk {
    #[serde(rename = "_target_")]
    target: Option<String>,
    embed_dim: Option<usize>,
    num_heads: Option<usize>,
    stages: Option<Vec<usize>>,
    global_att_blocks: Option<Vec<usize>>,
    window_spec: Option<Vec<usize>>,
    window_pos_embed_bkg_spatial_size: Option<Vec<usize>>,
    q_pool: Option<usize>,
    q_stride: Option<Vec<usize>>,
    dim_mul: Option<f64>,
    head_mul: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct YamlNeck {
    position_encoding: Option<YamlPosEnc>,
    d_model: Option<usize>,
    backbone_channel_list: Option<Vec<usize>>,
    fpn_top_down_levels: Option<Vec<usize>>,
    fpn_interp_model: Option<String>,
    fuse_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct YamlPosEnc {
    num_pos_feats: Option<usize>,
    temperature: Option<f64>,
    normalize: Option<bool>,
    scale: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct YamlDecoderExtra {
    dynamic_multimask_via_stability: Option<bool>,
    dynamic_multimask_stability_delta: Option<f32>,
    dynamic_multimask_stability_thresh: Option<f32>,
}
