//! The weight receiver: follows the learner's `SubscribeWeights` stream, reassembles each
//! version's chunks, and publishes complete versions on a watch channel the worker reads
//! (`WorkerConfig::weights`). Reconnects with backoff when the stream breaks.

use std::time::Duration;

use platter_proto::v1;
use platter_proto::v1::learner_client::LearnerClient;
use platter_proto::weights::PolicyWeights;
use tokio::sync::watch;
use tonic::transport::Endpoint;

use crate::{Error, Result};

/// Subscribes to the learner at `endpoint` (`http://host:port`). The receiver starts at
/// `initial` and moves to each version the learner publishes (newer, or older when a new
/// experiment starts over) once all of its chunks arrived; a reconnect asks only for versions
/// newer than the one held. The background
/// task ends when every receiver is dropped. Must be called inside a tokio runtime.
pub fn subscribe_weights(
    endpoint: &str,
    initial: PolicyWeights,
) -> Result<watch::Receiver<PolicyWeights>> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| Error::Endpoint {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut client = LearnerClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let after_version = tx.borrow().version;
            let request = v1::SubscribeWeightsRequest {
                after_version,
                chunk_bytes: 0,
            };
            match client.subscribe_weights(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut chunks: Vec<v1::WeightChunk> = Vec::new();
                    loop {
                        match stream.message().await {
                            Ok(Some(chunk)) => {
                                backoff = Duration::from_millis(50);
                                if chunk.index == 0 {
                                    chunks.clear();
                                }
                                let done = chunk.index + 1 == chunk.count;
                                chunks.push(chunk);
                                if done {
                                    match PolicyWeights::from_chunks(&chunks) {
                                        // Any other version, older ones included: a new
                                        // experiment (or a restarted learner) starts again
                                        // from its own version 0.
                                        Ok(w) if w.version != tx.borrow().version => {
                                            tracing::info!(
                                                version = w.version,
                                                bytes = w.safetensors.len(),
                                                "new policy weights received"
                                            );
                                            if tx.send(w).is_err() {
                                                return;
                                            }
                                        }
                                        Ok(_) => {}
                                        Err(e) => {
                                            tracing::warn!(error = %e, "dropping a malformed weight update")
                                        }
                                    }
                                    chunks.clear();
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(%status, "weight stream broke; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "learner not reachable; retrying"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    Ok(rx)
}
