//! Timing of `set_image` and `predict` (one prompt vs 8 responses × 2 objects), printed as one
//! JSON line. Run in release; `scripts/oracle/sam2/bench.py` runs it next to Meta's PyTorch
//! predictor on the same weights and prints the ratios.
//!
//! `cargo run --release -p platter-sam2 --example bench_sam2 -- CHECKPOINT MODEL_YAML IMAGE [REPEATS]`
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use platter_sam2::{Prompt, Sam2, Sam2Config};

fn best_of<T>(n: usize, mut f: impl FnMut() -> T) -> f64 {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: bench_sam2 CHECKPOINT MODEL_YAML IMAGE [REPEATS]".into());
    }
    let repeats: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let cfg = Sam2Config::from_yaml_file(Path::new(&args[2]))?;
    let sam = Sam2::load(Path::new(&args[1]), cfg, &Device::Cpu)?;
    let image = image::open(&args[3])?.to_rgb8();
    let (w, h) = (image.width() as f32, image.height() as f32);
    // 8 responses × 2 objects: boxes spread over the image, each with its centre point.
    let prompts: Vec<Prompt> = (0..16)
        .map(|i| {
            let (fx, fy) = ((i % 4) as f32 / 4.0, (i / 4) as f32 / 4.0);
            let b = [fx * w, fy * h, (fx + 0.25) * w - 1.0, (fy + 0.25) * h - 1.0];
            Prompt::new()
                .with_box(b)
                .with_point((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0, true)
        })
        .collect();
    let emb = sam.set_image(&image)?;
    let set_image = best_of(repeats, || sam.set_image(&image).map(|_| ()));
    let predict_1 = best_of(repeats, || {
        sam.predict(&emb, &prompts[..1], true).map(|_| ())
    });
    let predict_16 = best_of(repeats, || sam.predict(&emb, &prompts, true).map(|_| ()));
    let masks_1 = best_of(repeats, || {
        sam.segment_prompts(&image, &prompts[..1]).map(|_| ())
    });
    let masks_16 = best_of(repeats, || {
        sam.segment_prompts(&image, &prompts).map(|_| ())
    });
    println!(
        "{{\"set_image_s\": {set_image:.4}, \"predict_1_s\": {predict_1:.4}, \"predict_16_s\": {predict_16:.4}, \"masks_1_s\": {masks_1:.4}, \"masks_16_s\": {masks_16:.4}}}"
    );
    Ok(())
}
