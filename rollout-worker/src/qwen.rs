//! The Qwen2.5-VL engine behind [`Policy`]: one prefill per group and a KV cache forked G ways
//! (`platter_qwen25vl::Policy::generate_cancellable`), hot-swappable weights from the learner's
//! published safetensors blobs.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use platter_rollout::{CancelFlag, GenerationRequest, QwenEngine};
//! let dir = std::path::Path::new("assets/tiny-sft");
//! let engine = QwenEngine::load(dir, &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let request = GenerationRequest {
//!     prompt_text: "Please find \"the rice\" ...".into(),
//!     image: image::RgbImage::new(64, 48),
//!     image_size: 224,
//!     group_size: 8,
//!     max_response_tokens: 160,
//!     temperature: 1.0,
//!     top_p: 1.0,
//!     seed: 7,
//! };
//! // `None` if the flag was raised; `Policy::generate` is the same behind the trait.
//! let group = engine.generate_group(&request, &CancelFlag::default())?;
//! # let _ = group; Ok(()) }
//! ```
//!
//! What the learner must reproduce to teacher-force a response (`docs/architecture.md`):
//! the prompt is [`build_prompt`] (the image resized by [`policy_input_image`], the user text
//! wrapped in the Qwen2.5-VL chat template with [`platter_rl::prompt::SYSTEM_MESSAGE`]), and
//! [`crate::SampledResponse::token_ids`] holds every sampled token, the stop token included when
//! one ended the response.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};
use platter_proto::weights::PolicyWeights;
use platter_qwen25vl::{
    Config, CounterSnapshot, Group, PreparedPrompt, Processor, SamplingParams, expected_tensors,
};

use crate::policy::{
    CancelFlag, FinishReason, GeneratedGroup, GenerationRequest, Policy, PolicyError,
    SampledResponse,
};

/// Errors of the Qwen2.5-VL engine.
#[derive(Debug, thiserror::Error)]
pub enum QwenEngineError {
    /// Loading the model directory, preparing the prompt or generating failed.
    #[error(transparent)]
    Model(#[from] platter_qwen25vl::Error),
    /// A published weights blob is not a readable safetensors file.
    #[error("policy weights version {version}: {reason}")]
    Blob { version: u64, reason: String },
    /// A published weights blob does not fit the model; every problem is listed.
    #[error(
        "policy weights version {version} do not fit the model ({} problem(s)):\n  {}",
        problems.len(),
        problems.join("\n  ")
    )]
    WeightMismatch { version: u64, problems: Vec<String> },
    /// A generation request the engine cannot serve; names the field.
    #[error("generation request: `{field}` {reason}")]
    Request { field: &'static str, reason: String },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The policy's input image: `image` resized (aspect not kept, METHOD §1) to `size` × `size`
/// with bicubic (Catmull-Rom) filtering, exactly as the learner prepares its inputs
/// (`platter_learner::sft::policy_input_image`; a test checks the two agree pixel for pixel).
pub fn policy_input_image(image: &RgbImage, size: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(image::imageops::resize(
        image,
        size,
        size,
        FilterType::CatmullRom,
    ))
}

/// The model input for one prompt: the image resized to `image_size` square, and `prompt_text`
/// as the user turn of the Qwen2.5-VL chat template (system message
/// [`platter_rl::prompt::SYSTEM_MESSAGE`], the image first, then the text, then the assistant
/// generation prompt).
pub fn build_prompt(
    processor: &Processor,
    prompt_text: &str,
    image: &RgbImage,
    image_size: u32,
) -> Result<PreparedPrompt, QwenEngineError> {
    if image_size == 0 {
        return Err(QwenEngineError::Request {
            field: "image_size",
            reason: "must be > 0".into(),
        });
    }
    let text =
        processor.format_user_prompt(Some(platter_rl::prompt::SYSTEM_MESSAGE), prompt_text, 1);
    let img = policy_input_image(image, image_size);
    Ok(processor.prepare(0, &text, std::slice::from_ref(&img))?)
}

/// A loaded set of weights and the version it is.
struct Loaded {
    model: platter_qwen25vl::Policy,
    version: u64,
    /// The blob it came from (`None` for the model directory), to skip reloading the same one.
    source: Option<Arc<Vec<u8>>>,
}

/// Qwen2.5-VL generation engine (see the module docs).
pub struct QwenEngine {
    dir: PathBuf,
    cfg: Config,
    processor: Processor,
    device: Device,
    dtype: DType,
    stop_token_ids: Vec<u32>,
    expected: BTreeMap<String, Vec<usize>>,
    current: RwLock<Arc<Loaded>>,
    /// Serialises weight loads, so two callers asking for the same version load it once.
    loading: Mutex<()>,
}

impl std::fmt::Debug for QwenEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenEngine")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl QwenEngine {
    /// Loads an HF Qwen2.5-VL model directory (config, safetensors, tokenizer, preprocessor) as
    /// policy version 0. Generation stops at `<|im_end|>` or `<|endoftext|>` (the
    /// `eos_token_id`s of Qwen2.5-VL's `generation_config.json`).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, QwenEngineError> {
        let model = platter_qwen25vl::Policy::load(dir, device, dtype)?;
        let processor = model.processor(dir)?;
        let cfg = model.cfg.clone();
        let stop_token_ids = vec![processor.token_id("<|im_end|>")?, processor.pad_token_id];
        tracing::info!(
            dir = %dir.display(),
            ?device,
            ?dtype,
            "Qwen2.5-VL policy loaded"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            expected: expected_tensors(&cfg),
            cfg,
            processor,
            device: device.clone(),
            dtype,
            stop_token_ids,
            current: RwLock::new(Arc::new(Loaded {
                model,
                version: 0,
                source: None,
            })),
            loading: Mutex::new(()),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The tokenizer and image processor.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Token ids that end a response.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_token_ids
    }

    /// Forward-pass counters of the weights loaded now (they restart at each weight swap).
    pub fn counters(&self) -> CounterSnapshot {
        self.snapshot().model.counters()
    }

    /// The model input `request` is generated from (see [`build_prompt`]).
    pub fn prepare_prompt(
        &self,
        request: &GenerationRequest,
    ) -> Result<PreparedPrompt, QwenEngineError> {
        build_prompt(
            &self.processor,
            &request.prompt_text,
            &request.image,
            request.image_size,
        )
    }

    fn snapshot(&self) -> Arc<Loaded> {
        // The lock only guards an `Arc` swap, which cannot be left half done: a poisoned lock
        // still holds a consistent value.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Parses and checks a weights blob: every expected tensor present with its shape and a
    /// float dtype, nothing unexpected (a stray `lm_head.weight` of a tied model is ignored).
    fn tensors_from_blob(
        &self,
        weights: &PolicyWeights,
    ) -> Result<HashMap<String, Tensor>, QwenEngineError> {
        let version = weights.version;
        let st = safetensors::SafeTensors::deserialize(&weights.safetensors).map_err(|e| {
            QwenEngineError::Blob {
                version,
                reason: format!("not a readable safetensors blob: {e}"),
            }
        })?;
        let tied = self.cfg.text.tie_word_embeddings;
        let ignored = |name: &str| tied && name == "lm_head.weight";
        let mut problems = Vec::new();
        let mut found: HashMap<String, (Vec<usize>, safetensors::Dtype)> = HashMap::new();
        for (name, view) in st.tensors() {
            found.insert(name, (view.shape().to_vec(), view.dtype()));
        }
        for (name, shape) in &self.expected {
            match found.get(name) {
                None => problems.push(format!(
                    "missing tensor `{name}` (expected shape {shape:?})"
                )),
                Some((s, _)) if s != shape => problems.push(format!(
                    "tensor `{name}` has shape {s:?}, the model expects {shape:?}"
                )),
                Some((_, dt)) if !is_float(*dt) => problems.push(format!(
                    "tensor `{name}` has dtype {dt:?}, expected a float type (F32, BF16, F16)"
                )),
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<&String> = found
            .keys()
            .filter(|k| !self.expected.contains_key(*k) && !ignored(k))
            .collect();
        unexpected.sort();
        for k in unexpected {
            problems.push(format!("unexpected tensor `{k}` (not part of this model)"));
        }
        if !problems.is_empty() {
            return Err(QwenEngineError::WeightMismatch { version, problems });
        }
        let mut out = HashMap::with_capacity(self.expected.len());
        for (name, view) in st.tensors() {
            if !self.expected.contains_key(&name) {
                continue;
            }
            let t = candle_core::safetensors::Load::load(&view, &self.device).map_err(|e| {
                QwenEngineError::Blob {
                    version,
                    reason: format!("tensor `{name}`: {e}"),
                }
            })?;
            out.insert(name, t.to_dtype(self.dtype)?);
        }
        Ok(out)
    }

    fn sampling_params(request: &GenerationRequest) -> Result<SamplingParams, QwenEngineError> {
        let bad = |field, reason: &str| QwenEngineError::Request {
            field,
            reason: reason.to_owned(),
        };
        if request.group_size == 0 {
            return Err(bad("group_size", "must be > 0"));
        }
        if request.max_response_tokens == 0 {
            return Err(bad("max_response_tokens", "must be > 0"));
        }
        if !(request.temperature.is_finite() && request.temperature >= 0.0) {
            return Err(bad(
                "temperature",
                &format!("must be finite and >= 0, found {}", request.temperature),
            ));
        }
        if !(request.top_p > 0.0 && request.top_p <= 1.0) {
            return Err(bad(
                "top_p",
                &format!("must be in (0, 1], found {}", request.top_p),
            ));
        }
        Ok(SamplingParams {
            temperature: request.temperature as f32,
            top_p: request.top_p as f32,
            top_k: 0,
            max_new_tokens: request.max_response_tokens,
            stop_token_ids: Vec::new(),
            seed: request.seed,
        })
    }

    /// [`Policy::generate`] with the engine's own error type.
    pub fn generate_group(
        &self,
        request: &GenerationRequest,
        cancel: &CancelFlag,
    ) -> Result<Option<GeneratedGroup>, QwenEngineError> {
        let mut params = Self::sampling_params(request)?;
        params.stop_token_ids = self.stop_token_ids.clone();
        if cancel.is_cancelled() {
            return Ok(None);
        }
        // A weight swap during generation does not touch this group: it keeps its snapshot.
        let loaded = self.snapshot();
        let prompt = self.prepare_prompt(request)?;
        let group = Group {
            prompt: &prompt,
            num_samples: request.group_size,
        };
        // Progress for the caller's discarded-work accounting. The model polls the closure
        // once before the prefill and then after each sampling iteration that leaves a sample
        // running. Iteration 1 samples G tokens from the prefill logits; iteration j > 1
        // samples one token per row of decoding step j - 1, which the model's `decode_rows`
        // counter adds up. After n iterations the group holds G + (rows of n - 1 decoding
        // steps) tokens, at most G * n. The counter is shared by every group decoding on these
        // weights at once, so the count is exact when the group decodes alone and otherwise
        // bounded by G * n.
        let polls = std::cell::Cell::new(0u64);
        let rows_before = loaded.model.counters().decode_rows as u64;
        let g = request.group_size as u64;
        let progress = || {
            let n = polls.get();
            polls.set(n + 1);
            if n > 0 {
                let rows = (loaded.model.counters().decode_rows as u64).saturating_sub(rows_before);
                cancel.set_decoded_tokens((g * n).min(g + rows));
            }
            cancel.is_cancelled()
        };
        let Some(mut out) = loaded.model.generate_cancellable(
            &[group],
            &params,
            self.processor.pad_token_id,
            &progress,
        )?
        else {
            return Ok(None);
        };
        let samples = out.pop().unwrap_or_default();
        let mut responses = Vec::with_capacity(samples.len());
        for s in samples {
            // The text excludes the stop token (it is not part of the answer to score).
            let text_ids = match s.tokens.split_last() {
                Some((last, rest)) if self.stop_token_ids.contains(last) => rest,
                _ => s.tokens.as_slice(),
            };
            let text = self.processor.decode(text_ids)?;
            responses.push(SampledResponse {
                text,
                token_ids: s.tokens,
                logprobs: s.logprobs,
                finish: match s.finish_reason {
                    platter_qwen25vl::FinishReason::Stop => FinishReason::Stop,
                    platter_qwen25vl::FinishReason::Length => FinishReason::Length,
                },
            });
        }
        Ok(Some(GeneratedGroup {
            responses,
            policy_version: loaded.version,
        }))
    }

    /// [`Policy::load_weights`] with the engine's own error type.
    pub fn swap_weights(&self, weights: &PolicyWeights) -> Result<(), QwenEngineError> {
        let _guard = self
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.snapshot();
        if current.version == weights.version
            && current
                .source
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &weights.safetensors))
        {
            return Ok(());
        }
        // Build the whole new model before touching the current one: a bad blob changes nothing.
        let tensors = self.tensors_from_blob(weights)?;
        let model = platter_qwen25vl::Policy::from_tensors(
            self.cfg.clone(),
            tensors,
            &self.device,
            self.dtype,
        )?;
        let next = Arc::new(Loaded {
            model,
            version: weights.version,
            source: Some(weights.safetensors.clone()),
        });
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        tracing::info!(
            from = current.version,
            to = weights.version,
            "policy weights swapped"
        );
        Ok(())
    }
}

fn is_float(dt: safetensors::Dtype) -> bool {
    matches!(
        dt,
        safetensors::Dtype::F32
            | safetensors::Dtype::BF16
            | safetensors::Dtype::F16
            | safetensors::Dtype::F64
    )
}

impl Policy for QwenEngine {
    fn version(&self) -> u64 {
        self.snapshot().version
    }

    fn load_weights(&self, weights: &PolicyWeights) -> Result<(), PolicyError> {
        Ok(self.swap_weights(weights)?)
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelFlag,
    ) -> Result<Option<GeneratedGroup>, PolicyError> {
        Ok(self.generate_group(request, cancel)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(group_size: usize, max_response_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            prompt_text: platter_rl::prompt::user_prompt(
                "the rice",
                platter_rl::prompt::DEFAULT_ANSWER_EXAMPLE,
            ),
            image: RgbImage::from_fn(96, 72, |x, y| {
                image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
            }),
            image_size: 224,
            group_size,
            max_response_tokens,
            temperature: 1.0,
            top_p: 1.0,
            seed: 11,
        }
    }

    #[test]
    fn decoded_tokens_follow_the_group_as_it_decodes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/tiny-sft");
        let engine = QwenEngine::load(&dir, &Device::Cpu, DType::F32).unwrap();

        // Raised before the call: nothing decoded.
        let flag = CancelFlag::default();
        flag.cancel();
        assert!(
            engine
                .generate_group(&request(4, 160), &flag)
                .unwrap()
                .is_none()
        );
        assert_eq!(flag.decoded_tokens(), 0);

        // Not raised: the last poll comes after the second-to-last sampling iteration. With N
        // iterations (the longest response), sample i had then min(len_i, N - 1) tokens; the
        // count must equal their sum exactly (one group decoding alone on the engine), whether
        // or not some samples stopped early.
        let flag = CancelFlag::default();
        let group = engine
            .generate_group(&request(4, 160), &flag)
            .unwrap()
            .unwrap();
        let lens: Vec<u64> = group
            .responses
            .iter()
            .map(|r| r.token_ids.len() as u64)
            .collect();
        let n = lens.iter().copied().max().unwrap();
        let expected: u64 = lens.iter().map(|l| (*l).min(n - 1)).sum();
        assert_eq!(flag.decoded_tokens(), expected, "response lengths {lens:?}");
    }
}
