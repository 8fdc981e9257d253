//! The Prometheus recorder (one per process) and a minimal `GET /metrics` endpoint per service.
//!
//! Services in one process (the all-in-one run, the e2e tests) share the process-wide recorder,
//! so every endpoint shows the same registry; each service still gets its own listener.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Another metrics recorder was installed in this process before ours.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(MetricsError::Install)
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown` resolves.
/// Any other path answers 404.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok(n) = stream.read(&mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let ok = head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?");
            let (status, body) = if ok {
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "only GET /metrics is served\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                tracing::debug!(error = %e, "metrics client went away");
            }
        });
    }
}

/// Fetches `http://{addr}/metrics` (for tests and `platter status`): the body text.
pub async fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!(
            "unexpected /metrics answer: {}",
            out.lines().next().unwrap_or("")
        ))),
    }
}
