//! The NCCL collective and the learner update on CUDA (feature `cuda`; `scripts/gpu-check.sh`
//! runs this file on a GPU machine). Each test needs a number of visible GPUs and, with fewer,
//! prints a `SKIP:` line and returns; the script counts those lines.
//!
//! - 1 rank on `cuda:0`: every call through NCCL, values unchanged (a sum over one rank).
//! - 2 ranks on `cuda:0`/`cuda:1`: sums and broadcasts against hand-computed values, through the
//!   in-memory id and through rank 0's TCP endpoint.
//! - Timeouts: a rank that never joins (init), a peer that stops calling (all-reduce); both
//!   fail with `CollectiveTimeout` naming the operation, the rank and the timeout, and abort.
//!   A shared abort flag ends a pending init or a peer's wait at once.
//! - The learner's update (tiny Qwen2.5-VL fixture) on `cuda:0`, and on 2 GPUs with NCCL,
//!   against the same update on the CPU.
//! - `all_reduce_bandwidth_64mib` (ignored by default): bus bandwidth of a 64 MiB all-reduce
//!   over every visible GPU.
#![cfg(feature = "cuda")]
// Measured agreements, skips and bandwidths are printed so the check's log records them.
#![allow(clippy::print_stderr)]

mod qwen_common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use platter_learner::collective::nccl::{AbortFlag, NcclGroup, NcclUniqueId};
use platter_learner::{
    AdamW, AdamWConfig, Algorithm, Collective, Error, InProcessGroup, QwenPolicy, SkipCounter,
    UpdateConfig, UpdateStats, frozen_logprobs, shard_for_rank, train_step,
};
use platter_rl::DapoLoss;
use qwen_common::{batch, flat, tiny};

/// Visible GPUs (0 when the driver cannot be initialised).
fn gpus() -> usize {
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .unwrap_or(0)
}

/// Whether `need` GPUs are visible; prints the skip otherwise.
fn have(need: usize, test: &str) -> bool {
    let n = gpus();
    if n < need {
        eprintln!("SKIP: {test}: needs {need} GPU(s), {n} visible");
        return false;
    }
    true
}

fn cuda(ordinal: usize) -> Device {
    Device::new_cuda_with_stream(ordinal).expect("open the GPU")
}

/// Runs `f(rank, group)` on `world` threads, rank r on `cuda:r`, all joined to one
/// communicator made from an in-memory id and sharing an abort flag (as the learner's ranks).
fn on_gpus<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(usize, NcclGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let id = NcclUniqueId::new().expect("nccl unique id");
    let abort = AbortFlag::new();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = f.clone();
            let abort = abort.clone();
            thread::spawn(move || {
                let group =
                    NcclGroup::with_abort_flag(&cuda(rank), rank, world, &id, timeout, abort)
                        .unwrap_or_else(|e| panic!("rank {rank} joins: {e}"));
                f(rank, group)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor to host")
}

#[test]
fn one_rank_round_trips_every_call_through_nccl() {
    if !have(1, "one_rank_round_trips_every_call_through_nccl") {
        return;
    }
    let out = on_gpus(1, Duration::from_secs(60), |_, g| {
        assert_eq!((g.rank(), g.world_size(), g.cuda_ordinal()), (0, 1, 0));
        let mut a = [1.5f32, -2.0, 3.25];
        g.all_reduce_sum(&mut a).unwrap();
        assert_eq!(a, [1.5, -2.0, 3.25]);
        let mut b = [0.125f64, -1e300];
        g.all_reduce_sum_f64(&mut b).unwrap();
        assert_eq!(b, [0.125, -1e300]);
        let mut c = [4.0f32, 5.0];
        g.broadcast(&mut c, 0).unwrap();
        assert_eq!(c, [4.0, 5.0]);
        assert!(matches!(
            g.broadcast(&mut c, 1),
            Err(Error::BadRank { rank: 1, world: 1 })
        ));
        let t = Tensor::arange(0f32, 12.0, &cuda(0))
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let s = g.all_reduce_sum_tensor(&t).unwrap();
        assert!(s.device().is_cuda());
        assert_eq!(s.dims(), &[3, 4]);
        host(&s)
    });
    assert_eq!(out[0], (0..12).map(|v| v as f32).collect::<Vec<_>>());
}

/// Two ranks' sums and broadcasts; the expected values are the element-wise sums written out.
fn two_rank_checks(rank: usize, g: &NcclGroup) {
    // f32: [1, 2, 3, -4.5] + [10, 20, 30, 0.5] = [11, 22, 33, -4].
    let mut a = if rank == 0 {
        [1.0f32, 2.0, 3.0, -4.5]
    } else {
        [10.0, 20.0, 30.0, 0.5]
    };
    g.all_reduce_sum(&mut a).unwrap();
    assert_eq!(a, [11.0, 22.0, 33.0, -4.0], "rank {rank}");
    // f64 (exact in binary): [0.25, 2^40] + [0.5, 1] = [0.75, 2^40 + 1].
    let big = (1u64 << 40) as f64;
    let mut b = if rank == 0 { [0.25, big] } else { [0.5, 1.0] };
    g.all_reduce_sum_f64(&mut b).unwrap();
    assert_eq!(b, [0.75, big + 1.0], "rank {rank}");
    // Broadcast from rank 1: rank 0's zeros become [7, 8, 9].
    let mut c = if rank == 0 {
        [0.0f32; 3]
    } else {
        [7.0, 8.0, 9.0]
    };
    g.broadcast(&mut c, 1).unwrap();
    assert_eq!(c, [7.0, 8.0, 9.0], "rank {rank}");
    // Tensors on the rank's GPU: rank r holds (r + 1)·k for k = 0..1000, so the sum is 3k.
    let dev = cuda(rank);
    let k = Tensor::arange(0f32, 1000.0, &dev).unwrap();
    let mine = (k.clone() * (rank + 1) as f64)
        .unwrap()
        .reshape((10, 100))
        .unwrap();
    let sum = g.all_reduce_sum_tensor(&mine).unwrap();
    let want: Vec<f32> = (0..1000).map(|v| 3.0 * v as f32).collect();
    assert_eq!(host(&sum), want, "rank {rank}: contiguous f32");
    assert_eq!(sum.device().location(), dev.location());
    // A transposed (non-contiguous) view and a bf16 tensor are reduced through a copy.
    let t = (k.clone() * (rank + 1) as f64)
        .unwrap()
        .reshape((10, 100))
        .unwrap()
        .t()
        .unwrap();
    assert!(!t.is_contiguous());
    let st = g.all_reduce_sum_tensor(&t).unwrap();
    let want_t = host(&(k * 3.0).unwrap().reshape((10, 100)).unwrap().t().unwrap());
    assert_eq!(st.dims(), &[100, 10]);
    assert_eq!(host(&st), want_t, "rank {rank}: transposed");
    let small = Tensor::new(&[1.0f32, 2.0, 4.0], &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let sb = g.all_reduce_sum_tensor(&small).unwrap();
    assert_eq!(sb.dtype(), DType::F32);
    assert_eq!(host(&sb), [2.0, 4.0, 8.0], "rank {rank}: bf16");
    // Many rounds in a row, alternating kinds: rank r adds r + round.
    for round in 0..50 {
        let mut x = [(rank + round) as f32];
        g.all_reduce_sum(&mut x).unwrap();
        assert_eq!(x, [(1 + 2 * round) as f32]);
        let mut y = [rank as f32; 2];
        g.broadcast(&mut y, round % 2).unwrap();
        assert_eq!(y, [(round % 2) as f32; 2]);
    }
}

#[test]
fn two_ranks_sum_and_broadcast_like_the_hand_computed_values() {
    if !have(
        2,
        "two_ranks_sum_and_broadcast_like_the_hand_computed_values",
    ) {
        return;
    }
    on_gpus(2, Duration::from_secs(60), |rank, g| {
        two_rank_checks(rank, &g)
    });
}

#[test]
fn two_ranks_join_through_rank_zero_tcp_endpoint() {
    if !have(2, "two_ranks_join_through_rank_zero_tcp_endpoint") {
        return;
    }
    // A free loopback port for rank 0's endpoint.
    let endpoint: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            thread::spawn(move || {
                let g =
                    NcclGroup::connect_tcp(&cuda(rank), rank, 2, endpoint, Duration::from_secs(60))
                        .unwrap_or_else(|e| panic!("rank {rank} connects: {e}"));
                two_rank_checks(rank, &g);
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
}

#[test]
fn init_times_out_when_a_rank_never_joins() {
    if !have(1, "init_times_out_when_a_rank_never_joins") {
        return;
    }
    let timeout = Duration::from_secs(3);
    let id = NcclUniqueId::new().unwrap();
    let started = Instant::now();
    // A group of 2 whose rank 1 never comes.
    let e = NcclGroup::new(&cuda(0), 0, 2, &id, timeout).unwrap_err();
    let waited = started.elapsed();
    eprintln!("init timeout: {e} (after {waited:?})");
    match &e {
        Error::CollectiveTimeout {
            op,
            rank,
            timeout_ms,
            missing,
        } => {
            assert_eq!((*op, *rank, *timeout_ms), ("nccl init", 0, 3000));
            assert_eq!(missing, &[1]);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < timeout + Duration::from_secs(30), "{waited:?}");
}

#[test]
fn a_peer_that_stops_calling_times_out_and_aborts() {
    if !have(2, "a_peer_that_stops_calling_times_out_and_aborts") {
        return;
    }
    let timeout = Duration::from_secs(5);
    let out = on_gpus(2, timeout, move |rank, g| {
        // One round together, then rank 1 stops calling (and keeps its group alive past
        // rank 0's deadline).
        let mut x = [1.0f32];
        g.all_reduce_sum(&mut x).unwrap();
        assert_eq!(x, [2.0]);
        if rank == 1 {
            thread::sleep(timeout + Duration::from_secs(3));
            return None;
        }
        let started = Instant::now();
        let e = g.all_reduce_sum(&mut [1.0, 2.0]).unwrap_err();
        let waited = started.elapsed();
        let after = g.all_reduce_sum_f64(&mut [1.0]).unwrap_err();
        Some((e, waited, g.is_aborted(), after))
    });
    let (e, waited, aborted, after) = out[0].as_ref().unwrap();
    eprintln!("peer timeout: {e} (after {waited:?}); next call: {after}");
    match e {
        Error::CollectiveTimeout {
            op,
            rank,
            timeout_ms,
            missing,
        } => {
            assert_eq!((*op, *rank, *timeout_ms), ("nccl all_reduce_sum", 0, 5000));
            assert_eq!(missing, &[1]);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("nccl all_reduce_sum") && text.contains("rank 0") && text.contains("5000 ms"),
        "{text}"
    );
    assert!(*waited >= timeout && *waited < timeout + Duration::from_secs(30));
    assert!(aborted);
    assert!(
        matches!(after, Error::CollectiveMismatch { rank: 0, detail } if detail.contains("aborted")),
        "{after}"
    );
}

#[test]
fn a_raised_abort_flag_stops_a_pending_init() {
    if !have(1, "a_raised_abort_flag_stops_a_pending_init") {
        return;
    }
    // Rank 1 of 2 never comes; another rank of this process fails and raises the flag after
    // a second, well before the 60 s timeout.
    let abort = AbortFlag::new();
    let raiser = {
        let abort = abort.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(1));
            abort.raise();
        })
    };
    let id = NcclUniqueId::new().unwrap();
    let started = Instant::now();
    let e = NcclGroup::with_abort_flag(&cuda(0), 0, 2, &id, Duration::from_secs(60), abort)
        .unwrap_err();
    let waited = started.elapsed();
    raiser.join().unwrap();
    eprintln!("init abort: {e} (after {waited:?})");
    assert!(
        matches!(&e, Error::CollectiveMismatch { rank: 0, detail } if detail.contains("aborted")),
        "{e}"
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

#[test]
fn an_aborting_rank_fails_its_peer_at_once() {
    if !have(2, "an_aborting_rank_fails_its_peer_at_once") {
        return;
    }
    let timeout = Duration::from_secs(60);
    let out = on_gpus(2, timeout, |rank, g| {
        let mut x = [1.0f32];
        g.all_reduce_sum(&mut x).unwrap();
        if rank == 1 {
            // Rank 1 fails on its own and aborts instead of joining the next all-reduce.
            thread::sleep(Duration::from_secs(1));
            g.abort();
            assert!(g.is_aborted());
            return None;
        }
        let started = Instant::now();
        let e = g.all_reduce_sum(&mut [1.0, 2.0]).unwrap_err();
        Some((e, started.elapsed()))
    });
    let (e, waited) = out[0].as_ref().unwrap();
    eprintln!("peer abort: {e} (after {waited:?})");
    assert!(
        matches!(e, Error::CollectiveMismatch { rank: 0, detail } if detail.contains("aborted")),
        "{e}"
    );
    assert!(*waited < Duration::from_secs(30), "{waited:?}");
}

const ADVANTAGES: [f32; 8] = [1.2, -0.7, 0.3, -1.1, 0.9, -0.2, 0.05, -0.45];

/// AdamW with a large eps: at the first step the update is lr·g/(|g| + eps), whose slope in g
/// is at most lr/eps = 0.1, so float differences between devices in the gradient are not
/// blown up to ±lr as they would be by Adam's g/|g| with a tiny eps.
fn adam() -> AdamWConfig {
    AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-3,
        weight_decay: 0.0,
        warmup_steps: 0,
        ..AdamWConfig::default()
    }
}

fn update_cfg() -> UpdateConfig {
    UpdateConfig {
        algorithm: Algorithm::Dapo(DapoLoss::default()),
        mini_batches_per_step: 1,
        micro_batch_size: 2,
        max_grad_norm: 1.0,
        max_consecutive_skips: 3,
    }
}

type Outcome = (HashMap<String, Vec<f32>>, Vec<UpdateStats>);

/// One step of the update on `device` for this rank's share of the 8-sequence batch.
fn one_step(device: &Device, group: &dyn Collective) -> Outcome {
    let cfg = update_cfg();
    let model = QwenPolicy::load_trainable(&tiny(), device, DType::F32, false).unwrap();
    let mut opt = AdamW::new(model.trainable(), adam()).unwrap();
    let global = batch(&model, 8, &ADVANTAGES);
    let items = shard_for_rank(
        &global,
        group.rank(),
        group.world_size(),
        cfg.mini_batches_per_step,
    );
    let frozen = frozen_logprobs(&model, None, &items, cfg.micro_batch_size).unwrap();
    let stats = train_step(
        &model,
        &mut opt,
        group,
        &items,
        &frozen,
        &cfg,
        &mut SkipCounter::default(),
    )
    .unwrap();
    let weights = model
        .weights()
        .iter()
        .map(|(k, t)| (k.clone(), flat(t)))
        .collect();
    (weights, stats)
}

fn cpu_reference() -> Outcome {
    let g = InProcessGroup::new(1, Duration::from_secs(60)).remove(0);
    one_step(&Device::Cpu, &g)
}

/// Tolerances of CUDA against CPU, f32 throughout: relative 1e-4 on the loss and the grad
/// norm (different kernels sum in different orders); 1e-5 absolute on the weights, a tenth of
/// a full Adam step (lr = 1e-4), which the bound above keeps far from.
const LOSS_RTOL: f64 = 1e-4;
const WEIGHT_ATOL: f32 = 1e-5;

fn compare(what: &str, cpu: &Outcome, gpu: &Outcome) {
    let (cs, gs) = (&cpu.1[0], &gpu.1[0]);
    let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
    eprintln!(
        "{what}: loss cpu {:.8} gpu {:.8} (rel {:.2e}); grad norm cpu {:.8} gpu {:.8} (rel {:.2e})",
        cs.loss,
        gs.loss,
        rel(cs.loss, gs.loss),
        cs.grad_norm,
        gs.grad_norm,
        rel(cs.grad_norm, gs.grad_norm)
    );
    assert!(rel(cs.loss, gs.loss) <= LOSS_RTOL, "{what}: loss");
    assert!(
        rel(cs.grad_norm, gs.grad_norm) <= LOSS_RTOL,
        "{what}: grad norm"
    );
    let init = QwenPolicy::load_trainable(&tiny(), &Device::Cpu, DType::F32, false)
        .unwrap()
        .weights();
    let (mut worst, mut moved) = (0f32, 0f32);
    for (name, w) in &cpu.0 {
        let g = &gpu.0[name];
        assert_eq!(w.len(), g.len(), "{what}: {name}");
        for ((a, b), w0) in w.iter().zip(g).zip(flat(&init[name])) {
            worst = worst.max((a - b).abs());
            moved = moved.max((a - w0).abs());
        }
    }
    eprintln!("{what}: max |w_gpu - w_cpu| = {worst:.3e}; max weight change {moved:.3e}");
    assert!(worst <= WEIGHT_ATOL, "{what}: weights differ by {worst}");
    assert!(
        moved > 10.0 * WEIGHT_ATOL,
        "{what}: weights barely moved ({moved})"
    );
}

#[test]
fn learner_update_on_cuda0_matches_cpu() {
    if !have(1, "learner_update_on_cuda0_matches_cpu") {
        return;
    }
    let cpu = cpu_reference();
    // One rank through the NCCL group: the gradient all-reduce runs in place on the GPU.
    let gpu = on_gpus(1, Duration::from_secs(120), |_, g| one_step(&cuda(0), &g)).remove(0);
    compare("1 rank on cuda:0", &cpu, &gpu);
}

#[test]
fn two_gpu_ranks_with_nccl_match_one_cpu_rank() {
    if !have(2, "two_gpu_ranks_with_nccl_match_one_cpu_rank") {
        return;
    }
    let cpu = cpu_reference();
    let ranks = on_gpus(2, Duration::from_secs(120), |rank, g| {
        one_step(&cuda(rank), &g)
    });
    assert_eq!(ranks[0].0, ranks[1].0, "the two GPU ranks diverged");
    compare("2 ranks on cuda:0,1 (NCCL)", &cpu, &ranks[0]);
}

#[test]
#[ignore = "a measurement; scripts/gpu-check.sh runs it"]
fn all_reduce_bandwidth_64mib() {
    let world = gpus();
    if world == 0 {
        eprintln!("SKIP: all_reduce_bandwidth_64mib: no GPU visible");
        return;
    }
    const BYTES: usize = 64 << 20;
    const ITERS: u32 = 20;
    let times = on_gpus(world, Duration::from_secs(120), move |rank, g| {
        let dev = cuda(rank);
        let buf = Tensor::ones(BYTES / 4, DType::F32, &dev).unwrap();
        for _ in 0..3 {
            g.all_reduce_sum_tensor(&buf).unwrap();
        }
        g.barrier().unwrap();
        let started = Instant::now();
        for _ in 0..ITERS {
            g.all_reduce_sum_tensor(&buf).unwrap();
        }
        let secs = started.elapsed().as_secs_f64() / f64::from(ITERS);
        // Every element was multiplied by `world` once per call: check one element.
        let v: f32 = buf.narrow(0, 0, 1).unwrap().to_vec1().unwrap()[0];
        let want = (world as f32).powi(3 + ITERS as i32);
        assert!(
            (v - want).abs() <= 1e-3 * want,
            "rank {rank}: {v} vs {want}"
        );
        secs
    });
    let secs = times.iter().cloned().fold(0f64, f64::max);
    let algbw = BYTES as f64 / secs / 1e9;
    let busbw = algbw * 2.0 * (world as f64 - 1.0) / world as f64;
    eprintln!(
        "BANDWIDTH: all_reduce 64 MiB f32 over {world} GPU(s): {:.3} ms/call, algbw {algbw:.1} \
         GB/s, busbw {busbw:.1} GB/s{}",
        secs * 1e3,
        if world == 1 {
            " (one rank: no transfer between GPUs; the number is NCCL's local cost)"
        } else {
            ""
        }
    );
}
