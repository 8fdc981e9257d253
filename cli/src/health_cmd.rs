//! `platter health`: the container healthcheck of every Platter service.
//!
//! - `platter health http://HOST:PORT --service platter.v1.Coordinator` asks the standard
//!   `grpc.health.v1.Health/Check` of a server and succeeds when the service is SERVING.
//! - `platter health --http http://HOST:PORT/metrics` (rollout workers, which serve no gRPC)
//!   succeeds when the URL answers `200 OK`.
//!
//! Exit status 0 = healthy, 1 = not (the reason on stderr), so it can be a compose `healthcheck`
//! in an image without a shell or curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use platter_proto::tonic_health::pb::HealthCheckRequest;
use platter_proto::tonic_health::pb::health_check_response::ServingStatus;
use platter_proto::tonic_health::pb::health_client::HealthClient;

/// Healthcheck of a service: gRPC health of a server, or an HTTP URL (container healthchecks).
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// gRPC server address, e.g. `http://127.0.0.1:50051`.
    #[arg(required_unless_present = "http", conflicts_with = "http")]
    addr: Option<String>,
    /// Service to check (`platter.v1.Coordinator`, `platter.v1.Learner`,
    /// `platter.v1.RewardServer`); empty = the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// Check an HTTP URL instead (e.g. a rollout worker's `http://127.0.0.1:9104/metrics`).
    #[arg(long)]
    http: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
}

/// Runs the check; an error means unhealthy.
pub fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    match (&args.addr, &args.http) {
        (_, Some(url)) => http_ok(url, timeout),
        (Some(addr), None) => grpc_serving(addr, &args.service, timeout),
        (None, None) => bail!("give a gRPC address or --http URL"),
    }
}

fn grpc_serving(addr: &str, service: &str, timeout: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("`{addr}` is not a URL (expected http://HOST:PORT)"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .with_context(|| format!("{addr}: no connection within {timeout:?}"))?
            .with_context(|| format!("{addr}: cannot connect"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .with_context(|| format!("{addr}: health check of `{service}` failed"))?;
        let status = response.into_inner().status();
        if status == ServingStatus::Serving {
            Ok(())
        } else {
            bail!("{addr}: `{service}` is {}", status.as_str_name())
        }
    })
}

/// `GET` on an `http://HOST:PORT/PATH` URL; succeeds on a 200 status line.
fn http_ok(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}`: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve `{authority}`"))?
        .next()
        .with_context(|| format!("{url}: `{authority}` resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{url}: cannot connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("{url}: sending the request"))?;
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .with_context(|| format!("{url}: reading the answer"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        bail!("{url}: answered `{status}`")
    }
}
