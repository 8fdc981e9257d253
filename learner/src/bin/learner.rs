//! `learner`: flags (with `PLATTER_*` env fallbacks), logging, then
//! `platter_learner::server::serve` with the Qwen2.5-VL learner. The model, ranks and optimizer
//! come from each experiment's config (`StartExperiment`), not from flags.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use platter_learner::QwenLearner;
use platter_learner::server::{DEFAULT_CHUNK_BYTES, LearnerServerConfig, MAX_CHUNK_BYTES};

#[derive(Debug, Parser)]
#[command(
    name = "learner",
    version,
    about = "Platter learner: trains the policy on kept batches and publishes its weights"
)]
struct Args {
    /// gRPC listen address (loopback unless you mean it).
    #[arg(
        long,
        env = "PLATTER_LEARNER_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    listen: SocketAddr,
    /// `/metrics` listen address.
    #[arg(long, env = "PLATTER_LEARNER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Bearer token required on StartExperiment and TrainStep.
    #[arg(long, env = "PLATTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow running without a token (only sensible on loopback).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Device of every rank: `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, env = "PLATTER_LEARNER_DEVICE", default_value = "cpu")]
    device: String,
    /// One device per rank instead of `--device`: rank r runs on the r-th entry of a
    /// comma-separated list of distinct GPUs (`cuda:0,cuda:1,...`; with more than one, ranks
    /// all-reduce through NCCL) or of `cpu` entries. `learner.ranks` may not exceed its length.
    #[arg(
        long,
        env = "PLATTER_LEARNER_RANK_DEVICES",
        value_delimiter = ',',
        conflicts_with = "device"
    )]
    rank_devices: Vec<String>,
    /// Weight chunk size in bytes when a subscriber asks for none.
    #[arg(long, env = "PLATTER_LEARNER_CHUNK_BYTES", default_value_t = DEFAULT_CHUNK_BYTES)]
    chunk_bytes: usize,
}

/// `cpu` or `cuda:N` for `flag`; rank devices get a CUDA stream of their own.
fn parse_device(flag: &str, spec: &str, own_stream: bool) -> anyhow::Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(ordinal) = spec.strip_prefix("cuda:") else {
        anyhow::bail!("{flag} takes `cpu` or `cuda:N`, found `{spec}`");
    };
    let ordinal: usize = ordinal
        .parse()
        .with_context(|| format!("{flag} `{spec}`: `{ordinal}` is not a GPU index"))?;
    let device = if own_stream {
        Device::new_cuda_with_stream(ordinal)
    } else {
        Device::new_cuda(ordinal)
    };
    device.with_context(|| {
        format!("{flag} `{spec}`: cannot open the GPU (is this a `--features cuda` build?)")
    })
}

fn learner(args: &Args) -> anyhow::Result<QwenLearner> {
    if args.rank_devices.is_empty() {
        let device = parse_device("--device", &args.device, false)?;
        tracing::info!(device = %args.device, "learner ranks run on this device");
        return Ok(QwenLearner::with_device(device));
    }
    let devices = args
        .rank_devices
        .iter()
        .map(|s| parse_device("--rank-devices", s, true))
        .collect::<anyhow::Result<Vec<_>>>()?;
    tracing::info!(devices = ?args.rank_devices, "rank r runs on the r-th rank device");
    QwenLearner::with_rank_devices(devices).context("--rank-devices")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platter_proto::logging::init_logging();
    let args = Args::parse();
    if args.token.is_none() && !args.insecure_no_auth {
        anyhow::bail!(
            "--token (or PLATTER_TOKEN) is required; pass --insecure-no-auth to run without one"
        );
    }
    if !(1..=MAX_CHUNK_BYTES).contains(&args.chunk_bytes) {
        anyhow::bail!(
            "--chunk-bytes must be between 1 and {MAX_CHUNK_BYTES}, found {}",
            args.chunk_bytes
        );
    }
    let mut config = LearnerServerConfig::new(Arc::new(learner(&args)?));
    config.auth_token = args.token;
    config.chunk_bytes = args.chunk_bytes;
    if let Some(addr) = args.metrics_listen {
        config.metrics_listener = Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding /metrics on {addr}"))?,
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    platter_learner::server::serve(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
