//! Learner throughput (forward + backward + grad clip + AdamW of one DAPO update) on a model
//! directory, for `scripts/oracle/learner/bench_train.py`, which times PyTorch on the same model
//! and inputs in the same run and prints the ratio.
//!
//! `cargo run --release -p platter-learner --example bench_train -- MODEL_DIR IMAGE BATCH RESPONSE_LEN REPEATS [distinct|group]`
//!
//! `distinct` (default): BATCH separately prepared prompts, the work PyTorch does. `group`: one
//! prompt shared by the BATCH responses, the shape of a GRPO group, whose prompt the learner
//! runs once.
//!
//! The batch is BATCH copies of the fixture prompt with IMAGE, each followed by RESPONSE_LEN
//! response tokens (ids `10 + (7 i + 13 j) mod 490`, the same formula as the Python side), one
//! micro-batch, advantage 1. Old log-probs are computed once before timing. Prints one JSON
//! line: the best of REPEATS wall times of `train_step` and tokens/s over all `BATCH × (prompt +
//! response)` positions.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use platter_learner::{
    AdamW, AdamWConfig, Algorithm, InProcessGroup, PolicyModel, QwenPolicy, QwenSequence,
    SkipCounter, TrainItem, UpdateConfig, frozen_logprobs, train_step,
};
use platter_qwen25vl::load_image;
use platter_rl::DapoLoss;

const PROMPT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Which item on the plate has the most protein?<|im_end|>\n<|im_start|>assistant\n";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_train MODEL_DIR IMAGE BATCH RESPONSE_LEN REPEATS [distinct|group]";
    let shared = match args.get(6).map(String::as_str) {
        _ if !(6..=7).contains(&args.len()) => return Err(usage.into()),
        None | Some("distinct") => false,
        Some("group") => true,
        Some(_) => return Err(usage.into()),
    };
    let dir = Path::new(&args[1]);
    let batch: usize = args[3].parse().map_err(|_| usage)?;
    let resp_len: usize = args[4].parse().map_err(|_| usage)?;
    let repeats: usize = args[5].parse().map_err(|_| usage)?;
    let device = Device::Cpu;
    let model = QwenPolicy::load_trainable(dir, &device, DType::F32, false)?;
    let processor = model.policy().processor(dir)?;
    let image = load_image(Path::new(&args[2]), processor.max_input_pixels)?;
    let mut items = Vec::with_capacity(batch);
    let one = std::sync::Arc::new(processor.prepare(0, PROMPT, std::slice::from_ref(&image))?);
    for i in 0..batch {
        let prompt = if shared {
            std::sync::Arc::clone(&one)
        } else {
            std::sync::Arc::new(processor.prepare(i, PROMPT, std::slice::from_ref(&image))?)
        };
        let response = (0..resp_len)
            .map(|j| 10 + ((7 * i + 13 * j) % 490) as u32)
            .collect();
        items.push(TrainItem {
            id: format!("bench/{i}"),
            sequence: QwenSequence { prompt, response },
            advantage: 1.0,
        });
    }
    let prompt_len = items
        .first()
        .map(|i| i.sequence.prompt.input_ids.len())
        .unwrap_or(0);
    let mut adam = AdamW::new(
        model.trainable(),
        AdamWConfig {
            lr: 1e-5,
            ..AdamWConfig::default()
        },
    )?;
    let cfg = UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss::default()),
        mini_batches_per_step: 1,
        micro_batch_size: batch,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    };
    let group = InProcessGroup::new(1, Duration::from_secs(600)).remove(0);
    let t = Instant::now();
    let frozen = frozen_logprobs(&model, None, &items, batch)?;
    let forward_s = t.elapsed().as_secs_f64();
    // Forward + backward alone (no optimizer), to split the update's time.
    let seqs: Vec<&QwenSequence> = items.iter().map(|i| &i.sequence).collect();
    let mut fwd_bwd_s = f64::INFINITY;
    for _ in 0..repeats.min(2) {
        let t = Instant::now();
        let lp = model.response_logprobs(&seqs, false)?;
        (lp.logp * lp.mask)?.sum_all()?.backward()?;
        fwd_bwd_s = fwd_bwd_s.min(t.elapsed().as_secs_f64());
    }
    let mut skips = SkipCounter::default();
    let mut best = f64::INFINITY;
    // One untimed warm-up update (allocator, first-touch of optimizer state).
    for r in 0..=repeats {
        let t = Instant::now();
        train_step(&model, &mut adam, &group, &items, &frozen, &cfg, &mut skips)?;
        if r > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    let tokens = batch * (prompt_len + resp_len);
    println!(
        "{{\"best_s\": {best:.6}, \"tokens_per_s\": {:.1}, \"tokens\": {tokens}, \"prompt_len\": {prompt_len}, \"params\": {}, \"forward_s\": {forward_s:.6}, \"forward_backward_s\": {fwd_bwd_s:.6}}}",
        tokens as f64 / best,
        model
            .trainable()
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>()
    );
    Ok(())
}
