//! [`RemoteLearner`]: the [`Learner`] trait over a `platter.v1.Learner` gRPC endpoint (the
//! `learner` binary, `platter_learner::server`).
//!
//! The trait's calls block; each one runs its gRPC call on the tokio runtime the learner was
//! created in and waits for the answer, so call them from a blocking thread (the step driver
//! uses `spawn_blocking`), never from inside an async task.
//!
//! Transient failures (learner unreachable, connection broken, attempt timed out) are retried
//! with backoff. Retrying `TrainStep` never trains a step twice: the server answers a repeated
//! `(experiment_id, step)` with the stored response. Every error names the learner endpoint.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use platter_proto::auth::with_bearer;
use platter_proto::v1;
use platter_proto::v1::learner_client::LearnerClient;
use platter_proto::weights::PolicyWeights;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::ExperimentConfig;
use crate::learner::Learner;
use crate::{Error, Result};

/// Settings of a [`RemoteLearner`].
#[derive(Debug, Clone)]
pub struct RemoteLearnerOptions {
    /// Bearer token sent on `StartExperiment` and `TrainStep`.
    pub token: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for one `StartExperiment` attempt (it may load a model).
    pub start_timeout: Duration,
    /// Time allowed for one `TrainStep` attempt.
    pub step_timeout: Duration,
    /// Attempts per call (transient failures only; at least 1).
    pub attempts: u32,
    /// First retry delay; doubles per attempt up to 5 s.
    pub backoff: Duration,
    /// Weight chunk size asked of the learner (0 = its default).
    pub chunk_bytes: u32,
    /// Largest message accepted from the learner (a weight chunk).
    pub max_message_bytes: usize,
}

impl Default for RemoteLearnerOptions {
    /// No token, 5 s connect, 10 min start, 30 min step, 5 attempts from 200 ms backoff, the
    /// learner's default chunks, 64 MiB messages.
    fn default() -> Self {
        Self {
            token: None,
            connect_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(1800),
            attempts: 5,
            backoff: Duration::from_millis(200),
            chunk_bytes: 0,
            max_message_bytes: 64 << 20,
        }
    }
}

/// A learner reached over gRPC; see the module docs.
pub struct RemoteLearner {
    endpoint: String,
    client: LearnerClient<Channel>,
    options: RemoteLearnerOptions,
    runtime: Handle,
    /// Started on the first `subscribe`: a coordinator that never reads weights never pulls them.
    weights: OnceLock<watch::Receiver<PolicyWeights>>,
}

impl std::fmt::Debug for RemoteLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLearner")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.options.token.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a failed call may succeed when repeated (the server makes repeats harmless).
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

impl RemoteLearner {
    /// A lazily connecting learner at `endpoint` (`http://host:port`). Must be called inside a
    /// tokio runtime: calls and the weight feed run on it.
    pub fn new(endpoint: &str, options: RemoteLearnerOptions) -> Result<Self> {
        let bad = |message: String| Error::Endpoint {
            endpoint: endpoint.to_owned(),
            message,
        };
        let runtime = Handle::try_current()
            .map_err(|_| bad("RemoteLearner must be created inside a tokio runtime".into()))?;
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| bad(format!("not a valid learner URL: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            // Weight blobs are hundreds of MiB: large windows keep the link busy.
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // Larger HTTP/2 frames than the 16 KiB default: fewer frames per weight chunk.
            .max_frame_size(Some(1 << 20))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = LearnerClient::new(channel)
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(usize::MAX);
        Ok(Self {
            endpoint: endpoint.to_owned(),
            client,
            options,
            runtime,
            weights: OnceLock::new(),
        })
    }

    /// The endpoint this learner talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs `call` on the runtime with a per-attempt timeout and retries transient failures.
    fn call<T, F, Fut>(&self, name: &'static str, timeout: Duration, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(LearnerClient<Channel>, Option<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<T, Status>> + Send,
    {
        let (client, token, endpoint) = (
            self.client.clone(),
            self.options.token.clone(),
            self.endpoint.clone(),
        );
        let (attempts, backoff) = (self.options.attempts.max(1), self.options.backoff);
        let task = async move {
            let mut delay = backoff;
            let mut attempt = 1;
            loop {
                let status = match tokio::time::timeout(
                    timeout,
                    call(client.clone(), token.clone()),
                )
                .await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(status)) => status,
                    Err(_) => Status::deadline_exceeded(format!(
                        "no answer within {:.0} s",
                        timeout.as_secs_f64()
                    )),
                };
                if !transient(&status) || attempt >= attempts {
                    return Err(Error::Learner(format!(
                        "learner at {endpoint}: {name} failed (attempt {attempt} of {attempts}): {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                tracing::warn!(%endpoint, call = name, attempt, code = %status.code(), message = status.message(), "learner call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(task.await);
        });
        // Waiting on a std channel (not `Handle::block_on`) never panics inside a runtime; the
        // bound turns a deadlock (a call from the runtime's only thread) into an error.
        let bound = (timeout + Duration::from_secs(5)) * attempts + Duration::from_secs(60);
        rx.recv_timeout(bound).map_err(|e| {
            Error::Learner(format!(
                "learner at {}: {name}: {}",
                self.endpoint,
                match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout =>
                        "no result in time (called from inside an async task? call from a blocking thread)",
                    std::sync::mpsc::RecvTimeoutError::Disconnected =>
                        "the tokio runtime the learner was created in has shut down",
                }
            ))
        })?
    }
}

impl Learner for RemoteLearner {
    fn start_experiment(&self, cfg: &ExperimentConfig) -> Result<u64> {
        let config_toml = toml::to_string(cfg).map_err(|e| {
            Error::Learner(format!(
                "learner at {}: encoding the experiment config as TOML: {e}",
                self.endpoint
            ))
        })?;
        // The trait does not carry the coordinator's experiment id: an empty id binds the
        // learner to the id of the first step it trains.
        let request = v1::StartExperimentRequest {
            experiment_id: String::new(),
            config_toml,
        };
        self.call(
            "StartExperiment",
            self.options.start_timeout,
            move |mut client, token| {
                let request = request.clone();
                async move {
                    let r = with_bearer(Request::new(request), token.as_deref())?;
                    Ok(client
                        .start_experiment(r)
                        .await?
                        .into_inner()
                        .policy_version)
                }
            },
        )
    }

    fn train_step(&self, batch: &v1::TrainStepRequest) -> Result<v1::TrainStepResponse> {
        let batch = Arc::new(batch.clone());
        let timeout = self.options.step_timeout;
        self.call("TrainStep", timeout, move |mut client, token| {
            let batch = batch.clone();
            async move {
                let mut r = with_bearer(Request::new((*batch).clone()), token.as_deref())?;
                r.set_timeout(timeout);
                Ok(client.train_step(r).await?.into_inner())
            }
        })
    }

    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.weights
            .get_or_init(|| {
                let (tx, rx) = watch::channel(PolicyWeights {
                    version: 0,
                    safetensors: Arc::new(Vec::new()),
                });
                self.runtime.spawn(follow_weights(
                    self.client.clone(),
                    self.endpoint.clone(),
                    self.options.chunk_bytes,
                    tx,
                ));
                rx
            })
            .clone()
    }
}

/// Follows `SubscribeWeights`, publishing each complete version on `tx`, reconnecting with
/// backoff when the stream breaks, until every receiver is gone. Each (re)connection asks for
/// the current version, so a learner that restarted (versions going back) is followed too; a
/// version identical to the one held is not published again.
async fn follow_weights(
    mut client: LearnerClient<Channel>,
    endpoint: String,
    chunk_bytes: u32,
    tx: watch::Sender<PolicyWeights>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let request = v1::SubscribeWeightsRequest {
            after_version: 0,
            chunk_bytes,
        };
        let stream = tokio::select! {
            () = tx.closed() => return,
            r = client.subscribe_weights(request) => r,
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut assembly: Option<Assembly> = None;
                // The buffer of the version before last, when nobody holds it any more: reusing
                // it spares faulting in a model-sized allocation per version.
                let mut spare: Option<Vec<u8>> = None;
                loop {
                    let next = tokio::select! {
                        () = tx.closed() => return,
                        n = stream.message() => n,
                    };
                    let chunk = match next {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => {
                            tracing::info!(%endpoint, "learner ended the weight stream; reconnecting");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%endpoint, %status, "weight stream broke; reconnecting");
                            break;
                        }
                    };
                    backoff = Duration::from_millis(50);
                    match Assembly::push(&mut assembly, chunk, &mut spare) {
                        Ok(None) => {}
                        Ok(Some(w)) => {
                            tracing::debug!(%endpoint, version = w.version, bytes = w.safetensors.len(), "policy weights received");
                            let same = {
                                let held = tx.borrow();
                                held.version == w.version
                                    && held.safetensors.as_slice() == w.safetensors.as_slice()
                            };
                            if !same {
                                let old = tx.send_replace(w);
                                spare = Arc::try_unwrap(old.safetensors).ok();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%endpoint, error = %e, "dropping a malformed weight update");
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%endpoint, %status, "learner not reachable; retrying");
            }
        }
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One policy version being reassembled from its chunks, written straight into one buffer.
struct Assembly {
    version: u64,
    count: u32,
    next: u32,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Adds `chunk` to the version in `slot`: the complete weights after its last chunk. A
    /// chunk out of order is an error naming it; the partial version is dropped and assembly
    /// restarts at the next chunk 0.
    /// `spare`, if any, is reused as the buffer of a new version.
    fn push(
        slot: &mut Option<Assembly>,
        chunk: v1::WeightChunk,
        spare: &mut Option<Vec<u8>>,
    ) -> std::result::Result<Option<PolicyWeights>, String> {
        if chunk.index == 0 {
            if chunk.count == 0 {
                *slot = None;
                return Err(format!("version {}: chunk count 0", chunk.version));
            }
            let mut bytes = spare.take().unwrap_or_default();
            bytes.clear();
            // The size is the peer's claim: reserve what it implies, but fail softly.
            let hint = chunk.data.len().saturating_mul(chunk.count as usize);
            if bytes.try_reserve_exact(hint).is_err() {
                *slot = None;
                return Err(format!(
                    "version {}: cannot reserve {hint} bytes for {} chunks",
                    chunk.version, chunk.count
                ));
            }
            *slot = Some(Assembly {
                version: chunk.version,
                count: chunk.count,
                next: 0,
                bytes,
            });
        }
        let Some(a) = slot.as_mut() else {
            return Err(format!(
                "version {}: chunk {} of {} without its chunk 0",
                chunk.version, chunk.index, chunk.count
            ));
        };
        if chunk.version != a.version || chunk.index != a.next || chunk.count != a.count {
            let e = format!(
                "expected version {} chunk {} of {}, found version {} chunk {} of {}",
                a.version, a.next, a.count, chunk.version, chunk.index, chunk.count
            );
            *slot = None;
            return Err(e);
        }
        a.bytes.extend_from_slice(&chunk.data);
        a.next += 1;
        if a.next < a.count {
            return Ok(None);
        }
        Ok(slot.take().map(|a| PolicyWeights {
            version: a.version,
            safetensors: Arc::new(a.bytes),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_configs_survive_the_toml_round_trip() {
        // `start_experiment` sends `toml::to_string(cfg)`; the learner parses it back.
        for name in ["paper-dapo.toml", "paper-grpo.toml", "tiny-cpu.toml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            // `[run]` holds `platter run`'s own keys; the CLI removes it before submitting.
            let mut table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
            table.remove("run");
            let cfg = ExperimentConfig::from_toml(&toml::to_string(&table).unwrap()).unwrap();
            let back = ExperimentConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg, "{name}");
        }
    }

    #[test]
    fn assembly_rebuilds_versions_and_names_broken_order() {
        let w = PolicyWeights {
            version: 4,
            safetensors: Arc::new((0..23u8).collect()),
        };
        let mut slot = None;
        let chunks = w.to_chunks(5);
        let mut out = None;
        for c in chunks.clone() {
            out = Assembly::push(&mut slot, c, &mut None).unwrap();
        }
        assert_eq!(out, Some(w.clone()));
        // A skipped chunk drops the partial version, and the next version still assembles.
        let mut slot = None;
        assert!(
            Assembly::push(&mut slot, chunks[0].clone(), &mut None)
                .unwrap()
                .is_none()
        );
        let err = Assembly::push(&mut slot, chunks[2].clone(), &mut None).unwrap_err();
        assert!(err.contains("expected version 4 chunk 1 of 5"), "{err}");
        assert!(Assembly::push(&mut slot, chunks[3].clone(), &mut Some(vec![9; 3])).is_err());
        // ... into a reused buffer that held other bytes.
        let mut out = None;
        let mut spare = Some(vec![7u8; 100]);
        for c in chunks {
            out = Assembly::push(&mut slot, c, &mut spare).unwrap();
        }
        assert!(spare.is_none(), "the spare buffer was taken");
        assert_eq!(out, Some(w));
        // An empty version is one empty chunk.
        let empty = PolicyWeights {
            version: 1,
            safetensors: Arc::new(Vec::new()),
        };
        let mut slot = None;
        let c = empty.to_chunks(5).remove(0);
        assert_eq!(
            Assembly::push(&mut slot, c, &mut None).unwrap(),
            Some(empty)
        );
    }
}
