//! The admin server: health, readiness, metrics, status, manual capture.
//!
//! - [`metrics`] — the Prometheus registry and the scrape-time collector
//! - [`status`]  — the `/status` document
//!
//! Reads the [`Shared`] state; writes nothing but manual capture requests.
//! Served with `axum` over `hyper` on `OOMSNAP_ADMIN_ADDR`:
//!
//! - `GET /healthz` — 200 while the watcher thread is alive (its loop
//!   turned recently), whatever else is degraded;
//! - `GET /readyz` — 503 until a memory source is located and (under `run`)
//!   the store has answered once (informational: the shipped manifests put no readiness
//!   probe on the sidecar, because a NotReady sidecar makes the pod
//!   NotReady);
//! - `GET /metrics` — Prometheus text, units in the names;
//! - `GET /status` — JSON for people and scripts;
//! - `POST /capture` — a manual capture on a quota of its own; from
//!   loopback only by default (`OOMSNAP_ADMIN_CAPTURE`).
//!
//! The port faces the pod network, so the server bounds what any peer can
//! cost it: at most [`MAX_CONNECTIONS`] at once and
//! [`MAX_CONNECTIONS_PER_PEER`] per address (more are closed at accept), headers within [`HEADER_TIMEOUT`] and [`MAX_BUF_BYTES`], a body
//! of at most 1 KiB, and any connection closed after [`CONNECTION_MAX`]. A
//! port that is taken is retried, never a reason to exit. The core reports
//! a manual capture's outcome as a [`ManualOutcome`]; the mapping to HTTP
//! statuses lives here and nowhere else.

pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, Semaphore};

use crate::config::{AdminCapture, ADMIN_CAPTURE, ADMIN_TOKEN};
use crate::problems::ProblemKind;
use crate::state::{ManualOutcome, ManualRequest, Shared};

/// Connections served at once; more are closed as they arrive, so a flood
/// costs the sidecar sockets it closes, not memory.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once for one peer address, so one noisy peer
/// cannot take every slot from the kubelet's probes and the scraper.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// A request's headers must arrive within this; an idle keep-alive
/// connection is closed after it too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most hyper buffers per connection while reading a request (its
/// smallest allowed value; the requests served here are tiny).
pub const MAX_BUF_BYTES: usize = 8192;
/// No connection lives longer, whatever it does. A manual capture's reply
/// must fit in it ([`crate::state::manual_wait`] is shorter by default).
pub const CONNECTION_MAX: Duration = Duration::from_secs(60);
/// The largest request body (`POST /capture` takes none).
pub const MAX_BODY_BYTES: usize = 1024;

struct App {
    shared: Arc<Shared>,
    registry: Registry,
}

/// Serves the admin port until the task is aborted, binding it again and
/// again while it is taken (and saying so as a problem).
pub fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => shared.problems.set(
                    ProblemKind::Admin,
                    format!(
                        "cannot serve the admin port {addr} (OOMSNAP_ADMIN_ADDR): {e}; /healthz, /metrics and /status are unavailable, retrying every {}",
                        humantime::format_duration(wait)
                    ),
                ),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        };
        shared.problems.clear(ProblemKind::Admin);
        match listener.local_addr() {
            Ok(a) => tracing::info!(addr = %a, "admin server listening"),
            Err(_) => tracing::info!(addr = %addr, "admin server listening"),
        }
        serve(listener, shared).await;
    })
}

fn router(shared: Arc<Shared>) -> Router {
    let registry = metrics::registry(shared.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_doc))
        .route("/capture", post(capture))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(App { shared, registry }))
}

/// Connections held per peer address; a slot is given back on drop.
#[derive(Clone, Default)]
struct PerPeer(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

struct PeerSlot(PerPeer, std::net::IpAddr);

impl PerPeer {
    fn take(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = (self.0).0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let router = router(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = PerPeer::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little
                // instead of spinning.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let Some(peer_slot) = peers.take(peer.ip().to_canonical()) else {
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(
            router
                .clone()
                .layer(Extension(ConnectInfo::<SocketAddr>(peer))),
        );
        tokio::spawn(async move {
            let _slots = (permit, peer_slot);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_MAX, conn).await;
        });
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let s = &app.shared;
    // A few poll intervals, and never less than a few locate retries.
    let allowed = (s.config.poll_max * 4).max(crate::watch::LOCATE_BACKOFF_MAX * 3);
    match s.watch.since_tick() {
        Some(d) if d <= allowed => (StatusCode::OK, "ok\n").into_response(),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the watch loop has not turned for {}\n",
                humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
            ),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the watch loop has not started\n",
        )
            .into_response(),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let s = &app.shared;
    let mut missing = Vec::new();
    if s.watch.source.lock().map(|g| g.is_none()).unwrap_or(true) {
        let why = s
            .watch
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_default();
        missing.push(format!("no memory source is located yet {why}"));
    }
    match s.storage.shipper.get() {
        _ if s.watch_only => {}
        Some(ship)
            if ship
                .stats
                .store_answered
                .load(std::sync::atomic::Ordering::Relaxed) => {}
        _ => missing.push(format!("the store {} has not answered yet", s.config.store)),
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, missing.join("\n") + "\n").into_response()
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &app.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status_doc(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(status::document(&app.shared))
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `peer` (with these headers) may ask for a capture; the refusal
/// says why.
fn may_capture(
    mode: AdminCapture,
    token: Option<&str>,
    peer: &SocketAddr,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, String)> {
    // An IPv4 client of a [::] listener arrives IPv4-mapped.
    let loopback = peer.ip().to_canonical().is_loopback();
    match mode {
        AdminCapture::Off => Err((
            StatusCode::FORBIDDEN,
            format!("manual captures are switched off ({ADMIN_CAPTURE}=off)"),
        )),
        AdminCapture::Loopback | AdminCapture::Network if loopback => Ok(()),
        AdminCapture::Loopback => Err((
            StatusCode::FORBIDDEN,
            format!(
                "manual captures are allowed from loopback only ({ADMIN_CAPTURE}=loopback); {} is not",
                peer.ip()
            ),
        )),
        AdminCapture::Network => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            match token {
                Some(t) if same_secret(given.as_bytes(), t.as_bytes()) => Ok(()),
                _ => Err((
                    StatusCode::UNAUTHORIZED,
                    format!("a manual capture from {} needs `Authorization: Bearer <{ADMIN_TOKEN}>`", peer.ip()),
                )),
            }
        }
    }
}

/// The HTTP face of a manual capture's outcome.
pub fn http_status(o: &ManualOutcome) -> StatusCode {
    match o {
        ManualOutcome::Captured { .. } => StatusCode::OK,
        ManualOutcome::QuotaSpent { .. } => StatusCode::TOO_MANY_REQUESTS,
        ManualOutcome::Superseded { .. } | ManualOutcome::Busy { .. } => StatusCode::CONFLICT,
        ManualOutcome::WatchMode => StatusCode::CONFLICT,
        ManualOutcome::TargetFailed { .. } => StatusCode::BAD_GATEWAY,
        ManualOutcome::SpoolFailed { .. } => StatusCode::INSUFFICIENT_STORAGE,
        ManualOutcome::NoSpool { .. } | ManualOutcome::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

fn outcome_json(o: &ManualOutcome) -> serde_json::Value {
    match o {
        ManualOutcome::Captured {
            key,
            failed,
            skipped,
        } => {
            serde_json::json!({ "key": key, "profiles_failed": failed, "profiles_skipped": skipped })
        }
        ManualOutcome::QuotaSpent { retry_in } => serde_json::json!({
            "error": format!("the manual capture quota ({}) is spent; it returns in {}",
                "OOMSNAP_MANUAL_RATE_BURST per OOMSNAP_RATE_PERIOD",
                humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)))),
            "retry_in_seconds": retry_in.as_secs().max(1),
        }),
        ManualOutcome::Superseded { by } => {
            serde_json::json!({ "error": format!("superseded by a newer {by} capture") })
        }
        ManualOutcome::Busy { queued } => serde_json::json!({
            "error": format!("a {queued} capture is queued, and a manual request never takes its place; try again in a moment")
        }),
        ManualOutcome::TargetFailed { why } => {
            serde_json::json!({ "error": format!("the target answered no profile: {why}") })
        }
        ManualOutcome::SpoolFailed { why } | ManualOutcome::NoSpool { why } => {
            serde_json::json!({ "error": why })
        }
        ManualOutcome::ShuttingDown => serde_json::json!({ "error": "oomsnap is shutting down" }),
        ManualOutcome::WatchMode => {
            serde_json::json!({ "error": "oomsnap runs in watch mode and takes no captures" })
        }
    }
}

async fn capture(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    // Read (and so bounded by DefaultBodyLimit) though unused: a body over
    // the limit is refused with 413 before anything else happens.
    _body: axum::body::Bytes,
) -> Response {
    let s = &app.shared;
    if let Err((code, why)) = may_capture(
        s.config.admin_capture,
        s.config.admin_token.as_deref(),
        &peer,
        &headers,
    ) {
        return (code, Json(serde_json::json!({ "error": why }))).into_response();
    }
    let (tx, rx) = oneshot::channel();
    if s.manual.try_send(ManualRequest { reply: tx }).is_err() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({ "error": "manual capture requests are already queued" })),
        )
            .into_response();
    }
    let wait = crate::state::manual_wait(&s.config).min(CONNECTION_MAX - Duration::from_secs(1));
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(o)) => (http_status(&o), Json(outcome_json(&o))).into_response(),
        _ => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(serde_json::json!({ "error": "the capture did not finish in time; see /status" })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn loopback_is_the_default_and_the_network_needs_the_token() {
        let none = HeaderMap::new();
        let lo = addr("127.0.0.1:1");
        let mapped = addr("[::ffff:127.0.0.1]:1");
        let far = addr("10.1.2.3:1");
        assert!(may_capture(AdminCapture::Loopback, None, &lo, &none).is_ok());
        assert!(may_capture(AdminCapture::Loopback, None, &mapped, &none).is_ok());
        assert_eq!(
            may_capture(AdminCapture::Loopback, None, &far, &none)
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
        let t = Some("0123456789abcdef");
        assert_eq!(
            may_capture(AdminCapture::Network, t, &far, &none)
                .unwrap_err()
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert!(may_capture(AdminCapture::Network, t, &far, &bearer("wrong-token-value")).is_err());
        assert!(may_capture(AdminCapture::Network, t, &far, &bearer("0123456789abcdef")).is_ok());
        assert!(may_capture(AdminCapture::Off, t, &lo, &bearer("0123456789abcdef")).is_err());
    }

    #[test]
    fn every_outcome_has_a_status_and_a_sentence() {
        use std::time::Duration;
        let all = [
            ManualOutcome::Captured {
                key: "k".into(),
                failed: 0,
                skipped: 1,
            },
            ManualOutcome::QuotaSpent {
                retry_in: Duration::from_secs(30),
            },
            ManualOutcome::Superseded {
                by: "threshold-90".into(),
            },
            ManualOutcome::Busy {
                queued: "imminent".into(),
            },
            ManualOutcome::TargetFailed {
                why: "refused".into(),
            },
            ManualOutcome::SpoolFailed {
                why: "ENOSPC".into(),
            },
            ManualOutcome::NoSpool {
                why: "not open".into(),
            },
            ManualOutcome::ShuttingDown,
            ManualOutcome::WatchMode,
        ];
        let codes: Vec<u16> = all.iter().map(|o| http_status(o).as_u16()).collect();
        assert_eq!(codes, [200, 429, 409, 409, 502, 507, 503, 503, 409]);
        for o in &all[1..] {
            assert!(
                outcome_json(o)["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{o:?}"
            );
        }
    }
}
