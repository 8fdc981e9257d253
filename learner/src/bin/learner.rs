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
    /// Weight chunk size in bytes when a subscriber asks for none.
    #[arg(long, env = "PLATTER_LEARNER_CHUNK_BYTES", default_value_t = DEFAULT_CHUNK_BYTES)]
    chunk_bytes: usize,
}

fn parse_device(spec: &str) -> anyhow::Result<Device> {
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(ordinal) = spec.strip_prefix("cuda:") else {
        anyhow::bail!("--device must be `cpu` or `cuda:N`, found `{spec}`");
    };
    let ordinal: usize = ordinal
        .parse()
        .with_context(|| format!("--device `{spec}`: `{ordinal}` is not a GPU index"))?;
    Device::new_cuda(ordinal).with_context(|| {
        format!("--device `{spec}`: cannot open the GPU (is this a `--features cuda` build?)")
    })
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
    let device = parse_device(&args.device)?;
    tracing::info!(device = %args.device, "learner ranks run on this device");
    let mut config = LearnerServerConfig::new(Arc::new(QwenLearner::with_device(device)));
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
