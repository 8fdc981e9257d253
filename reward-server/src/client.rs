//! A typed reward client over one long-lived bidirectional stream that survives server restarts:
//! when the stream breaks it reconnects with exponential backoff and resends every group still
//! waiting for a score (safe, because scoring is idempotent).

use std::collections::HashMap;
use std::time::Duration;

use platter_proto::v1;
use platter_proto::v1::reward_server_client::RewardServerClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{Error, Result};

/// Client timings.
#[derive(Debug, Clone)]
pub struct RewardClientOptions {
    /// A `score` call fails after this long without an answer.
    pub request_timeout: Duration,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Largest reconnect delay.
    pub max_backoff: Duration,
    /// Connect timeout of one attempt.
    pub connect_timeout: Duration,
}

impl Default for RewardClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(120),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

struct Pending {
    request: v1::ScoreRequest,
    reply: oneshot::Sender<v1::GroupScore>,
}

/// Handle to the stream task; cheap to clone.
#[derive(Clone)]
pub struct RewardClient {
    tx: mpsc::Sender<Pending>,
    endpoint: String,
    options: RewardClientOptions,
}

impl std::fmt::Debug for RewardClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RewardClient {
    /// A client for `endpoint` (`http://host:port`); connects lazily, so the server may start
    /// later. Must be called inside a tokio runtime.
    pub fn new(endpoint: &str, options: RewardClientOptions) -> Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| Error::Endpoint {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(drive(
            RewardServerClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            rx,
            options.clone(),
        ));
        Ok(Self {
            tx,
            endpoint: endpoint.to_owned(),
            options,
        })
    }

    /// Scores one group; retried across reconnects until `request_timeout`.
    pub async fn score(&self, request: v1::ScoreRequest) -> Result<v1::GroupScore> {
        let request_id = request.request_id.clone();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { request, reply })
            .await
            .map_err(|_| Error::Closed)?;
        let score = tokio::time::timeout(self.options.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout {
                request_id: request_id.clone(),
                seconds: self.options.request_timeout.as_secs_f64(),
                endpoint: self.endpoint.clone(),
            })?
            .map_err(|_| Error::Closed)?;
        if score.error.is_empty() {
            Ok(score)
        } else {
            Err(Error::Scoring {
                request_id,
                message: score.error,
            })
        }
    }
}

/// Owns the stream: forwards new requests, routes answers by request id, reconnects.
async fn drive(
    mut client: RewardServerClient<Channel>,
    mut rx: mpsc::Receiver<Pending>,
    options: RewardClientOptions,
) {
    let mut outstanding: HashMap<String, Pending> = HashMap::new();
    crate::metrics::describe();
    let mut backoff = options.initial_backoff;
    loop {
        // Drop callers that gave up (timed out) before resending their groups.
        outstanding.retain(|_, p| !p.reply.is_closed());
        let (req_tx, req_rx) = mpsc::channel(outstanding.len() + 64);
        for p in outstanding.values() {
            // Capacity covers every outstanding request, so this cannot fail.
            let _ = req_tx.try_send(p.request.clone());
        }
        metrics::counter!(crate::metrics::CLIENT_RESENT).increment(outstanding.len() as u64);
        let mut inbound = match client.score_groups(ReceiverStream::new(req_rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::debug!(%status, ?backoff, "reward stream not open; retrying");
                if !wait_backoff(&mut backoff, &options, &mut rx, &mut outstanding).await {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                new = rx.recv() => {
                    let Some(p) = new else { return };
                    let request = p.request.clone();
                    outstanding.insert(p.request.request_id.clone(), p);
                    if req_tx.send(request).await.is_err() {
                        break;
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(score)) => {
                        backoff = options.initial_backoff;
                        if let Some(p) = outstanding.remove(&score.request_id) {
                            let _ = p.reply.send(score);
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(%status, pending = outstanding.len(), "reward stream broke; reconnecting");
                        break;
                    }
                }
            }
        }
        if !wait_backoff(&mut backoff, &options, &mut rx, &mut outstanding).await {
            return;
        }
    }
}

/// Sleeps for the backoff while still accepting new requests; false when every handle is gone.
async fn wait_backoff(
    backoff: &mut Duration,
    options: &RewardClientOptions,
    rx: &mut mpsc::Receiver<Pending>,
    outstanding: &mut HashMap<String, Pending>,
) -> bool {
    let sleep = tokio::time::sleep(*backoff);
    tokio::pin!(sleep);
    *backoff = (*backoff * 2).min(options.max_backoff);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            new = rx.recv() => match new {
                Some(p) => { outstanding.insert(p.request.request_id.clone(), p); }
                None => return false,
            }
        }
    }
}
