//! `platter`: the one binary users type.
//!
//! This file only parses flags, sets up logging and dispatches; every command lives in its own
//! module. Output meant for the user goes to stdout; logs go to stderr.
// Printing results for the user is this crate's job (libraries log through `tracing`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod data_cmd; // [data]
mod debug;
mod eval_cmd; // [eval]
mod health_cmd; // [plan]
mod plan_cmd; // [plan]
mod plot; // [run]
mod policy_cmd; // [policy]
mod run_cmd; // [run]
mod sam2_cmd; // [sam2]
mod segment_cmd; // [eval]
mod service_cmd; // [services]
mod sft_cmd; // [sft]

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "platter",
    version,
    about = "RL post-training for food reasoning segmentation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check commands: compute one piece of the method so other implementations can be compared.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Train the built-in tiny setup end to end in one process (coordinator, reward server,
    /// learner ranks, rollout workers), evaluating before and after.
    Run(run_cmd::RunArgs), // [run]
    Data(data_cmd::DataArgs),          // [data]
    Eval(eval_cmd::EvalArgs),          // [eval]
    Segment(segment_cmd::SegmentArgs), // [eval]
    /// Submit an experiment config (TOML) to the coordinator.
    Submit(service_cmd::SubmitArgs), // [services]
    /// Show an experiment and its last step.
    Status(service_cmd::IdArgs), // [services]
    /// Follow an experiment's steps until it ends.
    Watch(service_cmd::WatchArgs), // [services]
    /// Cancel a queued or running experiment.
    Cancel(service_cmd::IdArgs), // [services]
    /// List experiments.
    List(service_cmd::ListArgs), // [services]
    Sft(sft_cmd::SftArgs),             // [sft]
    Plan(plan_cmd::PlanArgs),          // [plan]
    Health(health_cmd::HealthArgs),    // [plan]
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Score responses against ground-truth objects (METHOD §3 defaults), one JSON line per case.
    Score(debug::ScoreArgs),
    /// Compute a DAPO or GRPO loss and its gradient with respect to `logp`.
    Loss(debug::LossArgs),
    PolicyLogits(policy_cmd::PolicyLogitsArgs), // [policy]
    Sam2Masks(sam2_cmd::Sam2MasksArgs),         // [sam2]
    /// Segment one object of an image with SAM2 from a box and points; writes mask and overlay PNGs.
    Sam2Segment(sam2_cmd::Sam2SegmentArgs), // [sam2]
}

fn main() {
    if let Err(e) = run() {
        // User-facing: the error chain on one line, no backtrace.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("error: {e:#}");
        }
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `platter run` reports progress on stdout; its services log warnings only unless RUST_LOG
    // asks for more.
    match cli.command {
        Command::Run(_) => platter_proto::logging::init_logging_with_default("warn"),
        _ => platter_proto::logging::init_logging(),
    }
    match cli.command {
        Command::Debug(DebugCommand::Score(args)) => debug::score(args),
        Command::Debug(DebugCommand::Loss(args)) => debug::loss(args),
        Command::Debug(DebugCommand::PolicyLogits(args)) => policy_cmd::policy_logits(args), // [policy]
        Command::Debug(DebugCommand::Sam2Masks(args)) => sam2_cmd::sam2_masks(args), // [sam2]
        Command::Debug(DebugCommand::Sam2Segment(args)) => sam2_cmd::sam2_segment(args), // [sam2]
        Command::Eval(args) => eval_cmd::run(args),                                  // [eval]
        Command::Segment(args) => segment_cmd::run(args),                            // [eval]
        Command::Run(args) => run_cmd::run(args),                                    // [run]
        Command::Data(args) => data_cmd::run(args),                                  // [data]
        Command::Submit(args) => service_cmd::submit(args),                          // [services]
        Command::Status(args) => service_cmd::status(args),                          // [services]
        Command::Watch(args) => service_cmd::watch(args),                            // [services]
        Command::Cancel(args) => service_cmd::cancel(args),                          // [services]
        Command::List(args) => service_cmd::list(args),                              // [services]
        Command::Sft(args) => sft_cmd::run(args),                                    // [sft]
        Command::Plan(args) => plan_cmd::run(args),                                  // [plan]
        Command::Health(args) => health_cmd::run(args),                              // [plan]
    }
}
