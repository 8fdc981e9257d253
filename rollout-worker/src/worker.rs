//! The worker loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platter_coordinator::CoordinatorClient;
use platter_data::imageio::{ImageLimits, decode_image};
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use platter_reward::{RewardClient, RewardClientOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics as m;
use crate::policy::{CancelFlag, GenerationRequest, Policy};
use crate::{Error, Result};

/// Settings of a rollout worker.
pub struct WorkerConfig {
    /// Name for logs and metrics.
    pub name: String,
    /// Coordinator endpoint (`http://host:port`).
    pub coordinator: String,
    /// Reward server endpoint.
    pub reward_server: String,
    /// Bearer token for the coordinator.
    pub token: Option<String>,
    /// Groups generated at once.
    pub max_concurrent_groups: usize,
    /// Published weights to follow (the learner's stream); `None` keeps the loaded weights.
    pub weights: Option<watch::Receiver<PolicyWeights>>,
    /// How long a lease may wait for the policy version it needs.
    pub weights_timeout: Duration,
    /// Reward client timings.
    pub reward_options: RewardClientOptions,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("name", &self.name)
            .field("coordinator", &self.coordinator)
            .field("reward_server", &self.reward_server)
            .field("max_concurrent_groups", &self.max_concurrent_groups)
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// Defaults: one group at a time, 60 s weights timeout, no metrics listener.
    pub fn new(name: &str, coordinator: &str, reward_server: &str) -> Self {
        Self {
            name: name.to_owned(),
            coordinator: coordinator.to_owned(),
            reward_server: reward_server.to_owned(),
            token: None,
            max_concurrent_groups: 1,
            weights: None,
            weights_timeout: Duration::from_secs(60),
            reward_options: RewardClientOptions::default(),
            metrics_listener: None,
        }
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Groups returned to the coordinator.
    pub submitted: u64,
    /// Groups stopped by cancellation.
    pub cancelled: u64,
    /// Response tokens decoded for the cancelled groups (partial groups included).
    pub cancelled_tokens: u64,
    /// Groups that failed (logged).
    pub failed: u64,
}

/// How one lease ended (errors aside).
enum Processed {
    /// The scored group went to the coordinator.
    Submitted,
    /// The lease was cancelled; `decoded_tokens` response tokens had been generated for it.
    Cancelled { decoded_tokens: u64 },
}

/// Stops not yet reported to the coordinator are capped (a coordinator unreachable for long
/// must not grow them without bound); the oldest are dropped first.
const MAX_UNREPORTED_STOPS: usize = 4096;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Ctx {
    name: String,
    coordinator: CoordinatorClient,
    reward: RewardClient,
    policy: Arc<dyn Policy>,
    worker_id: String,
    weights: Option<Mutex<watch::Receiver<PolicyWeights>>>,
    weights_timeout: Duration,
    active: Mutex<HashMap<String, CancelFlag>>,
    /// Cancelled leases and their discarded tokens, for the next heartbeat.
    stopped: Mutex<Vec<v1::StoppedLease>>,
    /// Wakes the heartbeat loop early when a stop is waiting to be reported.
    report_stops: tokio::sync::Notify,
    report: Mutex<WorkerReport>,
}

/// Runs a worker until `shutdown` resolves; in-flight groups are cancelled on shutdown.
pub async fn run(
    config: WorkerConfig,
    policy: Arc<dyn Policy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<WorkerReport> {
    m::describe();
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if let Some(l) = config.metrics_listener {
        let handle = platter_proto::metrics_http::install()?;
        let mut s = stop.clone();
        tokio::spawn(platter_proto::metrics_http::serve(l, handle, async move {
            let _ = s.wait_for(|v| *v).await;
        }));
    }
    let coordinator = CoordinatorClient::new(&config.coordinator, config.token.clone())?;
    let reward = RewardClient::new(&config.reward_server, config.reward_options.clone())?;
    // The coordinator may start after us: retry registration.
    let mut backoff = Duration::from_millis(50);
    let reg = loop {
        match coordinator.register_worker(&config.name).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::debug!(error = %e, "coordinator not ready; retrying registration");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(&mut stop) => return Ok(WorkerReport::default()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    tracing::info!(worker = %reg.worker_id, "worker registered");
    let ctx = Arc::new(Ctx {
        name: config.name.clone(),
        coordinator,
        reward,
        policy,
        worker_id: reg.worker_id,
        weights: config.weights.map(Mutex::new),
        weights_timeout: config.weights_timeout,
        active: Mutex::new(HashMap::new()),
        stopped: Mutex::new(Vec::new()),
        report_stops: tokio::sync::Notify::new(),
        report: Mutex::new(WorkerReport::default()),
    });
    // Exported from the start, so a scrape shows it before the first cancellation.
    metrics::counter!(m::CANCELLED_TOKENS, "worker" => ctx.name.clone()).increment(0);
    // Aborted when this future is dropped too (a killed worker must stop heartbeating).
    let heartbeat = AbortOnDrop(tokio::spawn(heartbeats(
        ctx.clone(),
        Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(10)) / 2),
        stop.clone(),
    )));
    let max = config.max_concurrent_groups.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        while tasks.try_join_next().is_some() {}
        let free = max.saturating_sub(tasks.len());
        if free == 0 {
            tokio::select! {
                _ = tasks.join_next() => {}
                () = stopped(&mut stop) => break,
            }
            continue;
        }
        let resp = match ctx
            .coordinator
            .lease(&ctx.worker_id, u32::try_from(free).unwrap_or(1))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                v1::LeasePromptsResponse {
                    retry_after_ms: 200,
                    ..Default::default()
                }
            }
        };
        if resp.leases.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::from(resp.retry_after_ms.max(5)))) => {}
                () = stopped(&mut stop) => break,
            }
            continue;
        }
        for lease in resp.leases {
            let flag = CancelFlag::default();
            if let Ok(mut a) = ctx.active.lock() {
                a.insert(lease.lease_id.clone(), flag.clone());
                metrics::gauge!(m::ACTIVE_LEASES, "worker" => ctx.name.clone()).set(a.len() as f64);
            }
            let ctx = ctx.clone();
            tasks.spawn(async move {
                let id = lease.lease_id.clone();
                let outcome = process(&ctx, lease, &flag).await;
                let label = match &outcome {
                    Ok(Processed::Submitted) => "submitted",
                    Ok(Processed::Cancelled { decoded_tokens }) => {
                        discarded(&ctx, &id, *decoded_tokens);
                        "cancelled"
                    }
                    Err(e) => {
                        tracing::warn!(lease = %id, error = %e, "group failed");
                        "failed"
                    }
                };
                metrics::counter!(m::GROUPS, "outcome" => label, "worker" => ctx.name.clone())
                    .increment(1);
                if let Ok(mut r) = ctx.report.lock() {
                    match &outcome {
                        Ok(Processed::Submitted) => r.submitted += 1,
                        Ok(Processed::Cancelled { decoded_tokens }) => {
                            r.cancelled += 1;
                            r.cancelled_tokens += decoded_tokens;
                        }
                        Err(_) => r.failed += 1,
                    }
                }
                if let Ok(mut a) = ctx.active.lock() {
                    a.remove(&id);
                    metrics::gauge!(m::ACTIVE_LEASES, "worker" => ctx.name.clone())
                        .set(a.len() as f64);
                }
            });
        }
    }
    // Shutting down: stop in-flight generation and let the tasks finish.
    if let Ok(a) = ctx.active.lock() {
        a.values().for_each(CancelFlag::cancel);
    }
    while tasks.join_next().await.is_some() {}
    drop(heartbeat);
    let report = ctx.report.lock().map(|r| r.clone()).unwrap_or_default();
    tracing::info!(worker = %ctx.worker_id, ?report, "worker stopped");
    Ok(report)
}

/// Counts the work of a cancelled lease and queues it for the coordinator.
fn discarded(ctx: &Ctx, lease_id: &str, decoded_tokens: u64) {
    metrics::counter!(m::CANCELLED_TOKENS, "worker" => ctx.name.clone()).increment(decoded_tokens);
    if decoded_tokens == 0 {
        return;
    }
    if let Ok(mut s) = ctx.stopped.lock() {
        if s.len() >= MAX_UNREPORTED_STOPS {
            s.remove(0);
        }
        s.push(v1::StoppedLease {
            lease_id: lease_id.to_owned(),
            decoded_tokens,
        });
    }
    ctx.report_stops.notify_one();
}

async fn heartbeats(ctx: Arc<Ctx>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = ctx.report_stops.notified() => {}
            () = stopped(&mut stop) => return,
        }
        let ids: Vec<String> = ctx
            .active
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        let stops = ctx
            .stopped
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        match ctx
            .coordinator
            .heartbeat(&ctx.worker_id, ids, stops.clone())
            .await
        {
            Ok(r) => {
                if let Ok(a) = ctx.active.lock() {
                    for id in &r.cancelled_lease_ids {
                        if let Some(flag) = a.get(id) {
                            tracing::debug!(lease = %id, "lease cancelled by the coordinator");
                            flag.cancel();
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                // Report the stops with the next heartbeat.
                if let Ok(mut s) = ctx.stopped.lock() {
                    let newer = std::mem::replace(&mut *s, stops);
                    s.extend(newer);
                    let excess = s.len().saturating_sub(MAX_UNREPORTED_STOPS);
                    s.drain(..excess);
                }
            }
        }
    }
}

/// Loads published weights until the policy is at least `needed` (see the comment inside for
/// going back to an older version).
async fn ensure_version(ctx: &Ctx, lease_id: &str, needed: u64) -> Result<()> {
    let started = Instant::now();
    loop {
        let have = ctx.policy.version();
        let latest = ctx
            .weights
            .as_ref()
            .and_then(|rx| rx.lock().ok().map(|mut r| r.borrow_and_update().clone()));
        // Follow the learner: newer weights, or older ones when the learner went back (it
        // restarted without a checkpoint) and the lease asks for no more than that version.
        if let Some(w) = latest
            && w.version != have
            && w.version >= needed
        {
            let policy = ctx.policy.clone();
            tokio::task::spawn_blocking(move || policy.load_weights(&w))
                .await
                .map_err(|e| Error::Policy {
                    lease_id: lease_id.to_owned(),
                    message: e.to_string(),
                })?
                .map_err(|e| Error::Policy {
                    lease_id: lease_id.to_owned(),
                    message: format!("loading weights: {e}"),
                })?;
            metrics::gauge!(m::POLICY_VERSION, "worker" => ctx.name.clone())
                .set(ctx.policy.version() as f64);
            continue;
        }
        if have >= needed {
            break;
        }
        let waited = started.elapsed();
        if ctx.weights.is_none() || waited > ctx.weights_timeout {
            return Err(Error::WeightsTimeout {
                lease_id: lease_id.to_owned(),
                needed,
                have,
                seconds: waited.as_secs_f64(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    metrics::histogram!(m::STAGE_SECONDS, "stage" => "weights")
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

/// Generates, scores and submits one group, or stops when `cancel` is raised.
async fn process(ctx: &Ctx, lease: v1::PromptLease, cancel: &CancelFlag) -> Result<Processed> {
    let lease_id = lease.lease_id.clone();
    ensure_version(ctx, &lease_id, lease.min_policy_version).await?;
    let image = decode_image(
        &lease.image,
        &format!("image of lease {lease_id}"),
        &ImageLimits::default(),
    )
    .map_err(|e| Error::Lease {
        lease_id: lease_id.clone(),
        message: e.to_string(),
    })?
    .to_rgb8();
    let request = GenerationRequest {
        prompt_text: lease.prompt_text.clone(),
        image,
        image_size: lease.policy_image_size,
        group_size: lease.group_size as usize,
        max_response_tokens: lease.max_response_tokens as usize,
        temperature: lease.temperature,
        top_p: lease.top_p,
        seed: lease.seed,
    };
    let gen_started = Instant::now();
    let (policy, flag) = (ctx.policy.clone(), cancel.clone());
    let generated = tokio::task::spawn_blocking(move || policy.generate(&request, &flag))
        .await
        .map_err(|e| Error::Policy {
            lease_id: lease_id.clone(),
            message: e.to_string(),
        })?
        .map_err(|e| Error::Policy {
            lease_id: lease_id.clone(),
            message: e.to_string(),
        })?;
    let generation_seconds = gen_started.elapsed().as_secs_f64();
    // Stopped generations count too: the time was spent, and the step loop's accounting
    // (docs/benchmarks.md) charges it to generation.
    metrics::histogram!(m::STAGE_SECONDS, "stage" => "generate").record(generation_seconds);
    let Some(group) = generated else {
        // Stopped mid-generation: what the engine decoded was generated all the same.
        let decoded_tokens = cancel.decoded_tokens();
        metrics::counter!(m::TOKENS, "worker" => ctx.name.clone()).increment(decoded_tokens);
        return Ok(Processed::Cancelled { decoded_tokens });
    };
    let tokens: usize = group.responses.iter().map(|r| r.token_ids.len()).sum();
    let whole_group = Processed::Cancelled {
        decoded_tokens: tokens as u64,
    };
    metrics::counter!(m::TOKENS, "worker" => ctx.name.clone()).increment(tokens as u64);
    if generation_seconds > 0.0 {
        metrics::gauge!(m::TOKENS_PER_SECOND, "worker" => ctx.name.clone())
            .set(tokens as f64 / generation_seconds);
    }
    if cancel.is_cancelled() {
        return Ok(whole_group);
    }
    let score_started = Instant::now();
    let score_request = v1::ScoreRequest {
        request_id: lease_id.clone(),
        image: lease.image,
        policy_image_size: lease.policy_image_size,
        ground_truth: lease.ground_truth,
        ground_truth_mask: lease.ground_truth_mask,
        responses: group
            .responses
            .iter()
            .map(|r| v1::ResponseToScore {
                text: r.text.clone(),
                num_tokens: u32::try_from(r.token_ids.len()).unwrap_or(u32::MAX),
            })
            .collect(),
        settings: lease.reward,
    };
    let score = ctx.reward.score(score_request).await?;
    let scoring_seconds = score_started.elapsed().as_secs_f64();
    metrics::histogram!(m::STAGE_SECONDS, "stage" => "score").record(scoring_seconds);
    if cancel.is_cancelled() {
        return Ok(whole_group);
    }
    if score.responses.len() != group.responses.len() {
        return Err(Error::Lease {
            lease_id,
            message: format!(
                "expected {} scores, found {}",
                group.responses.len(),
                score.responses.len()
            ),
        });
    }
    let submit_started = Instant::now();
    let outcome = ctx
        .coordinator
        .submit_group(v1::SubmitScoredGroupRequest {
            worker_id: ctx.worker_id.clone(),
            lease_id: lease_id.clone(),
            experiment_id: lease.experiment_id,
            step: lease.step,
            prompt_index: lease.prompt_index,
            attempt: lease.attempt,
            policy_version: group.policy_version,
            responses: group
                .responses
                .into_iter()
                .zip(score.responses)
                .map(|(r, terms)| v1::ScoredResponse {
                    token_ids: r.token_ids,
                    logprobs: r.logprobs,
                    finish_reason: r.finish.as_str().to_owned(),
                    reward: Some(terms),
                })
                .collect(),
            generation_seconds,
            scoring_seconds,
        })
        .await?;
    metrics::histogram!(m::STAGE_SECONDS, "stage" => "submit")
        .record(submit_started.elapsed().as_secs_f64());
    tracing::debug!(lease = %lease_id, ?outcome, "group submitted");
    Ok(Processed::Submitted)
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}
