//! `platter submit | status | watch | cancel | list`: the researcher's side of the coordinator.
//!
//! The coordinator address and token come from flags or `PLATTER_COORDINATOR` /
//! `PLATTER_TOKEN`. Configs are validated here with the coordinator's own code before they are
//! sent, so a typo is reported with its key without a round trip.

use std::path::PathBuf;

use anyhow::Context;
use platter_coordinator::CoordinatorClient;
use platter_proto::v1::{Experiment, ExperimentState, StepSummary};

/// Where the coordinator is.
#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// Coordinator address.
    #[arg(
        long,
        env = "PLATTER_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Bearer token for mutating calls.
    #[arg(long, env = "PLATTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// `platter submit CONFIG.toml`
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Experiment config (TOML).
    config: PathBuf,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// Commands that name one experiment.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Experiment id (`exp-00001`).
    id: String,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// `platter watch ID`
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Experiment id.
    id: String,
    /// First step to show.
    #[arg(long, default_value_t = 0)]
    from_step: u64,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// `platter list`
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    endpoint: Endpoint,
}

/// Must be called inside the runtime (the channel connects lazily on it).
fn client(e: &Endpoint) -> anyhow::Result<CoordinatorClient> {
    Ok(CoordinatorClient::new(&e.coordinator, e.token.clone())?)
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn state_name(state: i32) -> &'static str {
    match ExperimentState::try_from(state).unwrap_or(ExperimentState::Unspecified) {
        ExperimentState::Queued => "queued",
        ExperimentState::Running => "running",
        ExperimentState::Succeeded => "succeeded",
        ExperimentState::Failed => "failed",
        ExperimentState::Cancelled => "cancelled",
        ExperimentState::Unspecified => "unknown",
    }
}

fn experiment_line(e: &Experiment) -> String {
    let mut line = format!(
        "{}  {:<10} {:<20} step {}/{}  policy v{}",
        e.experiment_id,
        state_name(e.state),
        e.name,
        e.steps_completed,
        e.steps_total,
        e.policy_version
    );
    if !e.error.is_empty() {
        line.push_str(&format!("  error: {}", e.error));
    }
    line
}

fn step_line(s: &StepSummary) -> String {
    format!(
        "step {:>4}  v{:<4} kept {}/{} offered  rounds {}  dropped {}  surplus {}  cancelled {}  expired {}  reward {:.3}  loss {:.4}  discarded {} tok  assembly {:.2}s  learn {:.2}s{}",
        s.step,
        s.policy_version,
        s.kept_groups,
        s.offered_groups,
        s.generation_rounds,
        s.dropped_groups,
        s.surplus_groups,
        s.cancelled_leases,
        s.expired_leases,
        s.mean_reward,
        s.loss,
        s.discarded_tokens,
        s.assembly_seconds,
        s.learn_seconds,
        if s.partial { "  PARTIAL" } else { "" }
    )
}

#[allow(clippy::print_stdout)]
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    // The `[run]` table belongs to `platter run`; the coordinator gets the experiment only,
    // validated here first so a bad key is reported before anything is sent.
    let file = crate::run_cmd::RunFile::parse(&text, &args.config)?;
    let text = toml::to_string(&file.experiment).context("encoding the experiment config")?;
    let r = block_on(async { Ok(client(&args.endpoint)?.submit(&text).await?) })?;
    println!(
        "{}  queued at position {}",
        r.experiment_id, r.queue_position
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
pub fn status(args: IdArgs) -> anyhow::Result<()> {
    let (e, last) = block_on(async {
        let c = client(&args.endpoint)?;
        let e = c.get(&args.id).await?;
        let from = e.steps_completed.saturating_sub(1);
        let mut last = None;
        if e.steps_completed > 0 {
            let mut w = c.watch(&args.id, from).await?;
            // The stored summary arrives first; don't wait for live ones.
            last = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
                .await
                .ok()
                .transpose()?
                .flatten();
        }
        Ok((e, last))
    })?;
    println!("{}", experiment_line(&e));
    if let Some(s) = last {
        println!("{}", step_line(&s));
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
pub fn watch(args: WatchArgs) -> anyhow::Result<()> {
    block_on(async {
        let c = client(&args.endpoint)?;
        let mut w = c.watch(&args.id, args.from_step).await?;
        while let Some(s) = w.next().await? {
            println!("{}", step_line(&s));
        }
        let e = c.get(&args.id).await?;
        println!("{}", experiment_line(&e));
        Ok(())
    })
}

#[allow(clippy::print_stdout)]
pub fn cancel(args: IdArgs) -> anyhow::Result<()> {
    let e = block_on(async { Ok(client(&args.endpoint)?.cancel(&args.id).await?) })?;
    println!("{}", experiment_line(&e));
    Ok(())
}

#[allow(clippy::print_stdout)]
pub fn list(args: ListArgs) -> anyhow::Result<()> {
    for e in block_on(async { Ok(client(&args.endpoint)?.list().await?) })? {
        println!("{}", experiment_line(&e));
    }
    Ok(())
}
