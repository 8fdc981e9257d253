//! Parity with Meta's `sam2` 1.1.0 on a reduced random-weight SAM2.1 model.
//!
//! Fixtures: `tests/fixtures/micro_256/`, written by `scripts/oracle/sam2/build_fixtures.py`
//! (rerun it with `/root/venvs/oracle/bin/python scripts/oracle/sam2/build_fixtures.py` from the
//! repo root). Tolerances: preprocessed input and features ≤ 1e-4 abs (f32 reordering only;
//! measured ≤ 4e-6),
//! IoU ≤ 1e-3 abs, object score ≤ 1e-3, low-res and full-resolution mask logits ≤ 1e-2 abs and
//! ≥ 99.9% of binarised pixels equal.
#![allow(clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use platter_sam2::{Prompt, Sam2, Sam2Config, sine_position_encoding};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/micro_256")
        .join(name)
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).expect("io.safetensors")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn binary_agreement(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let same = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| (**x > 0.0) == (**y > 0.0))
        .count();
    same as f64 / a.len() as f64
}

fn model() -> Sam2 {
    let cfg = Sam2Config::from_yaml_file(&fixture("model_config.yaml")).expect("yaml");
    Sam2::load(&fixture("weights.safetensors"), cfg, &Device::Cpu).expect("load")
}

fn image() -> image::RgbImage {
    image::open(fixture("image.png"))
        .expect("image.png")
        .to_rgb8()
}

#[test]
fn encoder_matches_meta() {
    let sam = model();
    let io = io();
    let input = sam.preprocess(&image()).unwrap();
    let d_in = max_abs(&input, &io["input"]);
    // Features are compared from Meta's own input so resize error does not mix in.
    let out = sam.encode(&io["input"]).unwrap();
    let mut report = vec![("input".to_string(), d_in)];
    for (i, t) in out.trunk.iter().enumerate() {
        report.push((format!("trunk.{i}"), max_abs(t, &io[&format!("trunk.{i}")])));
    }
    report.push(("neck.2".into(), max_abs(&out.fpn[2], &io["neck.2"])));
    report.push((
        "image_embed".into(),
        max_abs(&out.image_embed, &io["image_embed"]),
    ));
    let (s0, s1) = out.high_res.as_ref().unwrap();
    report.push((
        "high_res_feats.0".into(),
        max_abs(s0, &io["high_res_feats.0"]),
    ));
    report.push((
        "high_res_feats.1".into(),
        max_abs(s1, &io["high_res_feats.1"]),
    ));
    let pos = sine_position_encoding(&sam.config().neck, 16, 16, &Device::Cpu).unwrap();
    report.push(("neck_pos.2".into(), max_abs(&pos, &io["neck_pos.2"])));
    // Our full path (our preprocessing) against Meta's embedding.
    let full = sam.set_image(&image()).unwrap();
    report.push((
        "image_embed (own preprocessing)".into(),
        max_abs(&full.image_embed, &io["image_embed"]),
    ));
    for (name, d) in &report {
        eprintln!("{name}: max |diff| = {d:.3e}");
        assert!(*d <= 1e-4, "{name}: max |diff| {d} > 1e-4");
    }
    // The coarsest level is dropped by scalp=1 but still computed by the neck.
    assert_eq!(out.fpn.len(), 3);
}

fn case_prompts(case: &serde_json::Value) -> Vec<Prompt> {
    let boxes = case.get("box").and_then(|v| v.as_array());
    let points = case.get("points").and_then(|v| v.as_array());
    let labels = case.get("labels").and_then(|v| v.as_array());
    let n = boxes.map(|b| b.len()).or(points.map(|p| p.len())).unwrap();
    (0..n)
        .map(|i| {
            let mut p = Prompt::new();
            if let Some(b) = boxes {
                let v: Vec<f32> = b[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                p = p.with_box([v[0], v[1], v[2], v[3]]);
            }
            if let (Some(pts), Some(lbl)) = (points, labels) {
                for (pt, l) in pts[i]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(lbl[i].as_array().unwrap())
                {
                    let xy = pt.as_array().unwrap();
                    p = p.with_point(
                        xy[0].as_f64().unwrap() as f32,
                        xy[1].as_f64().unwrap() as f32,
                        l.as_i64().unwrap() == 1,
                    );
                }
            }
            p
        })
        .collect()
}

#[test]
fn decoder_matches_meta_for_every_prompt_kind() {
    let sam = model();
    let io = io();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("prompts.json")).unwrap()).unwrap();
    let emb = sam.set_image(&image()).unwrap();
    assert_eq!(emb.orig_hw(), (160, 296));
    for case in spec["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let multimask = case["multimask"].as_bool().unwrap();
        let prompts = case_prompts(case);
        let preds = sam.predict(&emb, &prompts, multimask).unwrap();
        let preds: Vec<_> = preds.into_iter().map(|p| p.unwrap()).collect();
        let iou: Vec<f32> = preds.iter().flat_map(|p| p.iou_scores.clone()).collect();
        let iou = Tensor::from_vec(iou, io[&format!("{name}.iou")].dims(), &Device::Cpu).unwrap();
        let obj: Vec<f32> = preds.iter().map(|p| p.object_score_logit).collect();
        let obj = Tensor::from_vec(obj, (preds.len(), 1), &Device::Cpu).unwrap();
        let low = Tensor::stack(
            &preds
                .iter()
                .map(|p| p.low_res_logits.clone())
                .collect::<Vec<_>>(),
            0,
        )
        .unwrap();
        let masks = sam.upscale_to_original(&low, emb.orig_hw()).unwrap();
        let low_clamped = low.clamp(-32f32, 32f32).unwrap();
        let d_iou = max_abs(&iou, &io[&format!("{name}.iou")]);
        let d_obj = max_abs(&obj, &io[&format!("{name}.obj_score")]);
        let d_low = max_abs(&low_clamped, &io[&format!("{name}.low_res")]);
        let d_mask = max_abs(&masks, &io[&format!("{name}.masks")]);
        let agree = binary_agreement(&masks, &io[&format!("{name}.masks")]);
        eprintln!(
            "{name}: iou {d_iou:.2e}, obj {d_obj:.2e}, low-res logits {d_low:.2e}, mask logits {d_mask:.2e}, binary agreement {:.5}%",
            agree * 100.0
        );
        assert!(d_iou <= 1e-3, "{name}: iou diff {d_iou}");
        assert!(d_obj <= 1e-3, "{name}: object score diff {d_obj}");
        assert!(d_low <= 1e-2, "{name}: low-res diff {d_low}");
        assert!(d_mask <= 1e-2, "{name}: mask diff {d_mask}");
        assert!(agree >= 0.999, "{name}: binary agreement {agree}");
    }
}

#[test]
fn pt_checkpoint_loads_the_same_weights() {
    let pt = platter_sam2::read_checkpoint(&fixture("weights.pt"), &Device::Cpu).unwrap();
    let st = platter_sam2::read_checkpoint(&fixture("weights.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(pt.len(), st.len());
    for (k, v) in &st {
        assert_eq!(max_abs(v, &pt[k]), 0.0, "{k}");
    }
    let cfg = Sam2Config::from_yaml_file(&fixture("model_config.yaml")).unwrap();
    let sam = Sam2::load(&fixture("weights.pt"), cfg, &Device::Cpu).unwrap();
    let emb = sam.set_image(&image()).unwrap();
    assert!(max_abs(&emb.image_embed, &io()["image_embed"]) <= 1e-4);
}

#[test]
fn mixed_prompt_kinds_in_one_call_match_separate_calls() {
    // Prompts with different token counts are grouped into separate batches inside one call;
    // each must still equal Meta's single-prompt result.
    let sam = model();
    let io = io();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("prompts.json")).unwrap()).unwrap();
    let cases: Vec<&serde_json::Value> = spec["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| ["box_point", "box_only", "points_neg"].contains(&c["name"].as_str().unwrap()))
        .collect();
    let prompts: Vec<Prompt> = cases.iter().flat_map(|c| case_prompts(c)).collect();
    let emb = sam.set_image(&image()).unwrap();
    let preds = sam.predict(&emb, &prompts, true).unwrap();
    for (case, pred) in cases.iter().zip(preds) {
        let name = case["name"].as_str().unwrap();
        let pred = pred.unwrap();
        let iou = Tensor::from_vec(pred.iou_scores.clone(), (1, 3), &Device::Cpu).unwrap();
        assert!(max_abs(&iou, &io[&format!("{name}.iou")]) <= 1e-3, "{name}");
        let masks = sam
            .upscale_to_original(&pred.low_res_logits.unsqueeze(0).unwrap(), emb.orig_hw())
            .unwrap();
        assert!(
            max_abs(&masks, &io[&format!("{name}.masks")]) <= 1e-2,
            "{name}"
        );
    }
}
