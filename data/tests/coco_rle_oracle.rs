//! COCO RLE parity with pycocotools 2.0.11.
//!
//! Fixture: `data/tests/fixtures/coco_rle_pycocotools.json`, written by
//! `scripts/data/coco_rle_fixture.py`. Tolerance: exact (strings and masks must be identical).

use platter_data::{CocoRle, Mask, RleCounts};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    rows: Vec<String>,
    size: [u32; 2],
    counts: String,
    uncompressed: Vec<u64>,
    area: u64,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[test]
fn matches_pycocotools() {
    let text = include_str!("fixtures/coco_rle_pycocotools.json");
    let fixture: Fixture = serde_json::from_str(text).unwrap();
    assert!(fixture.cases.len() >= 8);
    for case in fixture.cases {
        let [h, w] = case.size;
        let mask = Mask::from_fn(w, h, |x, y| {
            case.rows[y as usize].as_bytes()[x as usize] == b'1'
        });
        assert_eq!(mask.count(), case.area, "{}", case.name);
        let rle = mask.to_coco_rle();
        assert_eq!(rle.size, case.size, "{}", case.name);
        assert_eq!(
            rle.counts,
            RleCounts::Compressed(case.counts.clone()),
            "{}",
            case.name
        );
        assert_eq!(
            mask.to_coco_rle_uncompressed().counts,
            RleCounts::Uncompressed(case.uncompressed.clone()),
            "{}",
            case.name
        );
        let from_string = Mask::from_coco_rle(&CocoRle {
            size: case.size,
            counts: RleCounts::Compressed(case.counts),
        })
        .unwrap();
        assert_eq!(from_string, mask, "{}", case.name);
        let from_list = Mask::from_coco_rle(&CocoRle {
            size: case.size,
            counts: RleCounts::Uncompressed(case.uncompressed),
        })
        .unwrap();
        assert_eq!(from_list, mask, "{}", case.name);
    }
}
