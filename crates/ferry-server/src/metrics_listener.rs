//! A region's admin listener (`[[region]] admin_listen`, off unless set): `GET /metrics`
//! (Prometheus text format, the region's own registry) and `GET /health`. Unauthenticated, like
//! most Prometheus targets: bind it to a private interface.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use ferry_core::metrics::RegionMetrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn metrics(State(m): State<Arc<RegionMetrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.encode())
}

async fn health() -> &'static str {
    "ok\n"
}

/// Serves the admin routes until `stop` is cancelled.
pub async fn serve(listener: TcpListener, m: Arc<RegionMetrics>, stop: CancellationToken) {
    let app = Router::new().route("/metrics", get(metrics)).route("/health", get(health)).with_state(m);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
