//! Bad inputs give errors that say what is wrong, never panics.

mod common;

use common::*;
use platter_qwen25vl::{Error, load_image};

#[test]
fn placeholder_count_must_match_images() {
    let (_, processor) = load_policy();
    let c = cases();
    let img = load_image(&c.images[0], processor.max_input_pixels).unwrap();
    let err = processor
        .prepare(3, &c.prompts[0], &[img.clone(), img])
        .unwrap_err();
    assert!(matches!(err, Error::Prompt { index: 3, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("1 `<|image_pad|>` placeholder(s) in the text but 2 image(s)"),
        "{err}"
    );
    let err = processor
        .prepare(
            0,
            "no image here",
            &[load_image(&c.images[1], 1 << 30).unwrap()],
        )
        .unwrap_err();
    assert!(err.to_string().contains("0 `<|image_pad|>`"), "{err}");
}

#[test]
fn prompt_longer_than_context_is_rejected() {
    let (_, mut processor) = load_policy();
    let c = cases();
    processor.max_prompt_len = 50; // the 224x224 image alone expands to 64 tokens
    let img = load_image(&c.images[0], processor.max_input_pixels).unwrap();
    let err = processor.prepare(0, &c.prompts[0], &[img]).unwrap_err();
    assert!(
        err.to_string().contains("longer than the context of 50"),
        "{err}"
    );
}

#[test]
fn undecodable_and_oversized_images_are_rejected() {
    let dir = std::env::temp_dir().join(format!("platter-qwen25vl-badimg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let err = load_image(&junk, 1 << 30).unwrap_err();
    assert!(
        matches!(err, Error::Image { .. }) && err.to_string().contains("junk.png"),
        "{err}"
    );
    let err = load_image(&dir.join("absent.png"), 1 << 30).unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
    let err = load_image(&cases().images[0], 100 * 100).unwrap_err();
    assert!(
        err.to_string()
            .contains("224x224 = 50176 pixels is over the limit of 10000"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn extreme_aspect_ratio_is_rejected() {
    let (_, processor) = load_policy();
    let img = image::DynamicImage::new_rgb8(2000, 8);
    let err = processor.process_image(&img).unwrap_err();
    assert!(err.to_string().contains("aspect ratio"), "{err}");
}

#[test]
fn empty_prompt_is_rejected_before_the_model_runs() {
    let (policy, processor) = load_policy();
    let empty = processor.prepare(0, "", &[]).unwrap();
    let err =
        platter_qwen25vl::PromptBatch::new(&[&empty], processor.pad_token_id, policy.device())
            .unwrap_err();
    assert!(err.to_string().contains("empty prompt"), "{err}");
    let group = [platter_qwen25vl::Group {
        prompt: &empty,
        num_samples: 2,
    }];
    let params = platter_qwen25vl::SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 4,
        stop_token_ids: vec![],
        seed: 0,
    };
    assert!(
        policy
            .generate(&group, &params, processor.pad_token_id)
            .is_err()
    );
}
