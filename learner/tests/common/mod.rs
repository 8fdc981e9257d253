//! Test support: a deliberately small token model (embedding → tanh layer → vocabulary head)
//! standing in for Qwen2.5-VL behind the learner's `PolicyModel` trait, a fixed batch and configs.
#![allow(dead_code)]

use candle_core::{D, Device, Tensor, Var};
use platter_learner::{
    AdamWConfig, Algorithm, PolicyModel, ResponseLogprobs, TrainItem, UpdateConfig,
};

pub const V: usize = 16;
pub const H: usize = 8;

#[derive(Clone, Debug)]
pub struct Seq {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
}

pub struct TinyLm {
    emb: Var,
    w: Var,
    head: Var,
}

impl TinyLm {
    pub fn from_weights(w: &[Tensor; 3]) -> Self {
        let v = |t: &Tensor| Var::from_tensor(&t.copy().unwrap()).unwrap();
        Self {
            emb: v(&w[0]),
            w: v(&w[1]),
            head: v(&w[2]),
        }
    }

    pub fn named(&self) -> Vec<(String, Var)> {
        vec![
            ("emb".into(), self.emb.clone()),
            ("w".into(), self.w.clone()),
            ("head".into(), self.head.clone()),
        ]
    }

    pub fn weights(&self) -> Vec<Vec<f32>> {
        [&self.emb, &self.w, &self.head]
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }
}

impl PolicyModel for TinyLm {
    type Sequence = Seq;

    fn response_logprobs(
        &self,
        seqs: &[&Seq],
        entropy: bool,
    ) -> candle_core::Result<ResponseLogprobs> {
        let dev = Device::Cpu;
        let width = seqs
            .iter()
            .map(|s| s.tokens.len() - s.prompt_len)
            .max()
            .unwrap_or(0);
        let (mut rows, mut masks, mut ents) = (Vec::new(), Vec::new(), Vec::new());
        for s in seqs {
            let n = s.tokens.len();
            let inputs = Tensor::new(&s.tokens[..n - 1], &dev)?;
            let targets = Tensor::new(&s.tokens[1..], &dev)?;
            let h = self
                .emb
                .as_tensor()
                .embedding(&inputs)?
                .matmul(self.w.as_tensor())?
                .tanh()?;
            let logits = h.matmul(self.head.as_tensor())?;
            let logsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let lp = logsm.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
            let r = n - s.prompt_len;
            let lp = lp.narrow(0, s.prompt_len - 1, r)?;
            rows.push(lp.pad_with_zeros(0, 0, width - r)?);
            let mut m = vec![1f32; r];
            m.resize(width, 0.0);
            masks.push(Tensor::new(m.as_slice(), &dev)?);
            if entropy {
                let e = (logsm.exp()? * &logsm)?.sum(D::Minus1)?.neg()?;
                ents.push(
                    e.narrow(0, s.prompt_len - 1, r)?
                        .pad_with_zeros(0, 0, width - r)?,
                );
            }
        }
        Ok(ResponseLogprobs {
            logp: Tensor::stack(&rows, 0)?,
            mask: Tensor::stack(&masks, 0)?,
            entropy: if entropy {
                Some(Tensor::stack(&ents, 0)?)
            } else {
                None
            },
        })
    }
}

pub fn init_weights() -> [Tensor; 3] {
    let dev = Device::Cpu;
    let r = |shape: (usize, usize), seed: u64| {
        // Deterministic pseudo-random values in [-0.5, 0.5).
        let mut s = seed;
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    [r((V, H), 1), r((H, H), 2), r((H, V), 3)]
}

pub fn batch() -> Vec<TrainItem<Seq>> {
    let mut s = 7u64;
    let mut next = |m: u64| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) % m
    };
    (0..8)
        .map(|i| {
            let prompt_len = 2 + next(3) as usize;
            let resp = 1 + next(6) as usize; // ragged response lengths
            let tokens = (0..prompt_len + resp)
                .map(|_| next(V as u64) as u32)
                .collect();
            TrainItem {
                id: format!("p{}/s{}", i / 4, i % 4),
                sequence: Seq { tokens, prompt_len },
                advantage: [1.2f32, -0.7, 0.3, -1.1, 0.9, -0.2, 0.05, -0.45][i],
            }
        })
        .collect()
}

pub fn cfg(algorithm: Algorithm) -> UpdateConfig {
    UpdateConfig {
        algorithm,
        mini_batches_per_step: 2,
        micro_batch_size: 2,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    }
}

pub const OPT: AdamWConfig = AdamWConfig {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
    warmup_steps: 0,
    decay_steps: 0,
    min_lr: 0.0,
};
