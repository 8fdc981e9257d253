//! `Qwen2_5_VLForConditionalGeneration`: vision tower + language model + head.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::loader;
use crate::processor::{Processor, PromptBatch};
use crate::text::{KvCache, TextModel};
use crate::vision::VisionModel;
use crate::{Error, Result};

/// How many times the expensive parts ran (read by tests and metrics).
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// Calls of the vision tower.
    pub vision_calls: AtomicUsize,
    /// Images encoded by the vision tower.
    pub vision_images: AtomicUsize,
    /// Prompt rows prefilled through the language model.
    pub prefill_rows: AtomicUsize,
    /// Decoding steps (one per batch step).
    pub decode_steps: AtomicUsize,
    /// Rows summed over decoding steps (finished samples stop adding to it).
    pub decode_rows: AtomicUsize,
}

/// A snapshot of [`ForwardCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    pub vision_calls: usize,
    pub vision_images: usize,
    pub prefill_rows: usize,
    pub decode_steps: usize,
    pub decode_rows: usize,
}

/// The policy model. Build with [`Policy::load`] (inference) or [`Policy::load_trainable`].
#[derive(Debug)]
pub struct Policy {
    pub cfg: Config,
    visual: VisionModel,
    model: TextModel,
    lm_head: Tensor,
    device: Device,
    dtype: DType,
    counters: ForwardCounters,
}

/// The trainable parameters of a [`Policy`], by checkpoint key.
#[derive(Debug, Clone)]
pub struct PolicyVars {
    pub vars: Vec<(String, Var)>,
}

impl PolicyVars {
    /// Variables to optimise; `freeze_vision` leaves out `visual.*`.
    pub fn trainable(&self, freeze_vision: bool) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .filter(|(n, _)| !(freeze_vision && n.starts_with("visual.")))
            .cloned()
            .collect()
    }
}

impl Policy {
    /// Loads config, checks and loads weights from an HF model directory (inference).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let cfg = Config::from_file(&dir.join("config.json"))?;
        let tensors = loader::load_checked(dir, &cfg, dtype, device)?;
        Self::from_tensors(cfg, tensors, device, dtype)
    }

    /// As [`Policy::load`], with every weight a [`Var`] so that gradients reach it.
    pub fn load_trainable(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, PolicyVars)> {
        let cfg = Config::from_file(&dir.join("config.json"))?;
        let tensors = loader::load_checked(dir, &cfg, dtype, device)?;
        let mut vars = Vec::with_capacity(tensors.len());
        let mut as_tensors = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            let v = Var::from_tensor(&t)?;
            as_tensors.insert(name.clone(), v.as_tensor().clone());
            vars.push((name, v));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((
            Self::from_tensors(cfg, as_tensors, device, dtype)?,
            PolicyVars { vars },
        ))
    }

    /// Builds the modules from already checked tensors keyed by checkpoint name.
    pub fn from_tensors(
        cfg: Config,
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let visual = VisionModel::new(&cfg.vision, vb.pp("visual"))?;
        let model = TextModel::new(&cfg.text, vb.pp("model"))?;
        let lm_head = if cfg.text.tie_word_embeddings {
            model.embed_tokens().clone()
        } else {
            vb.pp("lm_head")
                .get((cfg.text.vocab_size, cfg.text.hidden_size), "weight")?
        };
        Ok(Self {
            cfg,
            visual,
            model,
            lm_head,
            device: device.clone(),
            dtype,
            counters: ForwardCounters::default(),
        })
    }

    /// The processor (tokenizer + image preprocessing) of the same model directory.
    pub fn processor(&self, dir: &Path) -> Result<Processor> {
        Processor::from_dir(dir, &self.cfg)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub(crate) fn text(&self) -> &TextModel {
        &self.model
    }

    /// Current counter values.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        CounterSnapshot {
            vision_calls: c.vision_calls.load(Ordering::Relaxed),
            vision_images: c.vision_images.load(Ordering::Relaxed),
            prefill_rows: c.prefill_rows.load(Ordering::Relaxed),
            decode_steps: c.decode_steps.load(Ordering::Relaxed),
            decode_rows: c.decode_rows.load(Ordering::Relaxed),
        }
    }
    pub(crate) fn count_decode_step(&self, rows: usize) {
        self.counters.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.counters.decode_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Runs the vision tower: `[n_patches, patch_dim]` to `[n_tokens, hidden]`.
    pub fn encode_images(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
        train: bool,
    ) -> Result<Tensor> {
        self.counters.vision_calls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .vision_images
            .fetch_add(grids.len(), Ordering::Relaxed);
        Ok(self.visual.forward(pixel_values, grids, train)?)
    }

    /// Token embeddings `[B, L, D]` with image features spliced in at `<|image_pad|>` positions
    /// (row-major order, as HF's `masked_scatter`).
    pub fn embed(&self, input_ids: &Tensor, image_embeds: Option<&Tensor>) -> Result<Tensor> {
        let columns = input_ids.dim(1)?;
        self.embed_spliced(input_ids, image_embeds, columns)
    }

    /// [`Policy::embed`] with image features spliced only into the first `image_columns`
    /// columns; `<|image_pad|>` ids after them are embedded as plain tokens.
    pub fn embed_spliced(
        &self,
        input_ids: &Tensor,
        image_embeds: Option<&Tensor>,
        image_columns: usize,
    ) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let is_image = |p: usize, t: u32| t == self.cfg.image_token_id && p % l < image_columns;
        let d = self.cfg.text.hidden_size;
        let flat = input_ids.flatten_all()?;
        let text = self.model.embed_tokens().index_select(&flat, 0)?;
        let ids: Vec<u32> = flat.to_dtype(DType::U32)?.to_vec1()?;
        let n_img = ids
            .iter()
            .enumerate()
            .filter(|&(p, &t)| is_image(p, t))
            .count();
        let n_feat = match image_embeds {
            Some(e) => e.dim(0)?,
            None => 0,
        };
        if n_img != n_feat {
            return Err(Error::Input(format!(
                "batch holds {n_img} image tokens but the images give {n_feat} features"
            )));
        }
        let Some(img) = image_embeds else {
            return Ok(text.reshape((b, l, d))?);
        };
        // Gather from [text rows; image rows] so gradients flow to both tables.
        let mut j = 0u32;
        let total = (b * l) as u32;
        let index: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(p, &t)| {
                if is_image(p, t) {
                    j += 1;
                    total + j - 1
                } else {
                    p as u32
                }
            })
            .collect();
        let table = Tensor::cat(&[&text, &img.to_dtype(text.dtype())?], 0)?;
        let idx = Tensor::from_vec(index, b * l, &self.device)?;
        Ok(table.index_select(&idx, 0)?.reshape((b, l, d))?)
    }

    /// Plain token embeddings `[B, L, D]`, no image splicing (decode steps: a generated
    /// `<|image_pad|>` is just a token there, as in HF's cached generation).
    pub fn embed_text(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let e = self
            .model
            .embed_tokens()
            .index_select(&input_ids.flatten_all()?, 0)?;
        Ok(e.reshape((b, l, self.cfg.text.hidden_size))?)
    }

    /// Logits `[.., V]` from hidden states `[.., D]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        // One 2-D matmul: a batched one would stream the [V, D] head once per row.
        let mut dims = hidden.dims().to_vec();
        let d = dims.pop().unwrap_or(0);
        let rows: usize = dims.iter().product();
        let logits = hidden
            .contiguous()?
            .reshape((rows, d))?
            .matmul(&self.lm_head.t()?)?;
        dims.push(self.cfg.text.vocab_size);
        Ok(logits.reshape(dims)?)
    }

    /// Prefill: runs a prompt batch, filling `cache` if given; returns the final hidden states
    /// `[B, L, D]`. `train` selects differentiable ops.
    pub fn forward_hidden(
        &self,
        batch: &PromptBatch,
        cache: Option<&mut KvCache>,
        train: bool,
        freeze_vision: bool,
    ) -> Result<Tensor> {
        let image_embeds = match &batch.pixel_values {
            Some(pv) => {
                let e = self.encode_images(pv, &batch.grids, train && !freeze_vision)?;
                Some(if freeze_vision { e.detach() } else { e })
            }
            None => None,
        };
        let embeds =
            self.embed_spliced(&batch.input_ids, image_embeds.as_ref(), batch.image_columns)?;
        self.counters
            .prefill_rows
            .fetch_add(batch.lengths.len(), Ordering::Relaxed);
        Ok(self.model.forward(
            &embeds,
            &batch.position_ids,
            &batch.attention_mask,
            cache,
            train,
        )?)
    }

    /// Full-sequence logits `[B, L, V]` (f32) of a prompt batch, inference ops.
    pub fn forward_logits(&self, batch: &PromptBatch) -> Result<Tensor> {
        let h = self.forward_hidden(batch, None, false, false)?;
        Ok(self.head(&h)?.to_dtype(DType::F32)?)
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.model.num_layers())
    }
}
