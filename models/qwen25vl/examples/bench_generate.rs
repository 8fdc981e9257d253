//! Generation throughput on a model directory, for `scripts/oracle/qwen25vl/bench_generate.py`,
//! which times transformers' `generate` on the same inputs and prints the ratio.
//!
//! `cargo run --release -p platter-qwen25vl --example bench_generate -- MODEL_DIR IMAGE BATCH NEW_TOKENS REPEATS [group]`
//! prints one JSON line: best wall time of `generate` (greedy, no stop tokens, exactly NEW_TOKENS
//! tokens), tokens/s and the prompt length. By default the batch is BATCH independent prompts (as
//! HF `generate` sees it: BATCH vision encodings and prefills); with `group` it is one prompt
//! sampled BATCH times (one vision encoding and prefill, as in GRPO rollouts).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use candle_core::{DType, Device};
use platter_qwen25vl::{Group, Policy, SamplingParams, load_image};

fn main() -> platter_qwen25vl::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        platter_qwen25vl::Error::Generation(
            "usage: bench_generate MODEL_DIR IMAGE BATCH NEW_TOKENS REPEATS".into(),
        )
    };
    if args.len() != 6 && args.len() != 7 {
        return Err(usage());
    }
    let dir = std::path::Path::new(&args[1]);
    let batch: usize = args[3].parse().map_err(|_| usage())?;
    let new_tokens: usize = args[4].parse().map_err(|_| usage())?;
    let repeats: usize = args[5].parse().map_err(|_| usage())?;
    let device = Device::Cpu;
    let policy = Policy::load(dir, &device, DType::F32)?;
    let processor = policy.processor(dir)?;
    let image = load_image(std::path::Path::new(&args[2]), processor.max_input_pixels)?;
    let text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which item on the plate has the most protein?<|im_end|>\n<|im_start|>assistant\n";
    let prompt = processor.prepare(0, text, &[image])?;
    // Distinct prompts (one group each), as HF generate sees a batch of independent rows.
    let group_mode = args.get(6).map(String::as_str) == Some("group");
    let groups: Vec<Group> = if group_mode {
        vec![Group {
            prompt: &prompt,
            num_samples: batch,
        }]
    } else {
        (0..batch)
            .map(|_| Group {
                prompt: &prompt,
                num_samples: 1,
            })
            .collect()
    };
    let params = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: new_tokens,
        stop_token_ids: vec![],
        seed: 0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        let out = policy.generate(&groups, &params, processor.pad_token_id)?;
        best = best.min(t.elapsed().as_secs_f64());
        if out.iter().flatten().any(|s| s.tokens.len() != new_tokens) {
            return Err(platter_qwen25vl::Error::Generation(
                "a sample ended early".into(),
            ));
        }
    }
    println!(
        "{{\"mode\": \"{}\", \"best_s\": {best:.6}, \"tokens_per_s\": {:.1}, \"prompt_len\": {}, \"batch\": {batch}, \"new_tokens\": {new_tokens}}}",
        if group_mode { "group" } else { "distinct" },
        (batch * new_tokens) as f64 / best,
        prompt.input_ids.len()
    );
    Ok(())
}
