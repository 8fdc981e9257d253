//! The weight receiver against the real learner service: it follows every version the learner
//! publishes, also when the version goes back (a new experiment starts again at version 0).

use std::sync::Arc;
use std::time::Duration;

use platter_coordinator::{ExperimentConfig, Learner};
use platter_learner::server::{LearnerServerConfig, serve};
use platter_proto::v1;
use platter_proto::weights::PolicyWeights;
use tokio::sync::watch;

/// A learner whose published versions the test sets by hand.
struct Publisher(Arc<watch::Sender<PolicyWeights>>);

impl Learner for Publisher {
    fn start_experiment(&self, _: &ExperimentConfig) -> platter_coordinator::Result<u64> {
        Err(platter_coordinator::Error::Learner(
            "this test learner only publishes".into(),
        ))
    }
    fn train_step(
        &self,
        _: &v1::TrainStepRequest,
    ) -> platter_coordinator::Result<v1::TrainStepResponse> {
        Err(platter_coordinator::Error::Learner(
            "this test learner only publishes".into(),
        ))
    }
    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.0.subscribe()
    }
}

fn weights(version: u64, byte: u8) -> PolicyWeights {
    PolicyWeights {
        version,
        safetensors: Arc::new(vec![byte; 10]),
    }
}

async fn wait_for(rx: &mut watch::Receiver<PolicyWeights>, version: u64, byte: u8) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        {
            let w = rx.borrow_and_update();
            if w.version == version && w.safetensors[..] == [byte; 10] {
                return;
            }
        }
        assert!(
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_ok(),
            "version {version} never arrived; have {}",
            rx.borrow().version
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_follows_versions_forward_and_back() {
    let (tx, _) = watch::channel(weights(0, 0));
    let tx = Arc::new(tx);
    let learner = Arc::new(Publisher(tx.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = LearnerServerConfig::new(learner);
    config.chunk_bytes = 3;
    tokio::spawn(serve(config, listener, std::future::pending()));

    let initial = PolicyWeights {
        version: 0,
        safetensors: Arc::new(Vec::new()),
    };
    let mut rx = platter_rollout::subscribe_weights(&format!("http://{addr}"), initial).unwrap();
    tx.send_replace(weights(1, 1));
    wait_for(&mut rx, 1, 1).await;
    tx.send_replace(weights(2, 2));
    wait_for(&mut rx, 2, 2).await;
    // A new experiment starts again at version 0 with its own initial weights.
    tx.send_replace(weights(0, 7));
    wait_for(&mut rx, 0, 7).await;
    tx.send_replace(weights(1, 8));
    wait_for(&mut rx, 1, 8).await;
}
