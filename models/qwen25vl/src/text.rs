//! The Qwen2 language model with M-RoPE (`model.*` keys) and its forkable KV cache.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::TextConfig;
use crate::ops::{MASK_VALUE, RmsNorm, apply, apply_rope, linear, softmax_f32};

/// Cached keys and values of every layer for a batch of rows.
///
/// Rows can be duplicated ([`KvCache::select_rows`] with repeated indices: a prompt prefilled
/// once then sampled G ways) and dropped (finished sequences leave the batch).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer `(k, v)`, each `[B, kv_heads, S, head_dim]`.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[B, S]` f32 additive mask: 0 for visible keys, a large negative value for padding.
    key_mask: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            key_mask: None,
        }
    }

    /// Number of cached positions (including padding).
    pub fn seq_len(&self) -> usize {
        self.key_mask
            .as_ref()
            .and_then(|m| m.dim(1).ok())
            .unwrap_or(0)
    }

    /// Keeps rows `rows` (in that order; an index may repeat to fork a row).
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let Some(mask) = &self.key_mask else {
            return Ok(self.clone());
        };
        let idx = Tensor::from_slice(rows, rows.len(), mask.device())?;
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            key_mask: Some(mask.index_select(&idx, 0)?),
        })
    }

    /// Appends the key-mask columns of new positions (`[B, L]` additive).
    fn extend_mask(&mut self, new: &Tensor) -> Result<()> {
        self.key_mask = Some(match &self.key_mask {
            Some(m) => Tensor::cat(&[m, new], 1)?,
            None => new.clone(),
        });
        Ok(())
    }
}

/// M-RoPE half tables `(cos, sin)`, each `[B, L, head_dim / 2]` f32, from positions `[3, B, L]`.
///
/// Entry `j` uses the position axis `i % 3` of the `mrope_section` chunk `i` that holds `j`; the
/// full rotary table is this half repeated twice (HF's `cat((freq, freq))`).
pub fn mrope_tables(cfg: &TextConfig, position_ids: &Tensor) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let (_, b, l) = position_ids.dims3()?;
    let inv: Vec<f32> = (0..hd / 2)
        .map(|j| 1.0 / (cfg.rope_theta as f32).powf((2 * j) as f32 / hd as f32))
        .collect();
    let axis: Vec<usize> = cfg
        .mrope_section
        .iter()
        .enumerate()
        .flat_map(|(i, &len)| std::iter::repeat_n(i % 3, len))
        .collect();
    let pos: Vec<i64> = position_ids
        .to_dtype(DType::I64)?
        .flatten_all()?
        .to_vec1()?;
    let mut cos = Vec::with_capacity(b * l * hd / 2);
    let mut sin = Vec::with_capacity(b * l * hd / 2);
    for r in 0..b * l {
        for (j, f) in inv.iter().enumerate() {
            // f32 product as torch computes `position.float() * inv_freq`.
            let a = pos[axis[j] * b * l + r] as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let dev = position_ids.device();
    Ok((
        Tensor::from_vec(cos, (b, l, hd / 2), dev)?,
        Tensor::from_vec(sin, (b, l, hd / 2), dev)?,
    ))
}

/// Applies rotary tables `[B, L, hd/2]` to `x` `[B, heads, L, hd]`: candle's fused kernel for
/// inference, plain ops (with backward) for training.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, train: bool) -> Result<Tensor> {
    if !train {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    let full = |t: &Tensor| -> Result<Tensor> { Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(1) };
    apply_rope(x, &full(cos)?, &full(sin)?)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Self {
            q_proj: linear(d, h * hd, true, vb.pp("q_proj"))?,
            k_proj: linear(d, kv * hd, true, vb.pp("k_proj"))?,
            v_proj: linear(d, kv * hd, true, vb.pp("v_proj"))?,
            o_proj: linear(h * hd, d, false, vb.pp("o_proj"))?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let rep = self.num_heads / self.num_kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (b, kv, s, hd) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((b, kv, rep, s, hd))?
            .reshape((b, kv * rep, s, hd))
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        mask: &Tensor,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let dtype = x.dtype();
        let shape = |t: Tensor, heads: usize| -> Result<Tensor> {
            t.reshape((b, l, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = shape(apply(&self.q_proj, x)?, self.num_heads)?;
        let k = shape(apply(&self.k_proj, x)?, self.num_kv_heads)?;
        let v = shape(apply(&self.v_proj, x)?, self.num_kv_heads)?;
        let (cos, sin) = (rope.0.to_dtype(dtype)?, rope.1.to_dtype(dtype)?);
        let q = rotate(&q, &cos, &sin, train)?;
        let mut k = rotate(&k, &cos, &sin, train)?;
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let s = k.dim(2)?;
        let out = if train {
            let k = self.repeat_kv(k)?;
            let v = self.repeat_kv(v)?;
            let scores = (q.matmul(&k.t()?)? * scale)?
                .to_dtype(DType::F32)?
                .broadcast_add(mask)?;
            softmax_f32(&scores, train)?.to_dtype(dtype)?.matmul(&v)?
        } else {
            // GQA without copying keys: the `rep` query heads of one kv head become extra rows.
            let rep = self.num_heads / self.num_kv_heads;
            let qg = q.reshape((b, self.num_kv_heads, rep * l, self.head_dim))?;
            let scores = (qg.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
            let scores = scores
                .reshape((b, self.num_heads, l, s))?
                .broadcast_add(mask)?;
            let probs = softmax_f32(&scores, train)?.to_dtype(dtype)?;
            let probs = probs.reshape((b, self.num_kv_heads, rep * l, s))?;
            probs
                .matmul(&v.contiguous()?)?
                .reshape((b, self.num_heads, l, self.head_dim))?
        };
        let out = out
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.head_dim))?;
        apply(&self.o_proj, &out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(d, i, false, vb.pp("gate_proj"))?,
            up_proj: linear(d, i, false, vb.pp("up_proj"))?,
            down_proj: linear(i, d, false, vb.pp("down_proj"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = apply(&self.gate_proj, x)?.silu()?;
        apply(&self.down_proj, &(g * apply(&self.up_proj, x)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

/// The decoder stack: embeddings in, final-normed hidden states out.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    cfg: TextConfig,
}

impl TextModel {
    /// Loads from `vb` positioned at `model`.
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let embed_tokens = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
            cfg: cfg.clone(),
        })
    }

    /// The token embedding table `[vocab, hidden]` (also the head when tied).
    pub fn embed_tokens(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Runs the decoder on `embeds` `[B, L, D]` at M-RoPE positions `[3, B, L]`.
    ///
    /// `attention_mask` (`[B, L]`, 1 = real token) hides padding keys; causality is applied within
    /// the new positions, and every cached position is visible to them. With `cache`, keys and
    /// values are appended to it.
    pub fn forward(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l, _) = embeds.dims3()?;
        let device = embeds.device();
        let rope = mrope_tables(&self.cfg, position_ids)?;
        let new_keys = attention_mask
            .to_dtype(DType::F32)?
            .affine(-(MASK_VALUE as f64), MASK_VALUE as f64)?; // 1 -> 0, 0 -> MASK
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        let key_mask = match cache.as_mut() {
            Some(c) => {
                c.extend_mask(&new_keys)?;
                c.key_mask.clone().unwrap_or(new_keys)
            }
            None => new_keys,
        };
        let mask = causal_mask(l, past, device)?.broadcast_add(&key_mask.reshape((
            b,
            1,
            1,
            past + l,
        ))?)?;
        let mut x = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = layer.input_layernorm.forward(&x, train)?;
            x = (x + layer.self_attn.forward(&h, &rope, &mask, slot, train)?)?;
            let h = layer.post_attention_layernorm.forward(&x, train)?;
            x = (&x + layer.mlp.forward(&h)?)?;
        }
        self.norm.forward(&x, train)
    }
}

/// `[1, 1, L, past + L]` additive causal mask for `l` new queries after `past` cached keys.
fn causal_mask(l: usize, past: usize, device: &Device) -> Result<Tensor> {
    let s = past + l;
    let data: Vec<f32> = (0..l)
        .flat_map(|i| (0..s).map(move |j| if j > past + i { MASK_VALUE } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (1, 1, l, s), device)
}
