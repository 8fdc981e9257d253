//! Loss values and gradients against an independent PyTorch reference
//! (`scripts/oracle/loss_fixture.py`, written the way verl computes DAPO/GRPO), plus finite
//! differences, hand-derived values and padding safety.
//!
//! Tolerance: 1e-5 relative (+1e-7 absolute) on the loss and on d loss / d logp. Rust computes
//! in f32 from the same f32 inputs; the reference computes in f64.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use platter_rl::{DapoLoss, GrpoLoss, PolicyLossInput};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/loss_cases.safetensors"
);

fn load() -> (HashMap<String, Tensor>, Vec<serde_json::Value>) {
    let bytes = std::fs::read(FIXTURE).expect("fixture present");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&meta.metadata().as_ref().expect("metadata")["cases"]).expect("json");
    let tensors = candle_core::safetensors::load(FIXTURE, &Device::Cpu).expect("tensors");
    (tensors, cases)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(a.abs()) + 1e-7
}

#[test]
fn matches_pytorch_reference() {
    let (t, cases) = load();
    assert_eq!(cases.len(), 5);
    let mut clipped_low = 0.0;
    let mut clipped_high = 0.0;
    for (i, c) in cases.iter().enumerate() {
        let get = |n: &str| t[&format!("c{i}.{n}")].clone();
        let logp = Var::from_tensor(&get("logp")).unwrap();
        let (old, refl, ent, adv, mask) = (
            get("old_logp"),
            get("ref_logp"),
            get("entropy"),
            get("advantages"),
            get("mask"),
        );
        let input = PolicyLossInput {
            logp: logp.as_tensor(),
            old_logp: &old,
            advantages: &adv,
            mask: &mask,
            ref_logp: Some(&refl),
            entropy: Some(&ent),
        };
        let norm = c["normaliser"].as_f64().unwrap();
        let out = match c["algo"].as_str().unwrap() {
            "dapo" => DapoLoss {
                clip_low: c["clip_low"].as_f64().unwrap(),
                clip_high: c["clip_high"].as_f64().unwrap(),
                dual_clip: c["dual_clip"].as_f64(),
                entropy_coef: c["entropy_coef"].as_f64().unwrap(),
            }
            .compute(&input, norm)
            .unwrap(),
            _ => GrpoLoss {
                clip_eps: c["clip_eps"].as_f64().unwrap(),
                kl_coef: c["kl_coef"].as_f64().unwrap(),
                entropy_coef: c["entropy_coef"].as_f64().unwrap(),
            }
            .compute(&input, norm)
            .unwrap(),
        };
        let want = get("loss").to_vec1::<f64>().unwrap()[0];
        let got = f64::from(out.loss.to_scalar::<f32>().unwrap());
        assert!(
            close(got, want),
            "case {i} ({c}): loss {got} vs reference {want}"
        );
        assert_eq!(out.diagnostics.loss, got);

        let grads = out.loss.backward().unwrap();
        let g = grads.get(logp.as_tensor()).expect("gradient wrt logp");
        let g = g.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let want_g = get("grad_logp").to_vec2::<f64>().unwrap();
        for (r, (gr, wr)) in g.iter().zip(&want_g).enumerate() {
            for (k, (a, b)) in gr.iter().zip(wr).enumerate() {
                assert!(
                    close(*a, *b),
                    "case {i}: grad[{r},{k}] {a} vs reference {b}"
                );
            }
        }
        clipped_low += out.diagnostics.clip_fraction_low;
        clipped_high += out.diagnostics.clip_fraction_high;
        // 6 sequences of lengths 12, 7, 3, 1, 12, 5.
        assert_eq!(out.diagnostics.tokens, 40.0);
        assert!(out.diagnostics.entropy.is_some());
    }
    // The fixture exercises both clips (else the test would not test clipping).
    assert!(clipped_low > 0.0 && clipped_high > 0.0);
}

fn tensor(rows: &[&[f32]]) -> Tensor {
    let b = rows.len();
    let t = rows[0].len();
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (b, t), &Device::Cpu).unwrap()
}

#[test]
fn dapo_hand_derived() {
    // One sequence, 3 tokens, Â = +1, T = 3 (no other ranks).
    // ratios: e^0 = 1 (unclipped), e^0.5 ≈ 1.6487 (> 1.28: upper clip active),
    //         e^-0.5 ≈ 0.6065 (< 0.8, but Â > 0 so min(r, clip(r)) = r: unclipped).
    // loss = −(1 + 1.28 + 0.60653) / 3 = −0.962177
    // d loss / d logp = −r/3 on unclipped tokens, 0 on the clipped one.
    let logp = Var::from_tensor(&tensor(&[&[0.0, 0.5, -0.5]])).unwrap();
    let old = tensor(&[&[0.0, 0.0, 0.0]]);
    let adv = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let mask = tensor(&[&[1.0, 1.0, 1.0]]);
    let input = PolicyLossInput {
        logp: logp.as_tensor(),
        old_logp: &old,
        advantages: &adv,
        mask: &mask,
        ref_logp: None,
        entropy: None,
    };
    let out = DapoLoss::default().compute(&input, 3.0).unwrap();
    let r2 = (-0.5f64).exp();
    let want = -(1.0 + 1.28 + r2) / 3.0;
    let got = f64::from(out.loss.to_scalar::<f32>().unwrap());
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    let g = out.loss.backward().unwrap();
    let g = g.get(logp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    assert!((f64::from(g[0][0]) + 1.0 / 3.0).abs() < 1e-6);
    assert_eq!(g[0][1], 0.0);
    assert!((f64::from(g[0][2]) + r2 / 3.0).abs() < 1e-6);
    let d = out.diagnostics;
    assert!((d.clip_fraction_high - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(d.clip_fraction_low, 0.0);
    assert!((d.ratio_mean - (1.0 + 0.5f64.exp() + r2) / 3.0).abs() < 1e-6);
}

#[test]
fn grpo_hand_derived_kl() {
    // One token, on-policy (r = 1), Â = 0: the loss is β·KL only.
    // d = ref − logp = 1: k3 = e − 1 − 1 = 0.718282; loss = 0.01 · 0.718282 / 1 sequence.
    // d loss / d logp = β · (−e^d + 1) = 0.01 · (1 − e) = −0.0171828.
    let logp = Var::from_tensor(&tensor(&[&[-1.0]])).unwrap();
    let old = tensor(&[&[-1.0]]);
    let refl = tensor(&[&[0.0]]);
    let adv = Tensor::new(&[0f32], &Device::Cpu).unwrap();
    let mask = tensor(&[&[1.0]]);
    let input = PolicyLossInput {
        logp: logp.as_tensor(),
        old_logp: &old,
        advantages: &adv,
        mask: &mask,
        ref_logp: Some(&refl),
        entropy: None,
    };
    let out = GrpoLoss::default().compute(&input, 1.0).unwrap();
    let e = std::f64::consts::E;
    assert!((f64::from(out.loss.to_scalar::<f32>().unwrap()) - 0.01 * (e - 2.0)).abs() < 1e-7);
    assert!((out.diagnostics.kl.unwrap() - (e - 2.0)).abs() < 1e-6);
    let g = out.loss.backward().unwrap();
    let g = g.get(logp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    assert!((f64::from(g[0][0]) - 0.01 * (1.0 - e)).abs() < 1e-6);
}

#[test]
fn finite_differences_agree_away_from_kinks() {
    // An independent check of the gradient: central differences in f32 with h = 1e-2 on
    // tokens whose ratio is not within 2h of a clip boundary.
    let logp0: Vec<f32> = vec![-0.3, -1.2, -2.0, -0.7, -0.1, -1.5];
    let old: Vec<f32> = vec![-0.35, -1.0, -2.4, -0.7, -0.5, -1.45];
    let advs = [0.8f32, -1.3];
    let eval = |lp: &[f32], algo: &str| -> (f64, Vec<f32>) {
        let logp = Var::from_tensor(&Tensor::from_vec(lp.to_vec(), (2, 3), &Device::Cpu).unwrap())
            .unwrap();
        let old = Tensor::from_vec(old.clone(), (2, 3), &Device::Cpu).unwrap();
        let refl = (&old - 0.2).unwrap();
        let adv = Tensor::new(&advs, &Device::Cpu).unwrap();
        let mask = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let input = PolicyLossInput {
            logp: logp.as_tensor(),
            old_logp: &old,
            advantages: &adv,
            mask: &mask,
            ref_logp: Some(&refl),
            entropy: None,
        };
        let out = if algo == "dapo" {
            DapoLoss {
                dual_clip: Some(3.0),
                ..Default::default()
            }
            .compute(&input, 6.0)
            .unwrap()
        } else {
            GrpoLoss {
                kl_coef: 0.3,
                ..Default::default()
            }
            .compute(&input, 2.0)
            .unwrap()
        };
        let g = out.loss.backward().unwrap();
        let g = g
            .get(logp.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (f64::from(out.loss.to_scalar::<f32>().unwrap()), g)
    };
    for algo in ["dapo", "grpo"] {
        let (_, g) = eval(&logp0, algo);
        let h = 1e-2f32;
        for k in 0..logp0.len() {
            let r = f64::from(logp0[k] - old[k]).exp();
            let near = [0.8, 1.2, 1.28].iter().any(|b| (r - b).abs() < 0.03);
            if near {
                continue;
            }
            let mut up = logp0.clone();
            up[k] += h;
            let mut down = logp0.clone();
            down[k] -= h;
            let fd = (eval(&up, algo).0 - eval(&down, algo).0) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(g[k])).abs() < 2e-3,
                "{algo} token {k}: finite difference {fd} vs autograd {}",
                g[k]
            );
        }
    }
}

#[test]
fn padding_cannot_poison_the_loss() {
    // Garbage (−inf, NaN, huge) on padded positions: loss and gradient stay finite and equal
    // to the loss over the valid tokens only.
    let lp = Var::from_tensor(&tensor(&[&[-0.5, f32::NEG_INFINITY], &[-0.2, f32::NAN]])).unwrap();
    let old = tensor(&[&[-0.4, 1e30], &[-0.2, f32::INFINITY]]);
    let refl = tensor(&[&[-0.6, f32::NAN], &[-0.3, 0.0]]);
    let ent = tensor(&[&[0.5, f32::NAN], &[0.7, f32::INFINITY]]);
    let adv = Tensor::new(&[1f32, -1.0], &Device::Cpu).unwrap();
    let mask = tensor(&[&[1.0, 0.0], &[1.0, 0.0]]);
    let input = PolicyLossInput {
        logp: lp.as_tensor(),
        old_logp: &old,
        advantages: &adv,
        mask: &mask,
        ref_logp: Some(&refl),
        entropy: Some(&ent),
    };
    for out in [
        DapoLoss {
            entropy_coef: 0.1,
            dual_clip: Some(3.0),
            ..Default::default()
        }
        .compute(&input, 2.0)
        .unwrap(),
        GrpoLoss {
            entropy_coef: 0.1,
            ..Default::default()
        }
        .compute(&input, 2.0)
        .unwrap(),
    ] {
        assert!(out.diagnostics.loss.is_finite());
        let g = out.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!(g.iter().flatten().all(|v| v.is_finite()), "{g:?}");
        assert_eq!(g[0][1], 0.0);
        assert_eq!(g[1][1], 0.0);
    }
}

#[test]
fn bad_shapes_and_normalisers_are_named_errors() {
    let lp = tensor(&[&[0.0, 0.0]]);
    let adv = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    let input = PolicyLossInput {
        logp: &lp,
        old_logp: &lp,
        advantages: &adv,
        mask: &lp,
        ref_logp: None,
        entropy: None,
    };
    let err = DapoLoss::default()
        .compute(&input, 2.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("advantages"), "{err}");
    let adv1 = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let ok_input = PolicyLossInput {
        advantages: &adv1,
        ..input
    };
    let err = DapoLoss::default()
        .compute(&ok_input, 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("token_normaliser"), "{err}");
    let err = GrpoLoss::default()
        .compute(&ok_input, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ref_logp"), "{err}");
}
