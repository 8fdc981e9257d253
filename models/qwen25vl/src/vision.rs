//! The Qwen2.5-VL vision tower (`visual.*` keys).
//!
//! Patches are embedded by a bias-free conv3d whose stride equals its kernel, which is a plain
//! matmul on the flattened patches. Tokens are then reordered so that each attention window
//! (`window_size` pixels square, i.e. 4x4 merged tokens) is contiguous; blocks listed in
//! `fullatt_block_indexes` attend over the whole image, the others within windows. After the
//! 2x2 patch merger the original order is restored.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::VisionConfig;
use crate::ops::{RmsNorm, apply, apply_rope, linear, softmax_f32};

/// Token order and attention segments for a set of images.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLayout {
    /// Merged-token permutation putting windows contiguous (HF `get_window_index`).
    pub window_index: Vec<u32>,
    /// Its inverse (HF `argsort(window_index)`).
    pub reverse_index: Vec<u32>,
    /// Window boundaries in patch units, empty windows dropped (HF `cu_window_seqlens`).
    pub cu_window: Vec<usize>,
    /// Per image-frame boundaries in patch units (HF `cu_seqlens`).
    pub cu_full: Vec<usize>,
}

impl WindowLayout {
    /// Computes the layout for images with patch grids `grids` (`(t, h, w)` each).
    pub fn new(cfg: &VisionConfig, grids: &[[usize; 3]]) -> Self {
        let m = cfg.spatial_merge_size;
        let unit = m * m;
        let vws = cfg.window_size / m / cfg.patch_size;
        let mut window_index = Vec::new();
        let mut cu_window = vec![0usize];
        let mut cu_full = vec![0usize];
        let mut offset = 0usize;
        for &[t, h, w] in grids {
            let (lh, lw) = (h / m, w / m);
            for ti in 0..t {
                for wr in 0..lh.div_ceil(vws) {
                    for wc in 0..lw.div_ceil(vws) {
                        let mut n = 0;
                        for r in wr * vws..((wr + 1) * vws).min(lh) {
                            for c in wc * vws..((wc + 1) * vws).min(lw) {
                                window_index.push((offset + ti * lh * lw + r * lw + c) as u32);
                                n += 1;
                            }
                        }
                        if n > 0 {
                            let last = *cu_window.last().unwrap_or(&0);
                            cu_window.push(last + n * unit);
                        }
                    }
                }
                let last = *cu_full.last().unwrap_or(&0);
                cu_full.push(last + h * w);
            }
            offset += t * lh * lw;
        }
        let mut reverse_index = vec![0u32; window_index.len()];
        for (i, &w) in window_index.iter().enumerate() {
            reverse_index[w as usize] = i as u32;
        }
        Self {
            window_index,
            reverse_index,
            cu_window,
            cu_full,
        }
    }
}

/// 2-D rotary half tables `(cos, sin)`, each `[n_patches, head_dim / 2]` (`[h freqs, w freqs]`;
/// the full table repeats it twice), in window order.
fn rotary_tables(
    cfg: &VisionConfig,
    grids: &[[usize; 3]],
    layout: &WindowLayout,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let spatial = hd / 2;
    // inv_freq in f32 as torch computes it: 1 / theta^(2j / spatial).
    let inv: Vec<f32> = (0..spatial / 2)
        .map(|j| 1.0 / (cfg.rope_theta as f32).powf((2 * j) as f32 / spatial as f32))
        .collect();
    let m = cfg.spatial_merge_size;
    // (h, w) per patch in block-major order, as the patches are flattened.
    let mut hw = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            hw.push(((bh * m + mh) as f32, (bw * m + mw) as f32));
                        }
                    }
                }
            }
        }
    }
    let unit = m * m;
    let n = hw.len();
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for &wi in &layout.window_index {
        for u in 0..unit {
            let (ph, pw) = hw[wi as usize * unit + u];
            let freqs: Vec<f32> = inv
                .iter()
                .map(|f| ph * f)
                .chain(inv.iter().map(|f| pw * f))
                .collect();
            for _ in 0..2 {
                cos.extend(freqs.iter().map(|f| f.cos()));
                sin.extend(freqs.iter().map(|f| f.sin()));
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, hd), device)?,
        Tensor::from_vec(sin, (n, hd), device)?,
    ))
}

/// Self-attention of one vision block over packed segments.
#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: linear(h, 3 * h, true, vb.pp("qkv"))?,
            proj: linear(h, h, true, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x`: `[N, hidden]`; `cu`: segment boundaries; attention never crosses a boundary.
    fn forward(
        &self,
        x: &Tensor,
        cu: &[usize],
        cos: &Tensor,
        sin: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let dtype = x.dtype();
        let qkv = apply(&self.qkv, x)?
            .reshape((n, 3, self.num_heads, self.head_dim))?
            .permute((1, 2, 0, 3))?;
        // Rotary in f32 as HF does, on [heads, N, head_dim].
        let rope = |t: Tensor| -> Result<Tensor> {
            apply_rope(&t.to_dtype(DType::F32)?, cos, sin)?.to_dtype(dtype)
        };
        let q = rope(qkv.get(0)?)?;
        let k = rope(qkv.get(1)?)?;
        let v = qkv.get(2)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut outs = Vec::new();
        // Consecutive segments of equal length are batched into one matmul.
        let mut i = 0;
        while i + 1 < cu.len() {
            let len = cu[i + 1] - cu[i];
            let mut j = i + 1;
            while j + 1 < cu.len() && cu[j + 1] - cu[j] == len {
                j += 1;
            }
            let count = j - i;
            let (start, total) = (cu[i], cu[j] - cu[i]);
            let seg = |t: &Tensor| -> Result<Tensor> {
                t.narrow(1, start, total)?
                    .reshape((self.num_heads, count, len, self.head_dim))?
                    .contiguous()
            };
            let (qs, ks, vs) = (seg(&q)?, seg(&k)?, seg(&v)?);
            let scores = (qs.matmul(&ks.t()?)? * scale)?;
            let probs = softmax_f32(&scores, train)?.to_dtype(dtype)?;
            outs.push(
                probs
                    .matmul(&vs)?
                    .reshape((self.num_heads, total, self.head_dim))?,
            );
            i = j;
        }
        let out = Tensor::cat(&outs, 1)?
            .transpose(0, 1)?
            .reshape((n, self.num_heads * self.head_dim))?;
        apply(&self.proj, &out)
    }
}

/// SwiGLU MLP with biases.
#[derive(Debug, Clone)]
struct VisionMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl VisionMlp {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(h, i, true, vb.pp("gate_proj"))?,
            up_proj: linear(h, i, true, vb.pp("up_proj"))?,
            down_proj: linear(i, h, true, vb.pp("down_proj"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = apply(&self.gate_proj, x)?.silu()?;
        apply(&self.down_proj, &(g * apply(&self.up_proj, x)?)?)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("norm1"))?,
            norm2: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("norm2"))?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }
    fn forward(
        &self,
        x: &Tensor,
        cu: &[usize],
        cos: &Tensor,
        sin: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.norm1.forward(x, train)?, cu, cos, sin, train)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x, train)?)?
    }
}

/// RMSNorm, then an MLP over each 2x2 group of neighbouring patches.
#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    merged_dim: usize,
}

impl PatchMerger {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_dim = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(cfg.hidden_size, 1e-6, vb.pp("ln_q"))?,
            fc1: linear(merged_dim, merged_dim, true, vb.pp("mlp.0"))?,
            fc2: linear(merged_dim, cfg.out_hidden_size, true, vb.pp("mlp.2"))?,
            merged_dim,
        })
    }
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.ln_q.forward(x, train)?;
        let n = x.dim(0)? * x.dim(1)? / self.merged_dim;
        let x = x.reshape((n, self.merged_dim))?;
        apply(&self.fc2, &apply(&self.fc1, &x)?.gelu_erf()?)
    }
}

/// The vision tower: pixel patches to language-model embeddings (one per 2x2 patches).
#[derive(Debug, Clone)]
pub struct VisionModel {
    patch_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
}

impl VisionModel {
    /// Loads from `vb` positioned at `visual`.
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let w = vb.pp("patch_embed").pp("proj").get(
            (
                cfg.hidden_size,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "weight",
        )?;
        let patch_embed = w.reshape((cfg.hidden_size, cfg.patch_dim()))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed,
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"))?,
            cfg: cfg.clone(),
        })
    }

    /// `pixel_values`: `[n_patches, patch_dim]` as the processor produces them (any float dtype);
    /// `grids`: `(t, h, w)` per image. Returns `[n_patches / merge², out_hidden_size]`.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
        train: bool,
    ) -> Result<Tensor> {
        let device = pixel_values.device();
        let dtype = self.patch_embed.dtype();
        let n = pixel_values.dim(0)?;
        let expected: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
        if expected != n {
            candle_core::bail!(
                "pixel_values has {n} patches but the grids {grids:?} describe {expected}"
            );
        }
        let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        let layout = WindowLayout::new(&self.cfg, grids);
        let x = pixel_values
            .to_dtype(dtype)?
            .matmul(&self.patch_embed.t()?)?;
        let widx = Tensor::from_slice(&layout.window_index, layout.window_index.len(), device)?;
        let hidden = self.cfg.hidden_size;
        let mut x = x
            .reshape((n / unit, unit, hidden))?
            .index_select(&widx, 0)?
            .reshape((n, hidden))?;
        let (cos, sin) = rotary_tables(&self.cfg, grids, &layout, device)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let cu = if self.cfg.fullatt_block_indexes.contains(&i) {
                &layout.cu_full
            } else {
                &layout.cu_window
            };
            x = blk.forward(&x, cu, &cos, &sin, train)?;
        }
        let merged = self.merger.forward(&x, train)?;
        let ridx = Tensor::from_slice(&layout.reverse_index, layout.reverse_index.len(), device)?;
        merged.index_select(&ridx, 0)
    }
}

/// Number of merged tokens per image.
pub fn tokens_per_image(cfg: &VisionConfig, grids: &[[usize; 3]]) -> Vec<usize> {
    let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
    grids
        .iter()
        .map(|g| g.iter().product::<usize>() / unit)
        .collect()
}
