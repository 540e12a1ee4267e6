//! The HTTPS side of the webhook: `POST /mutate` (pods that opt in) and
//! `POST /mutate/namespace` (pods in an opted-in namespace), a
//! `GET /healthz` for probes, rustls through axum-server, and the
//! certificate watcher.
//!
//! Memory is bounded per review and in total: a review waits for one of
//! [`ServeLimits::max_concurrent`] turns *before* its body is read (a
//! waiting request holds at most one [`READ_BUFFER_BYTES`] read-ahead, or
//! an HTTP/2 window, not its body), the body is read once into a buffer sized
//! from `Content-Length` and capped at [`ServeLimits::max_body`], and parsed
//! once in place ([`super::pod`]). A review that cannot get a turn in time is
//! answered 503; the API server then applies the webhook's `failurePolicy`
//! (`Ignore`: the pod is created without the sidecar).

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::{cert, mutate_scoped, InjectError, InjectSettings, Scope};

/// Largest AdmissionReview accepted. Real pods are a few KiB; 1 MiB leaves
/// room for huge specs while bounding what one turn can make us hold. A
/// bigger review gets 413, and the API server creates the pod without the
/// sidecar (`failurePolicy: Ignore`).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest read buffer of one connection. hyper reads one chunk of a body
/// ahead of the handler, into a buffer that by default grows to about
/// 400 KiB: for requests still waiting their turn that alone held tens of
/// MiB. One TLS record (16 KiB) is enough; request heads are far smaller.
pub const READ_BUFFER_BYTES: usize = 16 << 10;
/// HTTP/2 flow-control window of one stream: what a review still waiting
/// its turn may have sent ahead (the RFC's own default).
pub const H2_STREAM_WINDOW_BYTES: u32 = 64 << 10;
/// HTTP/2 flow-control window of a whole connection, however many reviews
/// it multiplexes.
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 256 << 10;
/// How long in-flight reviews get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The path of the webhook entry for pods that opt in themselves.
pub const MUTATE_PATH: &str = "/mutate";
/// The path of the webhook entry for pods in an opted-in namespace.
pub const MUTATE_NAMESPACE_PATH: &str = "/mutate/namespace";

/// What the server holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Reviews read and answered at the same time; the rest wait their turn
    /// without their bodies. Parsing is CPU work on one thread, so the turns
    /// only overlap the reading of bodies (flow-controlled, see
    /// [`H2_STREAM_WINDOW_BYTES`]).
    pub max_concurrent: usize,
    /// How long a review waits for a turn before a 503; never more than half
    /// the timeout the API server sends (`?timeout=5s`).
    pub queue_wait: Duration,
    /// Largest body accepted ([`MAX_BODY_BYTES`]).
    pub max_body: usize,
    /// How long reading one body may take, while it holds a turn.
    pub body_timeout: Duration,
}

impl Default for ServeLimits {
    /// Eight turns of at most 1 MiB: 8 MiB of bodies at the very worst,
    /// well inside the injector's 64 Mi limit.
    fn default() -> Self {
        ServeLimits {
            max_concurrent: 8,
            queue_wait: Duration::from_secs(2),
            max_body: MAX_BODY_BYTES,
            body_timeout: Duration::from_secs(3),
        }
    }
}

/// Where the serving certificate lives and how often to look for a new one.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_every: Duration,
}

struct App {
    settings: InjectSettings,
    limits: ServeLimits,
    turns: Semaphore,
}

/// The routes, without TLS.
fn router(settings: InjectSettings, limits: ServeLimits) -> Router {
    let app = Arc::new(App {
        settings,
        limits,
        turns: Semaphore::new(limits.max_concurrent.max(1)),
    });
    Router::new()
        .route(
            MUTATE_PATH,
            post(|s, u, h, b| handle_review(s, u, h, b, Scope::Pod)),
        )
        .route(
            MUTATE_NAMESPACE_PATH,
            post(|s, u, h, b| handle_review(s, u, h, b, Scope::Namespace)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The API server's own deadline for this call, from `?timeout=10s`.
fn api_server_timeout(uri: &Uri) -> Option<Duration> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| humantime::parse_duration(v).ok())
}

/// Reads the body into one buffer, refusing it past `max` bytes.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, Response> {
    let too_big = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview is over {max} bytes; the pod is not injected"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(64 << 10).min(max));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            text(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            )
        })?;
        if buf.len() + chunk.len() > max {
            return Err(too_big());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Answers one review.
///
/// A body that is not an `admission.k8s.io/v1` AdmissionReview with a request
/// uid gets HTTP 400 and a sentence: without a uid there is no valid review
/// to answer with, and an error status makes the API server log the message
/// and apply the webhook's `failurePolicy` (`Ignore`: the pod is admitted
/// unchanged). A well-formed review whose pod we cannot use is answered
/// `allowed: true` with a warning instead (see [`super::mutate`]).
async fn handle_review(
    State(app): State<Arc<App>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    scope: Scope,
) -> Response {
    let wait = match api_server_timeout(&uri) {
        Some(t) => app.limits.queue_wait.min(t / 2),
        None => app.limits.queue_wait,
    };
    let Ok(Ok(_turn)) = tokio::time::timeout(wait, app.turns.acquire()).await else {
        tracing::warn!(
            max_concurrent = app.limits.max_concurrent,
            waited_ms = wait.as_millis() as u64,
            "too many reviews at once; answered 503 (the pod is created without the sidecar)"
        );
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the injector is busy: {} reviews in progress and this one waited {wait:?}; \
                 the API server applies the webhook's failurePolicy",
                app.limits.max_concurrent
            ),
        );
    };
    let body = match tokio::time::timeout(
        app.limits.body_timeout,
        read_body(body, &headers, app.limits.max_body),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(response)) => return response,
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:?}",
                    app.limits.body_timeout
                ),
            )
        }
    };
    match mutate_scoped(&body, scope, &app.settings) {
        Ok(review) => axum::Json(review).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rejected a malformed admission request");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// Serves the webhook on `listener` until `shutdown` completes, reloading the
/// certificate when its files change.
pub async fn serve<F>(
    listener: TcpListener,
    tls: TlsFiles,
    settings: InjectSettings,
    limits: ServeLimits,
    shutdown: F,
) -> Result<(), InjectError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let config = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .map_err(|source| InjectError::LoadCert {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(InjectError::Listen)?;
    listener
        .set_nonblocking(true)
        .map_err(InjectError::Listen)?;

    let watcher = tokio::spawn(cert::watch(
        config.clone(),
        tls.cert.clone(),
        tls.key.clone(),
        tls.reload_every,
    ));
    let handle = axum_server::Handle::new();
    let stopper = {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        })
    };

    tracing::info!(
        %addr,
        paths = %format!("{MUTATE_PATH},{MUTATE_NAMESPACE_PATH}"),
        max_concurrent = limits.max_concurrent,
        "serving the admission webhook"
    );
    let mut server = axum_server::from_tcp_rustls(listener, config)
        .map_err(InjectError::Listen)?
        .handle(handle);
    let http = server.http_builder();
    http.http1().max_buf_size(READ_BUFFER_BYTES);
    // HTTP/2 (offered by ALPN, and what the API server's Go client picks)
    // buffers a stream's body up to its flow-control window before the
    // handler reads it: hyper's 1 MiB default let every waiting review sit
    // whole in memory. Small windows bound that to a few records each.
    http.http2()
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES);
    let result = server
        .serve(router(settings, limits).into_make_service())
        .await
        .map_err(InjectError::Serve);
    watcher.abort();
    stopper.abort();
    result
}
