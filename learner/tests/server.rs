//! The learner service on loopback: `platter_coordinator::RemoteLearner` against
//! `platter_learner::server` wrapping the coordinator's one-rank `UnigramLearner` (a real loss,
//! gradient and AdamW step), covering start, training, weight streaming, step idempotency, auth,
//! config errors and a subscriber that outlives a server restart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use platter_coordinator::{
    ExperimentConfig, Learner, RemoteLearner, RemoteLearnerOptions, UnigramLearner,
};
use platter_learner::server::{LearnerServerConfig, serve};
use platter_proto::v1;
use platter_proto::v1::learner_client::LearnerClient;
use platter_proto::weights::PolicyWeights;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const TOKEN: &str = "s3cret";
const VOCAB: usize = 8;

fn config() -> ExperimentConfig {
    let mut c = ExperimentConfig::from_toml(
        "name = \"server-test\"\nsteps = 3\n[data]\nmanifest = \"m.jsonl\"\n",
    )
    .unwrap();
    c.optim.lr = 0.1;
    c
}

fn batch(experiment: &str, step: u64, version: u64) -> v1::TrainStepRequest {
    let response = |tok: u32, reward: f64| v1::TrainResponse {
        token_ids: vec![tok, tok],
        rollout_logprobs: vec![(1.0f32 / VOCAB as f32).ln(); 2],
        shaped_reward: reward,
    };
    v1::TrainStepRequest {
        experiment_id: experiment.into(),
        step,
        groups: vec![v1::TrainGroup {
            prompt_index: step,
            policy_version: version,
            responses: vec![response(1, 1.0), response(2, 0.0), response(3, 0.5)],
        }],
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(learner: Arc<UnigramLearner>, bind: SocketAddr, chunk_bytes: usize) -> Self {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cfg = LearnerServerConfig::new(learner);
        cfg.auth_token = Some(TOKEN.into());
        cfg.chunk_bytes = chunk_bytes;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(cfg, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server did not shut down in time")
            .unwrap();
    }
}

fn remote(url: &str, token: Option<&str>) -> Arc<RemoteLearner> {
    let options = RemoteLearnerOptions {
        token: token.map(str::to_owned),
        attempts: 3,
        backoff: Duration::from_millis(20),
        step_timeout: Duration::from_secs(30),
        chunk_bytes: 5, // several chunks per version, even for tiny blobs
        ..RemoteLearnerOptions::default()
    };
    Arc::new(RemoteLearner::new(url, options).unwrap())
}

/// The trait's calls block: run them the way the coordinator's driver does.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn wait_for_version(rx: &mut watch::Receiver<PolicyWeights>, version: u64) -> PolicyWeights {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let w = rx.borrow_and_update();
            if w.version == version && !w.safetensors.is_empty() {
                return w.clone();
            }
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .unwrap_or_else(|_| panic!("no weights of version {version} in time"))
            .unwrap();
    }
}

async fn raw_client(addr: SocketAddr) -> LearnerClient<tonic::transport::Channel> {
    LearnerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_learner_trains_and_streams_the_same_weights() {
    let local = Arc::new(UnigramLearner::new(VOCAB));
    let server = Server::start(local.clone(), "127.0.0.1:0".parse().unwrap(), 1 << 20).await;
    let learner = remote(&server.url(), Some(TOKEN));

    let l = learner.clone();
    assert_eq!(
        blocking(move || l.start_experiment(&config()))
            .await
            .unwrap(),
        0
    );
    let mut rx = learner.subscribe();
    let v0 = wait_for_version(&mut rx, 0).await;
    assert_eq!(v0.safetensors, local.subscribe().borrow().safetensors);

    let l = learner.clone();
    let out = blocking(move || l.train_step(&batch("exp-1", 0, 0)))
        .await
        .unwrap();
    assert_eq!(out.policy_version, 1);
    assert_eq!(out.tokens, 6);
    assert!(out.grad_norm > 0.0, "{out:?}");

    // The stream (5-byte chunks) reassembles exactly what the learner published.
    let v1 = wait_for_version(&mut rx, 1).await;
    let published = local.subscribe().borrow().clone();
    assert_eq!(published.version, 1);
    assert_eq!(v1.safetensors, published.safetensors);
    assert_ne!(
        v1.safetensors, v0.safetensors,
        "the step changed the weights"
    );

    let l = learner.clone();
    let out = blocking(move || l.train_step(&batch("exp-1", 1, 1)))
        .await
        .unwrap();
    assert_eq!(out.policy_version, 2);
    let v2 = wait_for_version(&mut rx, 2).await;
    assert_eq!(v2.safetensors, local.subscribe().borrow().safetensors);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_step_is_answered_not_applied_again() {
    let local = Arc::new(UnigramLearner::new(VOCAB));
    let server = Server::start(local.clone(), "127.0.0.1:0".parse().unwrap(), 1 << 20).await;
    let learner = remote(&server.url(), Some(TOKEN));

    // Before any start, a step is refused naming the reason.
    let l = learner.clone();
    let err = blocking(move || l.train_step(&batch("exp-1", 0, 0)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("StartExperiment first"), "{err}");
    assert!(
        err.contains(&server.url()),
        "error names the endpoint: {err}"
    );

    let l = learner.clone();
    blocking(move || l.start_experiment(&config()))
        .await
        .unwrap();
    let l = learner.clone();
    let first = blocking(move || l.train_step(&batch("exp-1", 0, 0)))
        .await
        .unwrap();
    let after_first = local.subscribe().borrow().clone();

    // The same step again (a retry after a lost answer): same response, no second update.
    let l = learner.clone();
    let again = blocking(move || l.train_step(&batch("exp-1", 0, 0)))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(*local.subscribe().borrow(), after_first);

    // Two concurrent calls for the next step: one update, both get its response.
    let (a, b) = (learner.clone(), learner.clone());
    let (ra, rb) = tokio::join!(
        blocking(move || a.train_step(&batch("exp-1", 1, 1))),
        blocking(move || b.train_step(&batch("exp-1", 1, 1))),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra, rb);
    assert_eq!(ra.policy_version, 2);
    assert_eq!(local.subscribe().borrow().version, 2);

    // An older step whose response is kept is answered; another experiment's step is refused.
    let l = learner.clone();
    assert_eq!(
        blocking(move || l.train_step(&batch("exp-1", 0, 0)))
            .await
            .unwrap(),
        first
    );
    let l = learner.clone();
    let err = blocking(move || l.train_step(&batch("exp-2", 2, 2)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("runs experiment `exp-1`"), "{err}");

    // A new start forgets the old steps: step 0 trains again from the reset policy.
    let l = learner.clone();
    assert_eq!(
        blocking(move || l.start_experiment(&config()))
            .await
            .unwrap(),
        0
    );
    let l = learner.clone();
    let restarted = blocking(move || l.train_step(&batch("exp-2", 0, 0)))
        .await
        .unwrap();
    assert_eq!(restarted.policy_version, 1);
    server.shutdown().await;
}

/// The real one-rank learner, each step delayed: a step slower than the client's timeout.
struct SlowLearner {
    inner: UnigramLearner,
    delay: Duration,
}

impl Learner for SlowLearner {
    fn start_experiment(&self, cfg: &ExperimentConfig) -> platter_coordinator::Result<u64> {
        self.inner.start_experiment(cfg)
    }
    fn train_step(
        &self,
        batch: &v1::TrainStepRequest,
    ) -> platter_coordinator::Result<v1::TrainStepResponse> {
        std::thread::sleep(self.delay);
        self.inner.train_step(batch)
    }
    fn subscribe(&self) -> watch::Receiver<PolicyWeights> {
        self.inner.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_outliving_its_call_is_not_trained_again_by_the_retry() {
    let slow = Arc::new(SlowLearner {
        inner: UnigramLearner::new(VOCAB),
        delay: Duration::from_millis(600),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        LearnerServerConfig::new(slow.clone()),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    let options = RemoteLearnerOptions {
        attempts: 10,
        backoff: Duration::from_millis(20),
        step_timeout: Duration::from_millis(150),
        ..RemoteLearnerOptions::default()
    };
    let learner = Arc::new(RemoteLearner::new(&format!("http://{addr}"), options).unwrap());
    let l = learner.clone();
    blocking(move || l.start_experiment(&config()))
        .await
        .unwrap();
    // The first attempt times out while the step runs; retries wait for it and get its answer.
    let l = learner.clone();
    let out = blocking(move || l.train_step(&batch("exp-1", 0, 0)))
        .await
        .unwrap();
    assert_eq!(out.policy_version, 1);
    assert_eq!(slow.inner.subscribe().borrow().version, 1, "trained once");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_need_the_token_and_configs_are_validated() {
    let local = Arc::new(UnigramLearner::new(VOCAB));
    let server = Server::start(local.clone(), "127.0.0.1:0".parse().unwrap(), 1 << 20).await;
    let mut client = raw_client(server.addr).await;
    let toml = toml::to_string(&config()).unwrap();

    let status = client
        .start_experiment(v1::StartExperimentRequest {
            experiment_id: "exp-1".into(),
            config_toml: toml.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    let status = client.train_step(batch("exp-1", 0, 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");

    // A wrong token through the typed client: refused, not retried, endpoint named.
    let wrong = remote(&server.url(), Some("nope"));
    let err = blocking(move || wrong.start_experiment(&config()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Unauthenticated") || err.contains("token"),
        "{err}"
    );
    assert!(err.contains("attempt 1 of 3"), "not retried: {err}");

    // Reads stay open: the weight stream needs no token.
    let mut stream = client
        .subscribe_weights(v1::SubscribeWeightsRequest {
            after_version: 0,
            chunk_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let chunk = stream.message().await.unwrap().unwrap();
    assert_eq!((chunk.version, chunk.index, chunk.count), (0, 0, 1));

    let authed = |body: String| {
        platter_proto::auth::with_bearer(
            tonic::Request::new(v1::StartExperimentRequest {
                experiment_id: "exp-1".into(),
                config_toml: body,
            }),
            Some(TOKEN),
        )
        .unwrap()
    };
    let cases = [
        (
            toml.replace("group_size = 8", "group_size = 1"),
            "rollout.group_size",
        ),
        (format!("{toml}\nbogus_key = 3\n"), "bogus_key"),
        ("name = \"x\"\nsteps = 1\n".to_owned(), "data"),
    ];
    for (body, key) in cases {
        let status = client.start_experiment(authed(body)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(
            status.message().contains(key),
            "`{key}` not named: {status}"
        );
    }
    // Nothing was started by the refused configs.
    let status = client.train_step(
        platter_proto::auth::with_bearer(tonic::Request::new(batch("exp-1", 0, 0)), Some(TOKEN))
            .unwrap(),
    );
    assert_eq!(
        status.await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    let ok = client.start_experiment(authed(toml)).await.unwrap();
    assert_eq!(ok.into_inner().policy_version, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_weight_feed_survives_a_learner_restart() {
    let first = Arc::new(UnigramLearner::new(VOCAB));
    let server = Server::start(first.clone(), "127.0.0.1:0".parse().unwrap(), 1 << 20).await;
    let addr = server.addr;
    let learner = remote(&server.url(), Some(TOKEN));
    let mut rx = learner.subscribe();
    wait_for_version(&mut rx, 0).await;

    // The server goes away with the stream open; a new learner process comes up on the same
    // address having trained two steps (its own version 2).
    server.shutdown().await;
    let second = Arc::new(UnigramLearner::new(VOCAB));
    second.start_experiment(&config()).unwrap();
    second.train_step(&batch("exp-1", 0, 0)).unwrap();
    second.train_step(&batch("exp-1", 1, 1)).unwrap();
    let restarted = Server::start(second.clone(), addr, 3).await;
    let w = wait_for_version(&mut rx, 2).await;
    assert_eq!(w.safetensors, second.subscribe().borrow().safetensors);

    // And one that comes back without a checkpoint (version 0 again) is followed as well.
    restarted.shutdown().await;
    let third = Arc::new(UnigramLearner::new(VOCAB));
    let again = Server::start(third.clone(), addr, 1 << 20).await;
    let w = wait_for_version(&mut rx, 0).await;
    assert_eq!(w.safetensors, third.subscribe().borrow().safetensors);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_learner_is_an_error_naming_it() {
    // A port nothing listens on: bind, note it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let learner = remote(&format!("http://{addr}"), Some(TOKEN));
    let err = blocking(move || learner.start_experiment(&config()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(
        err.contains("attempt 3 of 3"),
        "transient errors retried: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_metrics_are_exported() {
    let local = Arc::new(UnigramLearner::new(VOCAB));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let mut cfg = LearnerServerConfig::new(local.clone());
    cfg.metrics_listener = Some(metrics_listener);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(cfg, listener, async {
        let _ = rx.await;
    }));
    let mut client = raw_client(addr).await;
    let mut stream = client
        .subscribe_weights(v1::SubscribeWeightsRequest {
            after_version: 0,
            chunk_bytes: 16,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let mut chunks = vec![first];
    while chunks.len() < chunks[0].count as usize {
        chunks.push(stream.message().await.unwrap().unwrap());
    }
    let w = PolicyWeights::from_chunks(&chunks).unwrap();
    assert_eq!(w, *local.subscribe().borrow());
    // The version's metrics are recorded once its last chunk is handed over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = platter_proto::metrics_http::scrape(metrics_addr)
            .await
            .unwrap();
        if body.contains("platter_learner_publish_versions_total")
            || tokio::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for name in [
        "platter_learner_publish_bytes_total",
        "platter_learner_publish_chunks_total",
        "platter_learner_publish_versions_total",
        "platter_learner_publish_transfer_seconds",
        "platter_learner_publish_bytes_per_second",
        "platter_learner_publish_subscribers",
        "platter_learner_publish_latest_version",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
    drop(stream);
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
