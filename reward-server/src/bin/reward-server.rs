//! `reward-server`: flags (with `PLATTER_*` env fallbacks), logging, then `platter_reward::serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Segmenter: `sam2` (needs `--sam2-checkpoint`) or `box` (each prompt's box as its mask; no
    /// weights needed; logged and exported as `segmenter="box"`).
    #[arg(long, env = "PLATTER_SEGMENTER", default_value = "box")]
    segmenter: String,
    /// SAM2 checkpoint: Meta's `.pt` or `.safetensors` (with `--segmenter sam2`).
    #[arg(long, env = "PLATTER_SAM2_CHECKPOINT")]
    sam2_checkpoint: Option<PathBuf>,
    /// Meta's YAML model config (default: the official size named by the checkpoint file).
    #[arg(long, env = "PLATTER_SAM2_CONFIG")]
    sam2_config: Option<PathBuf>,
    /// Groups scored at once.
    #[arg(long, env = "PLATTER_REWARD_CONCURRENCY", default_value_t = 2)]
    max_concurrent_groups: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platter_proto::logging::init_logging();
    let args = Args::parse();
    let segmenter: Arc<dyn platter_data::Segmenter> = match args.segmenter.as_str() {
        "box" => {
            tracing::warn!("segmenter `box`: masks are the predicted boxes, not SAM2 masks");
            Arc::new(platter_data::BoxSegmenter)
        }
        "sam2" => Arc::new(load_sam2(
            args.sam2_checkpoint.as_deref(),
            args.sam2_config.as_deref(),
        )?),
        other => anyhow::bail!("--segmenter: expected `sam2` or `box`, found `{other}`"),
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

/// Loads SAM2 from a checkpoint, with its config from Meta's YAML or the official size in the
/// file name.
fn load_sam2(
    checkpoint: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<platter_sam2::Sam2> {
    use platter_sam2::{OfficialSize, Sam2, Sam2Config};
    let checkpoint = checkpoint
        .context("--segmenter sam2 needs --sam2-checkpoint (or PLATTER_SAM2_CHECKPOINT)")?;
    let cfg = match config {
        Some(path) => Sam2Config::from_yaml_file(path)?,
        None => match OfficialSize::from_file_name(checkpoint) {
            Some(size) => Sam2Config::official(size),
            None => anyhow::bail!(
                "cannot tell the SAM2 size from {}; pass --sam2-config (Meta's YAML)",
                checkpoint.display()
            ),
        },
    };
    let device = candle_core::Device::cuda_if_available(0)?;
    let sam = Sam2::load(checkpoint, cfg, &device)
        .with_context(|| format!("loading SAM2 from {}", checkpoint.display()))?;
    tracing::info!(checkpoint = %checkpoint.display(), "segmenter `sam2` loaded");
    Ok(sam)
}
