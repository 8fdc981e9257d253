//! `platter eval`, `platter segment` and `platter debug sam2-segment` as a user runs them: the
//! error paths name what is wrong, and one small run of each writes what it promises.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use platter_data::ImageLimits;
use platter_data::imageio::image_dimensions;
use platter_data::synth::{SynthConfig, generate};

fn platter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_platter"))
}

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// Nine synthetic images: eight train, one val, no test (splits are `index mod 10`).
fn synth(dir: &Path) -> PathBuf {
    let cfg = SynthConfig {
        seed: 7,
        n: 9,
        policy_image_size: 224,
        threads: 1,
        ..SynthConfig::default()
    };
    generate(&cfg, dir).expect("synthetic world");
    dir.join("manifest.jsonl")
}

fn fails_with(out: Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

#[test]
fn eval_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = synth(&dir.path().join("data"));
    let out_dir = dir.path().join("out");
    let tiny = repo("assets/tiny-sft");
    let run = |args: &[&std::ffi::OsStr]| platter().arg("eval").args(args).output().unwrap();
    let os = |s: &str| std::ffi::OsString::from(s);

    // Missing checkpoint directory.
    let missing = dir.path().join("no-such-policy");
    fails_with(
        run(&[
            &os("--checkpoint"),
            missing.as_os_str(),
            &os("--data"),
            manifest.as_os_str(),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["--checkpoint", "no-such-policy", "no such directory"],
    );
    // A directory that is not a model directory.
    fails_with(
        run(&[
            &os("--checkpoint"),
            dir.path().join("data").as_os_str(),
            &os("--data"),
            manifest.as_os_str(),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["no config.json"],
    );
    // A malformed manifest: the file and the line are named.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\"}\n").unwrap();
    fails_with(
        run(&[
            &os("--checkpoint"),
            tiny.as_os_str(),
            &os("--data"),
            bad.as_os_str(),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["bad.jsonl", "line 1"],
    );
    // A missing manifest.
    fails_with(
        run(&[
            &os("--checkpoint"),
            tiny.as_os_str(),
            &os("--data"),
            dir.path().join("nothing.jsonl").as_os_str(),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["--data", "nothing.jsonl", "no such manifest"],
    );
    // An empty split.
    fails_with(
        run(&[
            &os("--checkpoint"),
            tiny.as_os_str(),
            &os("--data"),
            manifest.as_os_str(),
            &os("--split"),
            &os("test"),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["no samples in split `test`"],
    );
    // SAM2 without weights, and names that do not pair with checkpoints.
    fails_with(
        run(&[
            &os("--checkpoint"),
            tiny.as_os_str(),
            &os("--data"),
            manifest.as_os_str(),
            &os("--segmenter"),
            &os("sam2"),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["--sam2-checkpoint"],
    );
    fails_with(
        run(&[
            &os("--checkpoint"),
            tiny.as_os_str(),
            &os("--name"),
            &os("a"),
            &os("--name"),
            &os("b"),
            &os("--data"),
            manifest.as_os_str(),
            &os("--out"),
            out_dir.as_os_str(),
        ]),
        &["2 --name given for 1 --checkpoint"],
    );
    assert!(
        !out_dir.exists(),
        "nothing is written when the inputs are bad"
    );
}

#[test]
fn eval_writes_the_table_and_per_sample_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let out_dir = dir.path().join("out");
    let out = platter()
        .args(["eval", "--checkpoint"])
        .arg(repo("assets/tiny-sft"))
        .args(["--name", "tiny SFT", "--data"])
        .arg(&data)
        .args(["--max-new-tokens", "48", "--gt-row", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| Policy | gIoU | cIoU |"), "{stdout}");
    assert!(stdout.contains("| tiny SFT |"), "{stdout}");
    assert!(stdout.contains("| ground truth |"), "{stdout}");
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        md.contains("split `val`, 1 samples") && md.contains("both empty"),
        "{md}"
    );
    let reports: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["policy"], "tiny SFT");
    assert_eq!(
        reports[0]["options"]["image_size"], 224,
        "pinned by the checkpoint"
    );
    assert!(reports[0]["mean_response_tokens"].as_f64().unwrap() <= 48.0);
    // The ground-truth answer earns every reward term.
    assert_eq!(reports[1]["rewards"]["total"], 7.0);
    for file in ["tiny_SFT.samples.jsonl", "ground-truth.samples.jsonl"] {
        let text = std::fs::read_to_string(out_dir.join(file)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{file}");
        for key in ["id", "response", "iou", "intersection", "union", "reward"] {
            assert!(lines[0].get(key).is_some(), "{file} lacks {key}");
        }
    }
}

#[test]
fn segment_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let image = repo("models/sam2/tests/fixtures/micro_256/image.png");
    let out = platter()
        .arg("segment")
        .arg(&image)
        .arg("which item is fried?")
        .arg("--checkpoint")
        .arg(dir.path().join("missing"))
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    fails_with(out, &["--checkpoint", "missing", "no such directory"]);
    let out = platter()
        .arg("segment")
        .arg(dir.path().join("nope.png"))
        .arg("which item is fried?")
        .arg("--checkpoint")
        .arg(repo("assets/tiny-sft"))
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    fails_with(out, &["nope.png"]);
    let out = platter()
        .arg("segment")
        .arg(&image)
        .arg("  ")
        .arg("--checkpoint")
        .arg(repo("assets/tiny-sft"))
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    fails_with(out, &["question is empty"]);
    assert!(!out_dir.exists());
}

#[test]
fn segment_answers_a_question_with_box_and_sam2_segmenters() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = synth(&dir.path().join("data"));
    let first = std::fs::read_to_string(&manifest).unwrap();
    let rec: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let image = dir.path().join("data").join(rec["image"].as_str().unwrap());
    let fixture = repo("models/sam2/tests/fixtures/micro_256");
    for (segmenter, extra) in [
        ("box", vec![]),
        (
            "sam2",
            vec![
                "--sam2-checkpoint".into(),
                fixture.join("weights.safetensors").into_os_string(),
                "--sam2-config".into(),
                fixture.join("model_config.yaml").into_os_string(),
            ],
        ),
    ] {
        let out_dir = dir.path().join(segmenter);
        let out = platter()
            .arg("segment")
            .arg(&image)
            .arg(rec["question"].as_str().unwrap())
            .arg("--checkpoint")
            .arg(repo("assets/tiny-sft"))
            .args(["--max-new-tokens", "96", "--segmenter", segmenter])
            .args(&extra)
            .arg("--out-dir")
            .arg(&out_dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{segmenter}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("reasoning:") && stdout.contains("answer:"),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("segmenter `{segmenter}`")),
            "{stdout}"
        );
        let dims = |f: &str| image_dimensions(&out_dir.join(f), &ImageLimits::default()).unwrap();
        assert_eq!(dims("mask.png"), (320, 240));
        assert_eq!(dims("overlay.png"), (640, 480), "zoom 2");
        let resp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("response.json")).unwrap()).unwrap();
        assert_eq!(resp["question"], rec["question"]);
        assert_eq!(resp["segmenter"], segmenter);
        assert_eq!(resp["image_size"], 224);
    }
}

#[test]
fn sam2_box_point_segment_moved_under_debug() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo("models/sam2/tests/fixtures/micro_256");
    let out = platter()
        .args(["debug", "sam2-segment"])
        .arg(fixture.join("image.png"))
        .arg("--checkpoint")
        .arg(fixture.join("weights.safetensors"))
        .arg("--model-config")
        .arg(fixture.join("model_config.yaml"))
        .args(["--box", "10,10,60,60", "--point", "30,30", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("mask.png").exists() && dir.path().join("overlay.png").exists());
}
