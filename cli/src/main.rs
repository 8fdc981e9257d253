//! `platter`: the one binary users type.
//!
//! This file only parses flags, sets up logging and dispatches; every command lives in its own
//! module. Output meant for the user goes to stdout; logs go to stderr.
// Printing results for the user is this crate's job (libraries log through `tracing`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod data_cmd; // [data]
mod debug;
mod policy_cmd; // [policy]
mod sam2_cmd; // [sam2]
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
    Data(data_cmd::DataArgs), // [data]
    /// Segment one object of an image with SAM2 from a box and points; writes mask and overlay PNGs.
    Segment(sam2_cmd::SegmentArgs), // [sam2]
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
    Sft(sft_cmd::SftArgs),    // [sft]
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Score responses against ground-truth objects (METHOD §3 defaults), one JSON line per case.
    Score(debug::ScoreArgs),
    /// Compute a DAPO or GRPO loss and its gradient with respect to `logp`.
    Loss(debug::LossArgs),
    PolicyLogits(policy_cmd::PolicyLogitsArgs), // [policy]
    Sam2Masks(sam2_cmd::Sam2MasksArgs),         // [sam2]
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
    platter_proto::logging::init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Debug(DebugCommand::Score(args)) => debug::score(args),
        Command::Debug(DebugCommand::Loss(args)) => debug::loss(args),
        Command::Debug(DebugCommand::PolicyLogits(args)) => policy_cmd::policy_logits(args), // [policy]
        Command::Debug(DebugCommand::Sam2Masks(args)) => sam2_cmd::sam2_masks(args), // [sam2]
        Command::Segment(args) => sam2_cmd::segment(args),                           // [sam2]
        Command::Data(args) => data_cmd::run(args),                                  // [data]
        Command::Submit(args) => service_cmd::submit(args),                          // [services]
        Command::Status(args) => service_cmd::status(args),                          // [services]
        Command::Watch(args) => service_cmd::watch(args),                            // [services]
        Command::Cancel(args) => service_cmd::cancel(args),                          // [services]
        Command::List(args) => service_cmd::list(args),                              // [services]
        Command::Sft(args) => sft_cmd::run(args),                                    // [sft]
    }
}
