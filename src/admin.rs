//! The admin HTTP port: health, status, and the handover's controls, as JSON.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Resp3Mode;
use crate::handover::{Handover, Request, StartError};

/// Serves the admin API on `listener` until the proxy shuts down.
pub async fn serve(listener: TcpListener, handover: Arc<Handover>, shutdown: tokio_util::sync::CancellationToken) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/handover", post(start_handover))
        .route("/handover/abort", post(abort_handover))
        .route("/config/resp3", put(set_resp3).get(get_resp3))
        .route_layer(axum::middleware::from_fn_with_state(handover.clone(), require_token))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(handover);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin port failed");
    }
}

async fn status(State(handover): State<Arc<Handover>>) -> Json<serde_json::Value> {
    Json(handover.status())
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(handover): State<Arc<Handover>>) -> Response {
    let shared = handover.shared();
    let clients = shared.clients.load(std::sync::atomic::Ordering::Relaxed);
    let text = shared.telemetry.render(clients, shared.gate.held_now());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /handover` with an optional JSON body of [`Request`] options: starts a handover and returns at once.
async fn start_handover(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    let request: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(error) => return refuse(StatusCode::BAD_REQUEST, format!("invalid handover options: {error}")),
        }
    };
    match handover.start(request) {
        Ok(()) => (StatusCode::ACCEPTED, Json(handover.status())).into_response(),
        Err(error @ StartError::Running(_)) => refuse(StatusCode::CONFLICT, error.to_string()),
        Err(error @ StartError::NoTarget) => refuse(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// `POST /handover/abort`: stops a running handover before the promotion.
async fn abort_handover(State(handover): State<Arc<Handover>>) -> Response {
    match handover.abort() {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "aborting": true }))).into_response(),
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// `GET /config/resp3`: the setting in force.
async fn get_resp3(State(handover): State<Arc<Handover>>) -> Json<serde_json::Value> {
    Json(json!({ "resp3": handover.shared().resp3_mode().name() }))
}

/// `PUT /config/resp3` with `allow` or `pin-resp2` (plain, as a JSON string, or as `{"resp3": ...}`): applies
/// to the HELLOs that follow; sessions keep the protocol they negotiated.
async fn set_resp3(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let word = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::String(word)) => word,
        Ok(serde_json::Value::Object(map)) => map
            .get("resp3")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => text,
    };
    let mode = match word.as_str() {
        "allow" => Resp3Mode::Allow,
        "pin-resp2" => Resp3Mode::PinResp2,
        other => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("resp3 must be allow or pin-resp2, not {other:?}"),
            );
        }
    };
    handover.shared().set_resp3_mode(mode);
    Json(json!({ "resp3": mode.name() })).into_response()
}

/// With an admin token configured, every route but `/healthz` needs `Authorization: Bearer <token>`.
async fn require_token(
    State(handover): State<Arc<Handover>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = handover.shared().config.admin_token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| crate::config::secret_matches(given.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required (Authorization: Bearer <token>)".into(),
        )
    }
}

fn refuse(code: StatusCode, error: String) -> Response {
    (code, Json(json!({ "error": error }))).into_response()
}
