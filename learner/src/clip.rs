//! Global gradient-norm clipping (candle-nn has no helper for it).

use candle_core::backprop::GradStore;
use candle_core::{DType, Var};

use crate::Result;

/// Scales every gradient by `max_norm / (‖g‖ + 1e-6)` when the global L2 norm ‖g‖ over `vars`
/// exceeds `max_norm` (the convention of `torch.nn.utils.clip_grad_norm_`), and returns the norm
/// before clipping. A non-finite norm is returned unchanged and nothing is scaled: the caller
/// skips the step.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn clips_to_max_norm_hand_derived() {
        // Two vars with gradients (3, 0) and (0, 4): global norm 5. max_norm 1 → scale
        // 1 / (5 + 1e-6); the clipped norm is 5 / (5 + 1e-6) ≈ 1.
        let a = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let b = Var::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let w1 = Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap();
        let w2 = Tensor::new(&[0f32, 4.0], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor() * &w1).unwrap().sum_all().unwrap()
            + (b.as_tensor() * &w2).unwrap().sum_all().unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = [a.clone(), b.clone()];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let s = 1.0 / (5.0 + 1e-6);
        assert!((f64::from(ga[0]) - 3.0 * s).abs() < 1e-6);
        assert!((f64::from(gb[1]) - 4.0 * s).abs() < 1e-6);
        // Below the bound nothing changes.
        let norm2 = clip_grad_norm(&mut grads, &vars, 10.0).unwrap();
        assert!((norm2 - 1.0).abs() < 1e-5);
        assert_eq!(
            grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            ga
        );
    }
}
