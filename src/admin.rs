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
use crate::handover::fleet::Message;
use crate::handover::{Handover, Request, StartError};

/// Serves the admin API on `listener` until the proxy shuts down.
pub async fn serve(listener: TcpListener, handover: Arc<Handover>, shutdown: tokio_util::sync::CancellationToken) {
    let own = match listener.local_addr() {
        Ok(addr) => OwnAddress::new(addr, &handover.shared().config.admin_allowed_hosts),
        Err(error) => {
            tracing::error!(%error, "admin port has no address");
            return;
        }
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/readiness", get(readiness))
        .route("/shadow", post(start_shadow).get(shadow_results))
        .route("/shadow/stop", post(stop_shadow))
        .route("/metrics", get(metrics))
        .route("/handover", post(start_handover))
        .route("/handover/abort", post(abort_handover))
        .route("/handover/schedule", post(schedule_handover))
        .route("/handover/cancel", post(cancel_schedule))
        .route("/rollback", post(start_rollback))
        .route("/rollback/close", post(close_window))
        .route("/config/resp3", put(set_resp3).get(get_resp3))
        .route("/fleet/{step}", post(fleet_step))
        .route_layer(axum::middleware::from_fn_with_state(handover.clone(), require_token))
        .route("/healthz", get(|| async { "ok\n" }))
        // The page and its script and style need no token: they hold no data, and the page asks for the token.
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", include_str!("page/index.html")) }),
        )
        .route(
            "/page.js",
            get(|| async { page("text/javascript; charset=utf-8", include_str!("page/page.js")) }),
        )
        .route(
            "/page.css",
            get(|| async { page("text/css; charset=utf-8", include_str!("page/page.css")) }),
        )
        .layer(axum::middleware::from_fn_with_state(Arc::new(own), refuse_other_sites))
        .with_state(handover);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "admin port failed");
    }
}

async fn status(State(handover): State<Arc<Handover>>) -> Json<crate::handover::Status> {
    Json(handover.status())
}

/// `GET /readiness`: the readiness report (see [`crate::readiness`]); it takes about a second, over which OLD's
/// write rate is measured.
async fn readiness(State(handover): State<Arc<Handover>>) -> Json<crate::readiness::Report> {
    Json(handover.readiness().await)
}

/// `POST /shadow` with `{"fraction": 0.05, "for_s": 60}` (the fraction defaults to `shadow_reads`): starts shadow reads (see [`crate::readiness::shadow`]);
/// 202 with the run, 400 for bad options, 409 while a handover or shadow reads run.
async fn start_shadow(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        fraction: Option<f64>,
        for_s: f64,
    }
    let options: Options = match serde_json::from_slice(&body) {
        Ok(options) => options,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, format!("invalid shadow options: {error}")),
    };
    if !options.for_s.is_finite() || options.for_s <= 0.0 {
        return refuse(
            StatusCode::BAD_REQUEST,
            "for_s must be a positive number of seconds".into(),
        );
    }
    let duration = std::time::Duration::from_secs_f64(options.for_s.min(86_400.0));
    let fraction = match options.fraction {
        Some(fraction) => fraction,
        None if handover.shared().config.shadow_reads > 0.0 => handover.shared().config.shadow_reads,
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "name a fraction of the reads to shadow (\"fraction\": 0.05), or set shadow_reads".into(),
            );
        }
    };
    match handover.start_shadow(fraction, duration) {
        Ok(report) => (StatusCode::ACCEPTED, Json(report)).into_response(),
        Err(reason) if reason.contains("must") || reason.contains("last from") => {
            refuse(StatusCode::BAD_REQUEST, reason)
        }
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// `GET /shadow`: the current or last shadow reads' results (404 when none ran).
async fn shadow_results(State(handover): State<Arc<Handover>>) -> Response {
    match handover.shared().shadow.report() {
        Some(report) => Json(report).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "no shadow reads have run".into()),
    }
}

/// `POST /shadow/stop`: ends the running shadow reads; what was sampled is still compared.
async fn stop_shadow(State(handover): State<Arc<Handover>>) -> Response {
    match handover.stop_shadow() {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "stopping": true }))).into_response(),
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// A part of the admin page (`GET /`): one self-contained page, its script and its style, built into the binary;
/// everything it shows comes from the JSON API.
fn page(content_type: &'static str, body: &'static str) -> Response {
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(handover): State<Arc<Handover>>) -> Response {
    let shared = handover.shared();
    let clients = shared.clients.load(std::sync::atomic::Ordering::Relaxed);
    let mut text = shared.telemetry.render(clients, shared.gate.held_now());
    text.push_str(&handover.fleet_metrics());
    text.push_str(&handover.window_metrics());
    text.push_str(&handover.cluster_metrics());
    text.push_str(&shared.shadow.metrics());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /handover` with an optional JSON body of [`Request`] options: starts a handover and returns at once.
async fn start_handover(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    let request: Request = match options(&body, "handover") {
        Ok(request) => request,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    started(&handover, handover.start(request))
}

/// `POST /handover/schedule` with a [`crate::handover::schedule::Plan`]: schedules a handover (202 with the
/// schedule, which says `blocked` when the pre-flight would refuse it now); 400 for times that do not parse, 409
/// when one is scheduled already.
async fn schedule_handover(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    use crate::handover::schedule::{Plan, ScheduleError};
    let plan: Plan = match options(&body, "schedule") {
        Ok(plan) => plan,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    match handover.schedule(plan).await {
        Ok(scheduled) => (StatusCode::ACCEPTED, Json(scheduled)).into_response(),
        Err(error @ ScheduleError::Scheduled(_)) => refuse(StatusCode::CONFLICT, error.to_string()),
        Err(error) => refuse(StatusCode::BAD_REQUEST, error.to_string()),
    }
}

/// `POST /handover/cancel`: drops the scheduled handover (409 when none is scheduled).
async fn cancel_schedule(State(handover): State<Arc<Handover>>) -> Response {
    match handover.cancel_schedule() {
        Ok(scheduled) => Json(scheduled).into_response(),
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// `POST /rollback` with the same optional options as `POST /handover`: a handover back to the former primary,
/// refused (409, with the reason) unless the rollback window is open.
async fn start_rollback(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    let request: Request = match options(&body, "rollback") {
        Ok(request) => request,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    started(&handover, handover.rollback(request))
}

/// The answer to a request that starts a handover.
fn started(handover: &Handover, start: Result<(), StartError>) -> Response {
    match start {
        Ok(()) => (StatusCode::ACCEPTED, Json(handover.status())).into_response(),
        Err(error @ (StartError::Running(_) | StartError::Following(_) | StartError::NoWindow(_))) => {
            refuse(StatusCode::CONFLICT, error.to_string())
        }
        Err(error @ (StartError::NoTarget | StartError::Cluster(_))) => {
            refuse(StatusCode::BAD_REQUEST, error.to_string())
        }
    }
}

/// `POST /rollback/close`: closes the rollback window and detaches the former primary (it keeps its data).
async fn close_window(State(handover): State<Arc<Handover>>) -> Response {
    match handover.close_window().await {
        Ok(window) => Json(window).into_response(),
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// A request's optional JSON body of options: the defaults when it is empty, the reason (naming `what`) when it
/// does not parse.
fn options<T: serde::de::DeserializeOwned + Default>(body: &[u8], what: &str) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| format!("invalid {what} options: {error}"))
}

/// `POST /handover/abort`: stops a running handover before the promotion. `{"force": true}` also stops one whose
/// outcome is in doubt.
async fn abort_handover(State(handover): State<Arc<Handover>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Options {
        force: bool,
    }
    let options: Options = match options(&body, "abort") {
        Ok(options) => options,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    match handover.abort(options.force) {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "aborting": true }))).into_response(),
        Err(reason) => refuse(StatusCode::CONFLICT, reason),
    }
}

/// `POST /fleet/claim|hold|switch|release|abort`: a step of a handover another proxy of the fleet drives (see
/// [`crate::handover::fleet`]). A refused step answers 409 with the reason.
async fn fleet_step(
    State(handover): State<Arc<Handover>>,
    axum::extract::Path(step): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    let message: Message = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, format!("invalid fleet message: {error}")),
    };
    // A step runs to its end in a task of its own: the driver may go away mid-step (its connection closing
    // drops this handler), and a step half done would leave this proxy's gate or sessions stuck.
    let step = tokio::spawn(async move {
        match step.as_str() {
            "claim" => Some(handover.fleet_claim(message).await),
            "hold" => Some(handover.fleet_hold(message).await),
            "switch" => Some(handover.fleet_switch(message).await),
            "release" => Some(handover.fleet_release(message)),
            "abort" => Some(handover.fleet_abort(message)),
            _ => None,
        }
    });
    match step.await {
        Ok(Some(Ok(answer))) => Json(answer).into_response(),
        Ok(Some(Err(reason))) => refuse(StatusCode::CONFLICT, reason),
        Ok(None) => refuse(StatusCode::NOT_FOUND, "no such fleet step".into()),
        Err(error) => refuse(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
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

/// The names under which the admin port may be addressed: what a request's `Host` and `Origin` must name.
#[derive(Debug)]
struct OwnAddress {
    port: u16,
    ip: std::net::IpAddr,
    /// `admin_allowed_hosts`, lower-cased.
    names: Vec<String>,
}

impl OwnAddress {
    fn new(addr: std::net::SocketAddr, allowed: &[String]) -> OwnAddress {
        let names = allowed.iter().map(|n| n.trim().to_ascii_lowercase()).collect();
        OwnAddress {
            port: addr.port(),
            ip: addr.ip(),
            names,
        }
    }

    /// Whether `host` (a `Host` header's value: `name[:port]`) names this port. An IP address can only be the
    /// one the port is bound to (any, when it binds them all); a name must be `localhost` or a configured one.
    /// A name a browser resolved through an attacker's DNS (rebinding) is none of these.
    fn names(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        if port != self.port {
            return false;
        }
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == self.ip || self.ip.is_unspecified() || (ip.is_loopback() && self.ip.is_loopback()),
            Err(_) => {
                let name = name.to_ascii_lowercase();
                name == "localhost" || self.names.contains(&name)
            }
        }
    }
}

/// Splits `name[:port]` (with `[v6]` brackets) into the name and the port, 80 when none is given (plain HTTP).
fn split_host(host: &str) -> Option<(&str, u16)> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (name, after) = rest.split_once(']')?;
            (name, after.strip_prefix(':'))
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => 80,
    };
    (!name.is_empty()).then_some((name, port))
}

/// Refuses, before anything else and on every route, what a web page in someone's browser could send: a `Host`
/// that is not this port's own (DNS rebinding) and an `Origin` of another site (a cross-site request, which a
/// browser sends even without a CORS preflight when it is a "simple" POST). Terminal clients (`ctl`, curl,
/// Prometheus) send no `Origin`. Every answer also forbids framing and loading anything from elsewhere.
async fn refuse_other_sites(
    State(own): State<Arc<OwnAddress>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A block, so that no borrow of the request (whose body is not Sync) lives across the await below.
    let verdict = {
        let header = |name| request.headers().get(name).map(|v| v.to_str().unwrap_or_default());
        let (host, origin) = (header(axum::http::header::HOST), header(axum::http::header::ORIGIN));
        match (host, origin) {
            (Some(host), _) if !own.names(host) => Err(format!("requests for host {host:?} are refused here")),
            (_, Some(origin)) if !same_origin(origin, host) => {
                Err(format!("requests from another site (Origin {origin:?}) are refused"))
            }
            _ => Ok(()),
        }
    };
    let mut response = match verdict {
        Ok(()) => next.run(request).await,
        Err(reason) => {
            tracing::warn!(%reason, "admin request refused");
            refuse(StatusCode::FORBIDDEN, reason)
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        axum::http::header::X_FRAME_OPTIONS,
        axum::http::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether `origin` is the admin port's own origin, `http://` and the (already checked) `Host` the request
/// names. `null`, another scheme or another host is not.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let (Some(rest), Some(host)) = (origin.strip_prefix("http://"), host) else {
        return false;
    };
    match (split_host(rest), split_host(host)) {
        (Some((a, a_port)), Some((b, b_port))) => a.eq_ignore_ascii_case(b) && a_port == b_port,
        _ => false,
    }
}

fn refuse(code: StatusCode, error: String) -> Response {
    (code, Json(json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(bound: &str) -> OwnAddress {
        OwnAddress::new(bound.parse().unwrap(), &["Admin.Example".to_string()])
    }

    #[test]
    fn hosts_that_name_the_admin_port() {
        let loopback = own("127.0.0.1:7380");
        for host in [
            "127.0.0.1:7380",
            "localhost:7380",
            "LOCALHOST:7380",
            "admin.example:7380",
            "[::1]:7380",
        ] {
            assert!(loopback.names(host), "{host}");
        }
        for host in [
            "evil.example:7380",
            "127.0.0.1:7381",
            "localhost",
            "10.0.0.1:7380",
            "",
            ":7380",
            "[::1",
        ] {
            assert!(!loopback.names(host), "{host}");
        }
        assert!(
            own("0.0.0.0:80").names("10.0.0.1"),
            "any address of a port bound to all of them"
        );
        assert!(!own("0.0.0.0:80").names("rebound.example"));
    }

    #[test]
    fn only_the_port_s_own_origin_is_the_same_site() {
        let host = Some("127.0.0.1:7380");
        assert!(same_origin("http://127.0.0.1:7380", host));
        for origin in [
            "null",
            "http://evil.example",
            "https://127.0.0.1:7380",
            "http://127.0.0.1:7381",
            "",
        ] {
            assert!(!same_origin(origin, host), "{origin}");
        }
        assert!(same_origin("http://localhost", Some("localhost:80")));
        assert!(!same_origin("http://127.0.0.1:7380", None));
    }
}
