//! Teacher-forced log-probabilities of responses, differentiable end to end.

use candle_core::{D, DType, Device, Tensor};

use crate::model::Policy;
use crate::processor::{PreparedPrompt, PromptBatch};
use crate::{Error, Result};

/// Prompts (left-padded to `P`) followed by their responses (right-padded to `R`), the layout
/// the learner trains on.
#[derive(Debug, Clone)]
pub struct ResponseBatch {
    /// The whole `[B, P + R]` sequence with its mask and positions.
    pub sequence: PromptBatch,
    /// Padded prompt length `P`.
    pub prompt_len: usize,
    /// `[B, R]` u32 response tokens (padding = pad id).
    pub response_ids: Tensor,
    /// `[B, R]` f32, 1 on real response tokens.
    pub response_mask: Tensor,
}

impl ResponseBatch {
    /// Builds the batch; `responses[i]` continues `prompts[i]` (include the stop token if it was
    /// generated). Errors if a sequence would exceed `max_len` positions.
    pub fn new(
        prompts: &[&PreparedPrompt],
        responses: &[Vec<u32>],
        pad_token_id: u32,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        if prompts.len() != responses.len() {
            return Err(Error::Generation(format!(
                "{} prompts but {} responses",
                prompts.len(),
                responses.len()
            )));
        }
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            if p.input_ids.len() + r.len() > max_len {
                return Err(Error::Prompt {
                    index: i,
                    reason: format!(
                        "prompt {} + response {} tokens exceed the context of {max_len}",
                        p.input_ids.len(),
                        r.len()
                    ),
                });
            }
        }
        let prompt = PromptBatch::new(prompts, pad_token_id, device)?;
        let (b, p) = prompt.input_ids.dims2()?;
        let r = responses.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_token_id; b * r];
        let mut mask = vec![0u8; b * r];
        let mut pos = vec![0i64; 3 * b * r];
        for (row, resp) in responses.iter().enumerate() {
            for (j, &t) in resp.iter().enumerate() {
                ids[row * r + j] = t;
                mask[row * r + j] = 1;
                for a in 0..3 {
                    pos[(a * b + row) * r + j] = prompt.next_positions[row] + j as i64;
                }
            }
        }
        let resp_ids = Tensor::from_vec(ids, (b, r), device)?;
        let resp_mask = Tensor::from_vec(mask, (b, r), device)?;
        let resp_pos = Tensor::from_vec(pos, (3, b, r), device)?;
        let sequence = PromptBatch {
            input_ids: Tensor::cat(&[&prompt.input_ids, &resp_ids], 1)?,
            attention_mask: Tensor::cat(&[&prompt.attention_mask, &resp_mask], 1)?,
            position_ids: Tensor::cat(&[&prompt.position_ids, &resp_pos], 2)?,
            pixel_values: prompt.pixel_values.clone(),
            grids: prompt.grids.clone(),
            next_positions: prompt.next_positions.clone(),
            lengths: prompt
                .lengths
                .iter()
                .zip(responses)
                .map(|(l, r)| l + r.len())
                .collect(),
            // A response may contain any token, `<|image_pad|>` included: only the prompt
            // columns receive image features.
            image_columns: p,
        };
        Ok(Self {
            sequence,
            prompt_len: p,
            response_ids: resp_ids,
            response_mask: resp_mask.to_dtype(DType::F32)?,
        })
    }
}

/// Responses that share prompts, laid out so that each distinct prompt runs once: its image is
/// encoded and its prefix prefilled once, and the KV cache is forked to its responses (a GRPO
/// group of G responses costs one prompt pass instead of G). Log-probs equal those of a
/// [`ResponseBatch`] of the same sequences up to float rounding.
#[derive(Debug, Clone)]
pub struct GroupedResponseBatch {
    /// The distinct prompts, left-padded to `prompt_len`.
    pub prompts: PromptBatch,
    /// Padded prompt length `P`.
    pub prompt_len: usize,
    /// For each response, the row of its prompt in `prompts`.
    pub prompt_rows: Vec<u32>,
    /// `[B, R]` u32 response tokens (padding = pad id).
    pub response_ids: Tensor,
    /// `[B, R]` f32, 1 on real response tokens.
    pub response_mask: Tensor,
    /// `[B, R]` u8 attention mask of the response columns.
    response_attention: Tensor,
    /// `[3, B, R]` i64 M-RoPE positions of the response tokens.
    response_positions: Tensor,
}

impl GroupedResponseBatch {
    /// Builds the batch; response `i` continues `prompts[prompt_rows[i]]` (include the stop token
    /// if it was generated). Errors if a sequence would exceed `max_len` positions or a row index
    /// is out of range.
    pub fn new(
        prompts: &[&PreparedPrompt],
        prompt_rows: &[usize],
        responses: &[Vec<u32>],
        pad_token_id: u32,
        max_len: usize,
        device: &Device,
    ) -> Result<Self> {
        if prompt_rows.len() != responses.len() {
            return Err(Error::Generation(format!(
                "{} prompt rows but {} responses",
                prompt_rows.len(),
                responses.len()
            )));
        }
        for (i, (&row, r)) in prompt_rows.iter().zip(responses).enumerate() {
            let Some(p) = prompts.get(row) else {
                return Err(Error::Prompt {
                    index: i,
                    reason: format!("prompt row {row} of {} prompts", prompts.len()),
                });
            };
            if p.input_ids.len() + r.len() > max_len {
                return Err(Error::Prompt {
                    index: i,
                    reason: format!(
                        "prompt {} + response {} tokens exceed the context of {max_len}",
                        p.input_ids.len(),
                        r.len()
                    ),
                });
            }
        }
        let batch = PromptBatch::new(prompts, pad_token_id, device)?;
        let prompt_len = batch.input_ids.dim(1)?;
        let b = responses.len();
        let r = responses.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_token_id; b * r];
        let mut mask = vec![0u8; b * r];
        let mut pos = vec![0i64; 3 * b * r];
        for (i, (resp, &row)) in responses.iter().zip(prompt_rows).enumerate() {
            for (j, &t) in resp.iter().enumerate() {
                ids[i * r + j] = t;
                mask[i * r + j] = 1;
                for a in 0..3 {
                    pos[(a * b + i) * r + j] = batch.next_positions[row] + j as i64;
                }
            }
        }
        let response_attention = Tensor::from_vec(mask, (b, r), device)?;
        Ok(Self {
            prompts: batch,
            prompt_len,
            prompt_rows: prompt_rows.iter().map(|&r| r as u32).collect(),
            response_ids: Tensor::from_vec(ids, (b, r), device)?,
            response_mask: response_attention.to_dtype(DType::F32)?,
            response_attention,
            response_positions: Tensor::from_vec(pos, (3, b, r), device)?,
        })
    }
}

/// Per-token results over the response positions, each `[B, R]` f32.
#[derive(Debug, Clone)]
pub struct TokenLogProbs {
    /// `log p(response_t | prefix)`; differentiable.
    pub logp: Tensor,
    /// Entropy of the next-token distribution at each response position; differentiable.
    pub entropy: Tensor,
    /// 1 on real response tokens, 0 on padding.
    pub mask: Tensor,
}

impl Policy {
    /// Teacher-forced log-probs and entropies of the responses in `batch`, using only ops with
    /// backward passes. With `freeze_vision` the image features are detached (no vision grads).
    pub fn response_logprobs(
        &self,
        batch: &ResponseBatch,
        freeze_vision: bool,
    ) -> Result<TokenLogProbs> {
        self.response_logprobs_at(batch, freeze_vision, 1.0)
    }

    /// [`Self::response_logprobs`] of the distribution sampled at `temperature`
    /// (`softmax(logits / temperature)`, as the sampler draws from): the log-probs a rollout at
    /// that temperature reports, and the entropy of that distribution. `temperature` must be a
    /// positive finite number (greedy decoding has no distribution to match).
    pub fn response_logprobs_at(
        &self,
        batch: &ResponseBatch,
        freeze_vision: bool,
        temperature: f64,
    ) -> Result<TokenLogProbs> {
        check_temperature(temperature)?;
        let hidden = self.forward_hidden(&batch.sequence, None, true, freeze_vision)?;
        let r = batch.response_ids.dim(1)?;
        // Position P-1+j predicts response token j.
        let h = hidden.narrow(1, batch.prompt_len - 1, r)?;
        self.token_logprobs(&h, &batch.response_ids, &batch.response_mask, temperature)
    }

    /// [`Self::response_logprobs_at`] of a [`GroupedResponseBatch`]: each distinct prompt is
    /// encoded and prefilled once (differentiably) and its KV cache forked to its responses.
    pub fn grouped_response_logprobs_at(
        &self,
        batch: &GroupedResponseBatch,
        freeze_vision: bool,
        temperature: f64,
    ) -> Result<TokenLogProbs> {
        check_temperature(temperature)?;
        let mut cache = self.new_cache();
        let prompt_hidden =
            self.forward_hidden(&batch.prompts, Some(&mut cache), true, freeze_vision)?;
        let rows = Tensor::from_slice(&batch.prompt_rows, batch.prompt_rows.len(), self.device())?;
        let mut cache = cache.select_rows(&batch.prompt_rows)?;
        // The last prompt position (left padding: the same column for every row) predicts
        // response token 0; response position j predicts token j + 1.
        let last = prompt_hidden
            .narrow(1, batch.prompt_len - 1, 1)?
            .contiguous()?
            .index_select(&rows, 0)?;
        let r = batch.response_ids.dim(1)?;
        let h = if r > 1 {
            let embeds = self.embed_text(&batch.response_ids.narrow(1, 0, r - 1)?)?;
            let hidden = self.text().forward(
                &embeds,
                &batch.response_positions.narrow(2, 0, r - 1)?,
                &batch.response_attention.narrow(1, 0, r - 1)?,
                Some(&mut cache),
                true,
            )?;
            Tensor::cat(&[&last, &hidden], 1)?
        } else {
            last
        };
        self.token_logprobs(&h, &batch.response_ids, &batch.response_mask, temperature)
    }

    /// Log-probs and entropies of `ids` `[B, R]` from the hidden states `[B, R, D]` that
    /// predict them.
    fn token_logprobs(
        &self,
        h: &Tensor,
        ids: &Tensor,
        mask: &Tensor,
        temperature: f64,
    ) -> Result<TokenLogProbs> {
        let logits = self.head(h)?.to_dtype(DType::F32)?;
        let logits = if temperature == 1.0 {
            logits
        } else {
            (logits / temperature)?
        };
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let logp = lsm
            .gather(&ids.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?;
        let entropy = (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?;
        Ok(TokenLogProbs {
            logp,
            entropy,
            mask: mask.clone(),
        })
    }
}

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "log-prob temperature must be a positive finite number, got {temperature}"
        )))
    }
}
