//! Weight-publish bandwidth of the learner service on loopback gRPC, against memcpy bandwidth
//! measured in the same run.
//!
//! `cargo run --release -p platter-learner --example bench_publish -- [--sizes-mib 64,512]
//! [--subscribers 1,4] [--repeats 3] [--chunk-mib 4]`
//!
//! A learner that publishes a blob of the given size (f32-sized, random bytes) is served with
//! `platter_learner::server::serve`; N subscribers follow it with
//! `platter_coordinator::RemoteLearner::subscribe` (the chunked `SubscribeWeights` stream,
//! reassembled into one buffer, as a rollout worker's weight feed does). Each repeat publishes
//! a new version and times it from the publish until every subscriber holds it. Per row: the
//! median per-subscriber bytes/s, the aggregate (N × size / time until the last subscriber has
//! it), and that aggregate as a fraction of single-threaded memcpy of the same size.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use platter_coordinator::{ExperimentConfig, Learner, RemoteLearner, RemoteLearnerOptions};
use platter_learner::server::{LearnerServerConfig, serve};
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use tokio::sync::watch;

#[derive(Debug, Parser)]
struct Args {
    /// Blob sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    sizes_mib: Vec<usize>,
    /// Subscriber counts.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    subscribers: Vec<usize>,
    /// Published versions timed per row.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Chunk size in MiB.
    #[arg(long, default_value_t = 4)]
    chunk_mib: usize,
}

/// Publishes a fixed-size blob as a new version on every step; trains nothing. Only the
/// transport is measured here.
struct BlobLearner {
    blob: Arc<Vec<u8>>,
    version: Mutex<u64>,
    publish: watch::Sender<PolicyWeights>,
}

impl BlobLearner {
    fn new(bytes: usize) -> Self {
        // xorshift bytes: incompressible, cheap to make.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let blob: Vec<u8> = (0..bytes.div_ceil(8))
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .take(bytes)
            .collect();
        let blob = Arc::new(blob);
        let (publish, _) = watch::channel(PolicyWeights {
            version: 0,
            safetensors: blob.clone(),
        });
        Self {
            blob,
            version: Mutex::new(0),
            publish,
        }
    }
}

impl Learner for BlobLearner {
    fn start_experiment(&self, _: &ExperimentConfig) -> platter_coordinator::Result<u64> {
        Ok(0)
    }

    fn train_step(
        &self,
        _: &v1::TrainStepRequest,
    ) -> platter_coordinator::Result<v1::TrainStepResponse> {
        let mut v = self
            .version
            .lock()
            .map_err(|_| platter_coordinator::Error::Poisoned)?;
        *v += 1;
        self.publish.send_replace(PolicyWeights {
            version: *v,
            safetensors: self.blob.clone(),
        });
        Ok(v1::TrainStepResponse {
            policy_version: *v,
            ..Default::default()
        })
    }

    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.publish.subscribe()
    }
}

/// Best of five single-threaded copies of `bytes`, in bytes/s.
fn memcpy_bandwidth(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best
}

async fn wait_version(rx: &mut watch::Receiver<PolicyWeights>, version: u64) -> Result<(), String> {
    tokio::time::timeout(
        Duration::from_secs(600),
        rx.wait_for(|w| w.version >= version),
    )
    .await
    .map_err(|_| format!("version {version} not received in 600 s"))?
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// CPU seconds this process has used (user + system, all threads), from `/proc/self/stat`
/// (Linux; clock ticks of 10 ms). `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn gb(bps: f64) -> f64 {
    bps / 1e9
}

async fn row(
    bytes: usize,
    subscribers: usize,
    repeats: usize,
    chunk_bytes: usize,
    memcpy: f64,
) -> Result<(), Box<dyn Error>> {
    let learner = Arc::new(BlobLearner::new(bytes));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut config = LearnerServerConfig::new(learner.clone());
    config.chunk_bytes = chunk_bytes;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, listener, async {
        let _ = stop_rx.await;
    }));
    let remotes: Vec<RemoteLearner> = (0..subscribers)
        .map(|_| RemoteLearner::new(&url, RemoteLearnerOptions::default()))
        .collect::<Result<_, _>>()?;
    let mut feeds: Vec<_> = remotes.iter().map(Learner::subscribe).collect();
    // Version 0 arrives on connect: a warm-up transfer, not timed.
    for rx in &mut feeds {
        wait_version(rx, 0).await?;
        rx.wait_for(|w| !w.safetensors.is_empty()).await?;
    }
    let mut per_sub = Vec::new();
    let mut aggregate = Vec::new();
    let (cpu_start, wall_start) = (cpu_seconds(), Instant::now());
    for r in 1..=repeats as u64 {
        let t = Instant::now();
        let waiting: Vec<_> = feeds
            .iter()
            .map(|rx| {
                let mut rx = rx.clone();
                tokio::spawn(async move { wait_version(&mut rx, r).await.map(|()| t.elapsed()) })
            })
            .collect();
        learner.train_step(&v1::TrainStepRequest::default())?;
        let mut times = Vec::with_capacity(waiting.len());
        for w in waiting {
            times.push(w.await??);
        }
        for d in &times {
            per_sub.push(bytes as f64 / d.as_secs_f64());
        }
        let last = times.iter().max().copied().unwrap_or_default();
        aggregate.push((bytes * subscribers) as f64 / last.as_secs_f64());
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
    per_sub.sort_by(f64::total_cmp);
    aggregate.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    let (sub, agg) = (median(&per_sub), median(&aggregate));
    // Bytes moved per CPU-second of this process (server and subscribers together): what the
    // transfer costs, independent of how much of the machine other processes took.
    let per_cpu = cpu.map_or_else(
        || "n/a".to_owned(),
        |c| {
            format!(
                "{:.2} GB/s ({:.0}% of a core)",
                gb((bytes * subscribers * repeats) as f64 / c.max(0.01)),
                100.0 * c / wall
            )
        },
    );
    println!(
        "| {} MiB | {subscribers} | {:.2} GB/s | {:.2} GB/s | {:.2} GB/s | {:.0}% | {per_cpu} |",
        bytes >> 20,
        gb(sub),
        gb(agg),
        gb(memcpy),
        100.0 * agg / memcpy
    );
    drop(feeds);
    drop(remotes);
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let chunk_bytes = args.chunk_mib.max(1) << 20;
    println!(
        "| blob | subscribers | per subscriber | aggregate | memcpy (1 thread) | aggregate / memcpy | bytes per CPU-second (CPU use) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &mib in &args.sizes_mib {
        let bytes = mib << 20;
        let memcpy = memcpy_bandwidth(bytes);
        for &subs in &args.subscribers {
            row(bytes, subs.max(1), args.repeats.max(1), chunk_bytes, memcpy).await?;
        }
    }
    Ok(())
}
