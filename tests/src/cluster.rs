//! A cluster of real services on loopback, port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use platter_coordinator::{CoordinatorClient, CoordinatorConfig, Learner, UnigramLearner};
use platter_data::BoxSegmenter;
use platter_data::synth::{SynthConfig, generate};
use platter_learner::QwenLearner;
use platter_reward::RewardServerConfig;
use platter_rollout::{Policy, QwenEngine, WorkerConfig, WorkerReport};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::policy::{CANDIDATES, CandidatePolicy};

/// The small synthetic dataset of the test-policy cluster: 30 images of 96 × 72, objects for a
/// 112-pixel policy input.
pub fn small_synth() -> SynthConfig {
    SynthConfig {
        seed: 7,
        n: 30,
        width: 96,
        height: 72,
        policy_image_size: 112,
        threads: 1,
        ..SynthConfig::default()
    }
}

/// Writes [`small_synth`] into `dir` and returns its manifest.
pub fn synth_dataset(dir: &Path) -> PathBuf {
    synth_into(&small_synth(), dir)
}

fn synth_into(cfg: &SynthConfig, dir: &Path) -> PathBuf {
    match generate(cfg, dir) {
        Ok(report) => report.manifest,
        Err(e) => panic!("synthetic dataset: {e}"),
    }
}

/// The policy behind the workers, and the learner that trains it.
#[derive(Debug, Clone)]
pub enum ClusterPolicy {
    /// The candidate-response test double ([`crate::CandidatePolicy`], `group_time` per
    /// group), trained by the coordinator's one-rank `UnigramLearner`.
    Candidates,
    /// The Qwen2.5-VL engine (`platter_rollout::QwenEngine`, one per worker, CPU, f32) on the
    /// HF model directory `model_dir`, trained by `platter_learner::QwenLearner` (ranks from
    /// the experiment's `[learner]` table; its `[model] policy` must be the same directory).
    Qwen { model_dir: PathBuf },
}

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Rollout workers to start.
    pub workers: usize,
    /// Groups each worker generates at once.
    pub groups_per_worker: usize,
    /// Simulated generation time per group (test policy only).
    pub group_time: Duration,
    /// Bearer token of the coordinator.
    pub token: Option<String>,
    /// The workers' policy and the learner.
    pub policy: ClusterPolicy,
    /// The synthetic dataset to generate (its `policy_image_size` is the experiments'
    /// `data.image_size`).
    pub synth: SynthConfig,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            groups_per_worker: 2,
            group_time: Duration::from_millis(40),
            token: Some("test-token".into()),
            policy: ClusterPolicy::Candidates,
            synth: small_synth(),
        }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Its name.
    pub name: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<platter_rollout::Result<WorkerReport>>,
    /// Its `/metrics` address.
    pub metrics_addr: SocketAddr,
}

impl WorkerHandle {
    /// Kills the worker at once (no goodbye, no heartbeats): its leases must expire.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Leases the worker is working on now, from its `/metrics`.
    pub async fn active_leases(&self) -> f64 {
        let body = platter_proto::metrics_http::scrape(self.metrics_addr)
            .await
            .unwrap_or_default();
        let prefix = format!("platter_rollout_active_leases{{worker=\"{}\"}} ", self.name);
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the worker gracefully and returns its report.
    pub async fn stop(mut self) -> WorkerReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("worker {} failed: {e}", self.name),
            Err(_) => WorkerReport::default(),
        }
    }
}

/// The services.
pub struct Cluster {
    /// Coordinator gRPC address.
    pub coordinator_addr: SocketAddr,
    /// Coordinator `/metrics`.
    pub coordinator_metrics: SocketAddr,
    /// Reward server gRPC address.
    pub reward_addr: SocketAddr,
    /// Reward server `/metrics`.
    pub reward_metrics: SocketAddr,
    /// The workers.
    pub workers: Vec<WorkerHandle>,
    /// The dataset manifest.
    pub manifest: PathBuf,
    /// Policy input side of the dataset.
    pub image_size: u32,
    /// The learner (its weight stream feeds the workers).
    pub learner: Arc<dyn Learner>,
    token: Option<String>,
    coordinator: (
        oneshot::Sender<()>,
        JoinHandle<platter_coordinator::Result<()>>,
    ),
    reward: Option<(oneshot::Sender<()>, JoinHandle<platter_reward::Result<()>>)>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("coordinator_addr", &self.coordinator_addr)
            .field("reward_addr", &self.reward_addr)
            .field("workers", &self.workers)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

async fn bind() -> TcpListener {
    match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    }
}

fn addr(l: &TcpListener) -> SocketAddr {
    match l.local_addr() {
        Ok(a) => a,
        Err(e) => panic!("local_addr: {e}"),
    }
}

async fn start_reward(
    listener: TcpListener,
    metrics: Option<TcpListener>,
) -> (oneshot::Sender<()>, JoinHandle<platter_reward::Result<()>>) {
    let mut cfg = RewardServerConfig::new(Arc::new(BoxSegmenter));
    cfg.metrics_listener = metrics;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(platter_reward::serve(cfg, listener, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

fn start_coordinator(
    dir: &Path,
    learner: &Arc<dyn Learner>,
    token: Option<String>,
    listener: TcpListener,
    metrics: Option<TcpListener>,
) -> (
    oneshot::Sender<()>,
    JoinHandle<platter_coordinator::Result<()>>,
) {
    let mut ccfg = CoordinatorConfig::new(dir.join("store.sqlite"), learner.clone());
    ccfg.auth_token = token;
    ccfg.heartbeat_interval = Duration::from_millis(100);
    ccfg.idle_retry = Duration::from_millis(10);
    ccfg.tick = Duration::from_millis(10);
    ccfg.metrics_listener = metrics;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(platter_coordinator::serve(ccfg, listener, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

impl Cluster {
    /// Stops the coordinator and starts a new one on the same address and SQLite store (the
    /// learner object is kept, as a learner process would outlive a coordinator restart).
    pub async fn restart_coordinator(&mut self) {
        let (ctx, crx) = oneshot::channel::<()>();
        let old = std::mem::replace(
            &mut self.coordinator,
            (
                ctx,
                tokio::spawn(async move {
                    let _ = crx.await;
                    Ok(())
                }),
            ),
        );
        let _ = old.0.send(());
        match old.1.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("coordinator: {e}"),
            Err(e) => panic!("coordinator task: {e}"),
        }
        let listener = match TcpListener::bind(self.coordinator_addr).await {
            Ok(l) => l,
            Err(e) => panic!(
                "rebinding the coordinator on {}: {e}",
                self.coordinator_addr
            ),
        };
        let placeholder = std::mem::replace(
            &mut self.coordinator,
            start_coordinator(
                self._dir.path(),
                &self.learner,
                self.token.clone(),
                listener,
                None,
            ),
        );
        let _ = placeholder.0.send(());
    }

    /// Starts a coordinator, a reward server and `options.workers` workers.
    pub async fn start(options: ClusterOptions) -> Cluster {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let manifest = synth_into(&options.synth, &dir.path().join("data"));
        let learner: Arc<dyn Learner> = match &options.policy {
            ClusterPolicy::Candidates => Arc::new(UnigramLearner::new(CANDIDATES.len())),
            ClusterPolicy::Qwen { .. } => Arc::new(QwenLearner::new()),
        };

        let (rl, rm) = (bind().await, bind().await);
        let (reward_addr, reward_metrics) = (addr(&rl), addr(&rm));
        let reward = start_reward(rl, Some(rm)).await;

        let (cl, cm) = (bind().await, bind().await);
        let (coordinator_addr, coordinator_metrics) = (addr(&cl), addr(&cm));
        let mut ccfg = CoordinatorConfig::new(dir.path().join("store.sqlite"), learner.clone());
        ccfg.auth_token = options.token.clone();
        ccfg.heartbeat_interval = Duration::from_millis(100);
        ccfg.idle_retry = Duration::from_millis(10);
        ccfg.tick = Duration::from_millis(10);
        ccfg.metrics_listener = Some(cm);
        let (ctx, crx) = oneshot::channel::<()>();
        let coordinator = (
            ctx,
            tokio::spawn(platter_coordinator::serve(ccfg, cl, async move {
                let _ = crx.await;
            })),
        );

        let mut workers = Vec::new();
        for i in 0..options.workers {
            // Unique per cluster: tests in one process share the metrics registry.
            let name = format!("worker{i}-{}", coordinator_addr.port());
            let ml = bind().await;
            let metrics_addr = addr(&ml);
            let mut wcfg = WorkerConfig::new(
                &name,
                &format!("http://{coordinator_addr}"),
                &format!("http://{reward_addr}"),
            );
            wcfg.token = options.token.clone();
            wcfg.max_concurrent_groups = options.groups_per_worker;
            wcfg.weights = Some(learner.subscribe());
            wcfg.weights_timeout = Duration::from_secs(20);
            wcfg.metrics_listener = Some(ml);
            let policy: Arc<dyn Policy> = match &options.policy {
                ClusterPolicy::Candidates => Arc::new(CandidatePolicy::new(options.group_time)),
                ClusterPolicy::Qwen { model_dir } => {
                    match QwenEngine::load(model_dir, &Device::Cpu, DType::F32) {
                        Ok(e) => Arc::new(e),
                        Err(e) => panic!("policy {}: {e}", model_dir.display()),
                    }
                }
            };
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(platter_rollout::run(wcfg, policy, async move {
                let _ = rx.await;
            }));
            workers.push(WorkerHandle {
                name,
                stop: Some(tx),
                task,
                metrics_addr,
            });
        }
        Cluster {
            coordinator_addr,
            coordinator_metrics,
            reward_addr,
            reward_metrics,
            workers,
            manifest,
            image_size: options.synth.policy_image_size,
            learner,
            token: options.token,
            coordinator,
            reward: Some(reward),
            _dir: dir,
        }
    }

    /// The version the learner published last.
    pub fn learner_version(&self) -> u64 {
        self.learner.subscribe().borrow().version
    }

    /// Response tokens of cancelled groups: (counted by the workers, reported to the
    /// coordinator), from the shared metrics registry, once the two agree (the workers'
    /// reports ride on heartbeats) or `within` has passed.
    pub async fn settled_cancelled_tokens(&self, within: Duration) -> (f64, f64) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let body = platter_proto::metrics_http::scrape(self.coordinator_metrics)
                .await
                .unwrap_or_default();
            let workers =
                crate::step_report::metric_sum(&body, "platter_rollout_cancelled_tokens_total");
            let coordinator = crate::step_report::metric_sum(
                &body,
                "platter_discarded_tokens_total{reason=\"cancelled\"}",
            );
            if workers == coordinator || tokio::time::Instant::now() >= deadline {
                return (workers, coordinator);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The policy version worker `i` has loaded, from its `/metrics`.
    pub async fn worker_policy_version(&self, i: usize) -> f64 {
        let w = &self.workers[i];
        let body = platter_proto::metrics_http::scrape(w.metrics_addr)
            .await
            .unwrap_or_default();
        let prefix = format!("platter_rollout_policy_version{{worker=\"{}\"}} ", w.name);
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A client holding the cluster's token.
    pub fn client(&self) -> CoordinatorClient {
        self.client_with(self.token.clone())
    }

    /// A client holding `token`.
    pub fn client_with(&self, token: Option<String>) -> CoordinatorClient {
        match CoordinatorClient::new(&format!("http://{}", self.coordinator_addr), token) {
            Ok(c) => c,
            Err(e) => panic!("client: {e}"),
        }
    }

    /// A tiny DAPO experiment on the cluster's dataset: `prompts_per_step` groups of 4,
    /// `steps` steps, leases expiring after `lease_timeout` seconds, then `extra` TOML lines
    /// appended (tables go last).
    pub fn experiment_toml(
        &self,
        steps: u64,
        prompts_per_step: usize,
        lease_timeout: f64,
        extra: &str,
    ) -> String {
        format!(
            "name = \"e2e\"\nalgorithm = \"dapo\"\nsteps = {steps}\nseed = 3\n\n[data]\nmanifest = \"{}\"\nimage_size = {}\n\n[rollout]\ngroup_size = 4\nlease_timeout_seconds = {lease_timeout:?}\n\n[sampling]\nprompts_per_step = {prompts_per_step}\nmax_generation_rounds = 20\n\n[overlong]\nmax_response_tokens = 64\n\n[optim]\nlr = 0.05\n{extra}",
            self.manifest.display(),
            self.image_size
        )
    }

    /// Stops the reward server, keeps it down for `down`, and starts a new one on the same
    /// address.
    pub async fn restart_reward_server(&mut self, down: Duration) {
        if let Some((stop, task)) = self.reward.take() {
            let _ = stop.send(());
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("reward server: {e}"),
                Err(e) => panic!("reward server task: {e}"),
            }
        }
        tokio::time::sleep(down).await;
        let listener = match TcpListener::bind(self.reward_addr).await {
            Ok(l) => l,
            Err(e) => panic!("rebinding the reward server on {}: {e}", self.reward_addr),
        };
        self.reward = Some(start_reward(listener, None).await);
    }

    /// Stops everything; returns the workers' reports (killed workers report nothing).
    pub async fn shutdown(self) -> Vec<WorkerReport> {
        let mut reports = Vec::new();
        for w in self.workers {
            reports.push(w.stop().await);
        }
        let _ = self.coordinator.0.send(());
        let _ = self.coordinator.1.await;
        if let Some((stop, task)) = self.reward {
            let _ = stop.send(());
            let _ = task.await;
        }
        reports
    }
}
