//! CPU resampling that reproduces PyTorch's `F.interpolate` kernels (align_corners=False):
//! antialiased bilinear (what torchvision's `Resize` uses on tensors) and bicubic (Hiera's
//! background position embedding). Planes are row-major `f32`.

/// Per-output-index source taps: first source index and normalised weights.
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

/// PyTorch's `_upsample_bilinear2d_aa` weights along one axis (PIL-style triangle filter whose
/// support grows with the downscale factor; for upscaling it equals plain bilinear).
fn aa_bilinear_taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        // `as i64` truncates toward zero, like the C++ cast.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let mut w: Vec<f64> = (xmin..xmax)
            .map(|j| {
                let x = ((j - xmin) as f64 + xmin as f64 - center + 0.5) * invscale;
                (1.0 - x.abs()).max(0.0)
            })
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        start.push(xmin as usize);
        weights.push(w.into_iter().map(|v| v as f32).collect());
    }
    Taps { start, weights }
}

/// PyTorch's bicubic weights (A = -0.75, source index clamped at the borders).
fn bicubic_taps(in_size: usize, out_size: usize) -> (Vec<[usize; 4]>, Vec<[f32; 4]>) {
    const A: f32 = -0.75;
    let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = in_size as f32 / out_size as f32;
    let mut idx = Vec::with_capacity(out_size);
    let mut wts = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let real = scale * (i as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let base = base as i64;
        let clamp = |v: i64| v.clamp(0, in_size as i64 - 1) as usize;
        idx.push([
            clamp(base - 1),
            clamp(base),
            clamp(base + 1),
            clamp(base + 2),
        ]);
        wts.push([cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)]);
    }
    (idx, wts)
}

/// Resizes `planes` planes of `in_h × in_w` to `out_h × out_w` with antialiased bilinear.
pub fn resize_bilinear_aa(
    data: &[f32],
    planes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let tx = aa_bilinear_taps(in_w, out_w);
    let ty = aa_bilinear_taps(in_h, out_h);
    let mut tmp = vec![0f32; planes * in_h * out_w];
    for p in 0..planes {
        for y in 0..in_h {
            let row = &data[(p * in_h + y) * in_w..][..in_w];
            let out = &mut tmp[(p * in_h + y) * out_w..][..out_w];
            for (x, o) in out.iter_mut().enumerate() {
                let s = tx.start[x];
                *o = tx.weights[x]
                    .iter()
                    .enumerate()
                    .map(|(k, w)| w * row[s + k])
                    .sum();
            }
        }
    }
    let mut out = vec![0f32; planes * out_h * out_w];
    for p in 0..planes {
        for y in 0..out_h {
            let s = ty.start[y];
            let dst = &mut out[(p * out_h + y) * out_w..][..out_w];
            for (k, w) in ty.weights[y].iter().enumerate() {
                let src = &tmp[(p * in_h + s + k) * out_w..][..out_w];
                dst.iter_mut().zip(src).for_each(|(d, v)| *d += w * v);
            }
        }
    }
    out
}

/// Resizes `planes` planes with PyTorch's bicubic interpolation.
pub fn resize_bicubic(
    data: &[f32],
    planes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let (ix, wx) = bicubic_taps(in_w, out_w);
    let (iy, wy) = bicubic_taps(in_h, out_h);
    let mut out = vec![0f32; planes * out_h * out_w];
    for p in 0..planes {
        let plane = &data[p * in_h * in_w..][..in_h * in_w];
        for y in 0..out_h {
            for x in 0..out_w {
                let mut acc = 0f32;
                for (a, &sy) in iy[y].iter().enumerate() {
                    let mut row = 0f32;
                    for (b, &sx) in ix[x].iter().enumerate() {
                        row += wx[x][b] * plane[sy * in_w + sx];
                    }
                    acc += wy[y][a] * row;
                }
                out[(p * out_h + y) * out_w + x] = acc;
            }
        }
    }
    out
}

/// PyTorch's plain bilinear interpolation (no antialias, align_corners=False), as used for mask
/// post-processing; planes are processed on all cores.
pub fn resize_bilinear(
    data: &[f32],
    planes: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    // Source index and weights along one axis, as `area_pixel_compute_source_index`.
    let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|i| {
                let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                let l1 = src - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(in_h, out_h), taps(in_w, out_w));
    let mut out = vec![0f32; planes * out_h * out_w];
    let plane_len = out_h * out_w;
    if plane_len == 0 || in_h == 0 || in_w == 0 {
        return out;
    }
    let threads = candle_core::utils::get_num_threads().max(1);
    let rows_per = (planes * out_h).div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk_idx, chunk) in out.chunks_mut(rows_per * out_w).enumerate() {
            let (ty, tx) = (&ty, &tx);
            scope.spawn(move || {
                for (r, row) in chunk.chunks_mut(out_w).enumerate() {
                    let global = chunk_idx * rows_per + r;
                    let (p, y) = (global / out_h, global % out_h);
                    let plane = &data[p * in_h * in_w..(p + 1) * in_h * in_w];
                    let (y0, y1, hy0, hy1) = ty[y];
                    let (r0, r1) = (
                        &plane[y0 * in_w..(y0 + 1) * in_w],
                        &plane[y1 * in_w..(y1 + 1) * in_w],
                    );
                    for (o, &(x0, x1, wx0, wx1)) in row.iter_mut().zip(tx) {
                        *o = hy0 * (wx0 * r0[x0] + wx1 * r0[x1])
                            + hy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
                    }
                }
            });
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aa_weights_sum_to_one_and_identity_is_exact() {
        let t = aa_bilinear_taps(37, 11);
        for w in &t.weights {
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let data: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear_aa(&data, 1, (3, 4), (3, 4)), data);
        assert_eq!(resize_bicubic(&data, 1, (3, 4), (3, 4)), data);
    }

    #[test]
    fn plain_bilinear_matches_candle() {
        let data: Vec<f32> = (0..2 * 5 * 7)
            .map(|v| ((v * 37) % 11) as f32 - 5.0)
            .collect();
        for (oh, ow) in [(13, 17), (3, 4), (5, 7), (40, 9)] {
            let ours = resize_bilinear(&data, 2, (5, 7), (oh, ow));
            let t = candle_core::Tensor::from_vec(
                data.clone(),
                (1, 2, 5, 7),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let theirs = t
                .upsample_bilinear2d(oh, ow, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let d = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "{oh}x{ow}: {d}");
        }
    }

    #[test]
    fn bilinear_upscale_matches_hand_values() {
        // 1-D [0, 1] upscaled to 4: source coords -0.25, 0.25, 0.75, 1.25 -> 0, .25, .75, 1.
        let out = resize_bilinear_aa(&[0.0, 1.0], 1, (1, 2), (1, 4));
        let want = [0.0, 0.25, 0.75, 1.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn aa_downscale_by_two_averages_pairs() {
        // Factor 2: support 2, triangle weights (.25, .75, .75, .25)/2 centred between pairs.
        let out = resize_bilinear_aa(&[0.0, 4.0, 8.0, 12.0], 1, (1, 4), (1, 2));
        // Output 0: centre 1.0, taps 0..2 (weights .75 .75 .25 normalised over clipped window).
        let w = [0.75f32, 0.75, 0.25];
        let s: f32 = w.iter().sum();
        let want0 = (0.0 * w[0] + 4.0 * w[1] + 8.0 * w[2]) / s;
        assert!((out[0] - want0).abs() < 1e-5, "{out:?} vs {want0}");
    }
}
