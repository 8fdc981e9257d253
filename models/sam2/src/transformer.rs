//! The mask decoder's two-way transformer (`sam/transformer.py`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::ops::{Activation, Mlp, layer_norm, sdpa};

/// Multi-head attention with an optional internal downsampling of the channel dimension.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn new(dim: usize, num_heads: usize, downsample: usize, vb: VarBuilder) -> Result<Self> {
        let internal = dim / downsample;
        Ok(Self {
            q_proj: candle_nn::linear(dim, internal, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(dim, internal, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(dim, internal, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(internal, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(q)?;
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;
        let (b, lq, c) = q.dims3()?;
        let nh = self.num_heads;
        let hd = c / nh;
        let sep = |t: &Tensor| -> Result<Tensor> {
            let l = t.dim(1)?;
            t.reshape((b, l, nh, hd))?
                .transpose(1, 2)?
                .reshape((b * nh, l, hd))
        };
        let o = sdpa(&sep(&q)?, &sep(&k)?, &sep(&v)?)?;
        let o = o
            .reshape((b, nh, lq, hd))?
            .transpose(1, 2)?
            .reshape((b, lq, c))?;
        self.out_proj.forward(&o)
    }
}

impl Attention {
    /// Per-prompt queries `q` [B, N, C] against image keys/values shared by all prompts
    /// ([1, L, C]): the projections of the shared side run once, and the prompts are stacked as
    /// rows of one matmul per head.
    fn forward_shared_kv(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(q)?;
        let k = self.k_proj.forward(k)?.squeeze(0)?;
        let v = self.v_proj.forward(v)?.squeeze(0)?;
        let (b, n, c) = q.dims3()?;
        let (l, nh) = (k.dim(0)?, self.num_heads);
        let hd = c / nh;
        // [B, N, nh, hd] -> [nh, B*N, hd]; [L, nh, hd] -> [nh, L, hd]
        let q = q.reshape((b * n, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let k = k.reshape((l, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let v = v.reshape((l, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let o = sdpa(&q, &k, &v)?; // [nh, B*N, hd]
        let o = o.transpose(0, 1)?.reshape((b, n, c))?;
        self.out_proj.forward(&o)
    }

    /// Image queries shared by all prompts ([1, L, C]) against per-prompt tokens [B, N, C]:
    /// the query projection runs once; the result is per prompt, [B, L, C].
    fn forward_shared_q(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(q)?.squeeze(0)?;
        let k = self.k_proj.forward(k)?;
        let v = self.v_proj.forward(v)?;
        let (b, n, c) = k.dims3()?;
        let (l, nh) = (q.dim(0)?, self.num_heads);
        let hd = c / nh;
        let scale = 1.0 / (hd as f64).sqrt();
        // Scores of every prompt's tokens at once: [nh, L, hd] x [nh, hd, B*N] -> [nh, L, B, N].
        let q = (q.reshape((l, nh, hd))?.transpose(0, 1)?.contiguous()? * scale)?;
        let kt = k
            .reshape((b * n, nh, hd))?
            .permute((1, 2, 0))?
            .contiguous()?;
        let att = q.matmul(&kt)?.reshape((nh, l, b, n))?;
        let att = candle_nn::ops::softmax_last_dim(&att)?; // softmax within each prompt's tokens
        let att = att.permute((2, 0, 1, 3))?.contiguous()?; // [B, nh, L, N]
        let v = v.reshape((b, n, nh, hd))?.transpose(1, 2)?.contiguous()?; // [B, nh, N, hd]
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, c))?;
        self.out_proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    /// The first layer, while the image tokens are still the same for every prompt
    /// (`keys`, `key_pe`: [1, L, C]). Same math as `forward`, without repeating the image side.
    fn forward_shared_image(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let queries = (&queries + self.cross_token_to_image.forward_shared_kv(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;
        let queries = self
            .norm3
            .forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let attn = self
            .cross_image_to_token
            .forward_shared_q(&k, &q, &queries)?;
        let keys = self.norm4.forward(&attn.broadcast_add(keys)?)?;
        Ok((queries, keys))
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let queries = (&queries + self.cross_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;
        let queries = self
            .norm3
            .forward(&(&queries + self.mlp.forward(&queries)?)?)?;
        let q = (&queries + query_pe)?;
        let keys = (keys + self.cross_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

/// Depth-`depth` two-way transformer followed by a final token-to-image attention.
#[derive(Debug, Clone)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayBlock>,
    final_attn: Attention,
    norm_final: LayerNorm,
}

impl TwoWayTransformer {
    pub fn new(
        depth: usize,
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                let v = vb.pp(format!("layers.{i}"));
                Ok(TwoWayBlock {
                    self_attn: Attention::new(dim, num_heads, 1, v.pp("self_attn"))?,
                    norm1: layer_norm(dim, 1e-5, v.pp("norm1"))?,
                    cross_token_to_image: Attention::new(
                        dim,
                        num_heads,
                        2,
                        v.pp("cross_attn_token_to_image"),
                    )?,
                    norm2: layer_norm(dim, 1e-5, v.pp("norm2"))?,
                    mlp: Mlp::new(dim, mlp_dim, dim, 2, Activation::Relu, false, v.pp("mlp"))?,
                    norm3: layer_norm(dim, 1e-5, v.pp("norm3"))?,
                    norm4: layer_norm(dim, 1e-5, v.pp("norm4"))?,
                    cross_image_to_token: Attention::new(
                        dim,
                        num_heads,
                        2,
                        v.pp("cross_attn_image_to_token"),
                    )?,
                    skip_first_layer_pe: i == 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn: Attention::new(dim, num_heads, 2, vb.pp("final_attn_token_to_image"))?,
            norm_final: layer_norm(dim, 1e-5, vb.pp("norm_final_attn"))?,
        })
    }

    /// `image` and `image_pe` are [1, C, h, w] (shared by all prompts); `points` [B, N, C].
    /// Returns (tokens [B, N, C], image tokens [B, hw, C]).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        points: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = image.dims4()?;
        let keys0 = image
            .reshape((1, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let key_pe = image_pe
            .reshape((1, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut queries = points.clone();
        let mut keys = keys0;
        for (i, l) in self.layers.iter().enumerate() {
            (queries, keys) = if i == 0 {
                l.forward_shared_image(&queries, &keys, points, &key_pe)?
            } else {
                l.forward(&queries, &keys, points, &key_pe.broadcast_as(keys.shape())?)?
            };
        }
        let key_pe = key_pe.broadcast_as(keys.shape())?;
        let q = (&queries + points)?;
        let k = keys.broadcast_add(&key_pe)?;
        let attn = self.final_attn.forward(&q, &k, &keys)?;
        let queries = self.norm_final.forward(&(queries + attn)?)?;
        Ok((queries, keys))
    }
}
