//! FoodReasonSeg reader and FoodReasonSeg-Single construction on the committed fixture
//! `data/tests/fixtures/foodreasonseg` (FoodLMM's exact layout, written by the synthetic
//! generator: `scripts/data/make_fixtures.sh`), checked against the generator's own manifest.

use std::path::{Path, PathBuf};

use platter_data::foodreasonseg::{
    EXCLUDED_CLASSES, FoodReasonSeg, ReadOptions, UnknownNamePolicy,
};
use platter_data::imageio::read_label_map;
use platter_data::synth::knowledge::FOODS;
use platter_data::{ImageLimits, PolicySpace, Split, read_manifest};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/foodreasonseg")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn opts() -> ReadOptions {
    ReadOptions::default()
}

#[test]
fn single_matches_the_generator_manifest_and_merges_turns() {
    let root = fixture();
    let ds = FoodReasonSeg::open(&root).unwrap();
    let manifest = read_manifest(&root.join("manifest.jsonl")).unwrap();
    let limits = ImageLimits::default();
    let mut multi_turn = 0;
    let mut multi_target = 0;
    for split in [Split::Train, Split::Val, Split::Test] {
        let (records, stats) = ds.single(split, &opts()).unwrap();
        assert_eq!(stats.samples, records.len());
        assert_eq!(stats.unknown_names + stats.questions_without_targets, 0);
        for r in &records {
            let truth = manifest.iter().find(|m| m.id == r.id).unwrap();
            assert_eq!(truth.split, split);
            assert_eq!(truth.question, r.question, "{}", r.id);
            let a = r.load(&root, &limits).unwrap();
            let b = truth.load(&root, &limits).unwrap();
            // Class masks from the label map equal the union of the exact instance masks.
            assert_eq!(a.train_mask, b.train_mask, "{}", r.id);
            assert_eq!(a.eval_mask, b.eval_mask, "{}", r.id);
            assert!(!a.train_mask.is_empty());
            if a.eval_mask != a.train_mask {
                // Merged across answer turns: eval GT (first turn) is a strict subset.
                multi_turn += 1;
                assert!(a.eval_mask.count() < a.train_mask.count());
                assert_eq!(
                    a.eval_mask.intersection_count(&a.train_mask).unwrap(),
                    a.eval_mask.count()
                );
            }
            // One object per target class (METHOD §7), each point on its class mask.
            multi_target += usize::from(r.masks.len() > 1);
            let regions = a.regions();
            assert_eq!(regions.len(), r.masks.len());
            for reg in &regions {
                assert!(reg.mask.get(reg.point[0], reg.point[1]), "{}", r.id);
            }
            // Precomputed instance objects: points on the merged mask, in the 336 space.
            for o in &truth.objects.as_ref().unwrap().items {
                let p = PolicySpace::new(336).unwrap().point_to_original(
                    platter_data::PolicyPoint(o.point_2d),
                    platter_data::ImageSize {
                        width: 128,
                        height: 96,
                    },
                );
                assert!(o.point_2d.iter().all(|v| (0.0..=336.0).contains(v)));
                // Rounding through the 336 space can move a point by up to one pixel.
                let (x, y) = (p.0[0] as i64, p.0[1] as i64);
                let near = (-1..=1).any(|dx| {
                    (-1..=1).any(|dy| {
                        b.train_mask
                            .get((x + dx).max(0) as u32, (y + dy).max(0) as u32)
                    })
                });
                assert!(near, "{}: {:?}", r.id, o);
            }
        }
    }
    assert!(multi_turn >= 1, "fixture must hold a multi-turn answer");
    assert!(
        multi_target >= 2,
        "fixture must hold multi-target questions"
    );
}

#[test]
fn plurals_resolve_and_excluded_classes_never_enter_masks() {
    let root = fixture();
    let text = std::fs::read_to_string(root.join("FoodReasonSeg_train.json")).unwrap();
    let plurals: Vec<&str> = FOODS
        .iter()
        .filter_map(|f| f.plural)
        .filter(|p| text.contains(&format!("{p} [SEG")))
        .collect();
    assert!(!plurals.is_empty(), "fixture must name a target in plural");
    let ds = FoodReasonSeg::open(&root).unwrap();
    for p in &plurals {
        assert!(ds.categories().resolve(p).is_some());
    }
    let (records, _) = ds.single(Split::Train, &opts()).unwrap();
    let mut seen_excluded = [false; 3];
    for r in &records {
        let s = r.load(&root, &ImageLimits::default()).unwrap();
        let labels = read_label_map(
            &root.join(FoodReasonSeg::ann_path(Split::Train, &r.id[..6]).unwrap()),
            &ImageLimits::default(),
        )
        .unwrap();
        for (x, y) in s.train_mask.iter_on() {
            assert!(!EXCLUDED_CLASSES.contains(&labels.get_pixel(x, y)[0]));
        }
        for (i, c) in EXCLUDED_CLASSES.iter().enumerate() {
            seen_excluded[i] |= labels.pixels().any(|p| p[0] == *c);
        }
    }
    assert_eq!(
        seen_excluded, [true; 3],
        "fixture must hold background, sauce (103) and cutlery (255)"
    );
}

fn edit_train_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("FoodReasonSeg_train.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn named_excluded_classes_are_dropped_and_unknown_names_follow_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let ds = FoodReasonSeg::open(tmp.path()).unwrap();
    let (before, _) = ds.single(Split::Train, &opts()).unwrap();
    edit_train_json(tmp.path(), |v| {
        v[0]["conversations"].as_array_mut().unwrap().insert(
            2,
            serde_json::json!({"form": "answer", "value": "Not the other ingredients [SEG0] or the background [SEG1]."}),
        );
    });
    let (after, stats) = ds.single(Split::Train, &opts()).unwrap();
    assert_eq!(stats.excluded_targets, 2);
    assert_eq!(before, after);

    edit_train_json(tmp.path(), |v| {
        v[1]["conversations"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"form": "answer", "value": "And the dragon fruit [SEG0]."}));
    });
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("dish 000001") && err.contains("dragon fruit"),
        "{err}"
    );
    let skip = ReadOptions {
        unknown_names: UnknownNamePolicy::Skip,
        ..ReadOptions::default()
    };
    let (records, stats) = ds.single(Split::Train, &skip).unwrap();
    assert_eq!(stats.unknown_names, 1);
    assert_eq!(records, before);
}

#[test]
fn broken_files_are_errors_naming_the_dish() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), tmp.path());
    let ds = FoodReasonSeg::open(tmp.path()).unwrap();
    let img = tmp.path().join("Images/img_dir/train/000002.jpg");
    let ann = tmp.path().join("Images/ann_dir/train/000003.png");

    // Truncated and garbage JPEGs.
    let good = std::fs::read(&img).unwrap();
    std::fs::write(&img, &good[..40]).unwrap();
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("dish 000002") && err.contains("000002.jpg"),
        "{err}"
    );
    std::fs::write(&img, b"not a jpeg at all").unwrap();
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("dish 000002") && err.contains("000002.jpg"),
        "{err}"
    );
    std::fs::write(&img, &good).unwrap();

    // Missing file.
    std::fs::remove_file(&ann).unwrap();
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("dish 000003") && err.contains("000003.png"),
        "{err}"
    );

    // Label map of another size.
    image::GrayImage::new(50, 40).save(&ann).unwrap();
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(
        err.contains("dish 000003") && err.contains("128x96") && err.contains("50x40"),
        "{err}"
    );

    // Colour label map: refused, not guessed.
    image::RgbImage::new(128, 96).save(&ann).unwrap();
    let err = ds.single(Split::Train, &opts()).unwrap_err().to_string();
    assert!(err.contains("grayscale label map"), "{err}");
}
