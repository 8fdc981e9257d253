//! `platter debug score` and `platter debug loss`: one piece of the method each, with METHOD's
//! defaults, so other implementations can be compared through files.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};
use clap::{Args, ValueEnum};
use platter_rl::reward::{GroundTruthObject, RewardConfig, score_response};
use platter_rl::{DapoLoss, GrpoLoss, PolicyLossInput};
use serde::Deserialize;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// JSONL file; each line `{"response": "...", "ground_truth": [{"bbox_2d": [..], "point_2d": [..]}]}`.
    #[arg(long)]
    cases: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    response: String,
    ground_truth: Vec<GroundTruthObject>,
}

/// Prints one JSON line per case with every reward term (overlong shaping not applied). A
/// malformed line prints `{"line": N, "error": "..."}` in its place (and on stderr), the
/// other lines still print, and the command exits non-zero at the end.
pub fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.cases)
        .with_context(|| format!("cannot open cases file {}", args.cases.display()))?;
    let cfg = RewardConfig::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| format!("reading {}", args.cases.display()))?;
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Case>(&text) {
            Ok(case) => {
                let r = score_response(&case.response, &case.ground_truth, &cfg);
                let row = serde_json::json!({
                    "think_format": r.think_format,
                    "answer_format": r.answer_format,
                    "non_repeat": r.non_repeat,
                    "seg_iou": r.seg_iou,
                    "seg_l1": r.seg_l1,
                    "seg_point": r.seg_point,
                    "seg": r.seg,
                    "total": r.total,
                });
                writeln!(out, "{row}")?;
            }
            Err(e) => {
                failed += 1;
                let msg = format!("{}: line {line_no}: {e}", args.cases.display());
                tracing::error!("{msg}");
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"line": line_no, "error": msg})
                )?;
            }
        }
    }
    out.flush()?;
    if failed > 0 {
        bail!("{failed} malformed line(s) in {}", args.cases.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Algo {
    Dapo,
    Grpo,
}

#[derive(Debug, Args)]
pub struct LossArgs {
    /// Which loss (default constants: DAPO ε_low 0.2 / ε_high 0.28; GRPO ε 0.2, β 0.01).
    #[arg(long, value_enum)]
    algo: Algo,
    /// safetensors with f32 `logp`, `old_logp`, `ref_logp` (GRPO) [B,T], `advantages` [B], `mask` [B,T].
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `loss` (scalar) and `grad_logp` [B,T] = d loss / d logp.
    #[arg(long)]
    out: PathBuf,
}

/// Computes the loss of one batch that is the whole global batch (DAPO's T = all response
/// tokens in the file, GRPO's G = all sequences) and its gradient with respect to `logp`.
pub fn loss(args: LossArgs) -> anyhow::Result<()> {
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&args.input, &Device::Cpu)
            .with_context(|| format!("cannot read safetensors {}", args.input.display()))?;
    let get = |name: &str| -> anyhow::Result<Tensor> {
        tensors
            .get(name)
            .with_context(|| {
                let mut have: Vec<_> = tensors.keys().cloned().collect();
                have.sort();
                format!(
                    "{}: missing tensor `{name}` (found {have:?})",
                    args.input.display()
                )
            })?
            .to_dtype(DType::F32)
            .map_err(Into::into)
    };
    let logp = Var::from_tensor(&get("logp")?)?;
    let old = get("old_logp")?;
    let adv = get("advantages")?;
    let mask = get("mask")?;
    let ref_logp = match args.algo {
        Algo::Grpo => Some(get("ref_logp")?),
        Algo::Dapo => None,
    };
    let input = PolicyLossInput {
        logp: logp.as_tensor(),
        old_logp: &old,
        advantages: &adv,
        mask: &mask,
        ref_logp: ref_logp.as_ref(),
        entropy: None,
    };
    let out = match args.algo {
        Algo::Dapo => {
            let tokens = f64::from(
                mask.gt(0f32)?
                    .to_dtype(DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()?,
            );
            if tokens == 0.0 {
                bail!("{}: `mask` selects no response token", args.input.display());
            }
            DapoLoss::default().compute(&input, tokens)?
        }
        Algo::Grpo => {
            let sequences = logp.dims().first().copied().unwrap_or(0);
            if sequences == 0 {
                bail!("{}: `logp` has no sequence", args.input.display());
            }
            GrpoLoss::default().compute(&input, sequences as f64)?
        }
    };
    let grads = out.loss.backward()?;
    let grad = match grads.get(logp.as_tensor()) {
        Some(g) => g.clone(),
        None => logp.zeros_like()?,
    };
    let result = HashMap::from([
        ("loss".to_string(), out.loss.detach()),
        ("grad_logp".to_string(), grad),
    ]);
    candle_core::safetensors::save(&result, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    tracing::info!(
        loss = out.diagnostics.loss,
        tokens = out.diagnostics.tokens,
        "wrote {}",
        args.out.display()
    );
    Ok(())
}
