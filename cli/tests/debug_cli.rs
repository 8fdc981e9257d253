//! The check commands as a user runs them: `platter debug score` and `platter debug loss`.

use std::collections::HashMap;
use std::process::Command;

use candle_core::{Device, Tensor};

fn platter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_platter"))
}

#[test]
fn debug_score_prints_one_line_per_case_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        concat!(
            r#"{"response": "<think>rice.</think><answer>[{\"bbox_2d\": [0,0,10,10], \"point_2d\": [5,5]}]</answer>", "ground_truth": [{"bbox_2d": [0,0,10,10], "point_2d": [5,5]}]}"#,
            "\n",
            "{not json\n",
            "\n",
            r#"{"response": "no tags", "ground_truth": []}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = platter()
        .args(["debug", "score", "--cases"])
        .arg(&cases)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a malformed line makes the exit status non-zero"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["total"], 7.0);
    for key in [
        "think_format",
        "answer_format",
        "non_repeat",
        "seg_iou",
        "seg_l1",
        "seg_point",
        "seg",
        "total",
    ] {
        assert!(lines[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(lines[1]["line"], 2);
    // "no tags": only the non-repeat term (1 sentence, no repeats).
    assert_eq!(lines[2]["total"], 1.0);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn debug_loss_writes_loss_and_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let out_path = dir.path().join("out.safetensors");
    let dev = Device::Cpu;
    // Sequence 0: Â = +1, log-ratios (0, 0.5): r = 1 and e^0.5 > 1.28 (clipped).
    // Sequence 1: Â = −1, one response token with log-ratio −0.5: r = 0.6065 < 0.8 (clipped),
    // one padded token. DAPO loss = −(1·1 + 1·1.28 + (−1)·0.8) / 3 = −1.48 / 3.
    // GRPO (on these inputs, ref = logp): seq 0 token-mean −(1 + 1.2)/2 = −1.1; seq 1: +0.8;
    // loss = (−1.1 + 0.8) / 2 = −0.15.
    let t = HashMap::from([
        (
            "logp".to_string(),
            Tensor::new(&[[0f32, 0.5], [-0.5, 0.0]], &dev).unwrap(),
        ),
        (
            "old_logp".to_string(),
            Tensor::new(&[[0f32, 0.0], [0.0, 0.0]], &dev).unwrap(),
        ),
        (
            "ref_logp".to_string(),
            Tensor::new(&[[0f32, 0.5], [-0.5, 0.0]], &dev).unwrap(),
        ),
        (
            "advantages".to_string(),
            Tensor::new(&[1f32, -1.0], &dev).unwrap(),
        ),
        (
            "mask".to_string(),
            Tensor::new(&[[1f32, 1.0], [1.0, 0.0]], &dev).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&t, &input).unwrap();
    for (algo, want) in [("dapo", -1.48f32 / 3.0), ("grpo", -0.15f32)] {
        let status = platter()
            .args(["debug", "loss", "--algo", algo, "--input"])
            .arg(&input)
            .arg("--out")
            .arg(&out_path)
            .status()
            .unwrap();
        assert!(status.success());
        let out = candle_core::safetensors::load(&out_path, &dev).unwrap();
        let loss = out["loss"].to_scalar::<f32>().unwrap();
        assert!((loss - want).abs() < 1e-6, "{algo}: {loss} vs {want}");
        let g = out["grad_logp"].to_vec2::<f32>().unwrap();
        assert_eq!(g[0][1], 0.0, "clipped token has no gradient");
        assert_eq!(g[1][1], 0.0, "padded token has no gradient");
        if algo == "dapo" {
            assert!((g[0][0] + 1.0 / 3.0).abs() < 1e-6);
            assert_eq!(g[1][0], 0.0);
        }
    }
    // A missing tensor is named.
    let t = HashMap::from([("logp".to_string(), Tensor::new(&[[0f32]], &dev).unwrap())]);
    candle_core::safetensors::save(&t, &input).unwrap();
    let out = platter()
        .args(["debug", "loss", "--algo", "dapo", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("old_logp"));
}
