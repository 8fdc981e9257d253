//! Property tests: mask, RLE and PNG round trips and set-algebra identities.

use platter_data::rle::{compress_counts, decompress_counts};
use platter_data::{CocoRle, ImageLimits, Mask, RleCounts};
use proptest::prelude::*;

fn mask_strategy() -> impl Strategy<Value = Mask> {
    (0u32..40, 0u32..40, any::<u64>(), 0.0f64..1.0).prop_map(|(w, h, seed, p)| {
        // Cheap deterministic pseudo-random fill from the seed (splitmix64).
        let mut s = seed;
        Mask::from_fn(w, h, |_, _| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) as f64 / u64::MAX as f64) < p
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rle_round_trips(m in mask_strategy()) {
        prop_assert_eq!(Mask::from_coco_rle(&m.to_coco_rle()).unwrap(), m.clone());
        prop_assert_eq!(Mask::from_coco_rle(&m.to_coco_rle_uncompressed()).unwrap(), m.clone());
        let json = serde_json::to_string(&m.to_coco_rle()).unwrap();
        let back: CocoRle = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(Mask::from_coco_rle(&back).unwrap(), m);
    }

    #[test]
    fn counts_compression_round_trips(counts in proptest::collection::vec(0u64..5_000_000, 0..50)) {
        prop_assert_eq!(decompress_counts(&compress_counts(&counts)).unwrap(), counts);
    }

    #[test]
    fn png_round_trips(m in mask_strategy()) {
        prop_assume!(m.width() > 0 && m.height() > 0);
        let bytes = m.to_png_bytes().unwrap();
        prop_assert_eq!(Mask::from_png_bytes(&bytes, "p", &ImageLimits::default()).unwrap(), m);
    }

    #[test]
    fn set_algebra(a in mask_strategy(), seed in any::<u64>()) {
        let b = Mask::from_fn(a.width(), a.height(), |x, y| (u64::from(x * 31 + y * 17) ^ seed) % 3 == 0);
        let i = a.intersection_count(&b).unwrap();
        let u = a.union_count(&b).unwrap();
        prop_assert_eq!(i + u, a.count() + b.count());
        let mut merged = a.clone();
        merged.or_assign(&b).unwrap();
        prop_assert_eq!(merged.count(), u);
        let iou = a.iou(&b).unwrap();
        prop_assert!((0.0..=1.0).contains(&iou));
        if let Some(bb) = a.bbox() {
            prop_assert!(a.iter_on().all(|(x, y)| (bb.x_min..=bb.x_max).contains(&x) && (bb.y_min..=bb.y_max).contains(&y)));
            prop_assert!(a.get(bb.x_min, a.iter_on().find(|p| p.0 == bb.x_min).unwrap().1));
        } else {
            prop_assert!(a.is_empty());
        }
    }

    #[test]
    fn garbage_rle_never_panics(s in "[ -~]{0,40}", h in 0u32..50, w in 0u32..50) {
        let _ = Mask::from_coco_rle(&CocoRle { size: [h, w], counts: RleCounts::Compressed(s) });
    }

    #[test]
    fn garbage_png_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(bytes);
        let _ = Mask::from_png_bytes(&png, "g", &ImageLimits::default());
    }
}
