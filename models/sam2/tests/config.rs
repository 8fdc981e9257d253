//! Built-in configs, Meta YAML parsing and the checkpoint name/shape check.
//!
//! The tensor counts below come from instantiating Meta's `configs/sam2.1/sam2.1_hiera_*.yaml`
//! with `sam2` 1.1.0 and counting the state-dict entries the image predictor uses
//! (`image_encoder.*`, `sam_mask_decoder.*`, `sam_prompt_encoder.*` without the unused
//! `mask_downscaling`, and `no_mem_embed`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use platter_sam2::{Error, OfficialSize, Sam2, Sam2Config};

#[test]
fn official_configs_need_exactly_metas_tensors() {
    for (size, n_tensors, n_params) in [
        (OfficialSize::Tiny, 301, 31_436_293usize),
        (OfficialSize::Small, 349, 38_534_149),
        (OfficialSize::BasePlus, 445, 73_323_973),
        (OfficialSize::Large, 733, 216_920_437),
    ] {
        let cfg = Sam2Config::official(size);
        cfg.validate("test").unwrap();
        let expected = Sam2::expected_tensors(&cfg).unwrap();
        let params: usize = expected
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!((expected.len(), params), (n_tensors, n_params), "{size:?}");
    }
}

const TINY_YAML: &str = r#"
# @package _global_
model:
  _target_: sam2.modeling.sam2_base.SAM2Base
  image_encoder:
    _target_: sam2.modeling.backbones.image_encoder.ImageEncoder
    scalp: 1
    trunk:
      _target_: sam2.modeling.backbones.hieradet.Hiera
      embed_dim: 96
      num_heads: 1
      stages: [1, 2, 7, 2]
      global_att_blocks: [5, 7, 9]
      window_pos_embed_bkg_spatial_size: [7, 7]
    neck:
      _target_: sam2.modeling.backbones.image_encoder.FpnNeck
      position_encoding:
        _target_: sam2.modeling.position_encoding.PositionEmbeddingSine
        num_pos_feats: 256
        normalize: true
        scale: null
        temperature: 10000
      d_model: 256
      backbone_channel_list: [768, 384, 192, 96]
      fpn_top_down_levels: [2, 3]  # output level 0 and 1 directly use the backbone features
      fpn_interp_model: nearest
  memory_attention:
    _target_: sam2.modeling.memory_attention.MemoryAttention
    d_model: 256
    num_layers: 4
  num_maskmem: 7
  image_size: 1024
  sigmoid_scale_for_mem_enc: 20.0
  directly_add_no_mem_embed: true
  no_obj_embed_spatial: true
  use_high_res_features_in_sam: true
  multimask_output_in_sam: true
  iou_prediction_use_sigmoid: True
  pred_obj_scores: true
  pred_obj_scores_mlp: true
  fixed_no_obj_ptr: true
  compile_image_encoder: False
"#;

#[test]
fn meta_yaml_parses_to_the_builtin_config() {
    let cfg = Sam2Config::from_yaml_str(TINY_YAML, "tiny.yaml").unwrap();
    assert_eq!(cfg, Sam2Config::official(OfficialSize::Tiny));
    // Base+ relies on Hiera's constructor defaults for stages, windows and global blocks.
    let bplus = TINY_YAML
        .replace("embed_dim: 96", "embed_dim: 112")
        .replace("num_heads: 1", "num_heads: 2")
        .replace("      stages: [1, 2, 7, 2]\n", "")
        .replace("      global_att_blocks: [5, 7, 9]\n", "")
        .replace("      window_pos_embed_bkg_spatial_size: [7, 7]\n", "")
        .replace("[768, 384, 192, 96]", "[896, 448, 224, 112]");
    let cfg = Sam2Config::from_yaml_str(&bplus, "b+.yaml").unwrap();
    assert_eq!(cfg, Sam2Config::official(OfficialSize::BasePlus));
}

#[test]
fn bad_yaml_names_the_key() {
    let wrong = TINY_YAML.replace("[768, 384, 192, 96]", "[768, 384, 192, 64]");
    let err = Sam2Config::from_yaml_str(&wrong, "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("backbone_channel_list") && err.contains("x.yaml"),
        "{err}"
    );
    let wrong = TINY_YAML.replace("fpn_interp_model: nearest", "fpn_interp_model: cubic");
    let err = Sam2Config::from_yaml_str(&wrong, "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fpn_interp_model") && err.contains("cubic"),
        "{err}"
    );
    assert!(Sam2Config::from_yaml_str("model: 3", "x.yaml").is_err());
}

#[test]
fn checkpoint_errors_list_every_mismatch() {
    let cfg = Sam2Config::from_yaml_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/micro_256/model_config.yaml"),
    )
    .unwrap();
    let mut tensors: HashMap<String, Tensor> = Sam2::expected_tensors(&cfg)
        .unwrap()
        .into_iter()
        .map(|(n, s)| (n, Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap()))
        .collect();
    // A complete set of correctly shaped tensors builds.
    Sam2::from_tensors(tensors.clone(), cfg.clone(), &Device::Cpu, Path::new("ok")).unwrap();
    tensors.remove("no_mem_embed");
    tensors.remove("sam_mask_decoder.iou_token.weight");
    tensors.insert(
        "image_encoder.trunk.pos_embed".into(),
        Tensor::zeros((1, 16, 14, 14), DType::F32, &Device::Cpu).unwrap(),
    );
    match Sam2::from_tensors(tensors, cfg, &Device::Cpu, Path::new("bad.pt")) {
        Err(Error::CheckpointMismatch { path, problems }) => {
            assert_eq!(path, Path::new("bad.pt"));
            assert_eq!(problems.len(), 3, "{problems:#?}");
            let all = problems.join("\n");
            assert!(all.contains("missing tensor no_mem_embed"), "{all}");
            assert!(
                all.contains("missing tensor sam_mask_decoder.iou_token.weight"),
                "{all}"
            );
            assert!(all.contains("image_encoder.trunk.pos_embed: expected shape [1, 16, 7, 7], found [1, 16, 14, 14]"), "{all}");
        }
        other => panic!("expected a mismatch error, got {other:?}"),
    }
}

#[test]
fn unreadable_checkpoints_are_errors() {
    let dir = std::env::temp_dir().join(format!("platter-sam2-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pt");
    std::fs::write(&junk, b"not a pickle").unwrap();
    assert!(matches!(
        platter_sam2::read_checkpoint(&junk, &Device::Cpu),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        platter_sam2::read_checkpoint(&dir.join("none.pt"), &Device::Cpu),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn official_sizes_from_names() {
    assert_eq!(
        OfficialSize::parse("base_plus"),
        Some(OfficialSize::BasePlus)
    );
    assert_eq!(OfficialSize::parse("L"), Some(OfficialSize::Large));
    assert_eq!(OfficialSize::parse("huge"), None);
    let f = |n: &str| OfficialSize::from_file_name(Path::new(n));
    assert_eq!(
        f("/ckpt/sam2.1_hiera_base_plus.pt"),
        Some(OfficialSize::BasePlus)
    );
    assert_eq!(f("sam2.1_hiera_tiny.pt"), Some(OfficialSize::Tiny));
    assert_eq!(
        f("sam2.1_hiera_small.safetensors"),
        Some(OfficialSize::Small)
    );
    assert_eq!(f("sam2.1_hiera_large.pt"), Some(OfficialSize::Large));
    assert_eq!(f("weights.pt"), None);
}
