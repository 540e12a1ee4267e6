//! The admin server: health, readiness, metrics, status, manual capture.
//!
//! Reads the pipeline's [`Shared`] state; writes nothing but manual capture
//! requests. Served with `axum` on `OOMSNAP_ADMIN_ADDR`:
//!
//! - `GET /healthz` — 503 when the watch loop has not turned for a while;
//! - `GET /readyz` — 503 until a memory source is located and the store has
//!   answered once;
//! - `GET /metrics` — Prometheus text, units in the names;
//! - `GET /status` — JSON for people and scripts;
//! - `POST /capture` — a manual capture that spends the quota like any
//!   other; `OOMSNAP_ADMIN_CAPTURE` can limit it to loopback or turn it off.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::config::AdminCapture;
use crate::run::{ManualRequest, Shared};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub reason: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: String,
}

fn fetch_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Metrics observed as events happen; the rest are read from state at
/// scrape time by [`StateCollector`].
#[derive(Clone)]
pub struct Metrics {
    pub captures: Family<CaptureLabels, Counter>,
    pub fetch_seconds: Family<ProfileLabels, Histogram, fn() -> Histogram>,
    pub lead_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            captures: Family::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram),
            lead_seconds: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        }
    }
}

/// Reads gauges and counters from the shared state at each scrape.
#[derive(Debug)]
struct StateCollector(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let last = s.watch.last.lock().ok().and_then(|l| *l);
        if let Some(l) = last {
            gauge(
                &mut enc,
                "oomsnap_memory_working_set_bytes",
                "Working set of the watched memory (usage minus inactive file)",
                l.working_set as f64,
            )?;
            gauge(
                &mut enc,
                "oomsnap_memory_usage_bytes",
                "Usage of the watched memory",
                l.usage as f64,
            )?;
            if let Some(limit) = l.limit {
                gauge(
                    &mut enc,
                    "oomsnap_memory_limit_bytes",
                    "The memory limit that triggers the OOM killer",
                    limit as f64,
                )?;
            }
        }
        counter(
            &mut enc,
            "oomsnap_memory_samples",
            "Memory samples read",
            s.watch.samples.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "oomsnap_kernel_wakeups",
            "Wake-ups by kernel notification (eventfd, inotify)",
            s.watch.kernel_wakes.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "oomsnap_target_restarts",
            "Restarts of the target process seen",
            s.watch.restarts.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "oomsnap_poll_interval_seconds",
            "The current poll interval",
            s.watch.interval_ms.load(Ordering::Relaxed) as f64 / 1e3,
        )?;
        counter(
            &mut enc,
            "oomsnap_oom_kills",
            "OOM kills of the target confirmed by the kernel's counter",
            s.oom_kills.load(Ordering::Relaxed),
        )?;

        if let Ok(a) = s.admission.lock() {
            let dropped = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "oomsnap_captures_dropped",
                "Capture decisions not taken, by the decision's reason and the cause (quota, paused, superseded, shutdown)",
                None,
                dropped.metric_type(),
            )?;
            for ((reason, cause), n) in a.dropped() {
                ConstCounter::new(*n).encode(fam.encode_family(&DropLabels {
                    reason: reason.clone(),
                    cause: cause.clone(),
                })?)?;
            }
            gauge(
                &mut enc,
                "oomsnap_quota_remaining_captures",
                "Captures left in the burst as of the last decision",
                a.remaining() as f64,
            )?;
        }
        if let Some(ship) = &s.shipper {
            let st = &ship.stats;
            let c = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "oomsnap_uploads",
                "Object uploads, by outcome",
                None,
                c.metric_type(),
            )?;
            ConstCounter::new(st.objects_ok.load(Ordering::Relaxed)).encode(fam.encode_family(
                &OutcomeLabel {
                    outcome: "ok".into(),
                },
            )?)?;
            ConstCounter::new(st.objects_failed.load(Ordering::Relaxed)).encode(
                fam.encode_family(&OutcomeLabel {
                    outcome: "error".into(),
                })?,
            )?;
            counter(
                &mut enc,
                "oomsnap_uploaded_bytes",
                "Bytes uploaded to the store",
                st.bytes_uploaded.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut enc,
                "oomsnap_spool_bytes",
                "Bytes waiting in the spool",
                ship.spool.usage_bytes() as f64,
            )?;
            gauge(
                &mut enc,
                "oomsnap_spool_limit_bytes",
                "The spool's bound (OOMSNAP_SPOOL_MAX_BYTES)",
                ship.spool.max_bytes() as f64,
            )?;
            counter(
                &mut enc,
                "oomsnap_spool_dropped",
                "Bundles dropped because the spool was full",
                ship.spool.dropped(),
            )?;
        }
        Ok(())
    }
}

struct App {
    shared: Arc<Shared>,
    registry: Registry,
}

/// Starts the server; returns once it listens.
pub async fn spawn(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut registry = Registry::default();
    let m = shared.metrics.clone();
    registry.register(
        "oomsnap_captures",
        "Captures taken, by reason and outcome (complete, partial, failed)",
        m.captures,
    );
    registry.register(
        "oomsnap_profile_fetch_seconds",
        "Time to fetch and spool one profile",
        m.fetch_seconds,
    );
    registry.register(
        "oomsnap_capture_lead_seconds",
        "Time between a capture becoming durable and the OOM kill it preceded",
        m.lead_seconds,
    );
    registry.register_collector(Box::new(StateCollector(shared.clone())));
    let app = Arc::new(App { shared, registry });
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/capture", post(capture))
        .layer(DefaultBodyLimit::max(1024))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!(error = %e, "the admin server stopped");
        }
    }))
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let s = &app.shared;
    // A few poll intervals, and never less than a few locate retries.
    let allowed = (s.config.poll_max * 4).max(crate::memory::watch::LOCATE_BACKOFF_MAX * 3);
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
    if let Some(ship) = &s.shipper {
        if !ship.stats.store_answered.load(Ordering::Relaxed) {
            missing.push(format!("the store {} has not answered yet", ship.store.url));
        }
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, missing.join("\n") + "\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
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

/// The `/status` document.
pub fn status_json(s: &Shared) -> serde_json::Value {
    let last = s.watch.last.lock().ok().and_then(|l| *l);
    let source = s.watch.source.lock().ok().and_then(|g| g.clone());
    let (quota, dropped) = s
        .admission
        .lock()
        .map(|a| {
            (
                serde_json::json!({
                    "burst": a.burst(),
                    "period": humantime::format_duration(a.period()).to_string(),
                    "remaining": a.remaining(),
                }),
                serde_json::to_value(a.dropped_by_cause()).unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let spool = s.shipper.as_ref().map(|ship| {
        let bundles = ship.spool.bundles().unwrap_or_default();
        serde_json::json!({
            "dir": ship.spool.dir(),
            "bytes": ship.spool.usage_bytes(),
            "max_bytes": ship.spool.max_bytes(),
            "dropped": ship.spool.dropped(),
            "waiting": bundles,
        })
    });
    let store = s.shipper.as_ref().map(|ship| {
        let st = &ship.stats;
        serde_json::json!({
            "url": ship.store.url,
            "answered": st.store_answered.load(Ordering::Relaxed),
            "objects_ok": st.objects_ok.load(Ordering::Relaxed),
            "objects_failed": st.objects_failed.load(Ordering::Relaxed),
            "bundles_shipped": st.bundles_shipped.load(Ordering::Relaxed),
            "last_error": st.last_error.lock().ok().and_then(|e| e.clone()),
            "last_shipped": st.last_shipped.lock().map(|l| l.clone()).unwrap_or_default(),
        })
    });
    let captures: Vec<_> = s
        .captures
        .lock()
        .map(|c| c.iter().rev().cloned().collect())
        .unwrap_or_default();
    let armed: Vec<_> = s
        .watch
        .armed
        .lock()
        .map(|a| {
            a.iter()
                .map(|(t, on)| serde_json::json!({"percent": t, "armed": on}))
                .collect()
        })
        .unwrap_or_default();
    let tunables = s.tunables.lock().ok().and_then(|t| t.clone());
    serde_json::json!({
        "version": crate::VERSION,
        "enabled": s.enabled.load(Ordering::Relaxed),
        "source": source,
        "source_error": s.watch.last_error.lock().ok().and_then(|e| e.clone()),
        "last_sample": last.map(|l| serde_json::json!({
            "usage_bytes": l.usage,
            "working_set_bytes": l.working_set,
            "limit_bytes": l.limit,
            "percent": (l.percent() * 100.0).round() / 100.0,
            "anon_bytes": l.anon,
            "file_bytes": l.file,
            "oom_kills": l.oom_kills,
            "age_ms": l.at.elapsed().as_millis() as u64,
        })),
        "poll_interval_ms": s.watch.interval_ms.load(Ordering::Relaxed),
        "samples": s.watch.samples.load(Ordering::Relaxed),
        "kernel_wakeups": s.watch.kernel_wakes.load(Ordering::Relaxed),
        "thresholds": armed,
        "target": s.capture_settings.read().map(|c| c.target.clone()).unwrap_or_default(),
        "profiles": s.capture_settings.read().map(|c| c.profiles.iter().map(|p| p.name()).collect::<Vec<_>>()).unwrap_or_default(),
        "annotations": tunables.map(|t| serde_json::json!({
            "enabled": t.enabled,
            "thresholds": t.thresholds,
            "target": t.target,
            "rate_burst": t.rate_burst,
            "rate_period": humantime::format_duration(t.rate_period).to_string(),
        })),
        "quota": quota,
        "dropped": dropped,
        "oom_kills": s.oom_kills.load(Ordering::Relaxed),
        "captures": captures,
        "spool": spool,
        "store": store,
        "problems": {
            "configuration": s.problems.lock().map(|p| p.clone()).unwrap_or_default(),
            "annotations": s.annotation_problems.lock().map(|p| p.clone()).unwrap_or_default(),
        },
    })
}

async fn status(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(status_json(&app.shared))
}

async fn capture(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    // Read (and so bounded by DefaultBodyLimit) though unused: a body over
    // the limit is refused with 413 before anything else happens.
    _body: axum::body::Bytes,
) -> Response {
    let s = &app.shared;
    match s.config.admin_capture {
        AdminCapture::Off => {
            return (StatusCode::FORBIDDEN, "manual captures are switched off (OOMSNAP_ADMIN_CAPTURE=off)\n").into_response()
        }
        // An IPv4 client of a [::] listener arrives IPv4-mapped.
        AdminCapture::Loopback if !peer.ip().to_canonical().is_loopback() => {
            return (
                StatusCode::FORBIDDEN,
                format!("manual captures are allowed from loopback only (OOMSNAP_ADMIN_CAPTURE=loopback); {} is not\n", peer.ip()),
            )
                .into_response()
        }
        _ => {}
    }
    let (tx, rx) = oneshot::channel();
    if s.manual.try_send(ManualRequest { reply: tx }).is_err() {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "a manual capture is already queued\n",
        )
            .into_response();
    }
    // Long enough for a cpu profile, a full fetch and the spool.
    let wait = s
        .config
        .fetch_timeout
        .saturating_mul(2)
        .saturating_add(s.config.cpu_profile_duration)
        .saturating_add(Duration::from_secs(5));
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(key))) => {
            (StatusCode::OK, Json(serde_json::json!({ "key": key }))).into_response()
        }
        Ok(Ok(Err((code, why)))) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(serde_json::json!({ "error": why })),
        )
            .into_response(),
        _ => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(serde_json::json!({ "error": "the capture did not finish in time; see /status" })),
        )
            .into_response(),
    }
}
