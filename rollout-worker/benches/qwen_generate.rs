//! Group generation throughput of the Qwen2.5-VL engine on the built-in tiny SFT policy
//! (`assets/tiny-sft`, 224 px input): G = 8 responses of at most 160 tokens per group, the
//! setup of `platter run`'s tiny configuration.
//!
//! `cargo bench -p platter-rollout --bench qwen_generate` (release) or with `--profile dev`.
//! Prints, per group, generated tokens, wall time and tokens/s, then the totals.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use platter_rollout::{CancelFlag, GenerationRequest, QwenEngine};

const GROUPS: u64 = 6;
const GROUP_SIZE: usize = 8;
const MAX_TOKENS: usize = 160;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let engine = QwenEngine::load(&root.join("assets/tiny-sft"), &Device::Cpu, DType::F32)
        .expect("loading assets/tiny-sft");
    let image = image::open(root.join("models/qwen25vl/tests/fixtures/images/img0.png"))
        .expect("reading the fixture image")
        .to_rgb8();
    let request = |seed| GenerationRequest {
        prompt_text: platter_rl::prompt::user_prompt(
            "which food is the dessert",
            platter_rl::prompt::DEFAULT_ANSWER_EXAMPLE,
        ),
        image: image.clone(),
        image_size: 224,
        group_size: GROUP_SIZE,
        max_response_tokens: MAX_TOKENS,
        temperature: 1.0,
        top_p: 1.0,
        seed,
    };
    let prompt_tokens = engine.prepare_prompt(&request(0)).unwrap().input_ids.len();
    println!(
        "assets/tiny-sft, G={GROUP_SIZE}, max {MAX_TOKENS} tokens, prompt {prompt_tokens} tokens, \
         cpu f32, {} candle threads",
        candle_core::utils::get_num_threads()
    );
    // Warm-up group (allocations, caches), not counted.
    engine
        .generate_group(&request(999), &CancelFlag::default())
        .unwrap();
    let (mut tokens, mut seconds) = (0usize, 0f64);
    for seed in 0..GROUPS {
        let started = Instant::now();
        let group = engine
            .generate_group(&request(seed), &CancelFlag::default())
            .unwrap()
            .expect("not cancelled");
        let s = started.elapsed().as_secs_f64();
        let n: usize = group.responses.iter().map(|r| r.token_ids.len()).sum();
        let stopped = group
            .responses
            .iter()
            .filter(|r| r.finish == platter_rollout::FinishReason::Stop)
            .count();
        println!(
            "group {seed}: {n} tokens ({stopped}/{GROUP_SIZE} stopped), {s:.3} s, {:.0} tokens/s",
            n as f64 / s
        );
        tokens += n;
        seconds += s;
    }
    println!(
        "total: {tokens} tokens in {seconds:.3} s over {GROUPS} groups: {:.0} tokens/s, {:.2} groups/s",
        tokens as f64 / seconds,
        GROUPS as f64 / seconds
    );
}
