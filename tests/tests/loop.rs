//! End-to-end tests of the step loop on loopback: coordinator (SQLite store, one-rank learner),
//! reward server (box segmenter), rollout workers (candidate-response test policy).

use std::collections::HashSet;
use std::time::Duration;

use platter_coordinator::CoordinatorClient;
use platter_e2e::{Cluster, ClusterOptions};
use platter_proto::v1::{ExperimentState, StepSummary};

const TIMEOUT: Duration = Duration::from_secs(40);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Every summary until the experiment ends.
async fn watch_all(client: &CoordinatorClient, id: &str) -> Vec<StepSummary> {
    let mut stream = client.watch(id, 0).await.unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(TIMEOUT, stream.next()).await {
            Ok(Ok(Some(s))) => out.push(s),
            Ok(Ok(None)) => return out,
            Ok(Err(e)) => panic!("watch failed: {e}"),
            Err(_) => panic!(
                "no step summary within {TIMEOUT:?}; got {} so far",
                out.len()
            ),
        }
    }
}

fn assert_batches_sound(steps: &[StepSummary], prompts_per_step: u32) {
    let mut seen = HashSet::new();
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s.step, i as u64);
        assert_eq!(
            s.policy_version,
            i as u64 + 1,
            "versions advance one per step"
        );
        assert_eq!(s.kept_groups, prompts_per_step);
        assert!(
            s.kept_mixed.iter().all(|m| *m),
            "step {i} trained a uniformly rewarded group: {s:?}"
        );
        assert!(
            s.kept_versions.iter().all(|v| *v == i as u64),
            "step {i}: off-policy group at staleness 0: {:?}",
            s.kept_versions
        );
        assert_eq!(
            s.offered_groups,
            s.kept_groups + s.dropped_groups + s.surplus_groups,
            "step {i}: {s:?}"
        );
        for p in &s.kept_prompts {
            assert!(seen.insert(*p), "prompt {p} trained twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dapo_steps_with_two_workers() {
    init_logs();
    let cluster = Cluster::start(ClusterOptions {
        workers: 2,
        groups_per_worker: 3,
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    // An unauthenticated call first, so the refusal counter is exported too.
    assert!(
        cluster.client_with(None).list().await.is_ok(),
        "reads need no token"
    );
    assert!(cluster.client_with(None).cancel("exp-00042").await.is_err());
    let sub = client
        .submit(&cluster.experiment_toml(3, 4, 5.0, ""))
        .await
        .unwrap();
    let steps = watch_all(&client, &sub.experiment_id).await;
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_batches_sound(&steps, 4);
    let dropped: u32 = steps.iter().map(|s| s.dropped_groups).sum();
    assert!(
        dropped > 0,
        "uniform groups must have been dropped: {steps:?}"
    );
    let cancelled: u32 = steps
        .iter()
        .map(|s| s.cancelled_leases + s.surplus_groups)
        .sum();
    assert!(
        cancelled > 0,
        "surplus work must be cancelled and counted: {steps:?}"
    );
    let discarded: u64 = steps.iter().map(|s| s.discarded_tokens).sum();
    assert!(discarded > 0);

    let exp = client.get(&sub.experiment_id).await.unwrap();
    assert_eq!(exp.state, ExperimentState::Succeeded as i32);
    assert_eq!((exp.steps_completed, exp.policy_version), (3, 3));
    assert_eq!(cluster.learner_version(), 3);

    // Every documented metric name is exported; each service answers on its own endpoint.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    // The sections of the three services this cluster runs (its learner is the in-process
    // stand-in; the learner sections are checked by the learner crate's own tests).
    let services = docs.split("## Learner").next().unwrap_or_default();
    let names: Vec<&str> = services
        .lines()
        .filter(|l| l.starts_with("| `platter_"))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    assert!(names.len() >= 25, "{names:?}");
    let coordinator = platter_proto::metrics_http::scrape(cluster.coordinator_metrics)
        .await
        .unwrap();
    for n in &names {
        assert!(
            coordinator.contains(n),
            "metric `{n}` documented but not exported:\n{coordinator}"
        );
    }
    let reward = platter_proto::metrics_http::scrape(cluster.reward_metrics)
        .await
        .unwrap();
    assert!(reward.contains("platter_reward_groups_scored_total"));
    let worker = platter_proto::metrics_http::scrape(cluster.workers[0].metrics_addr)
        .await
        .unwrap();
    assert!(worker.contains("platter_rollout_groups_total"));

    let reports = cluster.shutdown().await;
    assert!(reports.iter().all(|r| r.failed == 0), "{reports:?}");
    assert!(reports.iter().map(|r| r.submitted).sum::<u64>() >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_leases_expire_and_the_step_completes() {
    init_logs();
    let cluster = Cluster::start(ClusterOptions {
        workers: 2,
        groups_per_worker: 2,
        group_time: Duration::from_millis(150),
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    let sub = client
        .submit(&cluster.experiment_toml(2, 8, 0.5, ""))
        .await
        .unwrap();
    // Kill worker 0 while it is generating groups of step 0.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while cluster.workers[0].active_leases().await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 0 never leased a prompt"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.workers[0].kill();
    let steps = watch_all(&client, &sub.experiment_id).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_batches_sound(&steps, 8);
    let expired: u32 = steps.iter().map(|s| s.expired_leases).sum();
    assert!(
        expired >= 1,
        "the killed worker's leases must expire and be leased again: {steps:?}"
    );
    let exp = client.get(&sub.experiment_id).await.unwrap();
    assert_eq!(exp.state, ExperimentState::Succeeded as i32);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reward_server_restart_is_retried_and_loses_nothing() {
    init_logs();
    let mut cluster = Cluster::start(ClusterOptions {
        group_time: Duration::from_millis(60),
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client();
    let sub = client
        .submit(&cluster.experiment_toml(3, 4, 10.0, ""))
        .await
        .unwrap();
    let mut stream = client.watch(&sub.experiment_id, 0).await.unwrap();
    let first = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.step, 0);
    // Step 1 is being assembled: take the reward server away and bring it back.
    tokio::time::sleep(Duration::from_millis(30)).await;
    cluster
        .restart_reward_server(Duration::from_millis(300))
        .await;
    let mut steps = vec![first];
    while let Some(s) = tokio::time::timeout(TIMEOUT, stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        steps.push(s);
    }
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_batches_sound(&steps, 4);
    // Groups that finished generating while the server was down were resent, not lost.
    let scrape = platter_proto::metrics_http::scrape(cluster.coordinator_metrics)
        .await
        .unwrap();
    let resent: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("platter_reward_client_resent_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        resent >= 1.0,
        "no score request was resent across the restart:\n{scrape}"
    );
    let reports = cluster.shutdown().await;
    assert!(
        reports.iter().all(|r| r.failed == 0),
        "a group was lost to the restart: {reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_need_a_token_and_a_valid_config() {
    init_logs();
    let cluster = Cluster::start(ClusterOptions {
        workers: 0,
        ..ClusterOptions::default()
    })
    .await;
    let good = cluster.experiment_toml(1, 2, 5.0, "");
    for token in [None, Some("wrong".to_owned())] {
        let err = cluster.client_with(token).submit(&good).await.unwrap_err();
        match err {
            platter_coordinator::Error::Rpc { status, .. } => {
                assert_eq!(status.code(), tonic::Code::Unauthenticated)
            }
            other => panic!("expected UNAUTHENTICATED, got {other}"),
        }
    }
    let client = cluster.client();
    for (toml, key) in [
        (
            cluster.experiment_toml(1, 0, 5.0, ""),
            "sampling.prompts_per_step",
        ),
        (
            cluster.experiment_toml(1, 2, 5.0, "[dapo]\nclip_low = 2.0\n"),
            "dapo.clip_low",
        ),
        (
            good.replace("group_size = 4", "group_sise = 4"),
            "group_sise",
        ),
    ] {
        let err = client.submit(&toml).await.unwrap_err();
        match err {
            platter_coordinator::Error::Rpc { status, .. } => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert!(
                    status.message().contains(key),
                    "{} should name `{key}`",
                    status.message()
                );
            }
            other => panic!("expected INVALID_ARGUMENT, got {other}"),
        }
    }
    // Nothing was stored; a valid submission queues (no workers: it waits for prompts).
    assert!(client.list().await.unwrap().is_empty());
    let a = client.submit(&good).await.unwrap();
    let b = client.submit(&good).await.unwrap();
    assert_eq!(b.queue_position, 1);
    let cancelled = client.cancel(&b.experiment_id).await.unwrap();
    assert_eq!(cancelled.state, ExperimentState::Cancelled as i32);
    client.cancel(&a.experiment_id).await.unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while client.get(&a.experiment_id).await.unwrap().state != ExperimentState::Cancelled as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "running experiment not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_coordinator_resumes_without_repeating_data() {
    init_logs();
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let client = cluster.client();
    let sub = client
        .submit(&cluster.experiment_toml(4, 4, 5.0, ""))
        .await
        .unwrap();
    let mut stream = client.watch(&sub.experiment_id, 0).await.unwrap();
    let mut steps = Vec::new();
    while steps.len() < 2 {
        steps.push(
            tokio::time::timeout(TIMEOUT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    cluster.restart_coordinator().await;
    let client = cluster.client();
    // Steps 0 and 1 come from the store, the rest as they finish.
    let all = watch_all(&client, &sub.experiment_id).await;
    assert_eq!(
        all.iter().map(|s| s.step).collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "{all:?}"
    );
    assert_eq!(all[..2], steps[..2]);
    let mut seen = HashSet::new();
    for s in &all {
        assert_eq!(s.kept_groups, 4);
        assert!(s.kept_mixed.iter().all(|m| *m));
        for p in &s.kept_prompts {
            assert!(
                seen.insert(*p),
                "prompt {p} trained twice across the restart"
            );
        }
    }
    let exp = client.get(&sub.experiment_id).await.unwrap();
    assert_eq!(exp.state, ExperimentState::Succeeded as i32);
    assert_eq!(exp.steps_completed, 4);
    cluster.shutdown().await;
}
