//! Small building blocks shared by the encoder and decoder (Meta's `sam2_utils` and friends).

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// Meta's `MLP`: `num_layers` linears (`layers.N`), activation between them, optional sigmoid.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
    act: Activation,
    sigmoid_output: bool,
}

/// Activation used between MLP layers.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    Relu,
    Gelu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            // nn.GELU() is the exact erf form.
            Self::Gelu => gelu(x),
        }
    }
}

impl Mlp {
    pub fn new(
        input_dim: usize,
        hidden_dim: usize,
        output_dim: usize,
        num_layers: usize,
        act: Activation,
        sigmoid_output: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let din = if i == 0 { input_dim } else { hidden_dim };
            let dout = if i + 1 == num_layers {
                output_dim
            } else {
                hidden_dim
            };
            layers.push(candle_nn::linear(din, dout, vb.pp(format!("layers.{i}")))?);
        }
        Ok(Self {
            layers,
            act,
            sigmoid_output,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let n = self.layers.len();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < n {
                x = self.act.apply(&x)?;
            }
        }
        if self.sigmoid_output {
            candle_nn::ops::sigmoid(&x)
        } else {
            Ok(x)
        }
    }
}

/// `nn.LayerNorm(dim, eps)` over the last dimension.
pub fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm(
        dim,
        candle_nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
        vb,
    )
}

/// `ConvTranspose2d(kernel=2, stride=2)` on channels-last maps as one matmul: the 2×2 taps never
/// overlap, so each input pixel writes its own 2×2 output block (much faster than a generic
/// transposed convolution, and no NCHW round trip).
#[derive(Debug, Clone)]
pub struct Upscale2x {
    /// [c_in, 2 * 2 * c_out], ordered (ki, kj, o).
    weight: Tensor,
    /// Bias tiled to [2 * 2 * c_out].
    bias: Tensor,
    c_out: usize,
}

impl Upscale2x {
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((c_in, c_out, 2, 2), "weight")?;
        let weight = w.permute((0, 2, 3, 1))?.reshape((c_in, 4 * c_out))?;
        let bias = vb
            .get(c_out, "bias")?
            .unsqueeze(0)?
            .repeat((4, 1))?
            .flatten_all()?;
        Ok(Self {
            weight,
            bias,
            c_out,
        })
    }

    /// [B, H, W, C_in] -> [B, 2H, 2W, C_out].
    pub fn forward_bhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let y = x
            .reshape((b * h * w, c))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?;
        y.reshape((b, h, w, 2, 2, self.c_out))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, 2 * h, 2 * w, self.c_out))
    }
}

/// Scaled dot-product attention on `[n, tokens, head_dim]` tensors, processed in chunks along
/// `n` so the score matrix of global attention at 1024 px stays within a bounded size.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (n, lq, hd) = q.dims3()?;
    let lk = k.dim(1)?;
    let scale = 1.0 / (hd as f64).sqrt();
    // At most ~32M score elements (128 MB in f32) per chunk.
    let per = (32usize << 20) / (lq * lk).max(1);
    let chunk = per.clamp(1, n.max(1));
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qs = (q.narrow(0, start, len)? * scale)?;
        let ks = k.narrow(0, start, len)?;
        let vs = v.narrow(0, start, len)?;
        let att = qs.contiguous()?.matmul(&ks.t()?.contiguous()?)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        outs.push(att.matmul(&vs.contiguous()?)?);
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.remove(0))
    } else {
        Tensor::cat(&outs, 0)
    }
}

/// Max over non-overlapping `s × s` cells of a BHWC tensor (`MaxPool2d(s, s)`, floor mode).
pub fn max_pool_bhwc(x: &Tensor, (sh, sw): (usize, usize)) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = (h / sh, w / sw);
    let x = if ho * sh != h || wo * sw != w {
        x.narrow(1, 0, ho * sh)?.narrow(2, 0, wo * sw)?
    } else {
        x.clone()
    };
    x.reshape((b, ho, sh, wo, sw, c))?.max(D::Minus2)?.max(2)
}

/// Exact-form GELU, `x/2 · (1 + erf(x/√2))`. On CPU it runs multi-threaded with an erf accurate
/// to 1.5e-7 (Abramowitz & Stegun 7.1.26), several times faster than candle's single-threaded
/// unary op; elsewhere it is candle's `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&GeluErfCpu)
    } else {
        x.gelu_erf()
    }
}

fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * (-ax * ax).exp();
    if x < 0.0 { -y } else { y }
}

fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct GeluErfCpu;

impl CustomOp1 for GeluErfCpu {
    fn name(&self) -> &'static str {
        "sam2-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("sam2-gelu-erf expects f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("sam2-gelu-erf expects a contiguous tensor")
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        let threads = candle_core::utils::get_num_threads().max(1);
        let chunk = src.len().div_ceil(threads).max(1 << 15);
        std::thread::scope(|scope| {
            for (o, i) in out.chunks_mut(chunk).zip(src.chunks(chunk)) {
                scope.spawn(move || o.iter_mut().zip(i).for_each(|(o, &x)| *o = gelu_scalar(x)));
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_gelu_matches_candle_gelu_erf() {
        let x = Tensor::arange(-8000f32, 8000f32, &candle_core::Device::Cpu).unwrap();
        let x = (x / 1000.0).unwrap();
        let ours = gelu(&x).unwrap();
        let reference = x.gelu_erf().unwrap();
        let d = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "max diff {d}");
    }
}
