//! Batched group sampling with a forked KV cache.
//!
//! Each group is one prompt (with its images) sampled `num_samples` times. All groups' images go
//! through the vision tower in one call and all prompts are prefilled once, as one left-padded
//! batch; the cache rows are then duplicated per sample and decoded together. Finished samples
//! leave the batch, so later steps only compute live rows.

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::Policy;
use crate::processor::{PreparedPrompt, PromptBatch};
use crate::{Error, Result};

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`; 1 disables it.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; 0 disables it.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Generation stops after any of these (the stop token is kept in the output).
    pub stop_token_ids: Vec<u32>,
    /// Sample `s` of group `g` draws from its own stream seeded by `(seed, g, s)`, so results do
    /// not depend on how groups are batched.
    pub seed: u64,
}

impl SamplingParams {
    fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Generation(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Generation(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.max_new_tokens == 0 {
            return Err(Error::Generation("max_new_tokens must be > 0".into()));
        }
        Ok(())
    }
}

/// Why a sample ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
}

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// Log-prob of each sampled token under the temperature-scaled distribution (before top-k /
    /// top-p truncation), the quantity a learner recomputes with `logits / temperature`.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// One prompt to sample `num_samples` times.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub prompt: &'a PreparedPrompt,
    pub num_samples: usize,
}

struct Row {
    group: usize,
    sample: usize,
    rng: ChaCha8Rng,
    next_pos: i64,
    len: usize,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
}

fn stream_seed(seed: u64, group: usize, sample: usize) -> u64 {
    // SplitMix64-style mixing of the three numbers.
    let mut z = seed
        ^ (group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (sample as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks a token from `logits`; returns it and its log-prob (see [`Sample::logprobs`]).
pub fn sample_token(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> (u32, f32) {
    let t = if p.temperature > 0.0 {
        p.temperature
    } else {
        1.0
    };
    let scaled: Vec<f32> = logits.iter().map(|x| x / t).collect();
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + scaled.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
    let pick = if p.temperature == 0.0 {
        // First maximum, as torch.argmax.
        scaled
            .iter()
            .enumerate()
            .fold(0, |best, (i, &x)| if x > scaled[best] { i } else { best })
    } else {
        let mut order: Vec<usize> = (0..scaled.len()).collect();
        order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let probs: Vec<f32> = order.iter().map(|&i| (scaled[i] - lse).exp()).collect();
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut u = rng.random::<f32>() * total;
        let mut chosen = order[keep - 1];
        for (i, q) in probs[..keep].iter().enumerate() {
            if u < *q {
                chosen = order[i];
                break;
            }
            u -= q;
        }
        chosen
    };
    (pick as u32, scaled[pick] - lse)
}

impl Policy {
    /// Samples every group `num_samples` times; returns samples per group in request order.
    pub fn generate(
        &self,
        groups: &[Group],
        params: &SamplingParams,
        pad_token_id: u32,
    ) -> Result<Vec<Vec<Sample>>> {
        self.generate_cancellable(groups, params, pad_token_id, &|| false)?
            .ok_or_else(|| Error::Generation("generation stopped without being cancelled".into()))
    }

    /// As [`Policy::generate`], but `cancelled` is polled before the prefill and before every
    /// decoding step; once it returns true, generation stops there and `Ok(None)` is returned
    /// (partial samples are dropped).
    pub fn generate_cancellable(
        &self,
        groups: &[Group],
        params: &SamplingParams,
        pad_token_id: u32,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<Vec<Sample>>>> {
        params.validate()?;
        if groups.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let max_ctx = self.cfg.text.max_position_embeddings;
        let prompts: Vec<&PreparedPrompt> = groups.iter().map(|g| g.prompt).collect();
        for (i, p) in prompts.iter().enumerate() {
            if p.input_ids.len() >= max_ctx {
                return Err(Error::Prompt {
                    index: i,
                    reason: format!(
                        "{} tokens leave no room in the context of {max_ctx}",
                        p.input_ids.len()
                    ),
                });
            }
        }
        let batch = PromptBatch::new(&prompts, pad_token_id, self.device())?;
        if cancelled() {
            return Ok(None);
        }
        let mut cache = self.new_cache();
        let hidden = self.forward_hidden(&batch, Some(&mut cache), false, false)?;
        let l = hidden.dim(1)?;
        let last = self.head(&hidden.narrow(1, l - 1, 1)?)?.squeeze(1)?; // [G, V]

        let mut fork = Vec::new();
        let mut rows = Vec::new();
        for (g, grp) in groups.iter().enumerate() {
            for s in 0..grp.num_samples {
                fork.push(g as u32);
                rows.push(Row {
                    group: g,
                    sample: s,
                    rng: ChaCha8Rng::seed_from_u64(stream_seed(params.seed, g, s)),
                    next_pos: grp.prompt.next_position(),
                    len: grp.prompt.input_ids.len(),
                    tokens: Vec::new(),
                    logprobs: Vec::new(),
                });
            }
        }
        let mut out: Vec<Vec<(usize, Sample)>> = groups
            .iter()
            .map(|g| Vec::with_capacity(g.num_samples))
            .collect();
        if rows.is_empty() {
            return Ok(Some(groups.iter().map(|_| Vec::new()).collect()));
        }
        let mut cache = cache.select_rows(&fork)?;
        let idx = Tensor::from_slice(&fork, fork.len(), self.device())?;
        let mut logits = last.index_select(&idx, 0)?;
        loop {
            let host: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            let mut keep = Vec::with_capacity(rows.len());
            let mut live = Vec::with_capacity(rows.len());
            for (i, (mut row, lg)) in rows.drain(..).zip(host).enumerate() {
                let (tok, lp) = sample_token(&lg, params, &mut row.rng);
                row.tokens.push(tok);
                row.logprobs.push(lp);
                row.len += 1;
                let finish = if params.stop_token_ids.contains(&tok) {
                    Some(FinishReason::Stop)
                } else if row.tokens.len() >= params.max_new_tokens || row.len >= max_ctx {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                match finish {
                    Some(reason) => out[row.group].push((
                        row.sample,
                        Sample {
                            tokens: row.tokens,
                            logprobs: row.logprobs,
                            finish_reason: reason,
                        },
                    )),
                    None => {
                        keep.push(i as u32);
                        live.push(row);
                    }
                }
            }
            if live.is_empty() {
                break;
            }
            if cancelled() {
                return Ok(None);
            }
            if keep.len() != logits.dim(0)? {
                cache = cache.select_rows(&keep)?;
            }
            rows = live;
            logits = self.decode_step(&rows, &mut cache)?;
        }
        // Samples of a group finish in any order; restore sample order.
        Ok(Some(
            out.into_iter()
                .map(|mut g| {
                    g.sort_by_key(|(s, _)| *s);
                    g.into_iter().map(|(_, x)| x).collect()
                })
                .collect(),
        ))
    }

    fn decode_step(&self, rows: &[Row], cache: &mut crate::text::KvCache) -> Result<Tensor> {
        let b = rows.len();
        self.count_decode_step(b);
        let dev = self.device();
        let ids: Vec<u32> = rows
            .iter()
            .map(|r| *r.tokens.last().unwrap_or(&0))
            .collect();
        let ids = Tensor::from_vec(ids, (b, 1), dev)?;
        let pos: Vec<i64> = (0..3)
            .flat_map(|_| rows.iter().map(|r| r.next_pos + r.tokens.len() as i64 - 1))
            .collect();
        let pos = Tensor::from_vec(pos, (3, b, 1), dev)?;
        let mask = Tensor::ones((b, 1), DType::U8, dev)?;
        let embeds = self.embed_text(&ids)?;
        let h = self
            .text()
            .forward(&embeds, &pos, &mask, Some(cache), false)?;
        Ok(self.head(&h)?.squeeze(1)?)
    }
}
