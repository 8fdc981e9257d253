//! The coordinator: sole owner of experiment state. Researchers submit TOML experiment configs;
//! one experiment runs at a time (the rest queue); rollout workers lease prompts, return scored
//! groups, and the batch assembler (DAPO dynamic sampling) decides what the learner trains on.
//!
//! ```no_run
//! # async fn run() -> platter_coordinator::Result<()> {
//! use std::sync::Arc;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let learner = Arc::new(platter_coordinator::UnigramLearner::new(16));
//! let config = platter_coordinator::CoordinatorConfig::new("store.sqlite".into(), learner);
//! platter_coordinator::serve(config, listener, std::future::pending()).await
//! # }
//! ```

mod client;
pub mod config;
pub mod dataset;
mod driver;
pub mod engine;
pub mod learner;
pub mod metrics;
pub mod remote_learner;
mod service;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use platter_proto::v1;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, watch};

pub use client::CoordinatorClient;
pub use config::{Algorithm, ConfigError, ExperimentConfig};
pub use learner::{Learner, UnigramLearner};
pub use remote_learner::{RemoteLearner, RemoteLearnerOptions};
pub use store::Store;

/// Errors of the coordinator and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The experiment config is invalid; the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SQLite store failed while doing `what`.
    #[error("experiment store: {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// Stored data that does not decode.
    #[error("experiment store holds corrupt data: {0}")]
    Corrupt(String),
    /// No experiment with this id.
    #[error("no experiment `{0}`")]
    NotFound(String),
    /// The dataset could not be read.
    #[error("dataset: {0}")]
    Data(String),
    /// The learner failed.
    #[error("learner: {0}")]
    Learner(String),
    /// A loss computation failed.
    #[error(transparent)]
    Rl(#[from] platter_rl::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The run stopped (round bound with outcome `fail`, unreadable sample, ...).
    #[error("run stopped: {0}")]
    Run(String),
    /// Internal state lock poisoned by a panic.
    #[error("coordinator state is poisoned")]
    Poisoned,
    /// A gRPC call failed.
    #[error("coordinator call `{call}` failed: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    /// A bad endpoint address.
    #[error("coordinator endpoint `{endpoint}`: {message}")]
    Endpoint { endpoint: String, message: String },
    /// Transport failure.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// Socket errors.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] platter_proto::metrics_http::MetricsError),
}

impl Error {
    fn store(what: impl Into<String>, source: rusqlite::Error) -> Self {
        Error::Store {
            what: what.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of a coordinator.
pub struct CoordinatorConfig {
    /// SQLite database file (created if missing); `:memory:` for a throwaway store.
    pub store_path: PathBuf,
    /// Bearer token required on mutating calls; `None` turns auth off (loopback only!).
    pub auth_token: Option<String>,
    /// The learner batches go to.
    pub learner: Arc<dyn Learner>,
    /// Workers heartbeat at least this often.
    pub heartbeat_interval: Duration,
    /// Idle workers ask for work again after this long.
    pub idle_retry: Duration,
    /// How often the driver checks lease deadlines.
    pub tick: Duration,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorConfig")
            .field("store_path", &self.store_path)
            .field("auth", &self.auth_token.is_some())
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish_non_exhaustive()
    }
}

impl CoordinatorConfig {
    /// Defaults: no auth, 1 s heartbeats, 100 ms idle retry, 50 ms deadline checks.
    pub fn new(store_path: PathBuf, learner: Arc<dyn Learner>) -> Self {
        Self {
            store_path,
            auth_token: None,
            learner,
            heartbeat_interval: Duration::from_secs(1),
            idle_retry: Duration::from_millis(100),
            tick: Duration::from_millis(50),
            metrics_listener: None,
        }
    }
}

/// What watchers hear.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    Step(Box<v1::StepSummary>),
    Finished(String),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub run: Option<engine::Run>,
    pub workers: std::collections::HashMap<String, String>,
    pub next_worker: u64,
}

impl State {
    fn run_mut(&mut self) -> Result<&mut engine::Run> {
        self.run
            .as_mut()
            .ok_or_else(|| Error::Run("the running experiment vanished".into()))
    }
}

pub(crate) struct Shared {
    store: Mutex<Store>,
    pub state: Mutex<State>,
    pub wake: Notify,
    pub events: broadcast::Sender<Event>,
    pub learner: Arc<dyn Learner>,
    pub auth_token: Option<String>,
    pub heartbeat_interval: Duration,
    pub idle_retry: Duration,
    pub tick: Duration,
}

impl Shared {
    fn store(&self) -> Result<MutexGuard<'_, Store>> {
        self.store.lock().map_err(|_| Error::Poisoned)
    }
    fn lock_state(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| Error::Poisoned)
    }
}

/// Serves the coordinator API (and gRPC health, and `/metrics` when configured) on `listener`
/// and runs the step driver, until `shutdown` resolves. A running experiment interrupted by
/// shutdown stays `running` in the store and resumes from its last recorded step on restart.
pub async fn serve(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    metrics::describe();
    let store = Store::open(&config.store_path)?;
    let (events, _) = broadcast::channel(256);
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        events,
        learner: config.learner,
        auth_token: config.auth_token,
        heartbeat_interval: config.heartbeat_interval,
        idle_retry: config.idle_retry,
        tick: config.tick,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    if let Some(l) = config.metrics_listener {
        let handle = platter_proto::metrics_http::install()?;
        let mut stop = stop_rx.clone();
        tokio::spawn(platter_proto::metrics_http::serve(l, handle, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let driver = tokio::spawn(driver::drive(shared.clone(), stop_rx.clone()));
    let (_health_reporter, health) =
        platter_proto::health_service(platter_proto::service_names::COORDINATOR).await;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "coordinator listening");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(service::server(shared.clone(), stop_rx))
        .serve_with_incoming_shutdown(platter_proto::incoming(listener), {
            let stop_tx = stop_tx.clone();
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            }
        })
        .await;
    let _ = stop_tx.send(true);
    let _ = driver.await;
    tracing::info!(%addr, "coordinator stopped");
    Ok(result?)
}
