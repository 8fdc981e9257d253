//! The gRPC face of the coordinator.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use platter_proto::auth::check_bearer;
use platter_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use platter_proto::v1::{self, ExperimentState};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::ExperimentConfig;
use crate::metrics as m;
use crate::{Error, Event, Shared};

pub(crate) fn server(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> CoordinatorServer<Service> {
    CoordinatorServer::new(Service { shared, stop })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub(crate) struct Service {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Config(_) => Status::invalid_argument(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            _ => Status::internal(e.to_string()),
        }
    }
}

impl Service {
    fn auth<T>(&self, request: &Request<T>) -> Result<(), Status> {
        check_bearer(request.metadata(), self.shared.auth_token.as_deref()).inspect_err(|_| {
            metrics::counter!(m::AUTH_FAILURES).increment(1);
        })
    }

    /// Accepts calls from a worker id this coordinator does not know (it registered with a
    /// previous coordinator process): it is registered implicitly, so a coordinator restart
    /// does not strand workers.
    fn known_worker(&self, worker_id: &str) -> Result<(), Status> {
        if worker_id.is_empty() {
            return Err(Status::invalid_argument(
                "worker_id is empty: call RegisterWorker first",
            ));
        }
        let mut g = self.shared.lock_state()?;
        if !g.workers.contains_key(worker_id) {
            tracing::info!(worker = %worker_id, "unknown worker id; registering it");
            g.workers.insert(worker_id.to_owned(), worker_id.to_owned());
        }
        Ok(())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::StepSummary, Status>> + Send>>;

fn is_final(state: i32) -> bool {
    [
        ExperimentState::Succeeded,
        ExperimentState::Failed,
        ExperimentState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn submit_experiment(
        &self,
        request: Request<v1::SubmitExperimentRequest>,
    ) -> Result<Response<v1::SubmitExperimentResponse>, Status> {
        self.auth(&request)?;
        let toml = request.into_inner().config_toml;
        let cfg = ExperimentConfig::from_toml(&toml).map_err(Error::from)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (exp, position) = {
            let store = self.shared.store()?;
            let exp = store.insert(&cfg.name, &toml, cfg.steps, now)?;
            let position = store.queue_position(&exp.experiment_id)?;
            metrics::gauge!(m::QUEUE_DEPTH).set(store.queued_count()? as f64);
            (exp, position)
        };
        tracing::info!(experiment = %exp.experiment_id, name = %cfg.name, position, "experiment submitted");
        self.shared.wake.notify_one();
        Ok(Response::new(v1::SubmitExperimentResponse {
            experiment_id: exp.experiment_id,
            queue_position: position,
        }))
    }

    async fn get_experiment(
        &self,
        request: Request<v1::GetExperimentRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let id = request.into_inner().experiment_id;
        Ok(Response::new(self.shared.store()?.get(&id)?))
    }

    async fn list_experiments(
        &self,
        _request: Request<v1::ListExperimentsRequest>,
    ) -> Result<Response<v1::ListExperimentsResponse>, Status> {
        Ok(Response::new(v1::ListExperimentsResponse {
            experiments: self.shared.store()?.list()?,
        }))
    }

    async fn cancel_experiment(
        &self,
        request: Request<v1::CancelExperimentRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        self.auth(&request)?;
        let id = request.into_inner().experiment_id;
        let exp = self.shared.store()?.get(&id)?;
        if is_final(exp.state) {
            return Err(Status::failed_precondition(format!(
                "experiment `{id}` already finished ({:?})",
                ExperimentState::try_from(exp.state).unwrap_or(ExperimentState::Unspecified)
            )));
        }
        let running = {
            let mut g = self.shared.lock_state()?;
            match g.run.as_mut() {
                Some(run) if run.id == id => {
                    run.cancel_requested = true;
                    true
                }
                _ => false,
            }
        };
        if running {
            self.shared.wake.notify_one();
        } else {
            self.shared
                .store()?
                .set_state(&id, ExperimentState::Cancelled, "")?;
            let _ = self.shared.events.send(Event::Finished(id.clone()));
        }
        tracing::info!(experiment = %id, running, "experiment cancel requested");
        Ok(Response::new(self.shared.store()?.get(&id)?))
    }

    type WatchExperimentStream = WatchStream;

    async fn watch_experiment(
        &self,
        request: Request<v1::WatchExperimentRequest>,
    ) -> Result<Response<Self::WatchExperimentStream>, Status> {
        let req = request.into_inner();
        // Subscribe before reading the store so no summary falls between the two.
        let mut events = self.shared.events.subscribe();
        let (stored, exp) = {
            let store = self.shared.store()?;
            (
                store.steps(&req.experiment_id, req.from_step)?,
                store.get(&req.experiment_id)?,
            )
        };
        let (tx, rx) = mpsc::channel(64);
        let id = req.experiment_id;
        let mut next_step = req.from_step;
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            for s in stored {
                next_step = s.step + 1;
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
            if is_final(exp.state) {
                return;
            }
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    () = stopped(&mut stop) => return,
                };
                match ev {
                    Ok(Event::Step(s)) if s.experiment_id == id && s.step >= next_step => {
                        next_step = s.step + 1;
                        if tx.send(Ok(*s)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Event::Finished(done)) if done == id => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watcher fell {n} events behind; watch again from step {next_step}"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register_worker(
        &self,
        request: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        self.auth(&request)?;
        let name = request.into_inner().name;
        let mut g = self.shared.lock_state()?;
        g.next_worker += 1;
        let worker_id = format!("w{}-{}", g.next_worker, name);
        g.workers.insert(worker_id.clone(), name);
        let lease_timeout = g
            .run
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |r| r.lease_timeout());
        tracing::info!(worker = %worker_id, "worker registered");
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id,
            heartbeat_interval_ms: u32::try_from(self.shared.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            lease_timeout_ms: u32::try_from(lease_timeout.as_millis()).unwrap_or(u32::MAX),
        }))
    }

    async fn lease_prompts(
        &self,
        request: Request<v1::LeasePromptsRequest>,
    ) -> Result<Response<v1::LeasePromptsResponse>, Status> {
        self.auth(&request)?;
        let req = request.into_inner();
        self.known_worker(&req.worker_id)?;
        let idle = u32::try_from(self.shared.idle_retry.as_millis()).unwrap_or(u32::MAX);
        let mut g = self.shared.lock_state()?;
        let Some(run) = g.run.as_mut() else {
            return Ok(Response::new(v1::LeasePromptsResponse {
                leases: vec![],
                policy_version: 0,
                retry_after_ms: idle,
            }));
        };
        let leases = run.lease(
            &req.worker_id,
            req.max_prompts.max(1) as usize,
            Instant::now(),
        );
        let version = run.version;
        drop(g);
        if leases.is_empty() {
            // A round bound or load failure may have ended assembly: let the driver see it.
            self.shared.wake.notify_one();
        }
        Ok(Response::new(v1::LeasePromptsResponse {
            retry_after_ms: if leases.is_empty() { idle } else { 0 },
            leases,
            policy_version: version,
        }))
    }

    async fn submit_scored_group(
        &self,
        request: Request<v1::SubmitScoredGroupRequest>,
    ) -> Result<Response<v1::SubmitScoredGroupResponse>, Status> {
        self.auth(&request)?;
        let req = request.into_inner();
        self.known_worker(&req.worker_id)?;
        let outcome = {
            let mut g = self.shared.lock_state()?;
            match g.run.as_mut() {
                Some(run) => run.submit(req),
                None => v1::GroupOutcome::Ignored,
            }
        };
        self.shared.wake.notify_one();
        Ok(Response::new(v1::SubmitScoredGroupResponse {
            outcome: outcome as i32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.auth(&request)?;
        let req = request.into_inner();
        self.known_worker(&req.worker_id)?;
        let mut g = self.shared.lock_state()?;
        let (cancelled, version) = match g.run.as_mut() {
            Some(run) => {
                run.stopped(&req.worker_id, &req.stopped);
                let mut stop = run.heartbeat(&req.worker_id, &req.lease_ids, Instant::now());
                for id in run.cancelled_for(&req.worker_id) {
                    if !stop.contains(&id) {
                        stop.push(id);
                    }
                }
                (stop, run.version)
            }
            // No running experiment: nothing the worker holds is still wanted.
            None => {
                crate::engine::record_stopped_tokens(&req.stopped);
                (req.lease_ids, 0)
            }
        };
        Ok(Response::new(v1::HeartbeatResponse {
            cancelled_lease_ids: cancelled,
            policy_version: version,
        }))
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}
