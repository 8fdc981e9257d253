//! A worker against a real coordinator and reward server: once the batch is full, the
//! coordinator cancels the worker's other leases and generation stops at the cancel flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platter_coordinator::{CoordinatorClient, CoordinatorConfig, UnigramLearner};
use platter_data::BoxSegmenter;
use platter_data::synth::{SynthConfig, generate};
use platter_proto::weights::PolicyWeights;
use platter_reward::RewardServerConfig;
use platter_rollout::{
    CancelFlag, FinishReason, GeneratedGroup, GenerationRequest, Policy, PolicyError,
    SampledResponse, WorkerConfig,
};
use tokio::net::TcpListener;

/// First group: two responses with different rewards. Every later group: blocks until cancelled.
#[derive(Default)]
struct FirstThenBlock {
    calls: AtomicUsize,
    cancelled: AtomicUsize,
}

impl Policy for FirstThenBlock {
    fn version(&self) -> u64 {
        0
    }
    fn load_weights(&self, _: &PolicyWeights) -> Result<(), PolicyError> {
        Err("this test policy has fixed weights".into())
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelFlag,
    ) -> Result<Option<GeneratedGroup>, PolicyError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let texts = ["<think>a.</think><answer>[]</answer>", "no"];
            let responses = (0..request.group_size)
                .map(|i| SampledResponse {
                    text: texts[i % 2].to_owned(),
                    token_ids: vec![(i % 2) as u32],
                    logprobs: vec![0.5f32.ln()],
                    finish: FinishReason::Stop,
                })
                .collect();
            return Ok(Some(GeneratedGroup {
                responses,
                policy_version: 0,
            }));
        }
        for _ in 0..2000 {
            if cancel.is_cancelled() {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err("never cancelled".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batch_cancels_in_flight_generation() {
    let dir = tempfile::tempdir().unwrap();
    let synth = SynthConfig {
        n: 10,
        width: 64,
        height: 48,
        policy_image_size: 112,
        threads: 1,
        ..SynthConfig::default()
    };
    let manifest = generate(&synth, &dir.path().join("data")).unwrap().manifest;

    let rl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reward_addr = rl.local_addr().unwrap();
    tokio::spawn(platter_reward::serve(
        RewardServerConfig::new(Arc::new(BoxSegmenter)),
        rl,
        std::future::pending(),
    ));

    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = cl.local_addr().unwrap();
    let mut ccfg = CoordinatorConfig::new(
        dir.path().join("store.sqlite"),
        Arc::new(UnigramLearner::new(2)),
    );
    ccfg.heartbeat_interval = Duration::from_millis(50);
    ccfg.idle_retry = Duration::from_millis(10);
    tokio::spawn(platter_coordinator::serve(ccfg, cl, std::future::pending()));

    let policy = Arc::new(FirstThenBlock::default());
    let mut wcfg = WorkerConfig::new(
        "w",
        &format!("http://{coord_addr}"),
        &format!("http://{reward_addr}"),
    );
    wcfg.max_concurrent_groups = 3;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(platter_rollout::run(wcfg, policy.clone(), async move {
        let _ = stop_rx.await;
    }));

    let client = CoordinatorClient::new(&format!("http://{coord_addr}"), None).unwrap();
    let toml = format!(
        "name = \"c\"\nsteps = 1\n[data]\nmanifest = \"{}\"\nimage_size = 112\n[rollout]\ngroup_size = 2\n[sampling]\nprompts_per_step = 1\n",
        manifest.display()
    );
    let id = client.submit(&toml).await.unwrap().experiment_id;
    let mut watch = client.watch(&id, 0).await.unwrap();
    let step = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((step.kept_groups, step.policy_version), (1, 1));
    assert!(step.cancelled_leases >= 1, "{step:?}");
    // The blocked generations see their cancel flags via the next heartbeats.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while policy.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "generation was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    let report = worker.await.unwrap().unwrap();
    assert_eq!(report.submitted, 1, "{report:?}");
    assert!(report.cancelled >= 1, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
}
