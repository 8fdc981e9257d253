//! Building blocks shared by the vision tower and the language model.
//!
//! Every op here has a working backward pass when `train` is set: candle's fused softmax,
//! rms_norm and rope kernels return graph leaves (no gradient), so the training path uses plain
//! tensor ops and only the inference path uses the fused kernels.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

/// A linear layer with or without bias, loaded from `vb` (`weight`, `bias`).
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// Applies a linear layer to a tensor of any rank (the last dimension is the feature one).
pub fn apply(l: &Linear, x: &Tensor) -> Result<Tensor> {
    l.forward(x)
}

/// RMSNorm as HF's `Qwen2RMSNorm`: normalise in f32, cast back, then scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` of shape `[dim]` from `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }

    /// `train` selects the differentiable path; otherwise candle's fused kernel.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train && x.is_contiguous() {
            return candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// Softmax over the last dimension, computed in f32 (as HF's eager attention).
pub fn softmax_f32(x: &Tensor, train: bool) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    if train {
        candle_nn::ops::softmax(&xf, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(&xf.contiguous()?)
    }
}

/// `cat(-x2, x1)` on the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// `x * cos + rotate_half(x) * sin`, with `cos`/`sin` broadcast against `x`.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(cos)?
        .add(&rotate_half(x)?.broadcast_mul(sin)?)
}

/// Additive-mask value for hidden keys: finite so fully masked rows stay finite (uniform).
pub const MASK_VALUE: f32 = -1e30;
