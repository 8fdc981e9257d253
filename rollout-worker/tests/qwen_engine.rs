//! The Qwen2.5-VL engine: sampled log-probs equal the learner's teacher-forced ones, seeded
//! reproducibility, stop tokens, weight swaps (good, bad and during generation) and cancellation.
//! Models: the built-in tiny SFT policy (`assets/tiny-sft`) and the random tiny fixture of
//! `platter-qwen25vl` (it rarely emits a stop token, so its generations run long).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{D, DType, Device};
use platter_proto::weights::PolicyWeights;
use platter_qwen25vl::ResponseBatch;
use platter_rollout::{
    CancelFlag, FinishReason, GeneratedGroup, GenerationRequest, Policy, QwenEngine,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiny_sft() -> PathBuf {
    root().join("assets/tiny-sft")
}

fn tiny_random() -> PathBuf {
    root().join("models/qwen25vl/tests/fixtures/tiny")
}

fn engine(dir: &Path) -> QwenEngine {
    QwenEngine::load(dir, &Device::Cpu, DType::F32).unwrap()
}

/// A synthetic food image and its question (the world the tiny SFT policy was trained on).
fn synth_sample() -> (image::RgbImage, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = platter_data::synth::SynthConfig {
        n: 1,
        threads: 1,
        seed: 3,
        ..Default::default()
    };
    let manifest = platter_data::synth::generate(&cfg, dir.path())
        .unwrap()
        .manifest;
    let root = manifest.parent().unwrap();
    let rec = platter_data::read_manifest(&manifest)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let img = image::open(root.join(&rec.image)).unwrap().to_rgb8();
    (img, rec.question)
}

fn request(image: &image::RgbImage, question: &str, size: u32, seed: u64) -> GenerationRequest {
    GenerationRequest {
        prompt_text: platter_rl::prompt::user_prompt(
            question,
            platter_rl::prompt::DEFAULT_ANSWER_EXAMPLE,
        ),
        image: image.clone(),
        image_size: size,
        group_size: 8,
        max_response_tokens: 160,
        temperature: 1.0,
        top_p: 1.0,
        seed,
    }
}

fn generate(engine: &QwenEngine, req: &GenerationRequest) -> GeneratedGroup {
    engine
        .generate(req, &CancelFlag::default())
        .unwrap()
        .expect("not cancelled")
}

/// Teacher-forced `log softmax(logits / temperature)` of each response, from a separately
/// loaded model: the learner's differentiable path at temperature 1, the inference forward
/// (logits over the whole sequence, no KV cache) otherwise.
fn teacher_forced(
    dir: &Path,
    engine: &QwenEngine,
    req: &GenerationRequest,
    responses: &[Vec<u32>],
) -> Vec<Vec<f32>> {
    let policy = platter_qwen25vl::Policy::load(dir, &Device::Cpu, DType::F32).unwrap();
    let prompt = engine.prepare_prompt(req).unwrap();
    let prompts = vec![&prompt; responses.len()];
    let pad = engine.processor().pad_token_id;
    let batch = ResponseBatch::new(&prompts, responses, pad, 1 << 20, &Device::Cpu).unwrap();
    let logp = if req.temperature == 1.0 {
        policy.response_logprobs(&batch, true).unwrap().logp
    } else {
        let r = batch.response_ids.dim(1).unwrap();
        let logits = policy
            .forward_logits(&batch.sequence)
            .unwrap()
            .narrow(1, batch.prompt_len - 1, r)
            .unwrap();
        let scaled = (logits / req.temperature).unwrap();
        candle_nn::ops::log_softmax(&scaled, D::Minus1)
            .unwrap()
            .gather(&batch.response_ids.unsqueeze(D::Minus1).unwrap(), D::Minus1)
            .unwrap()
            .squeeze(D::Minus1)
            .unwrap()
    };
    let rows: Vec<Vec<f32>> = logp.to_vec2().unwrap();
    rows.into_iter()
        .zip(responses)
        .map(|(row, resp)| row[..resp.len()].to_vec())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_against_teacher_forcing(dir: &Path, engine: &QwenEngine, req: &GenerationRequest) {
    let group = generate(engine, req);
    assert_eq!(group.responses.len(), req.group_size);
    assert_eq!(group.policy_version, 0);
    let ids: Vec<Vec<u32>> = group
        .responses
        .iter()
        .map(|r| r.token_ids.clone())
        .collect();
    let forced = teacher_forced(dir, engine, req, &ids);
    for (i, (r, f)) in group.responses.iter().zip(&forced).enumerate() {
        assert_eq!(r.logprobs.len(), r.token_ids.len());
        let d = max_abs_diff(&r.logprobs, f);
        assert!(
            d < 1e-4,
            "response {i} at T={}: sampled vs teacher-forced log-probs differ by {d}",
            req.temperature
        );
    }
}

#[test]
fn sampled_logprobs_equal_teacher_forced_logprobs() {
    let (img, question) = synth_sample();
    let dir = tiny_sft();
    let engine = engine(&dir);
    // Temperature 1 through the learner's training path; 0.7 with top-p 0.9 through the
    // inference forward (log-probs are of the scaled distribution before truncation).
    check_against_teacher_forcing(&dir, &engine, &request(&img, &question, 224, 11));
    let mut cooled = request(&img, &question, 224, 12);
    cooled.temperature = 0.7;
    cooled.top_p = 0.9;
    check_against_teacher_forcing(&dir, &engine, &cooled);
}

#[test]
fn stop_token_is_kept_in_ids_and_left_out_of_text() {
    let (img, question) = synth_sample();
    let engine = engine(&tiny_sft());
    let im_end = engine.processor().token_id("<|im_end|>").unwrap();
    let group = generate(&engine, &request(&img, &question, 224, 5));
    let mut stopped = 0;
    for r in &group.responses {
        match r.finish {
            FinishReason::Stop => {
                stopped += 1;
                let last = *r.token_ids.last().unwrap();
                assert!(engine.stop_token_ids().contains(&last), "{r:?}");
                assert!(
                    !r.token_ids[..r.token_ids.len() - 1]
                        .iter()
                        .any(|t| engine.stop_token_ids().contains(t))
                );
                let without_stop = &r.token_ids[..r.token_ids.len() - 1];
                assert_eq!(r.text, engine.processor().decode(without_stop).unwrap());
            }
            FinishReason::Length => {
                assert_eq!(r.token_ids.len(), 160);
                assert_eq!(r.text, engine.processor().decode(&r.token_ids).unwrap());
            }
        }
        assert!(!r.text.contains("<|im_end|>"), "{}", r.text);
    }
    // The SFT policy answers in well under 160 tokens and ends with <|im_end|>.
    assert!(stopped > 0, "no response of the SFT policy stopped");
    assert!(
        group
            .responses
            .iter()
            .any(|r| r.token_ids.last() == Some(&im_end))
    );
}

#[test]
fn same_seed_same_group_other_seed_other_group() {
    let (img, question) = synth_sample();
    let engine = engine(&tiny_sft());
    let a = generate(&engine, &request(&img, &question, 224, 21));
    let b = generate(&engine, &request(&img, &question, 224, 21));
    let c = generate(&engine, &request(&img, &question, 224, 22));
    assert_eq!(a.responses, b.responses);
    assert_ne!(a.responses, c.responses);
    // Samples within a group differ from one another.
    let distinct: std::collections::HashSet<_> =
        a.responses.iter().map(|r| r.token_ids.clone()).collect();
    assert!(distinct.len() > 1);
}

#[test]
fn policy_input_matches_the_learner() {
    let (img, _) = synth_sample();
    for size in [224, 112, 97] {
        let ours = platter_rollout::policy_input_image(&img, size);
        let learner = platter_learner::sft::policy_input_image(&img, size);
        assert_eq!(ours.to_rgb8().as_raw(), learner.to_rgb8().as_raw());
        assert_eq!((ours.width(), ours.height()), (size, size));
    }
}

/// The model's checkpoint as `(name, dtype, shape, bytes)`.
fn checkpoint_tensors(dir: &Path) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn blob(
    version: u64,
    tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) -> PolicyWeights {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    PolicyWeights {
        version,
        safetensors: Arc::new(safetensors::serialize(views, None).unwrap()),
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn scale(bytes: &[u8], k: f32) -> Vec<u8> {
    f32s(bytes)
        .into_iter()
        .flat_map(|v| (v * k).to_le_bytes())
        .collect()
}

fn to_bf16(bytes: &[u8]) -> Vec<u8> {
    f32s(bytes)
        .into_iter()
        .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
        .collect()
}

#[test]
fn weight_swaps_change_outputs_and_versions() {
    let (img, question) = synth_sample();
    let dir = tiny_sft();
    let engine = engine(&dir);
    let req = request(&img, &question, 224, 31);
    let v0 = generate(&engine, &req);
    let tensors = checkpoint_tensors(&dir);
    assert!(tensors.iter().all(|t| t.1 == safetensors::Dtype::F32));

    // The checkpoint's own weights, published as version 1: same output, new version.
    engine.load_weights(&blob(1, &tensors)).unwrap();
    assert_eq!(engine.version(), 1);
    let v1 = generate(&engine, &req);
    assert_eq!(v1.policy_version, 1);
    assert_eq!(v1.responses, v0.responses);

    // A perturbed head: different log-probs (and, here, different samples).
    let mut perturbed = tensors.clone();
    let head = perturbed
        .iter_mut()
        .find(|t| t.0 == "lm_head.weight")
        .unwrap();
    head.3 = scale(&head.3, 0.5);
    engine.load_weights(&blob(2, &perturbed)).unwrap();
    let v2 = generate(&engine, &req);
    assert_eq!((engine.version(), v2.policy_version), (2, 2));
    assert_ne!(v2.responses, v0.responses);
    assert!(
        v2.responses
            .iter()
            .zip(&v0.responses)
            .any(|(a, b)| a.logprobs.first() != b.logprobs.first())
    );

    // bf16 blobs (what a bf16 learner publishes) load into the f32 engine.
    let bf16: Vec<_> = tensors
        .iter()
        .map(|(n, _, s, b)| (n.clone(), safetensors::Dtype::BF16, s.clone(), to_bf16(b)))
        .collect();
    engine.load_weights(&blob(3, &bf16)).unwrap();
    let v3 = generate(&engine, &req);
    assert_eq!(v3.policy_version, 3);
    // bf16 rounding moves log-probs only slightly from the f32 originals at the first token.
    for (a, b) in v3.responses.iter().zip(&v0.responses) {
        assert!((a.logprobs[0] - b.logprobs[0]).abs() < 0.1);
    }
}

#[test]
fn bad_blobs_are_refused_and_the_old_weights_keep_working() {
    let (img, question) = synth_sample();
    let dir = tiny_sft();
    let engine = engine(&dir);
    let req = request(&img, &question, 224, 41);
    let before = generate(&engine, &req);
    let tensors = checkpoint_tensors(&dir);

    let mut bad = tensors.clone();
    bad.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight");
    let norm = bad.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
    norm.2 = vec![norm.2[0] / 2, 2];
    bad.push((
        "model.extra.weight".into(),
        safetensors::Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let err = engine.load_weights(&blob(7, &bad)).unwrap_err().to_string();
    for needle in [
        "version 7",
        "3 problem(s)",
        "missing tensor `model.layers.1.mlp.up_proj.weight`",
        "tensor `model.norm.weight` has shape [64, 2], the model expects [128]",
        "unexpected tensor `model.extra.weight`",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }

    let garbage = PolicyWeights {
        version: 8,
        safetensors: Arc::new(b"not safetensors".to_vec()),
    };
    let err = engine.load_weights(&garbage).unwrap_err().to_string();
    assert!(
        err.contains("version 8") && err.contains("safetensors"),
        "{err}"
    );

    assert_eq!(engine.version(), 0);
    let after = generate(&engine, &req);
    assert_eq!(after.policy_version, 0);
    assert_eq!(after.responses, before.responses);
}

/// Waits (in another thread) until the engine has run `steps` more decoding steps, then calls
/// `then`.
fn after_decode_steps(
    engine: &Arc<QwenEngine>,
    steps: usize,
    then: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let engine = engine.clone();
    let start = engine.counters().decode_steps;
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.counters().decode_steps < start + steps {
            assert!(Instant::now() < deadline, "generation never got going");
            std::thread::yield_now();
        }
        then();
    })
}

fn long_request() -> GenerationRequest {
    let (img, question) = synth_sample();
    let mut req = request(&img, &question, 112, 51);
    req.max_response_tokens = 300;
    req
}

#[test]
fn cancel_stops_decoding_and_returns_none() {
    let engine = Arc::new(engine(&tiny_random()));
    let req = long_request();

    // Raised before the call: nothing runs.
    let flag = CancelFlag::default();
    flag.cancel();
    let before = engine.counters();
    assert!(engine.generate(&req, &flag).unwrap().is_none());
    assert_eq!(engine.counters(), before);

    // Raised mid-generation: decoding stops within a step or two of it.
    let flag = CancelFlag::default();
    let start = engine.counters().decode_steps;
    let f = flag.clone();
    let watcher = after_decode_steps(&engine, 3, move || f.cancel());
    assert!(engine.generate(&req, &flag).unwrap().is_none());
    watcher.join().unwrap();
    let ran = engine.counters().decode_steps - start;
    assert!(
        (3..50).contains(&ran),
        "{ran} decoding steps ran; the request allows 299"
    );

    // The same request uncancelled runs far longer (the random model rarely stops).
    let start = engine.counters().decode_steps;
    let group = generate(&engine, &req);
    assert!(engine.counters().decode_steps - start > 100);
    assert_eq!(group.responses.len(), 8);
}

#[test]
fn a_group_in_flight_keeps_the_weights_it_started_with() {
    let dir = tiny_random();
    let engine = Arc::new(engine(&dir));
    let req = long_request();
    let reference = generate(&engine, &req);

    let mut tensors = checkpoint_tensors(&dir);
    let head = tensors
        .iter_mut()
        .find(|t| t.0 == "lm_head.weight")
        .unwrap();
    head.3 = scale(&head.3, -1.0);
    let next = blob(5, &tensors);
    let e = engine.clone();
    let swapper = after_decode_steps(&engine, 3, move || e.load_weights(&next).unwrap());
    let in_flight = generate(&engine, &req);
    swapper.join().unwrap();
    assert_eq!(engine.version(), 5);
    assert_eq!(in_flight.policy_version, 0);
    assert_eq!(in_flight.responses, reference.responses);
    let after = generate(&engine, &req);
    assert_eq!(after.policy_version, 5);
    assert_ne!(after.responses, reference.responses);
}

#[test]
fn invalid_requests_name_the_field() {
    let engine = engine(&tiny_random());
    let (img, question) = synth_sample();
    let base = request(&img, &question, 112, 1);
    type Edit = fn(&mut GenerationRequest);
    let cases: [(&str, Edit); 5] = [
        ("group_size", |r| r.group_size = 0),
        ("max_response_tokens", |r| r.max_response_tokens = 0),
        ("temperature", |r| r.temperature = f64::NAN),
        ("top_p", |r| r.top_p = 0.0),
        ("image_size", |r| r.image_size = 0),
    ];
    for (field, edit) in cases {
        let mut r = base.clone();
        edit(&mut r);
        let err = engine
            .generate(&r, &CancelFlag::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
    }
    // The tiny fixture's context is 512 tokens: a 1000-token limit is cut by the context.
    let mut r = base.clone();
    r.group_size = 1;
    r.max_response_tokens = 1000;
    r.temperature = 0.0;
    let g = generate(&engine, &r);
    let resp = &g.responses[0];
    let prompt_len = engine.prepare_prompt(&r).unwrap().input_ids.len();
    if resp.finish == FinishReason::Length {
        assert_eq!(prompt_len + resp.token_ids.len(), 512);
    }
}
