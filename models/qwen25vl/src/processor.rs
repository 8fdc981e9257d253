//! Text + image inputs to model inputs, matching `Qwen2_5_VLProcessor` and `get_rope_index`.
//!
//! A prompt is the fully templated text with one `<|vision_start|><|image_pad|><|vision_end|>`
//! per image. Each `<|image_pad|>` is expanded to `t*h*w / merge²` copies, and every token gets
//! a 3-D M-RoPE position (temporal, height, width): text tokens share one running index on all
//! three axes; an image's tokens get `start + (t, row, col)` and the running index then advances
//! by `max(h, w) / merge`.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::DynamicImage;
use tokenizers::Tokenizer;

use crate::config::{Config, PreprocessorConfig};
use crate::image_proc::{self, ProcessedImage};
use crate::{Error, Result};

/// One prompt, tokenised and expanded, with its images preprocessed.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Token ids after `<|image_pad|>` expansion.
    pub input_ids: Vec<u32>,
    /// M-RoPE positions `[3][len]` (temporal, height, width).
    pub positions: [Vec<i64>; 3],
    /// `max(position) + 1 - len`: added to the running index of generated tokens.
    pub rope_delta: i64,
    /// The prompt's images, in placeholder order.
    pub images: Vec<ProcessedImage>,
}

impl PreparedPrompt {
    /// Position of the next token appended after this prompt.
    pub fn next_position(&self) -> i64 {
        self.input_ids.len() as i64 + self.rope_delta
    }
}

/// A left-padded batch of prompts as tensors.
#[derive(Debug, Clone)]
pub struct PromptBatch {
    /// `[B, L]` u32.
    pub input_ids: Tensor,
    /// `[B, L]` u8, 1 on real tokens, 0 on left padding.
    pub attention_mask: Tensor,
    /// `[3, B, L]` i64; padding positions are 0 (as HF).
    pub position_ids: Tensor,
    /// All images' patches concatenated in batch order, `[N, patch_dim]` f32; `None` if no images.
    pub pixel_values: Option<Tensor>,
    /// `(t, h, w)` per image in batch order.
    pub grids: Vec<[usize; 3]>,
    /// Per row: the position of the first generated token.
    pub next_positions: Vec<i64>,
    /// Per row: number of real (non-padding) tokens.
    pub lengths: Vec<usize>,
    /// Image features go to `<|image_pad|>` tokens in the first `image_columns` columns only;
    /// later columns (a sampled response) embed every id as a plain token, as decoding does.
    pub image_columns: usize,
}

/// Tokenizer + image processor of a model directory.
#[derive(Debug, Clone)]
pub struct Processor {
    pub tokenizer: Tokenizer,
    pub image: PreprocessorConfig,
    pub image_token_id: u32,
    pub pad_token_id: u32,
    /// Longest accepted prompt (after expansion), from `max_position_embeddings`.
    pub max_prompt_len: usize,
    /// Largest accepted input image, in pixels, before resizing (guards against decompression bombs).
    pub max_input_pixels: usize,
    /// The checkpoint's Jinja chat template text, if it ships one (`chat_template.jinja`,
    /// `chat_template.json` or `tokenizer_config.json`). Kept for reference; prompts are built
    /// by [`Processor::format_user_prompt`], which renders the Qwen2.5-VL template.
    pub chat_template: Option<String>,
}

/// The system prompt the Qwen2.5-VL template inserts when a conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|source| Error::Io {
                path: jinja,
                source,
            });
    }
    for name in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
            return Ok(Some(t.to_string()));
        }
    }
    Ok(None)
}

impl Processor {
    /// Loads `tokenizer.json` and the preprocessor config from a model directory.
    pub fn from_dir(dir: &Path, cfg: &Config) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", tok_path.display())))?;
        let image = PreprocessorConfig::from_dir(dir)?;
        if image.patch_size != cfg.vision.patch_size
            || image.merge_size != cfg.vision.spatial_merge_size
        {
            return Err(Error::Config(format!(
                "preprocessor patch_size/merge_size {}/{} disagree with vision_config {}/{}",
                image.patch_size,
                image.merge_size,
                cfg.vision.patch_size,
                cfg.vision.spatial_merge_size
            )));
        }
        // Qwen pads with <|endoftext|>.
        let pad_token_id = tokenizer.token_to_id("<|endoftext|>").ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has no `<|endoftext|>` token (used for padding)",
                tok_path.display()
            ))
        })?;
        Ok(Self {
            tokenizer,
            image,
            image_token_id: cfg.image_token_id,
            pad_token_id,
            max_prompt_len: cfg.text.max_position_embeddings,
            max_input_pixels: 8192 * 8192,
            chat_template: read_chat_template(dir)?,
        })
    }

    /// One user turn rendered as the Qwen2.5-VL chat template does (images first, then the
    /// text), followed by the assistant generation prompt. `system` defaults to
    /// [`DEFAULT_SYSTEM_PROMPT`].
    pub fn format_user_prompt(
        &self,
        system: Option<&str>,
        user_text: &str,
        num_images: usize,
    ) -> String {
        let system = system.unwrap_or(DEFAULT_SYSTEM_PROMPT);
        let images = "<|vision_start|><|image_pad|><|vision_end|>".repeat(num_images);
        format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{images}{user_text}<|im_end|>\n<|im_start|>assistant\n"
        )
    }

    /// Id of a special token such as `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::Tokenizer(format!("token `{token}` is not in the vocabulary")))
    }

    /// Decodes token ids to text (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Tokenises plain text (no special-token handling beyond the added-token table).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Preprocesses an image with this processor's settings.
    pub fn process_image(&self, img: &DynamicImage) -> Result<ProcessedImage> {
        let what = "input";
        image_proc::check_input_size(
            what,
            img.height() as usize,
            img.width() as usize,
            self.max_input_pixels,
        )?;
        image_proc::preprocess(&self.image, img)
    }

    /// Tokenises prompt `index` (templated text), expands its image placeholders and computes its
    /// M-RoPE positions. The number of `<|image_pad|>` placeholders must equal `images.len()`.
    pub fn prepare(
        &self,
        index: usize,
        text: &str,
        images: &[DynamicImage],
    ) -> Result<PreparedPrompt> {
        let processed = images
            .iter()
            .map(|im| self.process_image(im))
            .collect::<Result<Vec<_>>>()?;
        self.prepare_processed(index, text, processed)
    }

    /// As [`Processor::prepare`] with images already preprocessed.
    pub fn prepare_processed(
        &self,
        index: usize,
        text: &str,
        images: Vec<ProcessedImage>,
    ) -> Result<PreparedPrompt> {
        let ids = self.encode(text)?;
        let placeholders = ids.iter().filter(|&&t| t == self.image_token_id).count();
        if placeholders != images.len() {
            return Err(Error::Prompt {
                index,
                reason: format!(
                    "{placeholders} `<|image_pad|>` placeholder(s) in the text but {} image(s) given",
                    images.len()
                ),
            });
        }
        let m = self.image.merge_size;
        let mut input_ids = Vec::with_capacity(ids.len());
        let mut positions: [Vec<i64>; 3] = Default::default();
        let mut next = 0i64;
        let mut img_iter = images.iter();
        for &t in &ids {
            if t != self.image_token_id {
                input_ids.push(t);
                positions.iter_mut().for_each(|p| p.push(next));
                next += 1;
                continue;
            }
            let Some(img) = img_iter.next() else {
                return Err(Error::Prompt {
                    index,
                    reason: "more placeholders than images".into(),
                });
            };
            let [gt, gh, gw] = img.grid_thw;
            let (lh, lw) = (gh / m, gw / m);
            for ti in 0..gt {
                for hi in 0..lh {
                    for wi in 0..lw {
                        input_ids.push(self.image_token_id);
                        positions[0].push(next + ti as i64);
                        positions[1].push(next + hi as i64);
                        positions[2].push(next + wi as i64);
                    }
                }
            }
            next += (gh.max(gw) / m) as i64;
        }
        if input_ids.len() > self.max_prompt_len {
            return Err(Error::Prompt {
                index,
                reason: format!(
                    "{} tokens after image expansion, longer than the context of {} tokens",
                    input_ids.len(),
                    self.max_prompt_len
                ),
            });
        }
        let max_pos = positions
            .iter()
            .flat_map(|p| p.iter().copied())
            .max()
            .unwrap_or(-1);
        let rope_delta = max_pos + 1 - input_ids.len() as i64;
        Ok(PreparedPrompt {
            input_ids,
            positions,
            rope_delta,
            images,
        })
    }
}

impl PromptBatch {
    /// Left-pads prompts to a common length and stacks them into tensors on `device`.
    pub fn new(prompts: &[&PreparedPrompt], pad_token_id: u32, device: &Device) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::Generation("empty prompt batch".into()));
        }
        if let Some(i) = prompts.iter().position(|p| p.input_ids.is_empty()) {
            return Err(Error::Prompt {
                index: i,
                reason: "empty prompt (no tokens)".into(),
            });
        }
        let b = prompts.len();
        let l = prompts.iter().map(|p| p.input_ids.len()).max().unwrap_or(0);
        let mut ids = vec![pad_token_id; b * l];
        let mut mask = vec![0u8; b * l];
        let mut pos = vec![0i64; 3 * b * l];
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        let mut patch_dim = 0;
        for (r, p) in prompts.iter().enumerate() {
            let off = l - p.input_ids.len();
            for (j, &t) in p.input_ids.iter().enumerate() {
                ids[r * l + off + j] = t;
                mask[r * l + off + j] = 1;
                for a in 0..3 {
                    pos[(a * b + r) * l + off + j] = p.positions[a][j];
                }
            }
            for img in &p.images {
                pixels.extend_from_slice(&img.patches);
                grids.push(img.grid_thw);
                patch_dim = img.patch_dim;
            }
        }
        let pixel_values = if grids.is_empty() {
            None
        } else {
            Some(Tensor::from_vec(
                pixels,
                (
                    grids
                        .iter()
                        .map(|g| g.iter().product::<usize>())
                        .sum::<usize>(),
                    patch_dim,
                ),
                device,
            )?)
        };
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, l), device)?,
            attention_mask: Tensor::from_vec(mask, (b, l), device)?,
            position_ids: Tensor::from_vec(pos, (3, b, l), device)?,
            pixel_values,
            grids,
            next_positions: prompts.iter().map(|p| p.next_position()).collect(),
            lengths: prompts.iter().map(|p| p.input_ids.len()).collect(),
            image_columns: l,
        })
    }
}
