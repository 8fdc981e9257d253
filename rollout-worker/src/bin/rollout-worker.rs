//! `rollout-worker`: flags (with `PLATTER_*` env fallbacks), logging, the Qwen2.5-VL engine,
//! the learner's weight feed, then `platter_rollout::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::Parser;
use platter_proto::weights::PolicyWeights;
use platter_rollout::{Policy, QwenEngine, WorkerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "rollout-worker",
    version,
    about = "Platter rollout worker: leases prompts, samples groups with Qwen2.5-VL, scores and returns them"
)]
struct Args {
    /// Coordinator endpoint.
    #[arg(
        long,
        env = "PLATTER_COORDINATOR_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Reward server endpoint.
    #[arg(
        long,
        env = "PLATTER_REWARD_SERVER_URL",
        default_value = "http://127.0.0.1:50061"
    )]
    reward_server: String,
    /// Learner endpoint whose published weights (`SubscribeWeights`) the worker follows.
    /// Without it the worker keeps the weights of `--policy` and can only serve leases that
    /// need policy version 0.
    #[arg(long, env = "PLATTER_LEARNER_URL")]
    learner: Option<String>,
    /// HF Qwen2.5-VL model directory (config, safetensors, tokenizer, preprocessor): the
    /// initial policy (version 0), the same directory the learner starts from.
    #[arg(long, env = "PLATTER_POLICY_DIR")]
    policy: PathBuf,
    /// Worker name in logs and metrics (default: `<hostname>-<pid>`).
    #[arg(long, env = "PLATTER_WORKER_NAME")]
    name: Option<String>,
    /// Bearer token for the coordinator.
    #[arg(long, env = "PLATTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// `/metrics` listen address.
    #[arg(long, env = "PLATTER_ROLLOUT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Groups generated at once (each on its own blocking thread, sharing the weights).
    #[arg(long, env = "PLATTER_ROLLOUT_CONCURRENCY", default_value_t = 1)]
    max_concurrent_groups: usize,
    /// Device: `cpu` or `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, env = "PLATTER_DEVICE", default_value = "cpu")]
    device: String,
    /// Weight dtype: `f32`, `bf16` or `f16` (default: f32 on CPU, bf16 on CUDA).
    #[arg(long, env = "PLATTER_POLICY_DTYPE")]
    dtype: Option<String>,
    /// How long a lease may wait for the policy version it needs before it fails.
    #[arg(long, env = "PLATTER_WEIGHTS_TIMEOUT_SECONDS", default_value_t = 60.0)]
    weights_timeout_seconds: f64,
}

fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => anyhow::bail!("--device: expected `cpu` or `cuda:N`, found `{spec}`"),
        },
    }
}

fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).with_context(|| {
        format!("--device cuda:{ordinal} (is this binary built with `--features cuda`?)")
    })
}

fn parse_dtype(spec: Option<&str>, device: &Device) -> anyhow::Result<DType> {
    Ok(match spec {
        None if device.is_cpu() => DType::F32,
        None => DType::BF16,
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(other) => anyhow::bail!("--dtype: expected `f32`, `bf16` or `f16`, found `{other}`"),
    })
}

fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rollout-worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves on ctrl-c, or SIGTERM on Unix (what container runtimes send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: cancelling in-flight groups");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platter_proto::logging::init_logging();
    let args = Args::parse();
    if args.max_concurrent_groups == 0 {
        anyhow::bail!("--max-concurrent-groups must be at least 1");
    }
    if !(args.weights_timeout_seconds.is_finite() && args.weights_timeout_seconds > 0.0) {
        anyhow::bail!(
            "--weights-timeout-seconds must be a positive number of seconds, found {}",
            args.weights_timeout_seconds
        );
    }
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(args.dtype.as_deref(), &device)?;
    let dir = args.policy.clone();
    let engine = {
        let device = device.clone();
        tokio::task::spawn_blocking(move || QwenEngine::load(&dir, &device, dtype))
            .await
            .context("policy loading thread")?
            .with_context(|| format!("loading the policy from {}", args.policy.display()))?
    };
    let engine = Arc::new(engine);
    let name = args.name.unwrap_or_else(default_name);
    let mut config = WorkerConfig::new(&name, &args.coordinator, &args.reward_server);
    config.token = args.token;
    config.max_concurrent_groups = args.max_concurrent_groups;
    config.weights_timeout = Duration::from_secs_f64(args.weights_timeout_seconds);
    match &args.learner {
        Some(url) => {
            // Start from what is loaded; the blob is not needed (a version is only loaded when
            // it differs from the engine's).
            let initial = PolicyWeights {
                version: engine.version(),
                safetensors: Arc::new(Vec::new()),
            };
            config.weights = Some(
                platter_rollout::subscribe_weights(url, initial)
                    .with_context(|| format!("--learner {url}"))?,
            );
        }
        None => tracing::warn!(
            "no --learner: the weights of {} stay loaded; leases that need a newer policy fail",
            args.policy.display()
        ),
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listener = Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding /metrics on {addr}"))?,
        );
    }
    tracing::info!(
        %name,
        coordinator = %args.coordinator,
        reward_server = %args.reward_server,
        learner = args.learner.as_deref().unwrap_or("-"),
        device = %args.device,
        ?dtype,
        "rollout worker starting"
    );
    let report = platter_rollout::run(config, engine, shutdown_signal()).await?;
    tracing::info!(?report, "rollout worker stopped");
    Ok(())
}
