//! Long-running check that response parsing and scoring never panic and stay within bounds.
//! Run by hand: `cargo install cargo-fuzz && cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run score_response`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use platter_rl::parse::ParsedResponse;
use platter_rl::reward::{GroundTruthObject, RewardConfig, score_response};

fuzz_target!(|data: &[u8]| {
    let parsed = ParsedResponse::from_bytes(data, 120);
    assert!(parsed.objects().len() <= 120);
    let text = String::from_utf8_lossy(data);
    let gt = [GroundTruthObject { bbox_2d: [10.0, 10.0, 50.0, 60.0], point_2d: [30.0, 35.0] }];
    let r = score_response(&text, &gt, &RewardConfig::default());
    assert!((0.0..=7.0).contains(&r.total));
    let _ = platter_rl::json::parse(&text);
});
