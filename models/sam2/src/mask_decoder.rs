//! SAM2's mask decoder (`sam/mask_decoder.py`): output tokens (object score, IoU, 4 masks) plus
//! prompt tokens through the two-way transformer, upscaling with the high-res feature path,
//! hypernetwork masks, IoU head and object-score head. Architecture constants that Meta
//! hard-codes in `SAM2Base._build_sam_heads` are fixed here too.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::config::Sam2Config;
use crate::ops::{Activation, Mlp, Upscale2x, gelu, layer_norm};
use crate::transformer::TwoWayTransformer;

const NUM_MULTIMASK: usize = 3;
const TRANSFORMER_DEPTH: usize = 2;
const TRANSFORMER_MLP_DIM: usize = 2048;
const TRANSFORMER_HEADS: usize = 8;
const IOU_HEAD_HIDDEN: usize = 256;
const IOU_HEAD_DEPTH: usize = 3;

#[derive(Debug, Clone)]
enum ObjScoreHead {
    Linear(Linear),
    Mlp(Mlp),
}

/// Raw decoder outputs for a batch of prompts (all 4 mask tokens).
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    /// [B, 4, S/4, S/4] mask logits; index 0 is the single-mask token.
    pub masks: Tensor,
    /// [B, 4] predicted IoU.
    pub iou: Tensor,
    /// [B, 1] object score logits (10.0 when the model has no object-score head).
    pub object_score: Tensor,
}

#[derive(Debug, Clone)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    /// [obj_score?, iou, mask×4] tokens, [T, C].
    output_tokens: Tensor,
    has_obj_token: bool,
    dc1: Upscale2x,
    /// `output_upscaling.1` (LayerNorm2d) applied channels-last.
    ln1: LayerNorm,
    dc2: Upscale2x,
    hyper_mlps: Vec<Mlp>,
    iou_head: Mlp,
    obj_head: Option<ObjScoreHead>,
    use_high_res: bool,
}

impl MaskDecoder {
    pub fn new(cfg: &Sam2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.neck.d_model;
        let num_mask_tokens = NUM_MULTIMASK + 1;
        let iou_token = vb.get((1, d), "iou_token.weight")?;
        let mask_tokens = vb.get((num_mask_tokens, d), "mask_tokens.weight")?;
        let output_tokens = if cfg.pred_obj_scores {
            Tensor::cat(
                &[
                    vb.get((1, d), "obj_score_token.weight")?,
                    iou_token,
                    mask_tokens,
                ],
                0,
            )?
        } else {
            Tensor::cat(&[iou_token, mask_tokens], 0)?
        };
        let obj_head = if !cfg.pred_obj_scores {
            None
        } else if cfg.pred_obj_scores_mlp {
            Some(ObjScoreHead::Mlp(Mlp::new(
                d,
                d,
                1,
                3,
                Activation::Relu,
                false,
                vb.pp("pred_obj_score_head"),
            )?))
        } else {
            Some(ObjScoreHead::Linear(candle_nn::linear(
                d,
                1,
                vb.pp("pred_obj_score_head"),
            )?))
        };
        Ok(Self {
            transformer: TwoWayTransformer::new(
                TRANSFORMER_DEPTH,
                d,
                TRANSFORMER_HEADS,
                TRANSFORMER_MLP_DIM,
                vb.pp("transformer"),
            )?,
            output_tokens,
            has_obj_token: cfg.pred_obj_scores,
            dc1: Upscale2x::new(d, d / 4, vb.pp("output_upscaling.0"))?,
            ln1: layer_norm(d / 4, 1e-6, vb.pp("output_upscaling.1"))?,
            dc2: Upscale2x::new(d / 4, d / 8, vb.pp("output_upscaling.3"))?,
            hyper_mlps: (0..num_mask_tokens)
                .map(|i| {
                    Mlp::new(
                        d,
                        d,
                        d / 8,
                        3,
                        Activation::Relu,
                        false,
                        vb.pp(format!("output_hypernetworks_mlps.{i}")),
                    )
                })
                .collect::<Result<Vec<_>>>()?,
            iou_head: Mlp::new(
                d,
                IOU_HEAD_HIDDEN,
                num_mask_tokens,
                IOU_HEAD_DEPTH,
                Activation::Relu,
                cfg.iou_prediction_use_sigmoid,
                vb.pp("iou_prediction_head"),
            )?,
            obj_head,
            use_high_res: cfg.use_high_res_features_in_sam,
        })
    }

    /// Decodes B prompts against one image.
    ///
    /// `image_embed` [1, C, h, w] (with `no_mem_embed` already added), `dense_pe` [1, C, h, w],
    /// `no_mask_embed` [1, C, 1, 1], `sparse` [B, N, C], `high_res` ([1, C/8, 4h, 4w], [1, C/4, 2h, 2w]).
    pub fn forward(
        &self,
        image_embed: &Tensor,
        dense_pe: &Tensor,
        no_mask_embed: &Tensor,
        sparse: &Tensor,
        high_res: Option<&(Tensor, Tensor)>,
    ) -> Result<DecoderOutput> {
        let (b, _, c) = sparse.dims3()?;
        let t = self.output_tokens.dim(0)?;
        let out_tokens = self.output_tokens.unsqueeze(0)?.broadcast_as((b, t, c))?;
        let tokens = Tensor::cat(&[&out_tokens.contiguous()?, sparse], 1)?;
        let (_, _, h, w) = image_embed.dims4()?;
        // The image side is identical for all prompts until the transformer's first layer.
        let src = image_embed.broadcast_add(no_mask_embed)?;
        let (hs, src) = self.transformer.forward(&src, dense_pe, &tokens)?;
        let s = usize::from(self.has_obj_token);
        let iou_token_out = hs.narrow(1, s, 1)?.squeeze(1)?;
        let mask_tokens_out = hs.narrow(1, s + 1, NUM_MULTIMASK + 1)?;

        // The transformer's image tokens are already channels-last: upscale without NCHW.
        let src = src.reshape((b, h, w, c))?;
        let to_bhwc = |t: &Tensor| t.permute((0, 2, 3, 1));
        let up = match (self.use_high_res, high_res) {
            (true, Some((s0, s1))) => {
                let x = self.dc1.forward_bhwc(&src)?.broadcast_add(&to_bhwc(s1)?)?;
                let x = gelu(&self.ln1.forward(&x)?)?;
                gelu(&self.dc2.forward_bhwc(&x)?.broadcast_add(&to_bhwc(s0)?)?)?
            }
            (true, None) => {
                return Err(candle_core::Error::Msg(
                    "mask decoder needs high-res features".into(),
                ));
            }
            (false, _) => {
                let x = gelu(&self.ln1.forward(&self.dc1.forward_bhwc(&src)?)?)?;
                gelu(&self.dc2.forward_bhwc(&x)?)?
            }
        };
        let hyper = self
            .hyper_mlps
            .iter()
            .enumerate()
            .map(|(i, m)| m.forward(&mask_tokens_out.narrow(1, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // [b, 4, c/8]
        let (_, hu, wu, cu) = up.dims4()?;
        let up = up.reshape((b, hu * wu, cu))?;
        let masks = hyper
            .matmul(&up.t()?)?
            .reshape((b, NUM_MULTIMASK + 1, hu, wu))?;
        let iou = self.iou_head.forward(&iou_token_out)?;
        let object_score = match &self.obj_head {
            Some(ObjScoreHead::Mlp(m)) => m.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?,
            Some(ObjScoreHead::Linear(l)) => l.forward(&hs.narrow(1, 0, 1)?.squeeze(1)?)?,
            None => (Tensor::ones((b, 1), iou.dtype(), iou.device())? * 10.0)?,
        };
        Ok(DecoderOutput {
            masks,
            iou,
            object_score,
        })
    }
}

/// Stability of mask logits [.., h, w]: area above +delta over area above -delta (1 when empty).
pub fn stability_scores(logits: &Tensor, delta: f32) -> Result<Tensor> {
    let flat = logits.flatten_from(D::Minus2)?;
    let inter = flat
        .gt(delta as f64)?
        .to_dtype(candle_core::DType::F32)?
        .sum(D::Minus1)?;
    let union = flat
        .gt(-delta as f64)?
        .to_dtype(candle_core::DType::F32)?
        .sum(D::Minus1)?;
    let ratio = (&inter / union.maximum(1.0)?)?;
    union.gt(0.0)?.where_cond(&ratio, &ratio.ones_like()?)
}
