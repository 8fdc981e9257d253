//! Manifest reading/writing and the synthetic world's determinism and splits.

use std::collections::HashSet;
use std::path::Path;

use platter_data::synth::{SynthConfig, generate};
use platter_data::{ImageLimits, ManifestRecord, MaskSource, Split, read_manifest, write_manifest};

fn small(seed: u64, threads: usize) -> SynthConfig {
    SynthConfig {
        seed,
        n: 10,
        width: 96,
        height: 72,
        questions_per_image: 2,
        threads,
        ..SynthConfig::default()
    }
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                files.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn synth_is_deterministic_by_seed_whatever_the_threads() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&small(3, 1), a.path()).unwrap();
    generate(&small(3, 3), b.path()).unwrap();
    generate(&small(4, 2), c.path()).unwrap();
    let (fa, fb, fc) = (read_all(a.path()), read_all(b.path()), read_all(c.path()));
    assert_eq!(fa, fb);
    assert_ne!(fa, fc);
}

#[test]
fn synth_splits_share_no_image_and_samples_load() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate(&small(5, 2), dir.path()).unwrap();
    assert_eq!(report.images.values().sum::<usize>(), 10);
    let records = read_manifest(&report.manifest).unwrap();
    let mut by_split: Vec<HashSet<&Path>> = vec![HashSet::new(); 3];
    for r in &records {
        let i = match r.split {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        };
        by_split[i].insert(r.image.as_path());
        let s = r.load(dir.path(), &ImageLimits::default()).unwrap();
        assert!(!s.train_mask.is_empty());
        assert_eq!(r.masks.len(), r.objects.as_ref().unwrap().items.len());
    }
    assert!(
        by_split[0].is_disjoint(&by_split[1])
            && by_split[0].is_disjoint(&by_split[2])
            && by_split[1].is_disjoint(&by_split[2])
    );
    assert!(by_split.iter().all(|s| !s.is_empty()));
}

#[test]
fn synth_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let err = generate(
        &SynthConfig {
            width: 8,
            ..small(1, 1)
        },
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("width"), "{err}");
    let err = generate(
        &SynthConfig {
            policy_image_size: 0,
            ..small(1, 1)
        },
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("image_size"), "{err}");
    // The smallest allowed images still give a scene and a question for every image.
    let tiny = SynthConfig {
        width: 64,
        height: 48,
        n: 20,
        ..small(2, 2)
    };
    let report = generate(&tiny, dir.path()).unwrap();
    assert_eq!(report.images.values().sum::<usize>(), 20);
    for (cfg, key) in [
        (
            SynthConfig {
                item_scale: 0.0,
                ..small(1, 1)
            },
            "item_scale",
        ),
        (
            SynthConfig {
                max_foods: 6,
                ..small(1, 1)
            },
            "max_foods",
        ),
        (
            SynthConfig {
                lighting: f32::NAN,
                ..small(1, 1)
            },
            "lighting",
        ),
    ] {
        let err = generate(&cfg, dir.path()).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn synth_lighting_changes_pixels_by_position_not_masks() {
    use platter_data::synth::scene;
    let base = SynthConfig {
        width: 160,
        height: 120,
        ..small(7, 1)
    };
    let lit = SynthConfig {
        lighting: 0.3,
        ..base.clone()
    };
    let (a, b) = (scene(&base, 0).unwrap(), scene(&lit, 0).unwrap());
    // Same scene, same exact masks and labels.
    assert_eq!(a.canvas.labels, b.canvas.labels);
    assert_eq!(a.instances.len(), b.instances.len());
    for ((ca, ma), (cb, mb)) in a.instances.iter().zip(&b.instances) {
        assert_eq!((ca, ma.count()), (cb, mb.count()));
    }
    // The top-left pixel keeps its colour (gains 1); the bottom-right one loses 30% of every
    // channel (each gain 1 − 0.3), to the rounding of a u8.
    assert_eq!(a.canvas.rgb.get_pixel(0, 0), b.canvas.rgb.get_pixel(0, 0));
    let (pa, pb) = (
        a.canvas.rgb.get_pixel(159, 119),
        b.canvas.rgb.get_pixel(159, 119),
    );
    for c in 0..3 {
        let want = (f32::from(pa[c]) * 0.7).round() as u8;
        assert_eq!(pb[c], want, "channel {c}: {pa:?} -> {pb:?}");
    }
    // Top-right: red falls to 0.7, blue keeps its value, green to 0.85.
    let (pa, pb) = (
        a.canvas.rgb.get_pixel(159, 0),
        b.canvas.rgb.get_pixel(159, 0),
    );
    assert_eq!(pb[0], (f32::from(pa[0]) * 0.7).round() as u8);
    assert_eq!(pb[1], (f32::from(pa[1]) * 0.85).round() as u8);
    assert_eq!(pb[2], pa[2]);
}

#[test]
fn synth_item_scale_and_max_foods_shape_the_scenes() {
    use platter_data::synth::scene;
    let cfg = |item_scale, max_foods| SynthConfig {
        width: 320,
        height: 240,
        n: 40,
        item_scale,
        max_foods,
        ..small(9, 1)
    };
    let stats = |c: &SynthConfig| {
        let (mut area, mut max_kinds) = (0u64, 0usize);
        for i in 0..40 {
            let s = scene(c, i).unwrap();
            area +=
                s.instances.iter().map(|(_, m)| m.count()).sum::<u64>() / s.instances.len() as u64;
            let mut kinds: Vec<u8> = s.instances.iter().map(|(k, _)| *k).collect();
            kinds.sort_unstable();
            kinds.dedup();
            max_kinds = max_kinds.max(kinds.len());
        }
        (area, max_kinds)
    };
    let (small_area, kinds5) = stats(&cfg(1.0, 5));
    let (big_area, kinds2) = stats(&cfg(1.5, 2));
    assert!(kinds5 > 2 && kinds2 == 2, "{kinds5} {kinds2}");
    // Mean instance area grows with the square of the scale (less what occlusion takes).
    assert!(
        big_area as f64 > 1.5 * small_area as f64,
        "{small_area} {big_area}"
    );
}

#[test]
fn manifest_round_trip_and_line_numbered_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rec = ManifestRecord {
        id: "a".into(),
        split: Split::Test,
        image: "img.png".into(),
        question: "Which is the dessert?".into(),
        masks: vec![MaskSource::Png {
            png: "m.png".into(),
        }],
        eval_masks: None,
        target_names: vec![],
        objects: None,
    };
    let path = dir.path().join("m.jsonl");
    write_manifest(
        &path,
        &[
            rec.clone(),
            ManifestRecord {
                id: "b".into(),
                ..rec.clone()
            },
        ],
    )
    .unwrap();
    assert_eq!(read_manifest(&path).unwrap()[1].id, "b");

    let good = serde_json::to_string(&rec).unwrap();
    std::fs::write(&path, format!("{good}\n\n{{\"id\": 3}}\n")).unwrap();
    let err = read_manifest(&path).unwrap_err().to_string();
    assert!(err.contains("m.jsonl:3:"), "{err}");
    std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
    let err = read_manifest(&path).unwrap_err().to_string();
    assert!(err.contains(":2:") && err.contains("line 1"), "{err}");
    std::fs::write(
        &path,
        good.replace("\"split\":\"test\"", "\"split\":\"dev\""),
    )
    .unwrap();
    assert!(
        read_manifest(&path)
            .unwrap_err()
            .to_string()
            .contains(":1:")
    );
}

#[test]
fn sample_errors_name_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let img = image::RgbImage::new(20, 10);
    img.save(dir.path().join("img.png")).unwrap();
    platter_data::Mask::new(10, 20)
        .write_png(&dir.path().join("m.png"))
        .unwrap();
    let rec = ManifestRecord {
        id: "s-17".into(),
        split: Split::Train,
        image: "img.png".into(),
        question: "q".into(),
        masks: vec![MaskSource::Png {
            png: "m.png".into(),
        }],
        eval_masks: None,
        target_names: vec![],
        objects: None,
    };
    let limits = ImageLimits::default();
    let err = rec.load(dir.path(), &limits).unwrap_err().to_string();
    assert!(
        err.contains("sample s-17") && err.contains("20x10") && err.contains("10x20"),
        "{err}"
    );
    let missing = ManifestRecord {
        image: "nope.jpg".into(),
        ..rec.clone()
    };
    let err = missing.load(dir.path(), &limits).unwrap_err().to_string();
    assert!(
        err.contains("sample s-17") && err.contains("nope.jpg"),
        "{err}"
    );
    let tight = ImageLimits {
        max_side: 16,
        max_pixels: 1 << 20,
    };
    let err = rec.load(dir.path(), &tight).unwrap_err().to_string();
    assert!(
        err.contains("sample s-17") && err.contains("over the limit"),
        "{err}"
    );
}

/// A PNG whose header claims 100000 x 100000 pixels: refused from the header, before decoding.
#[test]
fn decompression_bomb_header_is_refused() {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    }
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    let err = platter_data::Mask::from_png_bytes(&png, "bomb.png", &ImageLimits::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bomb.png") && err.contains("100000x100000") && err.contains("over the limit"),
        "{err}"
    );
    let err = platter_data::imageio::decode_label_map(&png, "bomb.png", &ImageLimits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the limit"), "{err}");
}
