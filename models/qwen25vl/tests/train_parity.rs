//! Differentiable forward: response log-probs, entropy and weight gradients vs PyTorch.
//! Fixtures: `scripts/oracle/qwen25vl/build_fixtures.py`. Tolerances: log-probs and entropy max abs
//! diff <= 1e-4; gradients max|ours - torch| / max|torch| <= 1e-3 per tensor.

// The measured differences are printed so test logs record the parity achieved.
#![allow(clippy::print_stderr)]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use platter_qwen25vl::{GroupedResponseBatch, Policy, ResponseBatch, TokenLogProbs};

fn setup() -> (Policy, platter_qwen25vl::PolicyVars, ResponseBatch) {
    let (policy, vars) = Policy::load_trainable(&tiny(), &Device::Cpu, DType::F32).unwrap();
    let processor = policy.processor(&tiny()).unwrap();
    let c = cases();
    let prompts = prompts(&processor, &c);
    let im_end = processor.token_id("<|im_end|>").unwrap();
    let responses: Vec<Vec<u32>> = c
        .responses
        .iter()
        .map(|r| {
            let mut ids = processor.encode(r).unwrap();
            ids.push(im_end);
            ids
        })
        .collect();
    let refs: Vec<_> = prompts.iter().collect();
    let batch = ResponseBatch::new(
        &refs,
        &responses,
        processor.pad_token_id,
        4096,
        &Device::Cpu,
    )
    .unwrap();
    (policy, vars, batch)
}

/// The fixture's loss: masked mean NLL minus 0.01 x masked mean entropy.
fn loss(out: &TokenLogProbs) -> Tensor {
    let n = out.mask.sum_all().unwrap();
    let nll = (out.logp.clone() * &out.mask)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        .div(&n)
        .unwrap();
    let ent = (out.entropy.clone() * &out.mask)
        .unwrap()
        .sum_all()
        .unwrap()
        .div(&n)
        .unwrap();
    (nll - (ent * 0.01).unwrap()).unwrap()
}

#[test]
fn logprobs_entropy_and_gradients_match_torch() {
    let (policy, vars, batch) = setup();
    let p = parity();
    assert_eq!(
        to_i64(&batch.response_ids),
        to_i64(&p["response_ids"]),
        "response tokenisation"
    );
    let out = policy.response_logprobs(&batch, false).unwrap();
    let mask = to_f32(&out.mask);
    let masked = |v: Vec<f32>| -> Vec<f32> { v.iter().zip(&mask).map(|(x, m)| x * m).collect() };
    let lp = max_abs_diff(
        &masked(to_f32(&out.logp)),
        &masked(to_f32(&p["response_logp"])),
    );
    let en = max_abs_diff(
        &masked(to_f32(&out.entropy)),
        &masked(to_f32(&p["response_entropy"])),
    );
    let l = loss(&out);
    let ld = (to_f32(&l)[0] - to_f32(&p["loss"])[0]).abs();
    eprintln!("logp max abs diff {lp:.3e}; entropy {en:.3e}; loss {ld:.3e}");
    assert!(lp <= 1e-4 && en <= 1e-4 && ld <= 1e-5);
    let grads = l.backward().unwrap();
    let mut checked = 0;
    for (name, var) in &vars.vars {
        let Some(want) = p.get(&format!("grad.{name}")) else {
            continue;
        };
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let r = rel_diff(&to_f32(got), &to_f32(want));
        eprintln!("grad {name}: rel diff {r:.3e}");
        assert!(r <= 1e-3, "gradient of {name} differs: rel {r}");
        checked += 1;
    }
    assert_eq!(checked, 15, "every fixture gradient was compared");
}

#[test]
fn every_trainable_tensor_gets_a_finite_nonzero_gradient() {
    let (policy, vars, batch) = setup();
    let grads = loss(&policy.response_logprobs(&batch, false).unwrap())
        .backward()
        .unwrap();
    let mut bad = Vec::new();
    for (name, var) in vars.trainable(false) {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: missing")),
            Some(g) => {
                let v = to_f32(g);
                if v.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name}: non-finite"));
                } else if v.iter().all(|x| *x == 0.0) {
                    bad.push(format!("{name}: all zero"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "bad gradients: {bad:?}");
    assert_eq!(vars.trainable(false).len(), vars.vars.len());
}

#[test]
fn frozen_vision_gets_no_gradient_and_same_logprobs() {
    let (policy, vars, batch) = setup();
    let free = policy.response_logprobs(&batch, false).unwrap();
    let frozen = policy.response_logprobs(&batch, true).unwrap();
    // The frozen tower runs the fused inference kernels, so only rounding may differ.
    let d = max_abs_diff(&to_f32(&free.logp), &to_f32(&frozen.logp));
    assert!(d <= 1e-5, "frozen vs trainable log-probs differ by {d}");
    let grads = loss(&frozen).backward().unwrap();
    for (name, var) in &vars.vars {
        let has = grads.get(var.as_tensor()).is_some();
        assert_eq!(
            has,
            !name.starts_with("visual."),
            "{name}: gradient presence with frozen vision"
        );
    }
    let trainable = vars.trainable(true);
    assert!(trainable.iter().all(|(n, _)| !n.starts_with("visual.")) && !trainable.is_empty());
}

/// A grouped batch (each prompt prefilled once, its cache forked to several responses of
/// different lengths) gives the log-probs, entropies and gradients of the same sequences laid
/// out one per row. Tolerance: 1e-5 abs on log-probs/entropy, 1e-4 relative on gradients
/// (float summation order differs).
#[test]
fn grouped_prompts_match_one_row_per_sequence() {
    let (policy, vars) = Policy::load_trainable(&tiny(), &Device::Cpu, DType::F32).unwrap();
    let processor = policy.processor(&tiny()).unwrap();
    let prompts = prompts(&processor, &cases());
    let im_end = processor.token_id("<|im_end|>").unwrap();
    let texts = [
        "a",
        "the cat sat on the mat, and then",
        "<think>x</think>",
        "no",
    ];
    let responses: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let mut ids = processor.encode(t).unwrap();
            ids.push(im_end);
            ids
        })
        .collect();
    // Responses 0 and 2 continue prompt 1, responses 1 and 3 prompt 0.
    let rows = [1usize, 0, 1, 0];
    let flat: Vec<_> = rows.iter().map(|&r| &prompts[r]).collect();
    let full = ResponseBatch::new(
        &flat,
        &responses,
        processor.pad_token_id,
        4096,
        &Device::Cpu,
    )
    .unwrap();
    let distinct: Vec<_> = prompts.iter().collect();
    let grouped = GroupedResponseBatch::new(
        &distinct,
        &rows,
        &responses,
        processor.pad_token_id,
        4096,
        &Device::Cpu,
    )
    .unwrap();
    let before = policy.counters();
    let a = policy.response_logprobs_at(&full, false, 0.7).unwrap();
    let mid = policy.counters();
    let b = policy
        .grouped_response_logprobs_at(&grouped, false, 0.7)
        .unwrap();
    let after = policy.counters();
    assert_eq!(mid.prefill_rows - before.prefill_rows, 4);
    assert_eq!(after.prefill_rows - mid.prefill_rows, 2, "each prompt once");
    assert_eq!(to_f32(&a.mask), to_f32(&b.mask));
    let mask = to_f32(&a.mask);
    let masked = |v: Vec<f32>| -> Vec<f32> { v.iter().zip(&mask).map(|(x, m)| x * m).collect() };
    let lp = max_abs_diff(&masked(to_f32(&a.logp)), &masked(to_f32(&b.logp)));
    let en = max_abs_diff(&masked(to_f32(&a.entropy)), &masked(to_f32(&b.entropy)));
    eprintln!("grouped vs full: logp {lp:.3e}, entropy {en:.3e}");
    assert!(lp <= 1e-5 && en <= 1e-5);
    let ga = loss(&a).backward().unwrap();
    let gb = loss(&b).backward().unwrap();
    for (name, var) in &vars.vars {
        let want = ga.get(var.as_tensor()).expect("full gradient");
        let got = gb
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no grouped gradient for {name}"));
        let r = rel_diff(&to_f32(got), &to_f32(want));
        assert!(r <= 1e-4, "gradient of {name} differs: rel {r}");
    }
}
