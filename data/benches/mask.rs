//! Why masks are bit-packed: IoU of two masks, bit-packed popcount versus row-major run-length
//! intervals (the other candidate representation), on the same pairs in the same run.
//!
//! `cargo bench -p platter-data --bench mask`; results are recorded in `docs/data.md`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use platter_data::Mask;

/// Row-major run-length: per row, sorted half-open `[start, end)` intervals of on pixels.
struct RunMask {
    rows: Vec<Vec<(u32, u32)>>,
}

impl RunMask {
    fn from_mask(m: &Mask) -> RunMask {
        let rows = (0..m.height())
            .map(|y| {
                let mut runs = Vec::new();
                let mut start = None;
                for x in 0..=m.width() {
                    let on = x < m.width() && m.get(x, y);
                    match (on, start) {
                        (true, None) => start = Some(x),
                        (false, Some(s)) => {
                            runs.push((s, x));
                            start = None;
                        }
                        _ => {}
                    }
                }
                runs
            })
            .collect();
        RunMask { rows }
    }

    fn count(&self) -> u64 {
        self.rows
            .iter()
            .flatten()
            .map(|&(s, e)| u64::from(e - s))
            .sum()
    }

    fn intersection_count(&self, other: &RunMask) -> u64 {
        let mut total = 0u64;
        for (a, b) in self.rows.iter().zip(&other.rows) {
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                let lo = a[i].0.max(b[j].0);
                let hi = a[i].1.min(b[j].1);
                if lo < hi {
                    total += u64::from(hi - lo);
                }
                if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
            }
        }
        total
    }

    fn iou(&self, other: &RunMask) -> f64 {
        let inter = self.intersection_count(other);
        let union = self.count() + other.count() - inter;
        if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        }
    }
}

/// A blobby food-like mask (union of discs) and a noisy prediction of it.
fn pair(w: u32, h: u32, noisy: bool) -> (Mask, Mask) {
    let discs = [(0.3, 0.4, 0.18), (0.62, 0.55, 0.22), (0.5, 0.2, 0.1)];
    let inside = |x: u32, y: u32, shift: f64| {
        discs.iter().any(|&(cx, cy, r)| {
            let dx = f64::from(x) / f64::from(w) - cx - shift;
            let dy = f64::from(y) / f64::from(h) - cy;
            dx * dx + dy * dy < r * r
        })
    };
    let gt = Mask::from_fn(w, h, |x, y| inside(x, y, 0.0));
    let pred = Mask::from_fn(w, h, |x, y| {
        inside(x, y, 0.02)
            ^ (noisy && (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 23 == 0)
    });
    (gt, pred)
}

fn bench(c: &mut Criterion) {
    for &(w, h, noisy, label) in &[
        (512, 512, false, "512x512 smooth"),
        (1024, 768, false, "1024x768 smooth"),
        (1024, 768, true, "1024x768 noisy (SAM2-like speckle)"),
    ] {
        let (a, b) = pair(w, h, noisy);
        let (ra, rb) = (RunMask::from_mask(&a), RunMask::from_mask(&b));
        assert!((a.iou(&b).unwrap() - ra.iou(&rb)).abs() < 1e-12);
        let mut group = c.benchmark_group(format!("iou {label}"));
        group.bench_function("bitpacked", |bch| {
            bch.iter(|| black_box(&a).iou(black_box(&b)))
        });
        group.bench_function("row_rle", |bch| {
            bch.iter(|| black_box(&ra).iou(black_box(&rb)))
        });
        group.finish();
        let mut group = c.benchmark_group(format!("or-merge {label}"));
        group.bench_function("bitpacked", |bch| {
            bch.iter(|| {
                let mut m = a.clone();
                m.or_assign(black_box(&b)).unwrap();
                m
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
