//! Reward scoring throughput (responses/s) on a JSONL case file.
//!
//! `cargo bench -p platter-rl --bench reward -- CASES.jsonl REPEATS` (defaults: the 600-case
//! parity fixture, 20 repeats). `scripts/bench/reward.sh` runs this and the Python/scipy
//! reference on the same cases in the same run and prints the ratio.

use std::time::Instant;

use platter_rl::reward::{GroundTruthObject, RewardConfig, score_response};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let path = args.first().cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reward_cases.jsonl"
        )
        .to_string()
    });
    let repeats: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let cases: Vec<(String, Vec<GroundTruthObject>)> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("case line is JSON");
            (
                v["response"].as_str().expect("response").to_string(),
                serde_json::from_value(v["ground_truth"].clone()).expect("ground_truth"),
            )
        })
        .collect();
    let cfg = RewardConfig::default();
    let mut best = f64::INFINITY;
    let mut checksum = 0.0;
    for _ in 0..repeats {
        let t0 = Instant::now();
        for (resp, gt) in &cases {
            checksum += std::hint::black_box(score_response(resp, gt, &cfg)).total;
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            serde_json::json!({
                "impl": "platter-rl",
                "responses": cases.len(),
                "best_seconds": best,
                "responses_per_second": cases.len() as f64 / best,
                "checksum": checksum,
            })
        );
    }
}
