//! A typed coordinator client for researchers (CLI) and rollout workers. gRPC statuses become
//! [`Error::Rpc`] naming the call; the bearer token is attached to every call.

use std::time::Duration;

use platter_proto::auth::with_bearer;
use platter_proto::v1;
use platter_proto::v1::coordinator_client::CoordinatorClient as Raw;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Streaming};

use crate::{Error, Result};

/// Handle to a coordinator; cheap to clone.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    raw: Raw<Channel>,
    token: Option<String>,
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Rpc {
        call,
        status: Box::new(status),
    }
}

impl CoordinatorClient {
    /// A lazily connecting client for `endpoint` (`http://host:port`), sending `token` as
    /// `authorization: Bearer <token>`.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| Error::Endpoint {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            raw: Raw::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            token,
        })
    }

    fn req<T>(&self, call: &'static str, msg: T) -> Result<Request<T>> {
        with_bearer(Request::new(msg), self.token.as_deref()).map_err(rpc(call))
    }

    /// Submits a TOML config; returns the experiment id and its queue position.
    pub async fn submit(&self, config_toml: &str) -> Result<v1::SubmitExperimentResponse> {
        let r = self.req(
            "SubmitExperiment",
            v1::SubmitExperimentRequest {
                config_toml: config_toml.to_owned(),
            },
        )?;
        Ok(self
            .raw
            .clone()
            .submit_experiment(r)
            .await
            .map_err(rpc("SubmitExperiment"))?
            .into_inner())
    }

    /// One experiment.
    pub async fn get(&self, experiment_id: &str) -> Result<v1::Experiment> {
        let r = self.req(
            "GetExperiment",
            v1::GetExperimentRequest {
                experiment_id: experiment_id.to_owned(),
            },
        )?;
        Ok(self
            .raw
            .clone()
            .get_experiment(r)
            .await
            .map_err(rpc("GetExperiment"))?
            .into_inner())
    }

    /// Every experiment, oldest first.
    pub async fn list(&self) -> Result<Vec<v1::Experiment>> {
        let r = self.req("ListExperiments", v1::ListExperimentsRequest {})?;
        Ok(self
            .raw
            .clone()
            .list_experiments(r)
            .await
            .map_err(rpc("ListExperiments"))?
            .into_inner()
            .experiments)
    }

    /// Cancels an experiment.
    pub async fn cancel(&self, experiment_id: &str) -> Result<v1::Experiment> {
        let r = self.req(
            "CancelExperiment",
            v1::CancelExperimentRequest {
                experiment_id: experiment_id.to_owned(),
            },
        )?;
        Ok(self
            .raw
            .clone()
            .cancel_experiment(r)
            .await
            .map_err(rpc("CancelExperiment"))?
            .into_inner())
    }

    /// Stream of step summaries from `from_step`; read with [`StepStream::next`].
    pub async fn watch(&self, experiment_id: &str, from_step: u64) -> Result<StepStream> {
        let r = self.req(
            "WatchExperiment",
            v1::WatchExperimentRequest {
                experiment_id: experiment_id.to_owned(),
                from_step,
            },
        )?;
        let inner = self
            .raw
            .clone()
            .watch_experiment(r)
            .await
            .map_err(rpc("WatchExperiment"))?
            .into_inner();
        Ok(StepStream { inner })
    }

    /// Registers a worker.
    pub async fn register_worker(&self, name: &str) -> Result<v1::RegisterWorkerResponse> {
        let r = self.req(
            "RegisterWorker",
            v1::RegisterWorkerRequest {
                name: name.to_owned(),
            },
        )?;
        Ok(self
            .raw
            .clone()
            .register_worker(r)
            .await
            .map_err(rpc("RegisterWorker"))?
            .into_inner())
    }

    /// Leases prompts.
    pub async fn lease(
        &self,
        worker_id: &str,
        max_prompts: u32,
    ) -> Result<v1::LeasePromptsResponse> {
        let r = self.req(
            "LeasePrompts",
            v1::LeasePromptsRequest {
                worker_id: worker_id.to_owned(),
                max_prompts,
            },
        )?;
        Ok(self
            .raw
            .clone()
            .lease_prompts(r)
            .await
            .map_err(rpc("LeasePrompts"))?
            .into_inner())
    }

    /// Returns a scored group; the outcome says whether it was kept.
    pub async fn submit_group(
        &self,
        group: v1::SubmitScoredGroupRequest,
    ) -> Result<v1::GroupOutcome> {
        let r = self.req("SubmitScoredGroup", group)?;
        let out = self
            .raw
            .clone()
            .submit_scored_group(r)
            .await
            .map_err(rpc("SubmitScoredGroup"))?
            .into_inner();
        Ok(v1::GroupOutcome::try_from(out.outcome).unwrap_or(v1::GroupOutcome::Unspecified))
    }

    /// Heartbeat: extends `lease_ids` and reports the leases stopped since the last heartbeat
    /// (`stopped`, with the tokens thrown away); returns the leases to stop and the policy
    /// version.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        lease_ids: Vec<String>,
        stopped: Vec<v1::StoppedLease>,
    ) -> Result<v1::HeartbeatResponse> {
        let r = self.req(
            "Heartbeat",
            v1::HeartbeatRequest {
                worker_id: worker_id.to_owned(),
                lease_ids,
                stopped,
            },
        )?;
        Ok(self
            .raw
            .clone()
            .heartbeat(r)
            .await
            .map_err(rpc("Heartbeat"))?
            .into_inner())
    }
}

/// Step summaries as they are recorded.
#[derive(Debug)]
pub struct StepStream {
    inner: Streaming<v1::StepSummary>,
}

impl StepStream {
    /// The next summary; `None` once the experiment reached a final state.
    pub async fn next(&mut self) -> Result<Option<v1::StepSummary>> {
        self.inner.message().await.map_err(rpc("WatchExperiment"))
    }
}
