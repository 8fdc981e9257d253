//! Group sampling: shared vision + prefill per group, reproducibility, stopping.

mod common;

use common::*;
use platter_qwen25vl::{FinishReason, Group, SamplingParams};

fn params(seed: u64, max_new_tokens: usize, stop: Vec<u32>) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        max_new_tokens,
        stop_token_ids: stop,
        seed,
    }
}

#[test]
fn vision_and_prefill_run_once_per_group() {
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let groups: Vec<Group> = prompts
        .iter()
        .map(|p| Group {
            prompt: p,
            num_samples: 8,
        })
        .collect();
    let before = policy.counters();
    let out = policy
        .generate(&groups, &params(1, 12, vec![]), processor.pad_token_id)
        .unwrap();
    let after = policy.counters();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|g| g.len() == 8));
    // One vision call encodes each group's image once; one prefill row per group (not per sample).
    assert_eq!(after.vision_calls - before.vision_calls, 1);
    assert_eq!(after.vision_images - before.vision_images, 2);
    assert_eq!(after.prefill_rows - before.prefill_rows, 2);
    // 12 tokens: the first comes from the prefill logits, then 11 batched decode steps.
    assert_eq!(after.decode_steps - before.decode_steps, 11);
    assert_eq!(after.decode_rows - before.decode_rows, 11 * 16);
    for s in out.iter().flatten() {
        assert_eq!(s.tokens.len(), 12);
        assert_eq!(s.logprobs.len(), 12);
        assert_eq!(s.finish_reason, FinishReason::Length);
        assert!(s.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    }
    // Different samples of a group differ (temperature 1 over a random model).
    let distinct: std::collections::HashSet<_> = out[0].iter().map(|s| s.tokens.clone()).collect();
    assert!(distinct.len() > 1);
}

#[test]
fn sampling_is_reproducible_and_independent_of_batching() {
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let p = params(42, 10, vec![]);
    let both: Vec<Group> = prompts
        .iter()
        .map(|p| Group {
            prompt: p,
            num_samples: 4,
        })
        .collect();
    let a = policy.generate(&both, &p, processor.pad_token_id).unwrap();
    let b = policy.generate(&both, &p, processor.pad_token_id).unwrap();
    assert_eq!(a, b);
    // Group 0 alone gives the same samples as group 0 within the two-group batch (f32 rounding
    // can differ slightly with padding, so compare tokens, and log-probs loosely).
    let alone = policy
        .generate(&both[..1], &p, processor.pad_token_id)
        .unwrap();
    for (x, y) in alone[0].iter().zip(&a[0]) {
        assert_eq!(x.tokens, y.tokens);
        assert!(max_abs_diff(&x.logprobs, &y.logprobs) < 1e-4);
    }
    let c = policy
        .generate(&both, &params(43, 10, vec![]), processor.pad_token_id)
        .unwrap();
    assert_ne!(a, c, "a different seed gives different samples");
}

#[test]
fn stop_tokens_end_samples_and_finished_rows_leave_the_batch() {
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let groups = [Group {
        prompt: &prompts[0],
        num_samples: 8,
    }];
    // Make a frequent token the stop token: take the first sampled token of sample 0.
    let probe = policy
        .generate(&groups, &params(5, 4, vec![]), processor.pad_token_id)
        .unwrap();
    let stop = probe[0][0].tokens[0];
    let before = policy.counters();
    let out = policy
        .generate(&groups, &params(5, 30, vec![stop]), processor.pad_token_id)
        .unwrap();
    let after = policy.counters();
    // Decode rows processed = sum over samples of (tokens - 1): stopped samples left the batch.
    let expected_rows: usize = out[0].iter().map(|s| s.tokens.len() - 1).sum();
    assert_eq!(after.decode_rows - before.decode_rows, expected_rows);
    assert!(expected_rows < 8 * 29);
    let s0 = &out[0][0];
    assert_eq!(s0.tokens, vec![stop]);
    assert_eq!(s0.finish_reason, FinishReason::Stop);
    for s in &out[0] {
        match s.finish_reason {
            FinishReason::Stop => assert_eq!(s.tokens.last(), Some(&stop)),
            FinishReason::Length => assert_eq!(s.tokens.len(), 30),
        }
        assert!(s.tokens[..s.tokens.len() - 1].iter().all(|t| *t != stop));
    }
}

#[test]
fn top_k_one_is_greedy() {
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let groups = [Group {
        prompt: &prompts[1],
        num_samples: 2,
    }];
    let mut k1 = params(9, 8, vec![]);
    k1.top_k = 1;
    let mut greedy = k1.clone();
    greedy.temperature = 0.0;
    let a = policy
        .generate(&groups, &k1, processor.pad_token_id)
        .unwrap();
    let b = policy
        .generate(&groups, &greedy, processor.pad_token_id)
        .unwrap();
    assert_eq!(a[0][0].tokens, b[0][0].tokens);
    assert_eq!(a[0][0].tokens, a[0][1].tokens);
}

#[test]
fn invalid_sampling_parameters_are_errors() {
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let groups = [Group {
        prompt: &prompts[0],
        num_samples: 1,
    }];
    for bad in [
        SamplingParams {
            top_p: 0.0,
            ..params(0, 4, vec![])
        },
        SamplingParams {
            temperature: -1.0,
            ..params(0, 4, vec![])
        },
        SamplingParams {
            max_new_tokens: 0,
            ..params(0, 4, vec![])
        },
    ] {
        assert!(
            policy
                .generate(&groups, &bad, processor.pad_token_id)
                .is_err()
        );
    }
}

/// A sampled response may contain any id, `<|image_pad|>` included. Decoding embeds it as a
/// plain token; the teacher-forced (training) path must do the same instead of asking for an
/// image feature it does not have, and give the sampling-time log-probs back.
#[test]
fn a_response_holding_image_pad_scores_like_decoding() {
    use platter_qwen25vl::ResponseBatch;
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let image_pad = policy.cfg.image_token_id;
    let params = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 6,
        stop_token_ids: vec![],
        seed: 3,
    };
    // Force `<|image_pad|>` into the response: sample 3 tokens, append it, sample on from
    // there with greedy-free teacher forcing of the whole thing.
    let out = policy
        .generate(
            &[Group {
                prompt: &prompts[0],
                num_samples: 1,
            }],
            &params,
            processor.pad_token_id,
        )
        .unwrap();
    let mut response = out[0][0].tokens.clone();
    response.insert(2, image_pad);
    let batch = ResponseBatch::new(
        &[&prompts[0]],
        std::slice::from_ref(&response),
        processor.pad_token_id,
        policy.cfg.text.max_position_embeddings,
        policy.device(),
    )
    .unwrap();
    let lp = policy.response_logprobs(&batch, false).unwrap();
    let logp = to_f32(&lp.logp);
    assert_eq!(logp.len(), response.len());
    assert!(logp.iter().all(|v| v.is_finite() && *v <= 0.0), "{logp:?}");
    // The first two tokens precede the inserted id: their log-probs are the sampling-time ones.
    let sampled = &out[0][0].logprobs;
    assert!(max_abs_diff(&logp[..2], &sampled[..2]) < 1e-4);
}

/// The training path at the sampling temperature gives back the log-probs the sampler reported
/// at that temperature; at temperature 1 it does not; a non-positive temperature is an error.
#[test]
fn tempered_log_probs_match_sampling() {
    use platter_qwen25vl::ResponseBatch;
    let (policy, processor) = load_policy();
    let prompts = prompts(&processor, &cases());
    let params = SamplingParams {
        temperature: 0.5,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 12,
        stop_token_ids: vec![],
        seed: 11,
    };
    let out = policy
        .generate(
            &[Group {
                prompt: &prompts[0],
                num_samples: 2,
            }],
            &params,
            processor.pad_token_id,
        )
        .unwrap();
    let responses: Vec<Vec<u32>> = out[0].iter().map(|s| s.tokens.clone()).collect();
    let batch = ResponseBatch::new(
        &[&prompts[0], &prompts[0]],
        &responses,
        processor.pad_token_id,
        policy.cfg.text.max_position_embeddings,
        policy.device(),
    )
    .unwrap();
    let tempered = policy.response_logprobs_at(&batch, false, 0.5).unwrap();
    let plain = policy.response_logprobs(&batch, false).unwrap();
    let (tempered, plain) = (to_f32(&tempered.logp), to_f32(&plain.logp));
    let r = tempered.len() / 2;
    let mut far = 0.0f32;
    for (row, sample) in out[0].iter().enumerate() {
        let n = sample.logprobs.len();
        let t = &tempered[row * r..row * r + n];
        let p = &plain[row * r..row * r + n];
        assert!(max_abs_diff(t, &sample.logprobs) < 1e-4, "row {row}");
        far = far.max(max_abs_diff(p, &sample.logprobs));
    }
    assert!(far > 1e-2, "temperature 1 should differ: {far}");
    for bad in [0.0, -1.0, f64::NAN] {
        let e = policy
            .response_logprobs_at(&batch, false, bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("temperature"), "{e}");
    }
}
