//! SAM2's Hiera trunk (`sam2/modeling/backbones/hieradet.py`): 7×7/4 patch embedding, windowed
//! attention with a few global blocks, query pooling at stage transitions, and a background
//! position embedding (bicubic-resized) plus a tiled window position embedding. Activations are
//! kept as BHWC, like Meta's code.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};

use crate::config::{HieraConfig, Sam2Config};
use crate::ops::{Activation, Mlp, layer_norm, max_pool_bhwc, sdpa};
use crate::resample::resize_bicubic;

#[derive(Debug, Clone)]
struct MultiScaleAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    q_stride: Option<(usize, usize)>,
}

impl MultiScaleAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, _) = x.dims4()?;
        let qkv = self.qkv.forward(x)?; // [b, h, w, 3*dim_out]
        let dim_out = qkv.dim(3)? / 3;
        let hd = dim_out / self.num_heads;
        let qkv = qkv.reshape((b, h * w, 3, self.num_heads, hd))?;
        let mut q = qkv.narrow(2, 0, 1)?.squeeze(2)?;
        let k = qkv.narrow(2, 1, 1)?.squeeze(2)?;
        let v = qkv.narrow(2, 2, 1)?.squeeze(2)?;
        let (mut ho, mut wo) = (h, w);
        if let Some(stride) = self.q_stride {
            let pooled = max_pool_bhwc(&q.reshape((b, h, w, dim_out))?, stride)?;
            (ho, wo) = (pooled.dim(1)?, pooled.dim(2)?);
            q = pooled.reshape((b, ho * wo, self.num_heads, hd))?;
        }
        // [b, L, nh, hd] -> [b*nh, L, hd]
        let heads = |t: &Tensor| -> Result<Tensor> {
            let l = t.dim(1)?;
            t.transpose(1, 2)?.reshape((b * self.num_heads, l, hd))
        };
        let o = sdpa(&heads(&q)?, &heads(&k)?, &heads(&v)?)?;
        let o = o
            .reshape((b, self.num_heads, ho * wo, hd))?
            .transpose(1, 2)?
            .reshape((b, ho, wo, dim_out))?;
        self.proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct MultiScaleBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: MultiScaleAttention,
    mlp: Mlp,
    proj: Option<Linear>,
    window_size: usize,
    q_stride: Option<(usize, usize)>,
}

fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let pad_h = (ws - h % ws) % ws;
    let pad_w = (ws - w % ws) % ws;
    let x = if pad_h > 0 || pad_w > 0 {
        x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let win = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((win, (hp, wp)))
}

fn window_unpartition(
    win: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = win.dim(3)?;
    let b = win.dim(0)? / (hp * wp / ws / ws);
    let x = win
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x.narrow(1, 0, h)?.narrow(2, 0, w)
    } else {
        Ok(x)
    }
}

impl MultiScaleBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xn = self.norm1.forward(x)?;
        let shortcut = match &self.proj {
            Some(proj) => {
                let s = proj.forward(&xn)?;
                match self.q_stride {
                    Some(st) => max_pool_bhwc(&s, st)?,
                    None => s,
                }
            }
            None => x.clone(),
        };
        let mut ws = self.window_size;
        let (h, w) = (xn.dim(1)?, xn.dim(2)?);
        let mut y = xn;
        let mut pad_hw = (h, w);
        if ws > 0 {
            (y, pad_hw) = window_partition(&y, ws)?;
        }
        y = self.attn.forward(&y)?;
        let (mut h, mut w) = (h, w);
        if let Some((sh, _)) = self.q_stride {
            ws /= sh;
            (h, w) = (shortcut.dim(1)?, shortcut.dim(2)?);
            if ws > 0 {
                pad_hw = (h + (ws - h % ws) % ws, w + (ws - w % ws) % ws);
            }
        }
        if self.window_size > 0 {
            y = window_unpartition(&y, ws, pad_hw, (h, w))?;
        }
        let x = (shortcut + y)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x + m
    }
}

/// The Hiera trunk; `forward` returns the output of every stage as NCHW, finest first.
#[derive(Debug, Clone)]
pub struct Hiera {
    patch_embed: Conv2d,
    /// Position embedding for the configured image size, [1, H/4, W/4, C].
    pos_embed: Tensor,
    blocks: Vec<MultiScaleBlock>,
    stage_ends: Vec<usize>,
}

impl Hiera {
    pub fn new(cfg: &Sam2Config, vb: VarBuilder) -> Result<Self> {
        let t: &HieraConfig = &cfg.trunk;
        let patch_embed = candle_nn::conv2d(
            3,
            t.embed_dim,
            7,
            Conv2dConfig {
                padding: 3,
                stride: 4,
                ..Default::default()
            },
            vb.pp("patch_embed.proj"),
        )?;
        let hw = cfg.image_size / 4;
        let pos_embed = Self::build_pos_embed(t, hw, &vb)?;

        let depth: usize = t.stages.iter().sum();
        let mut stage_ends = Vec::with_capacity(t.stages.len());
        let mut acc = 0;
        for s in &t.stages {
            acc += s;
            stage_ends.push(acc - 1);
        }
        let q_pool_blocks: Vec<usize> = stage_ends[..stage_ends.len() - 1]
            .iter()
            .map(|e| e + 1)
            .take(t.q_pool)
            .collect();
        let mut embed = t.embed_dim;
        let mut heads = t.num_heads;
        let mut cur_stage = 1;
        let mut blocks = Vec::with_capacity(depth);
        let vbb = vb.pp("blocks");
        for i in 0..depth {
            let mut dim_out = embed;
            // The window size lags a block: a stage's first block uses the previous stage's size.
            let mut window_size = t.window_spec[cur_stage - 1];
            if t.global_att_blocks.contains(&i) {
                window_size = 0;
            }
            if i > 0 && stage_ends.contains(&(i - 1)) {
                dim_out = (embed as f64 * t.dim_mul) as usize;
                heads = (heads as f64 * t.head_mul) as usize;
                cur_stage += 1;
            }
            let q_stride = q_pool_blocks.contains(&i).then_some(t.q_stride);
            let vbi = vbb.pp(i);
            let proj = if embed != dim_out {
                Some(candle_nn::linear(embed, dim_out, vbi.pp("proj"))?)
            } else {
                None
            };
            blocks.push(MultiScaleBlock {
                norm1: layer_norm(embed, 1e-6, vbi.pp("norm1"))?,
                norm2: layer_norm(dim_out, 1e-6, vbi.pp("norm2"))?,
                attn: MultiScaleAttention {
                    qkv: candle_nn::linear(embed, dim_out * 3, vbi.pp("attn.qkv"))?,
                    proj: candle_nn::linear(dim_out, dim_out, vbi.pp("attn.proj"))?,
                    num_heads: heads,
                    q_stride,
                },
                mlp: Mlp::new(
                    dim_out,
                    dim_out * 4,
                    dim_out,
                    2,
                    Activation::Gelu,
                    false,
                    vbi.pp("mlp"),
                )?,
                proj,
                window_size,
                q_stride,
            });
            embed = dim_out;
        }
        Ok(Self {
            patch_embed,
            pos_embed,
            blocks,
            stage_ends,
        })
    }

    /// Bicubic-resized background embedding plus the tiled window embedding (done once on CPU).
    fn build_pos_embed(t: &HieraConfig, hw: usize, vb: &VarBuilder) -> Result<Tensor> {
        let c = t.embed_dim;
        let (bh, bw) = t.window_pos_embed_bkg_spatial_size;
        let ws = t.window_spec[0];
        let bkg = vb.get((1, c, bh, bw), "pos_embed")?;
        let win = vb.get((1, c, ws, ws), "pos_embed_window")?;
        let bkg = bkg
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let win = win
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut pe = resize_bicubic(&bkg, c, (bh, bw), (hw, hw));
        for ch in 0..c {
            for y in 0..hw {
                for x in 0..hw {
                    pe[(ch * hw + y) * hw + x] += win[(ch * ws + y % ws) * ws + x % ws];
                }
            }
        }
        Tensor::from_vec(pe, (1, c, hw, hw), &Device::Cpu)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .to_device(vb.device())
    }

    /// Runs the trunk on a normalised [B, 3, S, S] image; returns one NCHW map per stage.
    pub fn forward(&self, img: &Tensor) -> Result<Vec<Tensor>> {
        let x = self.patch_embed.forward(img)?.permute((0, 2, 3, 1))?;
        let mut x = x.broadcast_add(&self.pos_embed)?;
        let mut outs = Vec::with_capacity(self.stage_ends.len());
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x)?;
            if self.stage_ends.contains(&i) {
                outs.push(x.permute((0, 3, 1, 2))?.contiguous()?);
            }
        }
        Ok(outs)
    }
}
