//! Per-step accounting of the step loop for the benchmarks: where time went (generation,
//! scoring, learning, idle worker slots) and the tokens generated and then thrown away by
//! streaming dynamic sampling, compared with batch-regenerate dynamic sampling replayed on the
//! same reward trace.

use std::fmt::Write as _;

use platter_proto::v1::{GroupOutcome, OfferedGroup, StepSummary};

/// Sum of every sample of the Prometheus text `scrape` whose line starts with `prefix` (a
/// metric name, optionally with the start of its labels).
pub fn metric_sum(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Tokens streaming dynamic sampling generated for a step and did not train on: the groups
/// offered to the filter and not kept (dropped as uniform, or surplus), plus the tokens workers
/// reported decoding for the step's cancelled leases (`StepSummary.cancelled_tokens`).
pub fn streaming_discarded(s: &StepSummary) -> u64 {
    let offered: u64 = s
        .offered
        .iter()
        .filter(|g| g.outcome != GroupOutcome::Kept as i32)
        .map(|g| g.tokens)
        .sum();
    offered + s.cancelled_tokens
}

/// Batch-regenerate dynamic sampling (verl's DAPO recipe) replayed on a reward trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRegenerate {
    /// Tokens generated and not trained on: uniform groups, and mixed groups beyond the batch.
    pub discarded_tokens: f64,
    /// Generation rounds of `per_step` groups it needed.
    pub rounds: u32,
    /// Groups of the last round the trace does not hold (they arrived after the batch was full
    /// or were cancelled); each is counted at the trace's mean group tokens.
    pub estimated_groups: u32,
    /// Whether the trace held enough mixed groups to fill the batch (otherwise
    /// `discarded_tokens` is a lower bound).
    pub filled: bool,
}

/// Replays batch-regenerate dynamic sampling on `trace` (groups in the order they finished):
/// each round generates `per_step` whole groups (the next `per_step` of the trace), the filter
/// keeps mixed ones until `per_step` are kept and discards the rest, and rounds repeat until the
/// batch is full. Groups of the last round that the trace does not hold would have been
/// generated in full and discarded; they are counted at the mean tokens per traced group.
pub fn batch_regenerate(trace: &[OfferedGroup], per_step: usize) -> BatchRegenerate {
    let mut out = BatchRegenerate {
        discarded_tokens: 0.0,
        rounds: 0,
        estimated_groups: 0,
        filled: false,
    };
    if per_step == 0 || trace.is_empty() {
        return out;
    }
    let mean = trace.iter().map(|g| g.tokens as f64).sum::<f64>() / trace.len() as f64;
    let mut kept = 0usize;
    for round in trace.chunks(per_step) {
        out.rounds += 1;
        for g in round {
            if g.mixed && kept < per_step {
                kept += 1;
            } else {
                out.discarded_tokens += g.tokens as f64;
            }
        }
        let missing = per_step - round.len();
        if kept >= per_step {
            out.filled = true;
            out.estimated_groups = missing as u32;
            out.discarded_tokens += missing as f64 * mean;
            break;
        }
    }
    out
}

/// One step of the loop as the benchmarks report it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    /// Step number.
    pub step: u64,
    /// Seconds since the previous step finished (the first: assembly + learning).
    pub wall_seconds: f64,
    /// Seconds from the first lease to a full batch.
    pub assembly_seconds: f64,
    /// Seconds in the learner.
    pub learn_seconds: f64,
    /// Worker-seconds generating (groups finished or stopped in this step).
    pub generate_seconds: f64,
    /// Worker-seconds waiting for scores.
    pub score_seconds: f64,
    /// Worker-slot-seconds neither generating nor scoring: `slots` × wall − generate − score.
    pub idle_seconds: f64,
    /// Generation rounds streaming needed.
    pub rounds: u32,
    /// Groups offered to the filter.
    pub offered: u32,
    /// Groups trained on.
    pub kept: u32,
    /// Leases cancelled when the batch filled.
    pub cancelled_leases: u32,
    /// Tokens of the offered groups.
    pub generated_tokens: u64,
    /// Tokens decoded for cancelled leases (reported before the summary was written).
    pub cancelled_tokens: u64,
    /// Streaming's generated-then-discarded tokens ([`streaming_discarded`]).
    pub streaming_discarded: u64,
    /// Batch-regenerate on the same trace.
    pub batch: BatchRegenerate,
}

impl StepRow {
    /// The row of `summary`; `before` and `after` are scrapes of the shared registry around the
    /// step, `previous_finish_ms` the previous step's finish time, `slots` the worker slots
    /// (workers × groups per worker), `per_step` the prompts per step.
    pub fn new(
        summary: &StepSummary,
        before: &str,
        after: &str,
        previous_finish_ms: Option<i64>,
        slots: usize,
        per_step: usize,
    ) -> Self {
        let delta = |name: &str| metric_sum(after, name) - metric_sum(before, name);
        let generate_seconds = delta("platter_rollout_stage_seconds_sum{stage=\"generate\"");
        let score_seconds = delta("platter_rollout_stage_seconds_sum{stage=\"score\"");
        let wall_seconds = previous_finish_ms
            .map_or(summary.assembly_seconds + summary.learn_seconds, |p| {
                (summary.finished_unix_ms - p) as f64 / 1000.0
            });
        Self {
            step: summary.step,
            wall_seconds,
            assembly_seconds: summary.assembly_seconds,
            learn_seconds: summary.learn_seconds,
            generate_seconds,
            score_seconds,
            idle_seconds: (slots as f64 * wall_seconds - generate_seconds - score_seconds).max(0.0),
            rounds: summary.generation_rounds,
            offered: summary.offered_groups,
            kept: summary.kept_groups,
            cancelled_leases: summary.cancelled_leases,
            generated_tokens: summary.generated_tokens,
            cancelled_tokens: summary.cancelled_tokens,
            streaming_discarded: streaming_discarded(summary),
            batch: batch_regenerate(&summary.offered, per_step),
        }
    }
}

/// The rows as a Markdown table, with a totals line.
pub fn table(rows: &[StepRow]) -> String {
    let mut out = String::from(
        "| step | wall s | assembly s | learn s | generate worker-s | score worker-s | idle slot-s | rounds | offered | kept | cancelled leases | offered tokens | cancelled tokens | discarded: streaming | discarded: batch-regenerate |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let batch = format!(
            "{:.0}{}{}",
            r.batch.discarded_tokens,
            if r.batch.estimated_groups > 0 {
                format!(" ({} est.)", r.batch.estimated_groups)
            } else {
                String::new()
            },
            if r.batch.filled { "" } else { " (≥)" }
        );
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {batch} |",
            r.step,
            r.wall_seconds,
            r.assembly_seconds,
            r.learn_seconds,
            r.generate_seconds,
            r.score_seconds,
            r.idle_seconds,
            r.rounds,
            r.offered,
            r.kept,
            r.cancelled_leases,
            r.generated_tokens,
            r.cancelled_tokens,
            r.streaming_discarded,
        );
    }
    let sum = |f: fn(&StepRow) -> f64| rows.iter().map(f).sum::<f64>();
    let _ = writeln!(
        out,
        "| total | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
        sum(|r| r.wall_seconds),
        sum(|r| r.assembly_seconds),
        sum(|r| r.learn_seconds),
        sum(|r| r.generate_seconds),
        sum(|r| r.score_seconds),
        sum(|r| r.idle_seconds),
        rows.iter().map(|r| r.rounds).sum::<u32>(),
        rows.iter().map(|r| r.offered).sum::<u32>(),
        rows.iter().map(|r| r.kept).sum::<u32>(),
        rows.iter().map(|r| r.cancelled_leases).sum::<u32>(),
        rows.iter().map(|r| r.generated_tokens).sum::<u64>(),
        rows.iter().map(|r| r.cancelled_tokens).sum::<u64>(),
        rows.iter().map(|r| r.streaming_discarded).sum::<u64>(),
        sum(|r| r.batch.discarded_tokens),
    );
    out
}

/// The run's totals: streaming's discarded tokens counting every cancelled token the workers
/// reported over the run (`reported_cancelled`, from the coordinator's
/// `platter_discarded_tokens_total{reason="cancelled"}`; step summaries hold only the reports
/// that arrived before they were written) against batch-regenerate's.
pub fn totals(rows: &[StepRow], reported_cancelled: f64) -> String {
    let offered: u64 = rows
        .iter()
        .map(|r| r.streaming_discarded - r.cancelled_tokens)
        .sum();
    let in_summaries: u64 = rows.iter().map(|r| r.cancelled_tokens).sum();
    let generated: u64 = rows.iter().map(|r| r.generated_tokens).sum();
    let batch: f64 = rows.iter().map(|r| r.batch.discarded_tokens).sum();
    let streaming = offered as f64 + reported_cancelled;
    format!(
        "generated-then-discarded tokens over {} steps: streaming {streaming:.0} ({offered} in offered groups not kept + {reported_cancelled:.0} decoded for cancelled leases, {in_summaries} of them reported before their step summary), batch-regenerate {batch:.0}; offered tokens {generated}",
        rows.len()
    )
}

/// Runs `toml` on `cluster` with [`measure`] and shuts the cluster down, returning the per-step
/// table and the run totals (waiting up to `settle` for late cancelled-token reports) for the
/// caller to print: the whole of a step-loop benchmark after its setup.
pub async fn measure_report(
    cluster: crate::Cluster,
    toml: &str,
    slots: usize,
    per_step: usize,
    settle: std::time::Duration,
) -> String {
    let rows = measure(&cluster, toml, slots, per_step).await.unwrap();
    let (workers, coordinator) = cluster.settled_cancelled_tokens(settle).await;
    cluster.shutdown().await;
    format!(
        "{}\n{}\ncancelled tokens over the run: {workers} counted by the workers, {coordinator} \
         reported to the coordinator",
        table(&rows),
        totals(&rows, coordinator)
    )
}

/// Submits `toml` to `cluster` and returns a row per step as the summaries arrive
/// (`slots` = workers × groups per worker; `per_step` = the experiment's prompts per step).
pub async fn measure(
    cluster: &crate::Cluster,
    toml: &str,
    slots: usize,
    per_step: usize,
) -> Result<Vec<StepRow>, Box<dyn std::error::Error>> {
    let client = cluster.client();
    let id = client.submit(toml).await?.experiment_id;
    let mut watch = client.watch(&id, 0).await?;
    let mut before = platter_proto::metrics_http::scrape(cluster.coordinator_metrics).await?;
    let mut previous_finish_ms = None;
    let mut rows = Vec::new();
    while let Some(s) = watch.next().await? {
        let after = platter_proto::metrics_http::scrape(cluster.coordinator_metrics).await?;
        rows.push(StepRow::new(
            &s,
            &before,
            &after,
            previous_finish_ms,
            slots,
            per_step,
        ));
        before = after;
        previous_finish_ms = Some(s.finished_unix_ms);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(mixed: bool, tokens: u64, outcome: GroupOutcome) -> OfferedGroup {
        OfferedGroup {
            prompt_index: 0,
            mixed,
            tokens,
            outcome: outcome as i32,
            mean_terms: None,
        }
    }

    use GroupOutcome::{Dropped, Kept, Surplus};

    #[test]
    fn batch_regenerate_fills_over_whole_rounds_and_drops_the_overflow() {
        // per_step 2. Round 1 = [uniform 10, mixed 20]: keeps 1, discards 10.
        // Round 2 = [mixed 30, mixed 40]: keeps the 30, batch full, discards the 40.
        // Discarded 10 + 40 = 50 over 2 rounds; nothing estimated.
        let trace = [
            g(false, 10, Dropped),
            g(true, 20, Kept),
            g(true, 30, Kept),
            g(true, 40, Surplus),
        ];
        let r = batch_regenerate(&trace, 2);
        assert_eq!(
            r,
            BatchRegenerate {
                discarded_tokens: 50.0,
                rounds: 2,
                estimated_groups: 0,
                filled: true
            }
        );
    }

    #[test]
    fn batch_regenerate_estimates_the_rest_of_a_short_last_round() {
        // per_step 3. Round 1 = [mixed 12, uniform 6, uniform 9]: keeps 1, discards 15.
        // Round 2 = [mixed 3, mixed 6] of 3: keeps both (full); the third group of the round
        // is not in the trace and counts at the mean, (12 + 6 + 9 + 3 + 6) / 5 = 7.2.
        // Discarded 15 + 7.2 = 22.2.
        let trace = [
            g(true, 12, Kept),
            g(false, 6, Dropped),
            g(false, 9, Dropped),
            g(true, 3, Kept),
            g(true, 6, Kept),
        ];
        let r = batch_regenerate(&trace, 3);
        assert!((r.discarded_tokens - 22.2).abs() < 1e-9, "{r:?}");
        assert_eq!((r.rounds, r.estimated_groups, r.filled), (2, 1, true));
    }

    #[test]
    fn batch_regenerate_on_a_trace_without_enough_mixed_groups_is_a_lower_bound() {
        // per_step 2: one mixed group in 3 (a partial batch); discards 5 + 7, not filled.
        let trace = [g(false, 5, Dropped), g(true, 4, Kept), g(false, 7, Dropped)];
        let r = batch_regenerate(&trace, 2);
        assert_eq!((r.discarded_tokens, r.rounds, r.filled), (12.0, 2, false));
        assert_eq!(batch_regenerate(&[], 2).rounds, 0);
    }

    #[test]
    fn streaming_discards_unkept_offers_and_cancelled_work() {
        // Dropped 10 + surplus 40 + cancelled 17 = 67; the kept 20 is trained on.
        let s = StepSummary {
            offered: vec![
                g(false, 10, Dropped),
                g(true, 20, Kept),
                g(true, 40, Surplus),
            ],
            cancelled_tokens: 17,
            ..Default::default()
        };
        assert_eq!(streaming_discarded(&s), 67);
    }

    #[test]
    fn metric_sum_adds_matching_samples_only() {
        let scrape = "# TYPE x summary\n\
                      x_sum{stage=\"generate\",w=\"a\"} 1.5\n\
                      x_sum{stage=\"generate\",w=\"b\"} 2\n\
                      x_sum{stage=\"score\"} 7\n";
        assert_eq!(metric_sum(scrape, "x_sum{stage=\"generate\""), 3.5);
        assert_eq!(metric_sum(scrape, "y"), 0.0);
    }
}
