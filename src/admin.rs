//! The admin HTTP port: health and status for operators and their tools.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::server::Shared;

/// Serves the admin API on `listener` until the task is dropped or the proxy shuts down.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .with_state(shared);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin port failed");
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let primary = shared.primary.current();
    Json(json!({
        "phase": "idle",
        "primary": { "side": primary.server.side, "addr": &*primary.server.addr, "generation": primary.generation },
        "old": { "addr": shared.config.old },
        "new": { "addr": shared.config.new },
        "clients": shared.clients.load(Ordering::Relaxed),
    }))
}
