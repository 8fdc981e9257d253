//! The gRPC service and `serve`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use platter_data::Segmenter;
use platter_proto::v1;
use platter_proto::v1::reward_server_server::{RewardServer, RewardServerServer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics as m;
use crate::{Result, score};

/// Settings of a reward server.
pub struct RewardServerConfig {
    /// The frozen segmenter (SAM2, or the box segmenter without weights).
    pub segmenter: Arc<dyn Segmenter>,
    /// Groups scored at once (each on a blocking thread); more wait, which stops reading.
    pub max_concurrent_groups: usize,
    /// Finished scores buffered per stream before scoring waits for the client to read.
    pub stream_buffer: usize,
    /// Largest accepted request in bytes (images travel inside requests).
    pub max_message_bytes: usize,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for RewardServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardServerConfig")
            .field("segmenter", &self.segmenter.name())
            .field("max_concurrent_groups", &self.max_concurrent_groups)
            .field("stream_buffer", &self.stream_buffer)
            .finish_non_exhaustive()
    }
}

impl RewardServerConfig {
    /// Defaults: 2 concurrent groups, 16 buffered scores, 64 MiB messages, no metrics listener.
    pub fn new(segmenter: Arc<dyn Segmenter>) -> Self {
        Self {
            segmenter,
            max_concurrent_groups: 2,
            stream_buffer: 16,
            max_message_bytes: 64 << 20,
            metrics_listener: None,
        }
    }
}

struct Service {
    segmenter: Arc<dyn Segmenter>,
    permits: Arc<Semaphore>,
    stream_buffer: usize,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl RewardServer for Service {
    type ScoreGroupsStream = ReceiverStream<Result<v1::GroupScore, Status>>;

    async fn score_groups(
        &self,
        request: Request<Streaming<v1::ScoreRequest>>,
    ) -> Result<Response<Self::ScoreGroupsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.stream_buffer.max(1));
        let permits = self.permits.clone();
        let segmenter = self.segmenter.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stopped(&mut stop) => {
                        // End open streams on shutdown so clients reconnect elsewhere instead
                        // of holding the server's graceful shutdown open.
                        let _ = tx.send(Err(Status::unavailable("reward server shutting down"))).await;
                        return;
                    }
                    n = inbound.message() => n,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "score stream ended by the client");
                        return;
                    }
                };
                let queued = Instant::now();
                metrics::gauge!(m::INFLIGHT_GROUPS).increment(1.0);
                // Backpressure: no slot, no further reads from this stream.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tx, segmenter) = (tx.clone(), segmenter.clone());
                tokio::spawn(async move {
                    let queue_seconds = queued.elapsed().as_secs_f64();
                    let request_id = req.request_id.clone();
                    let result =
                        tokio::task::spawn_blocking(move || score::score_group(&req, &*segmenter))
                            .await;
                    drop(permit);
                    metrics::gauge!(m::INFLIGHT_GROUPS).decrement(1.0);
                    let score = match result {
                        Ok(Ok(mut s)) => {
                            if let Some(t) = s.timing.as_mut() {
                                t.queue_seconds = queue_seconds;
                                t.total_seconds += queue_seconds;
                            }
                            s
                        }
                        Ok(Err(e)) => error_score(request_id, e.to_string()),
                        Err(join) => {
                            error_score(request_id, format!("scoring task failed: {join}"))
                        }
                    };
                    if !score.error.is_empty() {
                        tracing::warn!(request_id = %score.request_id, error = %score.error, "group not scored");
                    }
                    m::record_group(&score);
                    let _ = tx.send(Ok(score)).await;
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn error_score(request_id: String, error: String) -> v1::GroupScore {
    v1::GroupScore {
        request_id,
        error,
        ..Default::default()
    }
}

/// Serves the reward service (and gRPC health, and `/metrics` when configured) on `listener`
/// until `shutdown` resolves; open score streams are ended with `UNAVAILABLE` so clients retry.
pub async fn serve(
    config: RewardServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    m::describe();
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(l) = config.metrics_listener {
        let handle = platter_proto::metrics_http::install()?;
        let mut stop = stop_rx.clone();
        tokio::spawn(platter_proto::metrics_http::serve(l, handle, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let (_health_reporter, health) =
        platter_proto::health_service(platter_proto::service_names::REWARD_SERVER).await;
    let service = Service {
        segmenter: config.segmenter,
        permits: Arc::new(Semaphore::new(config.max_concurrent_groups.max(1))),
        stream_buffer: config.stream_buffer,
        stop: stop_rx,
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "reward server listening");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(
            RewardServerServer::new(service)
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(config.max_message_bytes),
        )
        .serve_with_incoming_shutdown(platter_proto::incoming(listener), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await?;
    tracing::info!(%addr, "reward server stopped");
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}
