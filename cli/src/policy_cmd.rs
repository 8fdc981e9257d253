//! `platter debug policy-logits`: full-sequence logits of one templated prompt with one image,
//! for comparison against another implementation (e.g. transformers).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{DType, Device};
use platter_qwen25vl::{Policy, PromptBatch, load_image};

/// Arguments of `platter debug policy-logits`.
#[derive(Debug, clap::Args)]
pub struct PolicyLogitsArgs {
    /// HF-format model directory (config.json, model.safetensors or shards, tokenizer.json,
    /// preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The image (PNG or JPEG).
    #[arg(long)]
    pub image: PathBuf,
    /// The fully templated prompt holding one `<|vision_start|><|image_pad|><|vision_end|>`; the
    /// placeholder is expanded as HF's processor does.
    #[arg(long)]
    pub text: String,
    /// Output safetensors: `input_ids` [1, L] i64 and `logits` [1, L, V] f32.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the model in f32 on CPU and writes the logits.
pub fn policy_logits(args: PolicyLogitsArgs) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let policy = Policy::load(&args.model, &device, DType::F32)
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    let processor = policy.processor(&args.model)?;
    let image = load_image(&args.image, processor.max_input_pixels)?;
    let prompt = processor.prepare(0, &args.text, &[image])?;
    let batch = PromptBatch::new(&[&prompt], processor.pad_token_id, &device)?;
    let logits = policy.forward_logits(&batch)?;
    let input_ids = batch.input_ids.to_dtype(DType::I64)?;
    let (l, v) = (logits.dim(1)?, logits.dim(2)?);
    let tensors = HashMap::from([
        ("input_ids".to_string(), input_ids),
        ("logits".to_string(), logits),
    ]);
    candle_core::safetensors::save(&tensors, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    tracing::info!(tokens = l, vocab = v, out = %args.out.display(), "wrote policy logits");
    Ok(())
}
