//! `platter plan`: the memory budget of Qwen2.5-VL-3B on 4×48 GiB against a hand computation,
//! the parameter count against a real checkpoint, and the compose placement check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_platter"))
        .arg("plan")
        .args(args)
        // The compose file's `${PLATTER_*_CONCURRENCY:-N}` defaults must apply.
        .env_remove("PLATTER_ROLLOUT_CONCURRENCY")
        .env_remove("PLATTER_REWARD_CONCURRENCY")
        .env_remove("PLATTER_SAM2_CHECKPOINT")
        .output()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "plan --json printed no JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The paper's setup: 840 px images, G = 8, 1024 response tokens, four ranks, one sequence per
/// micro-batch. The model directory does not exist, so its name selects the built-in
/// dimensions.
fn paper_config(dir: &Path, ranks: u32) -> PathBuf {
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "plan-3b"
steps = 10
[data]
manifest = "/data/foodreasonseg/manifest.jsonl"
image_size = 840
[rollout]
group_size = 8
[overlong]
max_response_tokens = 1024
[model]
policy = "/models/Qwen2.5-VL-3B-Instruct"
[learner]
ranks = {ranks}
micro_batch_size = 1
"#
        ),
    )
    .unwrap();
    path
}

fn u(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("`{path}` is not an integer: {cur}"))
}

#[test]
fn qwen25vl_3b_budget_matches_the_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let config = paper_config(dir.path(), 4);
    let out = plan(&[
        config.to_str().unwrap(),
        "--gpus",
        "4",
        "--gpu-memory",
        "48GiB",
        "--optimizer-sharding",
        "zero1",
        "--activation-checkpointing",
        "on",
        "--json",
    ]);
    let p = json(&out);

    // Parameters (Qwen2.5-VL-3B config.json: H 2048, I 11008, 36 layers, 16 heads, 2 KV heads
    // of 128, vocab 151936, tied embeddings; vision: 32 blocks of 1280, MLP 3420, merge 2,
    // out 2048).
    //   text layer: q 2048·2048+2048 = 4,196,352; k, v 2·(2048·256+256) = 1,049,088;
    //     o 2048·2048 = 4,194,304; MLP 3·2048·11008 = 67,633,152; norms 4,096 → 77,076,992
    //   text: 36·77,076,992 = 2,774,771,712 + embed 151,936·2048 = 311,164,928 + norm 2,048
    //     = 3,085,938,688
    //   vision block: norms 2,560; qkv 1280·3840+3840 = 4,919,040; proj 1,639,680;
    //     gate+up 2·(1280·3420+3420) = 8,762,040; down 3420·1280+1280 = 4,378,880 → 19,702,200
    //   vision: patch 3·2·14·14·1280 = 1,505,280 + 32·19,702,200 = 630,470,400
    //     + merger (1,280 + 5120·5120+5120 + 5120·2048+2048 = 36,708,608) = 668,684,288
    //   total 3,754,622,976 (the published "3.75B")
    assert_eq!(u(&p, "params.text"), 3_085_938_688);
    assert_eq!(u(&p, "params.vision"), 668_684_288);

    // Sequence: 840 px → 60×60 = 3600 patches → 900 image tokens; prompt 900 + 128 = 1028;
    // s = 1028 + 1024 = 2052.
    assert_eq!(u(&p, "workload.image_patches"), 3600);
    assert_eq!(u(&p, "workload.image_tokens"), 900);
    assert_eq!(u(&p, "workload.sequence_tokens"), 2052);

    // Learner rank, bf16 (w = 2):
    //   weights = gradients = 3,754,622,976·2 = 7,509,245,952
    //   AdamW f32 m, v, master = 12·3,754,622,976 = 45,055,475,712; ZeRO-1 over 4 ranks
    //     = 11,263,868,928
    let l = "learner_rank";
    assert_eq!(u(&p, &format!("{l}.weights")), 7_509_245_952);
    assert_eq!(u(&p, &format!("{l}.gradients")), 7_509_245_952);
    assert_eq!(u(&p, &format!("{l}.optimizer_unsharded")), 45_055_475_712);
    assert_eq!(u(&p, &format!("{l}.optimizer")), 11_263_868_928);
    //   text layer: 2052·((24+8)·2048 + 2·(15·2048 + 9·256 + 4·11008)) + (20+6)·16·2052²
    //     = 2052·(65,536 + 154,112) + 416·4,210,704 = 450,717,696 + 1,751,652,864
    //     = 2,202,370,560
    //   with checkpointing: 36·2052·2048·2 = 302,579,712 + one layer = 2,504,950,272
    //   without: 36·2,202,370,560 = 79,285,340,160
    //   vision full-attention block (3600 patches): 3600·(32·1280 + 2·(24·1280 + 4·3420))
    //     + 416·3600² = 467,136,000 + 5,391,360,000 = 5,858,496,000
    //   window block (64 patches): 467,136,000 + 416·3600·64 = 562,982,400
    //   vision with checkpointing: 32·3600·1280·2 = 294,912,000 + 5,858,496,000 = 6,153,408,000
    //   vision without: 4·5,858,496,000 + 28·562,982,400 = 39,197,491,200
    //   activations: 2,504,950,272 + 6,153,408,000 = 8,658,358,272 (on);
    //     79,285,340,160 + 39,197,491,200 = 118,482,831,360 (off)
    assert_eq!(u(&p, &format!("{l}.activations")), 8_658_358_272);
    assert_eq!(
        u(&p, &format!("{l}.activations_without_checkpointing")),
        118_482_831_360
    );
    //   logits: 1024 tokens · 151,936 · (12 + 2 + 4) = 2,800,484,352
    assert_eq!(u(&p, &format!("{l}.logits")), 2_800_484_352);
    //   total: 2·7,509,245,952 + 11,263,868,928 + 8,658,358,272 + 2,800,484,352
    //     + 536,870,912 (CUDA context) = 38,278,074,368 (35.65 GiB)
    assert_eq!(u(&p, &format!("{l}.total")), 38_278_074_368);

    // Rollout worker (one group of G = 8 at once):
    //   KV: 8·2052 tokens · 2·36·256·2 bytes = 16,416·36,864 = 605,159,424
    //   prefill transient: 16 heads · 3600² · (2·2+8) = 2,488,320,000 (> prompt's 16·1028²·12)
    //   total: 7,509,245,952 + 605,159,424 + 2,488,320,000 + 536,870,912 = 11,139,596,288
    assert_eq!(u(&p, "rollout_worker.kv_cache"), 605_159_424);
    assert_eq!(u(&p, "rollout_worker.working_set"), 2_488_320_000);
    assert_eq!(u(&p, "rollout_worker.total"), 11_139_596_288);

    // Reward server (SAM2.1-L, 2 groups at once): 224,400,000·4 = 897,600,000 weights;
    //   2·24·256²·144·4 = 1,811,939,328 working set; + context = 3,246,410,240
    assert_eq!(u(&p, "reward_server.total"), 3_246_410_240);

    // Default layout on 4 GPUs (deploy/docker-compose.yml's): a rank and a worker on GPUs 0-2,
    // a rank and SAM2 on GPU 3:
    //   GPU 0: 38,278,074,368 + 11,139,596,288 = 49,417,670,656 (46.02 GiB): over the 90%
    //   line (46,385,646,796) but under 48 GiB = 51,539,607,552 → tight
    //   GPU 3: 38,278,074,368 + 3,246,410,240 = 41,524,484,608 (38.67 GiB) → fits
    assert_eq!(u(&p, "gpus.0.total"), 49_417_670_656);
    assert_eq!(p["gpus"][0]["verdict"], "tight");
    assert_eq!(u(&p, "gpus.3.total"), 41_524_484_608);
    assert_eq!(p["gpus"][3]["verdict"], "fits");
    assert_eq!(p["verdict"], "tight");
    assert!(
        out.status.success(),
        "a tight plan is not refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fourth worker beside SAM2 on GPU 3 does not fit: 41,524,484,608 + 11,139,596,288
    // = 52,664,080,896 (49.05 GiB) > 48 GiB.
    let four = dir.path().join("four-workers.yml");
    std::fs::write(
        &four,
        std::fs::read_to_string(repo().join("deploy/docker-compose.yml"))
            .unwrap()
            .replace(
                "  prometheus:\n",
                "  rollout-worker-3:\n    command: [rollout-worker]\n    deploy:\n      resources:\n        reservations:\n          devices:\n            - device_ids: [\"3\"]\n              capabilities: [gpu]\n  prometheus:\n",
            ),
    )
    .unwrap();
    let out = plan(&[
        config.to_str().unwrap(),
        "--compose",
        four.to_str().unwrap(),
        "--optimizer-sharding",
        "zero1",
        "--activation-checkpointing",
        "on",
        "--json",
    ]);
    let p = json(&out);
    assert_eq!(u(&p, "gpus.3.total"), 52_664_080_896);
    assert_eq!(p["verdict"], "does_not_fit");
    assert!(!out.status.success(), "a plan that does not fit fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not fit: GPU 3 needs 49.05 GiB of 48.00 GiB"),
        "the refusal names the GPU: {stderr}"
    );
}

#[test]
fn compose_placement_of_the_gpu_stack_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = paper_config(dir.path(), 4);
    let compose = repo().join("deploy/docker-compose.yml");
    let out = plan(&[
        config.to_str().unwrap(),
        "--compose",
        compose.to_str().unwrap(),
        "--optimizer-sharding",
        "zero1",
        "--activation-checkpointing",
        "on",
        "--json",
    ]);
    let p = json(&out);
    let names = |g: usize| -> Vec<String> {
        p["gpus"][g]["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["service"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(0), ["learner rank 0", "rollout-worker-0"]);
    assert_eq!(names(2), ["learner rank 2", "rollout-worker-2"]);
    assert_eq!(names(3), ["learner rank 3", "reward-server"]);
    // The same numbers as the default layout (see above): GPU 3 fits, GPUs 0-2 are tight.
    assert_eq!(u(&p, "gpus.3.total"), 41_524_484_608);
    assert_eq!(p["gpus"][3]["verdict"], "fits");
    assert_eq!(p["verdict"], "tight");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The learner of the compose file has four GPUs: a config with two ranks is refused.
    let two = paper_config(dir.path(), 2);
    let out = plan(&[
        two.to_str().unwrap(),
        "--compose",
        compose.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("learner.ranks = 2") && stderr.contains("4 GPU(s)"),
        "{stderr}"
    );
}

#[test]
fn without_sharding_and_checkpointing_3b_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let config = paper_config(dir.path(), 4);
    let out = plan(&[config.to_str().unwrap(), "--gpu-memory", "48GiB"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Unsharded AdamW alone is 45,055,475,712 bytes = 41.96 GiB per rank.
    assert!(stdout.contains("41.96 GiB"), "{stdout}");
    assert!(stdout.contains("verdict: DOES NOT FIT"), "{stdout}");
    // The hint is the ZeRO-1 + checkpointing total of the first test: 35.65 GiB.
    assert!(
        stdout.contains("a learner rank needs 35.65 GiB"),
        "{stdout}"
    );
}

#[test]
fn parameter_count_equals_the_tiny_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = repo().join("assets/tiny-sft");
    let config = dir.path().join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"tiny\"\nsteps = 1\n[data]\nmanifest = \"m.jsonl\"\nimage_size = 224\n\
             [model]\npolicy = \"{}\"\n",
            tiny.display()
        ),
    )
    .unwrap();
    let out = plan(&[
        config.to_str().unwrap(),
        "--gpus",
        "1",
        "--gpu-memory",
        "8GiB",
        "--json",
    ]);
    let p = json(&out);
    assert!(out.status.success(), "the tiny policy fits 8 GiB");
    let bytes = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut text, mut vision) = (0u64, 0u64);
    for (name, view) in tensors.tensors() {
        let n: u64 = view.shape().iter().map(|&d| d as u64).product();
        if name.contains("visual.") {
            vision += n;
        } else {
            text += n;
        }
    }
    assert_eq!(u(&p, "params.text"), text, "text parameters");
    assert_eq!(u(&p, "params.vision"), vision, "vision parameters");
}

#[test]
fn qwen25vl_7b_has_its_published_size_and_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = paper_config(dir.path(), 4);
    let out = plan(&[
        config.to_str().unwrap(),
        "--model",
        "qwen2.5-vl-7b",
        "--gpu-memory",
        "80GB",
        "--json",
    ]);
    let p = json(&out);
    // text: 28·233,057,792 + 2·152,064·3584 + 3584 = 7,615,616,512; vision 676,550,144
    // (the 3B tower with a 5120→3584 merger output): 8,292,166,656, the published "8.29B".
    assert_eq!(u(&p, "params.text") + u(&p, "params.vision"), 8_292_166_656);

    let out = plan(&[config.to_str().unwrap(), "--gpu-memory", "48 parsecs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit `parsecs`"));
    let out = plan(&[config.to_str().unwrap(), "--model", "/nowhere/llama"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a built-in name"));
}

/// The shipped paper configs carry `platter run`'s `[run]` table; `plan` reads them as they are.
#[test]
fn the_shipped_paper_configs_are_planned() {
    for name in ["paper-dapo.toml", "paper-grpo.toml"] {
        let cfg = repo().join("configs").join(name);
        let out = plan(&[
            cfg.to_str().unwrap(),
            "--gpus",
            "4",
            "--gpu-memory",
            "48GiB",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("unknown field") && !stderr.contains("error: in"),
            "{name}: {stderr}"
        );
        assert!(!out.stdout.is_empty(), "{name}: no plan printed; {stderr}");
    }
}
