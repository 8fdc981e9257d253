//! Prompt encoder (`sam/prompt_encoder.py`) for points and boxes. Boxes reach it as two corner
//! points with labels 2 and 3, and a padding point (label -1) is always appended, exactly as
//! `SAM2ImagePredictor._predict` calls it. Mask prompts are not supported (the predictor API here
//! never takes one). The tiny per-prompt work runs on the CPU; only the result is a tensor.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

/// Label of a sparse prompt token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLabel {
    Padding,
    Negative,
    Positive,
    BoxTopLeft,
    BoxBottomRight,
}

#[derive(Debug, Clone)]
pub struct PromptEncoder {
    /// [2, d/2] random Fourier matrix.
    gauss: Vec<f32>,
    /// point_embeddings.0..3, each d.
    point_embeddings: Vec<Vec<f32>>,
    not_a_point: Vec<f32>,
    /// no_mask_embed as [1, d, 1, 1].
    pub(crate) no_mask_embed: Tensor,
    /// Dense positional encoding of the embedding grid, [1, d, h, w].
    pub(crate) dense_pe: Tensor,
    embed_dim: usize,
    input_size: usize,
}

fn to_vec(t: Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()
}

impl PromptEncoder {
    pub fn new(embed_dim: usize, grid: usize, input_size: usize, vb: VarBuilder) -> Result<Self> {
        let half = embed_dim / 2;
        let gauss = to_vec(vb.get((2, half), "pe_layer.positional_encoding_gaussian_matrix")?)?;
        let point_embeddings = (0..4)
            .map(|i| to_vec(vb.get((1, embed_dim), &format!("point_embeddings.{i}.weight"))?))
            .collect::<Result<Vec<_>>>()?;
        let not_a_point = to_vec(vb.get((1, embed_dim), "not_a_point_embed.weight")?)?;
        let no_mask_embed = vb
            .get((1, embed_dim), "no_mask_embed.weight")?
            .reshape((1, embed_dim, 1, 1))?;
        let mut s = Self {
            gauss,
            point_embeddings,
            not_a_point,
            no_mask_embed,
            dense_pe: Tensor::zeros(1, candle_core::DType::F32, vb.device())?,
            embed_dim,
            input_size,
        };
        let mut pe = vec![0f32; embed_dim * grid * grid];
        for y in 0..grid {
            for x in 0..grid {
                let v = s.pe(
                    (x as f32 + 0.5) / grid as f32,
                    (y as f32 + 0.5) / grid as f32,
                );
                for (c, val) in v.into_iter().enumerate() {
                    pe[(c * grid + y) * grid + x] = val;
                }
            }
        }
        s.dense_pe = Tensor::from_vec(pe, (1, embed_dim, grid, grid), vb.device())?;
        Ok(s)
    }

    /// Random Fourier features of a point normalised to [0, 1]².
    fn pe(&self, x: f32, y: f32) -> Vec<f32> {
        let half = self.embed_dim / 2;
        let (cx, cy) = (2.0 * x - 1.0, 2.0 * y - 1.0);
        let mut out = vec![0f32; self.embed_dim];
        for k in 0..half {
            let v = (cx * self.gauss[k] + cy * self.gauss[half + k]) * (2.0 * std::f32::consts::PI);
            out[k] = v.sin();
            out[half + k] = v.cos();
        }
        out
    }

    /// Sparse embeddings of one prompt's tokens (coordinates in model-input pixels, i.e. already
    /// scaled to `image_size`), in the given order; returns `tokens.len() * d` values.
    pub fn embed_tokens(&self, tokens: &[([f32; 2], TokenLabel)]) -> Vec<f32> {
        let s = self.input_size as f32;
        let mut out = Vec::with_capacity(tokens.len() * self.embed_dim);
        for &([x, y], label) in tokens {
            let emb = match label {
                TokenLabel::Padding => self.not_a_point.clone(),
                _ => {
                    let mut v = self.pe((x + 0.5) / s, (y + 0.5) / s);
                    let idx = match label {
                        TokenLabel::Negative => 0,
                        TokenLabel::Positive => 1,
                        TokenLabel::BoxTopLeft => 2,
                        _ => 3,
                    };
                    v.iter_mut()
                        .zip(&self.point_embeddings[idx])
                        .for_each(|(a, b)| *a += b);
                    v
                }
            };
            out.extend(emb);
        }
        out
    }
}
