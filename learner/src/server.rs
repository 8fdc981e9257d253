//! The learner as a network service: `platter.v1.Learner` over any
//! [`platter_coordinator::Learner`].
//!
//! ```no_run
//! # async fn run() -> Result<(), platter_learner::server::ServeError> {
//! use std::sync::Arc;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let learner = Arc::new(platter_coordinator::UnigramLearner::new(16));
//! let config = platter_learner::server::LearnerServerConfig::new(learner);
//! platter_learner::server::serve(config, listener, std::future::pending()).await
//! # }
//! ```
//!
//! - `StartExperiment` parses and validates the config TOML with the coordinator's code (an
//!   invalid key is `INVALID_ARGUMENT` naming it), then resets the learner.
//! - `TrainStep` runs one step at a time on a blocking thread. A second call that arrives while
//!   a step runs **waits** for it, then runs. Steps are idempotent by `(experiment_id, step)`: a
//!   step already trained (a client retry after a timeout or a broken connection) returns the
//!   stored response and is not applied again. A step runs to completion even when its caller
//!   goes away, so a retry finds its result instead of training twice.
//! - `SubscribeWeights` streams the current version, then every newly published one, in chunks;
//!   a slow subscriber skips versions that were superseded before it got to them. Versions go
//!   back to 0 when an experiment starts, and are streamed then too. An empty blob (nothing
//!   published yet) is not sent.
//! - `StartExperiment` and `TrainStep` need the bearer token; `SubscribeWeights` is a read and
//!   open, as the coordinator's reads are.
//! - On shutdown, weight streams end with `UNAVAILABLE` (subscribers reconnect elsewhere) and a
//!   running step finishes before the server stops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platter_coordinator::{Error as CoordinatorError, ExperimentConfig, Learner};
use platter_proto::auth::check_bearer;
use platter_proto::v1;
use platter_proto::v1::learner_server::{Learner as LearnerService, LearnerServer};
use platter_proto::weights::PolicyWeights;
use prost::bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Weight chunk size when the subscriber asks for none (4 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;
/// Largest chunk a subscriber may ask for (32 MiB): larger messages exceed what clients decode.
pub const MAX_CHUNK_BYTES: usize = 32 << 20;

/// Every metric the learner service exports (names documented in `docs/metrics.md`).
pub mod names {
    /// Weight bytes sent to subscribers.
    pub const PUBLISH_BYTES: &str = "platter_learner_publish_bytes_total";
    /// Weight chunks sent to subscribers.
    pub const PUBLISH_CHUNKS: &str = "platter_learner_publish_chunks_total";
    /// Policy versions fully sent, counted once per subscriber.
    pub const PUBLISH_VERSIONS: &str = "platter_learner_publish_versions_total";
    /// Seconds to send one version to one subscriber.
    pub const PUBLISH_TRANSFER_SECONDS: &str = "platter_learner_publish_transfer_seconds";
    /// Bytes per second of one version's transfer to one subscriber.
    pub const PUBLISH_BYTES_PER_SECOND: &str = "platter_learner_publish_bytes_per_second";
    /// Open `SubscribeWeights` streams.
    pub const PUBLISH_SUBSCRIBERS: &str = "platter_learner_publish_subscribers";
    /// Latest published policy version.
    pub const PUBLISH_LATEST_VERSION: &str = "platter_learner_publish_latest_version";
    /// `TrainStep` calls by outcome (`ok`, `replayed`, `error`).
    pub const TRAIN_STEPS: &str = "platter_learner_train_steps_total";
    /// Seconds per `TrainStep` call on the server, waiting for a running step included.
    pub const TRAIN_STEP_SECONDS: &str = "platter_learner_train_step_seconds";
}

/// Registers the descriptions and units of [`names`] (repeated calls are harmless).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::PUBLISH_BYTES,
        Unit::Bytes,
        "Weight bytes sent to SubscribeWeights streams."
    );
    describe_counter!(
        names::PUBLISH_CHUNKS,
        Unit::Count,
        "Weight chunks sent to SubscribeWeights streams."
    );
    describe_counter!(
        names::PUBLISH_VERSIONS,
        Unit::Count,
        "Policy versions fully sent, once per subscriber."
    );
    describe_histogram!(
        names::PUBLISH_TRANSFER_SECONDS,
        Unit::Seconds,
        "Seconds to send one policy version to one subscriber (first chunk to last chunk handed to the transport)."
    );
    describe_histogram!(
        names::PUBLISH_BYTES_PER_SECOND,
        "Bytes per second of one policy version's transfer to one subscriber."
    );
    describe_gauge!(
        names::PUBLISH_SUBSCRIBERS,
        Unit::Count,
        "Open SubscribeWeights streams."
    );
    describe_gauge!(
        names::PUBLISH_LATEST_VERSION,
        Unit::Count,
        "Latest policy version the learner published."
    );
    describe_counter!(
        names::TRAIN_STEPS,
        Unit::Count,
        "TrainStep calls by outcome (ok, replayed = a repeated step answered from the stored response, error)."
    );
    describe_histogram!(
        names::TRAIN_STEP_SECONDS,
        Unit::Seconds,
        "Seconds per TrainStep call on the server, waiting for a running step included."
    );
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// Socket errors.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Metrics(#[from] platter_proto::metrics_http::MetricsError),
}

/// Settings of a learner server.
pub struct LearnerServerConfig {
    /// The learner that trains and publishes.
    pub learner: Arc<dyn Learner>,
    /// Bearer token required on `StartExperiment` and `TrainStep`; `None` turns auth off
    /// (loopback only!).
    pub auth_token: Option<String>,
    /// Chunk size of weight streams when the subscriber asks for none (capped at
    /// [`MAX_CHUNK_BYTES`]).
    pub chunk_bytes: usize,
    /// Chunks queued per subscriber before sending waits for the subscriber to read.
    pub subscriber_buffer: usize,
    /// Largest accepted request in bytes (a `TrainStep` batch holds every token id).
    pub max_message_bytes: usize,
    /// Trained steps whose responses are kept to answer repeated `TrainStep` calls.
    pub kept_responses: usize,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for LearnerServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnerServerConfig")
            .field("auth", &self.auth_token.is_some())
            .field("chunk_bytes", &self.chunk_bytes)
            .field("subscriber_buffer", &self.subscriber_buffer)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("kept_responses", &self.kept_responses)
            .finish_non_exhaustive()
    }
}

impl LearnerServerConfig {
    /// Defaults: no auth, 4 MiB chunks, 4 queued chunks per subscriber, 256 MiB requests,
    /// 16 kept step responses, no metrics listener.
    pub fn new(learner: Arc<dyn Learner>) -> Self {
        Self {
            learner,
            auth_token: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            subscriber_buffer: 4,
            max_message_bytes: 256 << 20,
            kept_responses: 16,
            metrics_listener: None,
        }
    }
}

/// Which experiment runs and the responses of its recent steps. Guarded by one async mutex:
/// holding it is what makes steps (and starts) run one at a time.
#[derive(Debug, Default)]
struct StepLog {
    /// Whether `StartExperiment` succeeded since the server started.
    started: bool,
    /// The experiment steps belong to; `None` after a start without an id, until the first
    /// step names it.
    experiment: Option<String>,
    last_step: Option<u64>,
    kept: VecDeque<(u64, v1::TrainStepResponse)>,
}

impl StepLog {
    fn stored(&self, step: u64) -> Option<&v1::TrainStepResponse> {
        self.kept.iter().find(|(s, _)| *s == step).map(|(_, r)| r)
    }
}

struct Service {
    learner: Arc<dyn Learner>,
    auth_token: Option<String>,
    log: Arc<Mutex<StepLog>>,
    chunk_bytes: usize,
    subscriber_buffer: usize,
    kept_responses: usize,
    stop: watch::Receiver<bool>,
}

/// A learner error as a gRPC status: config errors are the caller's, the rest the learner's.
fn learner_status(call: &str, e: CoordinatorError) -> Status {
    match e {
        CoordinatorError::Config(c) => Status::invalid_argument(c.to_string()),
        other => Status::internal(format!("{call}: {other}")),
    }
}

#[tonic::async_trait]
impl LearnerService for Service {
    async fn start_experiment(
        &self,
        request: Request<v1::StartExperimentRequest>,
    ) -> Result<Response<v1::StartExperimentResponse>, Status> {
        check_bearer(request.metadata(), self.auth_token.as_deref())?;
        let req = request.into_inner();
        let cfg = ExperimentConfig::from_toml(&req.config_toml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (log, learner) = (self.log.clone(), self.learner.clone());
        // The start runs in its own task holding the step lock, so a caller that goes away
        // cannot leave a half-reset learner while a step begins.
        let task = tokio::spawn(async move {
            let mut log = log.lock_owned().await;
            let id = req.experiment_id;
            tracing::info!(experiment = %id, name = %cfg.name, "starting experiment");
            let version = tokio::task::spawn_blocking(move || learner.start_experiment(&cfg))
                .await
                .map_err(|e| Status::internal(format!("StartExperiment task failed: {e}")))?
                .map_err(|e| learner_status("StartExperiment", e))?;
            *log = StepLog {
                started: true,
                experiment: (!id.is_empty()).then_some(id),
                ..StepLog::default()
            };
            Ok::<_, Status>(version)
        });
        let policy_version = task
            .await
            .map_err(|e| Status::internal(format!("StartExperiment task failed: {e}")))??;
        Ok(Response::new(v1::StartExperimentResponse {
            policy_version,
        }))
    }

    async fn train_step(
        &self,
        request: Request<v1::TrainStepRequest>,
    ) -> Result<Response<v1::TrainStepResponse>, Status> {
        check_bearer(request.metadata(), self.auth_token.as_deref())?;
        let started = Instant::now();
        let req = request.into_inner();
        let (log, learner, keep) = (
            self.log.clone(),
            self.learner.clone(),
            self.kept_responses.max(1),
        );
        // Detached: the step finishes and is recorded even if this call is dropped, so the
        // caller's retry gets the stored response instead of a second update.
        let task = tokio::spawn(async move {
            let mut log = log.lock_owned().await;
            let (id, step) = (req.experiment_id.clone(), req.step);
            if !log.started {
                return Err(Status::failed_precondition(format!(
                    "TrainStep for experiment `{id}` step {step}: no experiment started on this learner (restarted?); call StartExperiment first"
                )));
            }
            match &log.experiment {
                Some(running) if *running != id => {
                    return Err(Status::failed_precondition(format!(
                        "TrainStep for experiment `{id}` step {step}: this learner runs experiment `{running}`"
                    )));
                }
                Some(_) => {}
                None => log.experiment = Some(id.clone()),
            }
            if let Some(stored) = log.stored(step) {
                tracing::info!(experiment = %id, step, "repeated step: answering with the stored response");
                return Ok((*stored, true));
            }
            if let Some(last) = log.last_step
                && step <= last
            {
                return Err(Status::failed_precondition(format!(
                    "TrainStep for experiment `{id}` step {step}: already trained up to step {last} and the response of step {step} is no longer kept"
                )));
            }
            let span = tracing::info_span!("train_step", experiment = %id, step);
            let out =
                tokio::task::spawn_blocking(move || span.in_scope(|| learner.train_step(&req)))
                    .await
                    .map_err(|e| Status::internal(format!("TrainStep task failed: {e}")))?
                    .map_err(|e| learner_status("TrainStep", e))?;
            log.last_step = Some(step);
            log.kept.push_back((step, out));
            while log.kept.len() > keep {
                log.kept.pop_front();
            }
            Ok((out, false))
        });
        let result = task
            .await
            .map_err(|e| Status::internal(format!("TrainStep task failed: {e}")))?;
        metrics::histogram!(names::TRAIN_STEP_SECONDS).record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok((_, true)) => "replayed",
            Ok((_, false)) => "ok",
            Err(_) => "error",
        };
        metrics::counter!(names::TRAIN_STEPS, "outcome" => outcome).increment(1);
        let (out, _) = result.inspect_err(|status| {
            tracing::warn!(%status, "train step failed");
        })?;
        Ok(Response::new(out))
    }

    type SubscribeWeightsStream = ReceiverStream<Result<v1::WeightChunk, Status>>;

    async fn subscribe_weights(
        &self,
        request: Request<v1::SubscribeWeightsRequest>,
    ) -> Result<Response<Self::SubscribeWeightsStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let req = request.into_inner();
        let chunk_bytes = match req.chunk_bytes {
            0 => self.chunk_bytes,
            n => n as usize,
        }
        .clamp(1, MAX_CHUNK_BYTES);
        let (tx, rx) = mpsc::channel(self.subscriber_buffer.max(1));
        let weights = self.learner.subscribe();
        let stop = self.stop.clone();
        tokio::spawn(stream_weights(
            weights,
            req.after_version,
            chunk_bytes,
            tx,
            stop,
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Counts an open stream while alive.
struct SubscriberGauge;

impl SubscriberGauge {
    fn open() -> Self {
        metrics::gauge!(names::PUBLISH_SUBSCRIBERS).increment(1.0);
        Self
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        metrics::gauge!(names::PUBLISH_SUBSCRIBERS).decrement(1.0);
    }
}

type ChunkSender = mpsc::Sender<Result<v1::WeightChunk, Status>>;

/// Feeds one subscriber: the current version (unless `after_version` > 0 and it is not newer),
/// then every published version, until the subscriber leaves, the learner goes away or the
/// server stops.
async fn stream_weights(
    mut weights: watch::Receiver<PolicyWeights>,
    after_version: u64,
    chunk_bytes: usize,
    tx: ChunkSender,
    mut stop: watch::Receiver<bool>,
    peer: String,
) {
    let _gauge = SubscriberGauge::open();
    tracing::debug!(%peer, after_version, chunk_bytes, "weight subscriber connected");
    let mut first = true;
    loop {
        let current = weights.borrow_and_update().clone();
        // An empty blob is "nothing published yet" (a learner before its first experiment).
        let wanted = !first || after_version == 0 || current.version > after_version;
        if wanted && !current.safetensors.is_empty() {
            let sent = tokio::select! {
                () = stopped(&mut stop) => None,
                sent = send_version(&current, chunk_bytes, &tx) => Some(sent),
            };
            match sent {
                None => break,
                Some(false) => {
                    tracing::debug!(%peer, "weight subscriber left");
                    return;
                }
                Some(true) => {}
            }
        }
        first = false;
        tokio::select! {
            () = stopped(&mut stop) => break,
            changed = weights.changed() => {
                if changed.is_err() {
                    tracing::info!(%peer, "learner stopped publishing; ending weight stream");
                    return;
                }
            }
            () = tx.closed() => {
                tracing::debug!(%peer, "weight subscriber left");
                return;
            }
        }
    }
    let _ = tx
        .send(Err(Status::unavailable("learner shutting down")))
        .await;
}

/// The published blob as the owner of a [`Bytes`]: chunks are slices of it, not copies.
struct SharedBlob(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBlob {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Sends one version in chunks; false when the subscriber is gone.
async fn send_version(weights: &PolicyWeights, chunk_bytes: usize, tx: &ChunkSender) -> bool {
    let blob = Bytes::from_owner(SharedBlob(weights.safetensors.clone()));
    let count = blob.len().div_ceil(chunk_bytes).max(1);
    let Ok(count32) = u32::try_from(count) else {
        let _ = tx
            .send(Err(Status::internal(format!(
                "version {}: {} bytes need {count} chunks of {chunk_bytes} bytes, more than a stream can index",
                weights.version,
                blob.len()
            ))))
            .await;
        return false;
    };
    metrics::gauge!(names::PUBLISH_LATEST_VERSION).set(weights.version as f64);
    let started = Instant::now();
    for index in 0..count32 {
        let at = index as usize * chunk_bytes;
        let data = blob.slice(at.min(blob.len())..blob.len().min(at + chunk_bytes));
        let len = data.len() as u64;
        let chunk = v1::WeightChunk {
            version: weights.version,
            index,
            count: count32,
            data,
        };
        if tx.send(Ok(chunk)).await.is_err() {
            return false;
        }
        metrics::counter!(names::PUBLISH_CHUNKS).increment(1);
        metrics::counter!(names::PUBLISH_BYTES).increment(len);
    }
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!(names::PUBLISH_VERSIONS).increment(1);
    metrics::histogram!(names::PUBLISH_TRANSFER_SECONDS).record(seconds);
    if seconds > 0.0 {
        metrics::histogram!(names::PUBLISH_BYTES_PER_SECOND).record(blob.len() as f64 / seconds);
    }
    tracing::debug!(
        version = weights.version,
        bytes = blob.len(),
        seconds,
        "weights sent"
    );
    true
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Serves `platter.v1.Learner` (and gRPC health, and `/metrics` when configured) on `listener`
/// until `shutdown` resolves. Weight streams then end with `UNAVAILABLE`; a running step
/// finishes first.
pub async fn serve(
    config: LearnerServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    describe_metrics();
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = config.metrics_listener {
        let handle = platter_proto::metrics_http::install()?;
        let mut stop = stop_rx.clone();
        tokio::spawn(platter_proto::metrics_http::serve(l, handle, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let (health_reporter, health) =
        platter_proto::health_service(platter_proto::service_names::LEARNER).await;
    let service = Service {
        learner: config.learner,
        auth_token: config.auth_token,
        log: Arc::new(Mutex::new(StepLog::default())),
        chunk_bytes: config.chunk_bytes.clamp(1, MAX_CHUNK_BYTES),
        subscriber_buffer: config.subscriber_buffer,
        kept_responses: config.kept_responses,
        stop: stop_rx,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "learner listening");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        // Weight blobs are hundreds of MiB: large windows keep loopback and LAN links busy.
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(WINDOW_BYTES))
        .max_frame_size(Some(1 << 20))
        .add_service(health)
        .add_service(
            LearnerServer::new(service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(MAX_CHUNK_BYTES + (1 << 20)),
        )
        .serve_with_incoming_shutdown(platter_proto::incoming(listener), async move {
            shutdown.await;
            health_reporter
                .set_service_status(
                    platter_proto::service_names::LEARNER,
                    platter_proto::tonic_health::ServingStatus::NotServing,
                )
                .await;
            let _ = stop_tx.send(true);
        })
        .await?;
    tracing::info!(%addr, "learner stopped");
    Ok(())
}

/// HTTP/2 flow-control window of the server's streams and connections.
const WINDOW_BYTES: u32 = 16 << 20;
