//! The weight receiver against a learner's `SubscribeWeights` stream served in the test, with
//! chunked versions and a dropped connection in between.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use platter_proto::v1;
use platter_proto::v1::learner_server::{Learner, LearnerServer};
use platter_proto::weights::PolicyWeights;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Streams version 1 then version 2 in 3-byte chunks, then ends the stream.
struct TwoVersions;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::WeightChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Learner for TwoVersions {
    async fn start_experiment(
        &self,
        _: Request<v1::StartExperimentRequest>,
    ) -> Result<Response<v1::StartExperimentResponse>, Status> {
        Err(Status::unimplemented("weights only"))
    }

    async fn train_step(
        &self,
        _: Request<v1::TrainStepRequest>,
    ) -> Result<Response<v1::TrainStepResponse>, Status> {
        Err(Status::unimplemented("weights only"))
    }

    type SubscribeWeightsStream = ChunkStream;

    async fn subscribe_weights(
        &self,
        request: Request<v1::SubscribeWeightsRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let after = request.into_inner().after_version;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            for version in [1u64, 2] {
                if version <= after {
                    continue;
                }
                let w = PolicyWeights {
                    version,
                    safetensors: Arc::new(vec![version as u8; 7]),
                };
                for c in w.to_chunks(3) {
                    let _ = tx.send(Ok(c)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reassembles_chunked_versions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LearnerServer::new(TwoVersions))
            .serve_with_incoming(platter_proto::incoming(listener)),
    );
    let initial = PolicyWeights {
        version: 0,
        safetensors: Arc::new(Vec::new()),
    };
    let mut rx = platter_rollout::subscribe_weights(&format!("http://{addr}"), initial).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rx.borrow().version < 2 {
        assert!(
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_ok(),
            "no version 2"
        );
    }
    let w = rx.borrow().clone();
    assert_eq!(w.version, 2);
    assert_eq!(*w.safetensors, vec![2u8; 7]);
}
