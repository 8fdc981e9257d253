//! Global gradient-norm clipping (candle-nn has no helper for it).

use candle_core::{DType, Tensor};

use crate::Result;

/// Scales every gradient by `max_norm / (‖g‖ + 1e-6)` when the global L2 norm ‖g‖ of `grads`
/// exceeds `max_norm` (the convention of `torch.nn.utils.clip_grad_norm_`), and returns the norm
/// before clipping. A non-finite norm is returned unchanged and nothing is scaled: the caller
/// skips the step. `None` entries are parameters without a gradient.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter().flatten() {
        sq += squared_norm(g)?;
    }
    let norm = sq.sqrt();
    if let Some(scale) = clip_scale(norm, max_norm) {
        for g in grads.iter_mut() {
            if let Some(t) = g.take() {
                *g = Some((t * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Sum of squares of `t`'s elements, accumulated in f64.
pub(crate) fn squared_norm(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The factor [`clip_grad_norm`] scales by for a global norm `norm`, or `None` when it leaves
/// the gradients alone (norm within `max_norm`, or not finite).
pub(crate) fn clip_scale(norm: f64, max_norm: f64) -> Option<f64> {
    (norm.is_finite() && norm > max_norm).then(|| max_norm / (norm + 1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clips_to_max_norm_hand_derived() {
        // Gradients (3, 0) and (0, 4): global norm 5. max_norm 1 → scale 1 / (5 + 1e-6).
        let mut grads = vec![
            Some(Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap()),
            None,
            Some(Tensor::new(&[0f32, 4.0], &Device::Cpu).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let s = 1.0 / (5.0 + 1e-6);
        let a = grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        let b = grads[2].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!((f64::from(a[0]) - 3.0 * s).abs() < 1e-6);
        assert!((f64::from(b[1]) - 4.0 * s).abs() < 1e-6);
        // Below the bound nothing changes.
        let norm2 = clip_grad_norm(&mut grads, 10.0).unwrap();
        assert!((norm2 - 1.0).abs() < 1e-5);
        assert_eq!(grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap(), a);
        // A NaN gradient gives a NaN norm and is left alone.
        let mut bad = vec![Some(Tensor::new(&[f32::NAN], &Device::Cpu).unwrap())];
        assert!(clip_grad_norm(&mut bad, 1.0).unwrap().is_nan());
    }
}
