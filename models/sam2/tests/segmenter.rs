//! `Segmenter` over SAM2: best-IoU mask per prompt, bad prompts handled per object. Reference
//! masks come from `tests/fixtures/micro_256/io.safetensors` (`scripts/oracle/sam2/build_fixtures.py`);
//! tolerance ≥ 99.9% of pixels equal to Meta's best-IoU mask thresholded at 0.

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp};
use platter_data::segment::{ObjectPrompt, PromptPoint, Segmenter, merge_masks};
use platter_sam2::{Sam2, Sam2Config};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/micro_256")
        .join(name)
}

fn prompt(b: [f32; 4], p: [f32; 2]) -> ObjectPrompt {
    ObjectPrompt {
        bbox: Some(b),
        points: vec![PromptPoint {
            xy: p,
            positive: true,
        }],
    }
}

#[test]
fn segmenter_keeps_best_iou_mask_and_rejects_only_bad_prompts() {
    let cfg = Sam2Config::from_yaml_file(&fixture("model_config.yaml")).unwrap();
    let sam = Sam2::load(&fixture("weights.safetensors"), cfg, &Device::Cpu).unwrap();
    let image = image::open(fixture("image.png")).unwrap().to_rgb8();
    let io = candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).unwrap();
    // The "batched" fixture case, with a NaN prompt and an inverted, out-of-image copy of the
    // first box inserted.
    let prompts = vec![
        prompt([40.0, 50.0, 150.0, 150.0], [90.0, 100.0]),
        prompt([f32::NAN, 0.0, 10.0, 10.0], [5.0, 5.0]),
        prompt([175.0, 25.0, 290.0, 125.0], [230.0, 70.0]),
        prompt([0.0, 0.0, 295.0, 159.0], [150.0, 80.0]),
        prompt([150.0, 150.0, 40.0, 50.0], [90.0, 100.0]),
        prompt([-30.0, 50.0, 150.0, 400.0], [90.0, 100.0]),
    ];
    assert_eq!(sam.name(), "sam2");
    let masks = sam.segment(&image, &prompts).unwrap();
    assert_eq!(masks.len(), 6);
    assert!(masks[1].is_none());
    let iou = io["batched.iou"].to_vec2::<f32>().unwrap();
    for (k, idx) in [(0usize, 0usize), (1, 2), (2, 3)] {
        let best = (0..3).fold(0, |b, j| if iou[k][j] > iou[k][b] { j } else { b });
        let reference = io["batched.masks"]
            .i((k, best))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let m = masks[idx].as_ref().unwrap();
        assert_eq!((m.width(), m.height()), (296, 160));
        let same = (0..160u32)
            .flat_map(|y| (0..296u32).map(move |x| (x, y)))
            .filter(|&(x, y)| m.get(x, y) == (reference[y as usize][x as usize] > 0.0))
            .count();
        let agree = same as f64 / (296.0 * 160.0);
        assert!(agree >= 0.999, "prompt {idx}: agreement {agree}");
    }
    // The inverted box is normalised to the first prompt, so it yields the same mask.
    assert_eq!(masks[4], masks[0]);
    let c = sam.prompt_counters();
    assert_eq!(
        (
            c.prompts,
            c.rejected_non_finite,
            c.boxes_inverted,
            c.boxes_clipped
        ),
        (6, 1, 1, 1)
    );
    let merged = merge_masks(296, 160, masks.iter().flatten()).unwrap();
    assert!(merged.count() >= masks[0].as_ref().unwrap().count());
    // No prompts: no work, no masks.
    assert!(sam.segment(&image, &[]).unwrap().is_empty());
}
