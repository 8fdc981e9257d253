//! `reward-server`: flags (with `PLATTER_*` env fallbacks), logging, then `platter_reward::serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use platter_reward::RewardServerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "reward-server",
    version,
    about = "Platter reward server: segmenter + reward terms over gRPC"
)]
struct Args {
    /// gRPC listen address (loopback unless you mean it).
    #[arg(long, env = "PLATTER_REWARD_LISTEN", default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// `/metrics` listen address.
    #[arg(long, env = "PLATTER_REWARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Segmenter: `box` (each prompt's box as its mask; no weights needed).
    #[arg(long, env = "PLATTER_SEGMENTER", default_value = "box")]
    segmenter: String,
    /// Groups scored at once.
    #[arg(long, env = "PLATTER_REWARD_CONCURRENCY", default_value_t = 2)]
    max_concurrent_groups: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let segmenter = match args.segmenter.as_str() {
        "box" => Arc::new(platter_data::BoxSegmenter),
        other => anyhow::bail!(
            "--segmenter: expected `box`, found `{other}` (SAM2 is wired in once platter-sam2 lands)"
        ),
    };
    let mut config = RewardServerConfig::new(segmenter);
    config.max_concurrent_groups = args.max_concurrent_groups;
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
    platter_reward::serve(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
