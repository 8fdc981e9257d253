//! `coordinator`: flags (with `PLATTER_*` env fallbacks), logging, then
//! `platter_coordinator::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use platter_coordinator::{CoordinatorConfig, UnigramLearner};

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
    /// Vocabulary of the built-in one-rank learner (a context-free token distribution) used
    /// until the Qwen2.5-VL learner service is available.
    #[arg(long, env = "PLATTER_UNIGRAM_VOCAB", default_value_t = 151_936)]
    unigram_vocab: usize,
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
    let mut config = CoordinatorConfig::new(
        args.store,
        Arc::new(UnigramLearner::new(args.unigram_vocab)),
    );
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
