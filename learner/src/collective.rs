//! Collectives between data-parallel learner ranks.
//!
//! [`Collective`] is what the update code calls; [`InProcessGroup`] implements it for ranks that
//! are threads of one process (CPU runs and tests), so the multi-rank logic that runs with NCCL
//! on GPUs is exercised on every CI run. Every call has a timeout: a dead or stuck peer gives
//! [`Error::CollectiveTimeout`] naming the missing ranks instead of a silent hang.
//!
//! Reductions sum in f64 in rank order, so every rank gets bit-identical results and a run is
//! reproducible whatever the thread timing.
//!
//! With the `cuda` feature, [`nccl::NcclGroup`] implements [`Collective`] over NCCL for ranks
//! on separate GPUs; [`rendezvous`] hands rank 0's NCCL unique id to ranks in other processes.

#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Operations data-parallel ranks perform together. Every rank must call the same operations
/// in the same order with buffers of equal length.
pub trait Collective: Send + Sync {
    /// This rank's index in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Element-wise sum across ranks, in place.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum across ranks of f64 values (counters, normalisers, losses), in place.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Copies `root`'s buffer into every rank's buffer.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Waits until every rank has arrived.
    fn barrier(&self) -> Result<()> {
        self.all_reduce_sum_f64(&mut [0.0])
    }
    /// Element-wise f32 sum of a tensor across ranks, returned on the tensor's device. The
    /// default goes through host memory; a device collective (NCCL) overrides it to reduce in
    /// place on the GPU, in which case a contiguous f32 `t` holds the sum afterwards too: pass
    /// a tensor whose old value is no longer needed.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        reduce_tensor_through_host(self, t)
    }
    /// ZeRO-1's gradient step: sums `t` (`world_size() × chunk` elements, read flat) across
    /// ranks and returns this rank's `chunk` of the sum, 1-D f32 on `t`'s device. Like
    /// [`Collective::all_reduce_sum_tensor`], a device collective may reduce in `t`'s storage.
    /// The default all-reduces and keeps the chunk.
    fn reduce_scatter_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let chunk = equal_chunk(self.world_size(), t.elem_count(), "reduce_scatter_sum")?;
        let sum = self.all_reduce_sum_tensor(&t.flatten_all()?)?;
        Ok(sum.narrow(0, self.rank() * chunk, chunk)?.contiguous()?)
    }
    /// ZeRO-1's parameter step: every rank's `t` (1-D f32, equal lengths) concatenated in rank
    /// order, on `t`'s device. The default sums zero-padded copies, which is exact.
    fn all_gather_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.flatten_all()?.to_dtype(DType::F32)?;
        let (world, rank, n) = (self.world_size(), self.rank(), t.elem_count());
        if world == 1 {
            return Ok(t);
        }
        let zeros = |k: usize| Tensor::zeros(k * n, DType::F32, t.device());
        let placed = Tensor::cat(&[&zeros(rank)?, &t, &zeros(world - rank - 1)?], 0)?;
        self.all_reduce_sum_tensor(&placed)
    }
}

/// The per-rank chunk of a buffer of `len` elements split evenly over `world` ranks.
pub(crate) fn equal_chunk(world: usize, len: usize, op: &str) -> Result<usize> {
    if world == 0 || !len.is_multiple_of(world) {
        return Err(Error::Data {
            context: op.to_string(),
            reason: format!("{len} elements do not split evenly over {world} ranks"),
        });
    }
    Ok(len / world)
}

/// [`Collective::all_reduce_sum_tensor`] through a host buffer and
/// [`Collective::all_reduce_sum`] (the default, and the fallback for tensors a device
/// collective cannot reduce where they are).
pub(crate) fn reduce_tensor_through_host<C: Collective + ?Sized>(
    c: &C,
    t: &Tensor,
) -> Result<Tensor> {
    if c.world_size() == 1 {
        return Ok(t.to_dtype(DType::F32)?);
    }
    let shape = t.shape().clone();
    let mut host = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    c.all_reduce_sum(&mut host)?;
    Ok(Tensor::from_vec(host, shape, t.device())?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Sum,
    Broadcast { root: usize },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Sum => "all_reduce_sum",
            Op::Broadcast { .. } => "broadcast",
        }
    }
}

#[derive(Debug, Default)]
struct Round {
    op: Option<Op>,
    len: usize,
    slots: Vec<Option<Vec<f64>>>,
    arrived: usize,
    result: Option<Arc<Vec<f64>>>,
    departed: usize,
    /// A rank failed (timeout or mismatch) in this round; everyone else fails too.
    poisoned: Option<String>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    timeout: Duration,
    round: Mutex<Round>,
    cv: Condvar,
}

/// One rank's handle on an in-process group. Create all handles with [`InProcessGroup::new`]
/// and move one into each rank's thread.
#[derive(Debug, Clone)]
pub struct InProcessGroup {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcessGroup {
    /// Handles for `world` ranks; each collective waits at most `timeout` for its peers.
    pub fn new(world: usize, timeout: Duration) -> Vec<InProcessGroup> {
        let shared = Arc::new(Shared {
            world,
            timeout,
            round: Mutex::new(Round {
                slots: vec![None; world],
                ..Round::default()
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| InProcessGroup {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // A panicking rank poisons the mutex; the state is still consistent enough to report.
        self.shared.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        mut guard: MutexGuard<'a, Round>,
        deadline: Instant,
        op: Op,
        done: impl Fn(&Round) -> bool,
    ) -> Result<MutexGuard<'a, Round>> {
        while !done(&guard) {
            if let Some(reason) = &guard.poisoned {
                return Err(Error::CollectiveMismatch {
                    rank: self.rank,
                    detail: format!("another rank failed: {reason}"),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = guard
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_none())
                    .map(|(r, _)| r)
                    .collect();
                guard.poisoned = Some(format!("rank {} timed out in {}", self.rank, op.name()));
                self.shared.cv.notify_all();
                return Err(Error::CollectiveTimeout {
                    op: op.name(),
                    rank: self.rank,
                    timeout_ms: self.shared.timeout.as_millis(),
                    missing,
                });
            }
            guard = self
                .shared
                .cv
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(guard)
    }

    /// Deposits this rank's contribution, waits for the result, copies it out.
    fn run(&self, op: Op, input: Vec<f64>) -> Result<Arc<Vec<f64>>> {
        let deadline = Instant::now() + self.shared.timeout;
        let guard = self.lock();
        // Wait for the previous round to be fully collected by every rank.
        let mut g = self.wait(guard, deadline, op, |r| r.result.is_none())?;
        if let Some(prev) = g.op {
            if prev != op || g.len != input.len() {
                let detail = format!(
                    "rank {} called {} with {} values while others called {} with {}",
                    self.rank,
                    op.name(),
                    input.len(),
                    prev.name(),
                    g.len
                );
                g.poisoned = Some(detail.clone());
                self.shared.cv.notify_all();
                return Err(Error::CollectiveMismatch {
                    rank: self.rank,
                    detail,
                });
            }
        } else {
            g.op = Some(op);
            g.len = input.len();
        }
        g.slots[self.rank] = Some(input);
        g.arrived += 1;
        if g.arrived == self.shared.world {
            let result = match op {
                Op::Sum => {
                    let mut acc = vec![0f64; g.len];
                    for slot in g.slots.iter().flatten() {
                        for (a, v) in acc.iter_mut().zip(slot) {
                            *a += v;
                        }
                    }
                    acc
                }
                Op::Broadcast { root } => g.slots[root].take().unwrap_or_default(),
            };
            g.result = Some(Arc::new(result));
            self.shared.cv.notify_all();
        }
        let mut g = self.wait(g, deadline, op, |r| r.result.is_some())?;
        let result = g.result.clone().unwrap_or_default();
        g.departed += 1;
        if g.departed == self.shared.world {
            let world = self.shared.world;
            *g = Round {
                slots: vec![None; world],
                ..Round::default()
            };
            self.shared.cv.notify_all();
        }
        Ok(result)
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.shared.world {
            return Err(Error::BadRank {
                rank: root,
                world: self.shared.world,
            });
        }
        Ok(())
    }
}

impl Collective for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let r = self.run(Op::Sum, buf.iter().map(|&v| f64::from(v)).collect())?;
        for (b, v) in buf.iter_mut().zip(r.iter()) {
            *b = *v as f32;
        }
        Ok(())
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let r = self.run(Op::Sum, buf.to_vec())?;
        buf.copy_from_slice(&r[..buf.len()]);
        Ok(())
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.check_root(root)?;
        let r = self.run(
            Op::Broadcast { root },
            buf.iter().map(|&v| f64::from(v)).collect(),
        )?;
        for (b, v) in buf.iter_mut().zip(r.iter()) {
            *b = *v as f32;
        }
        Ok(())
    }
}
