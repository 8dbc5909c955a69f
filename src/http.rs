//! `/metrics`, `/healthz` and `/readyz` over HTTP/1 (loopback by default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the handlers read.
pub struct HttpState {
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// Set once reconstruction finished and the socket listens.
    pub ready: AtomicBool,
    /// Lines `/readyz` adds when ready: where moor runs, and any risk an operator must know.
    pub detail: String,
}

async fn metrics(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<HttpState>>) -> (StatusCode, String) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready\n{}", s.detail))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reconstructing\n".into())
    }
}

/// Binds `addr` and serves until the task is dropped. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<HttpState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, task))
}
