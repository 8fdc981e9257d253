//! A test double of the generation engine: each response is one of a few fixed candidate texts,
//! sampled from softmax(logits) where the logits are the published weights of the learner
//! (`UnigramLearner`, tensor `logits`). A response is its candidate index repeated
//! `CANDIDATE_TOKENS[i]` times, so the learner really trains the distribution the worker samples
//! from.
//!
//! Groups with an even seed repeat one candidate G times: uniformly rewarded groups
//! that dynamic sampling must drop.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platter_proto::weights::PolicyWeights;
use platter_rollout::{
    CancelFlag, FinishReason, GeneratedGroup, GenerationRequest, Policy, PolicyError,
    SampledResponse,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The candidate responses (their rewards differ: full format with a box covering the image,
/// empty answer, no tags, repeated reasoning).
pub const CANDIDATES: [&str; 4] = [
    r#"<think>the dish is on the plate.</think><answer>[{"bbox_2d": [0, 0, 111, 111], "point_2d": [56, 56]}]</answer>"#,
    "<think>nothing to see.</think><answer>[]</answer>",
    "I cannot tell.",
    r#"<think>a bowl. a bowl. a bowl.</think><answer>[{"bbox_2d": [10, 10, 30, 30], "point_2d": [20, 20]}]</answer>"#,
];

/// Response length in tokens of each candidate (token ids repeat the candidate index).
pub const CANDIDATE_TOKENS: [usize; 4] = [24, 10, 6, 32];

/// See the module docs.
#[derive(Debug)]
pub struct CandidatePolicy {
    logits: Mutex<Vec<f32>>,
    version: AtomicU64,
    /// Simulated decoding time per group, checked for cancellation every 5 ms.
    pub group_time: Duration,
}

impl CandidatePolicy {
    /// Uniform logits, version 0.
    pub fn new(group_time: Duration) -> Self {
        Self {
            logits: Mutex::new(vec![0.0; CANDIDATES.len()]),
            version: AtomicU64::new(0),
            group_time,
        }
    }
}

fn log_softmax(theta: &[f32]) -> Vec<f64> {
    let max = theta.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = theta
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    theta.iter().map(|&x| x as f64 - lse).collect()
}

impl Policy for CandidatePolicy {
    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    fn load_weights(&self, weights: &PolicyWeights) -> Result<(), PolicyError> {
        let st = safetensors::SafeTensors::deserialize(&weights.safetensors)?;
        let t = st.tensor("logits")?;
        if t.shape() != [CANDIDATES.len()] {
            return Err(format!(
                "logits: expected shape [{}], found {:?}",
                CANDIDATES.len(),
                t.shape()
            )
            .into());
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        *self.logits.lock().map_err(|_| "poisoned")? = v;
        self.version.store(weights.version, Ordering::SeqCst);
        Ok(())
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelFlag,
    ) -> Result<Option<GeneratedGroup>, PolicyError> {
        let version = self.version();
        let lsm = log_softmax(&self.logits.lock().map_err(|_| "poisoned")?);
        let mut rng = ChaCha8Rng::seed_from_u64(request.seed);
        let pick = |rng: &mut ChaCha8Rng| {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            for (i, l) in lsm.iter().enumerate() {
                acc += l.exp();
                if u < acc {
                    return i;
                }
            }
            lsm.len() - 1
        };
        let uniform = request.seed.is_multiple_of(2);
        let first = pick(&mut rng);
        let responses: Vec<SampledResponse> = (0..request.group_size)
            .map(|_| {
                let i = if uniform { first } else { pick(&mut rng) };
                SampledResponse {
                    text: CANDIDATES[i].to_owned(),
                    token_ids: vec![i as u32; CANDIDATE_TOKENS[i]],
                    logprobs: vec![lsm[i] as f32; CANDIDATE_TOKENS[i]],
                    finish: FinishReason::Stop,
                }
            })
            .collect();
        // Decoding is simulated as even progress over `group_time`: a group cancelled part way
        // has decoded that fraction of its tokens.
        let total: usize = responses.iter().map(|r| r.token_ids.len()).sum();
        let mut waited = Duration::ZERO;
        while waited < self.group_time {
            let done = waited.as_secs_f64() / self.group_time.as_secs_f64();
            cancel.set_decoded_tokens((total as f64 * done).floor() as u64);
            if cancel.is_cancelled() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
            waited += Duration::from_millis(5);
        }
        cancel.set_decoded_tokens(total as u64);
        Ok(Some(GeneratedGroup {
            responses,
            policy_version: version,
        }))
    }
}
