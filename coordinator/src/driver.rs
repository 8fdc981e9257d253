//! The step driver: runs queued experiments one at a time, waits for each full batch, hands it
//! to the learner, records the step and publishes its summary.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use platter_proto::v1::{self, ExperimentState};
use tokio::sync::watch;

use crate::config::ExperimentConfig;
use crate::dataset::PromptSource;
use crate::engine::{Readiness, Run};
use crate::metrics as m;
use crate::{Error, Event, Shared};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs experiments until `stop` turns true.
pub(crate) async fn drive(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let next = shared.store().and_then(|s| s.next_runnable());
        match next {
            Ok(Some(exp)) => {
                let id = exp.experiment_id.clone();
                let (state, error) = match run_experiment(&shared, exp, &mut stop).await {
                    Ok(state) => (state, String::new()),
                    Err(e) => {
                        tracing::error!(experiment = %id, error = %e, "experiment failed");
                        (ExperimentState::Failed, e.to_string())
                    }
                };
                if *stop.borrow() && state == ExperimentState::Running {
                    // Shutting down mid-run: leave it `running` so a restart resumes it.
                    return;
                }
                if let Err(e) = shared.store().and_then(|s| s.set_state(&id, state, &error)) {
                    tracing::error!(experiment = %id, error = %e, "cannot record the final state");
                }
                if let Ok(mut g) = shared.state.lock() {
                    g.run = None;
                }
                let _ = shared.events.send(Event::Finished(id));
            }
            Ok(None) => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "experiment store unavailable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if let Ok(s) = shared.store() {
            metrics::gauge!(m::QUEUE_DEPTH).set(s.queued_count().unwrap_or(0) as f64);
        }
    }
}

async fn run_experiment(
    shared: &Arc<Shared>,
    exp: v1::Experiment,
    stop: &mut watch::Receiver<bool>,
) -> Result<ExperimentState, Error> {
    let id = exp.experiment_id.clone();
    let cfg = ExperimentConfig::from_toml(&exp.config_toml)?;
    let source = PromptSource::open(&cfg.data, cfg.seed)?;
    let learner = shared.learner.clone();
    let cfg2 = cfg.clone();
    let version = tokio::task::spawn_blocking(move || learner.start_experiment(&cfg2))
        .await
        .map_err(|e| Error::Learner(e.to_string()))??;
    shared
        .store()?
        .set_state(&id, ExperimentState::Running, "")?;
    tracing::info!(experiment = %id, name = %cfg.name, steps = cfg.steps, resume_step = exp.steps_completed, "experiment running");
    let steps = cfg.steps;
    let group_size = cfg.rollout.group_size;
    {
        let mut g = shared.lock_state()?;
        g.run = Some(Run::new(
            id.clone(),
            cfg,
            source,
            exp.steps_completed,
            exp.sampler_cursor,
            version,
        ));
    }
    metrics::gauge!(m::POLICY_VERSION).set(version as f64);
    let mut step = exp.steps_completed;
    while step < steps {
        let step_started = Instant::now();
        shared.lock_state()?.run_mut()?.begin_step(Instant::now());
        // Wait for a full batch, expiring leases as their deadlines pass.
        loop {
            {
                let mut g = shared.lock_state()?;
                let run = g.run_mut()?;
                if run.cancel_requested {
                    run.cancel_outstanding();
                    return Ok(ExperimentState::Cancelled);
                }
                run.expire(Instant::now());
                match run.readiness() {
                    Readiness::Ready => break,
                    Readiness::Failed(e) => {
                        let e = e.clone();
                        run.cancel_outstanding();
                        return Err(Error::Run(e));
                    }
                    Readiness::Gathering => {}
                }
            }
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep(shared.tick) => {}
                _ = stop.changed() => return Ok(ExperimentState::Running),
            }
        }
        let (
            request,
            stats,
            counters,
            mean_reward,
            kept,
            versions,
            mixed,
            assembly_seconds,
            offered,
        ) = {
            let mut g = shared.lock_state()?;
            let run = g.run_mut()?;
            let assembly_seconds = run.assembly_started.elapsed().as_secs_f64();
            let counters = run.counters;
            let offered = run.take_offered();
            let batch = run
                .take_batch()
                .ok_or_else(|| Error::Run("no batch to take".into()))?;
            let min_std = run.cfg.sampling.min_group_std;
            let metric = run.cfg.sampling.filter_metric;
            let mut rewards = Vec::new();
            let mut mixed = Vec::new();
            for grp in &batch.groups {
                let values = platter_rl::filter::ScoredGroup::metric_values(grp, metric);
                mixed.push(platter_rl::filter::is_mixed(&values, min_std));
                rewards.extend(
                    grp.responses
                        .iter()
                        .filter_map(|r| r.reward.as_ref().map(|t| t.total)),
                );
            }
            let mean_reward = if rewards.is_empty() {
                0.0
            } else {
                rewards.iter().sum::<f64>() / rewards.len() as f64
            };
            let kept: Vec<u64> = batch.groups.iter().map(|g| g.draw).collect();
            let versions: Vec<u64> = batch.groups.iter().map(|g| g.policy_version).collect();
            let request = v1::TrainStepRequest {
                experiment_id: id.clone(),
                step,
                groups: batch
                    .groups
                    .into_iter()
                    .map(|g| v1::TrainGroup {
                        prompt_index: g.draw,
                        policy_version: g.policy_version,
                        responses: g
                            .responses
                            .into_iter()
                            .map(|r| v1::TrainResponse {
                                shaped_reward: r.reward.as_ref().map_or(0.0, |t| t.shaped_reward),
                                token_ids: r.token_ids,
                                rollout_logprobs: r.logprobs,
                            })
                            .collect(),
                    })
                    .collect(),
            };
            (
                request,
                batch.stats,
                counters,
                mean_reward,
                kept,
                versions,
                mixed,
                assembly_seconds,
                offered,
            )
        };
        // Every offered group weighs the same (each holds group_size responses).
        let offered_mean_terms =
            crate::engine::mean_terms(offered.iter().filter_map(|o| o.mean_terms.as_ref()));
        let offered_responses = offered.len() as f64 * f64::from(group_size);
        let mean_response_tokens = if offered_responses > 0.0 {
            offered.iter().map(|o| o.tokens as f64).sum::<f64>() / offered_responses
        } else {
            0.0
        };
        let learn_started = Instant::now();
        let learner = shared.learner.clone();
        let trained = tokio::task::spawn_blocking(move || learner.train_step(&request))
            .await
            .map_err(|e| Error::Learner(e.to_string()))??;
        let learn_seconds = learn_started.elapsed().as_secs_f64();
        // Read after learning: workers report cancelled work on their next heartbeats.
        let cancelled_tokens = shared.lock_state()?.run_mut()?.counters.cancelled_tokens;
        let summary = v1::StepSummary {
            experiment_id: id.clone(),
            step,
            policy_version: trained.policy_version,
            kept_groups: kept.len() as u32,
            offered_groups: stats.offered as u32,
            dropped_groups: stats.dropped as u32,
            surplus_groups: stats.surplus as u32,
            carried_groups: counters.carried,
            generation_rounds: stats.rounds,
            generated_tokens: stats.generated_tokens,
            discarded_tokens: stats.discarded_tokens,
            cancelled_leases: counters.cancelled_leases,
            expired_leases: counters.expired_leases,
            duplicate_results: counters.duplicates,
            partial: stats.partial,
            loss: trained.loss,
            grad_norm: trained.grad_norm,
            mean_reward,
            kept_fraction: stats.kept_fraction(),
            assembly_seconds,
            learn_seconds,
            kept_prompts: kept,
            kept_versions: versions,
            kept_mixed: mixed,
            finished_unix_ms: now_ms(),
            offered_mean_terms,
            mean_response_tokens,
            rollout_tokens_per_second: if assembly_seconds > 0.0 {
                stats.generated_tokens as f64 / assembly_seconds
            } else {
                0.0
            },
            logprob_mismatch: trained.logprob_mismatch,
            offered,
            cancelled_tokens,
        };
        let cursor = {
            let mut g = shared.lock_state()?;
            let run = g.run_mut()?;
            run.version = trained.policy_version;
            run.step = step + 1;
            run.cursor
        };
        shared.store()?.record_step(&id, &summary, cursor)?;
        metrics::histogram!(m::GENERATION_ROUNDS).record(f64::from(stats.rounds));
        metrics::histogram!(m::STAGE_SECONDS, "stage" => "assembly").record(assembly_seconds);
        metrics::histogram!(m::STAGE_SECONDS, "stage" => "learn").record(learn_seconds);
        metrics::histogram!(m::STAGE_SECONDS, "stage" => "step")
            .record(step_started.elapsed().as_secs_f64());
        metrics::gauge!(m::LAST_STEP_TIMESTAMP).set(summary.finished_unix_ms as f64 / 1000.0);
        metrics::gauge!(m::POLICY_VERSION).set(trained.policy_version as f64);
        metrics::gauge!(m::KEPT_FRACTION).set(summary.kept_fraction);
        metrics::gauge!(m::STEP_LOSS).set(summary.loss);
        metrics::gauge!(m::STEP_REWARD).set(mean_reward);
        metrics::counter!(m::STEPS).increment(1);
        tracing::info!(experiment = %id, step, version = trained.policy_version, kept = summary.kept_groups, offered = summary.offered_groups, rounds = summary.generation_rounds, loss = summary.loss, "step done");
        let _ = shared.events.send(Event::Step(Box::new(summary)));
        step += 1;
    }
    Ok(ExperimentState::Succeeded)
}
