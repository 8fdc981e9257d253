//! The FPN neck (`image_encoder.py::FpnNeck`) and its sine position encoding.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use crate::config::{FpnInterp, NeckConfig};

/// 1×1 lateral convolutions with top-down fusion on the configured levels.
#[derive(Debug, Clone)]
pub struct FpnNeck {
    /// `convs[j]` handles trunk level `n - j` (Meta stores them coarsest first).
    convs: Vec<Conv2d>,
    cfg: NeckConfig,
}

impl FpnNeck {
    pub fn new(cfg: &NeckConfig, vb: VarBuilder) -> Result<Self> {
        let convs = cfg
            .backbone_channel_list
            .iter()
            .enumerate()
            .map(|(j, &dim)| {
                candle_nn::conv2d(
                    dim,
                    cfg.d_model,
                    1,
                    Default::default(),
                    vb.pp(format!("convs.{j}.conv")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            cfg: cfg.clone(),
        })
    }

    /// Trunk stage outputs (finest first) to FPN features (finest first), all `d_model` wide.
    pub fn forward(&self, xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = self.convs.len() - 1;
        let mut out: Vec<Option<Tensor>> = vec![None; self.convs.len()];
        let mut prev: Option<Tensor> = None;
        for i in (0..=n).rev() {
            let lateral = self.convs[n - i].forward(&xs[i])?;
            let fused = match (&prev, self.cfg.fpn_top_down_levels.contains(&i)) {
                (Some(p), true) => {
                    let (_, _, h, w) = p.dims4()?;
                    let td = match self.cfg.fpn_interp {
                        FpnInterp::Nearest => p.upsample_nearest2d(2 * h, 2 * w)?,
                        FpnInterp::Bilinear => p.upsample_bilinear2d(2 * h, 2 * w, false)?,
                    };
                    let s = (lateral + td)?;
                    if self.cfg.fuse_avg { (s / 2.0)? } else { s }
                }
                _ => lateral,
            };
            out[i] = Some(fused.clone());
            prev = Some(fused);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// `PositionEmbeddingSine` for an `h × w` map: [1, num_pos_feats, h, w] (y half, then x half).
pub fn sine_position_encoding(
    cfg: &NeckConfig,
    h: usize,
    w: usize,
    device: &Device,
) -> Result<Tensor> {
    let npf = cfg.pos_num_feats / 2;
    let scale = cfg.pos_scale.unwrap_or(2.0 * std::f64::consts::PI) as f32;
    let dim_t: Vec<f32> = (0..npf)
        .map(|j| (cfg.pos_temperature as f32).powf(2.0 * (j / 2) as f32 / npf as f32))
        .collect();
    let embed = |v: usize, n: usize| -> f32 {
        let e = v as f32 + 1.0;
        if cfg.pos_normalize {
            e / (n as f32 + 1e-6) * scale
        } else {
            e
        }
    };
    let mut data = vec![0f32; 2 * npf * h * w];
    for y in 0..h {
        for x in 0..w {
            let (ye, xe) = (embed(y, h), embed(x, w));
            for j in 0..npf {
                let (py, px) = (ye / dim_t[j], xe / dim_t[j]);
                let (vy, vx) = if j % 2 == 0 {
                    (py.sin(), px.sin())
                } else {
                    (py.cos(), px.cos())
                };
                data[(j * h + y) * w + x] = vy;
                data[((npf + j) * h + y) * w + x] = vx;
            }
        }
    }
    Tensor::from_vec(data, (1, 2 * npf, h, w), device)
}
