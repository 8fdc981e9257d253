//! `coordinator`: flags (with `PLATTER_*` env fallbacks), logging, then
//! `platter_coordinator::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use platter_coordinator::{CoordinatorConfig, RemoteLearner, RemoteLearnerOptions};

#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version,
    about = "Platter coordinator: experiments, leasing, batch assembly, step loop"
)]
struct Args {
    /// gRPC listen address (loopback unless you mean it).
    #[arg(
        long,
        env = "PLATTER_COORDINATOR_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// `/metrics` listen address.
    #[arg(long, env = "PLATTER_COORDINATOR_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// SQLite experiment store.
    #[arg(
        long,
        env = "PLATTER_STORE",
        default_value = "platter-coordinator.sqlite"
    )]
    store: PathBuf,
    /// Bearer token required on mutating calls.
    #[arg(long, env = "PLATTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow running without a token (only sensible on loopback).
    #[arg(long)]
    insecure_no_auth: bool,
    /// The learner service (`learner` binary), e.g. `http://127.0.0.1:50053`. Required.
    #[arg(long, env = "PLATTER_LEARNER_URL")]
    learner: Option<String>,
    /// Bearer token for the learner's mutating calls (defaults to `--token`).
    #[arg(long, env = "PLATTER_LEARNER_TOKEN", hide_env_values = true)]
    learner_token: Option<String>,
    /// Seconds one training step may take before the call is retried (the learner answers a
    /// retried step from its stored response; it never trains a step twice).
    #[arg(long, env = "PLATTER_LEARNER_STEP_TIMEOUT", default_value_t = 1800.0)]
    learner_step_timeout: f64,
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
    let Some(learner_url) = args.learner else {
        anyhow::bail!(
            "--learner URL (or PLATTER_LEARNER_URL) is required: the learner service the coordinator hands batches to, e.g. http://127.0.0.1:50053 (start it with the `learner` binary)"
        );
    };
    if !(args.learner_step_timeout.is_finite() && args.learner_step_timeout > 0.0) {
        anyhow::bail!(
            "--learner-step-timeout must be a positive number of seconds, found {}",
            args.learner_step_timeout
        );
    }
    let options = RemoteLearnerOptions {
        token: args.learner_token.or_else(|| args.token.clone()),
        step_timeout: Duration::from_secs_f64(args.learner_step_timeout),
        ..RemoteLearnerOptions::default()
    };
    let learner = RemoteLearner::new(&learner_url, options)
        .with_context(|| format!("learner endpoint {learner_url}"))?;
    tracing::info!(learner = %learner_url, "training through the learner service");
    let mut config = CoordinatorConfig::new(args.store, Arc::new(learner));
    config.auth_token = args.token;
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
    platter_coordinator::serve(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
