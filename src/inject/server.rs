//! The HTTPS side of the webhook: one `POST /mutate` route, a `GET /healthz`
//! for probes, rustls through axum-server, and the certificate watcher.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

use super::{cert, mutate_body, InjectError, InjectSettings};

/// Largest AdmissionReview accepted. The API server's own limit on a pod is
/// about 1.5 MB of etcd value, but real pods are a few KiB; 1 MiB leaves room
/// for huge specs while bounding what one request can make us hold.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How often the certificate files are checked for changes.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(5);
/// How long in-flight reviews get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The path the webhook configuration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// Where the serving certificate lives and how often to look for a new one.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub reload_every: Duration,
}

/// The routes, without TLS; useful on its own for tests of the handler.
pub fn router(settings: Arc<InjectSettings>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(handle_review))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(settings)
}

/// Answers one review.
///
/// A body that is not an `admission.k8s.io/v1` AdmissionReview with a request
/// uid gets HTTP 400 and a sentence: without a uid there is no valid review
/// to answer with, and an error status makes the API server log the message
/// and apply the webhook's `failurePolicy` (`Ignore`: the pod is admitted
/// unchanged). A well-formed review whose pod we cannot use is answered
/// `allowed: true` with a warning instead (see [`super::mutate`]).
async fn handle_review(State(settings): State<Arc<InjectSettings>>, body: Bytes) -> Response {
    match mutate_body(&body, &settings) {
        Ok(review) => {
            if let Some(r) = &review.response {
                tracing::debug!(uid = %r.uid, patched = r.patch.is_some(), "answered a review");
            }
            axum::Json(review).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "rejected a malformed admission request");
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{e}\n"),
            )
                .into_response()
        }
    }
}

/// Serves the webhook on `listener` until `shutdown` completes, reloading the
/// certificate when its files change.
pub async fn serve<F>(
    listener: TcpListener,
    tls: TlsFiles,
    settings: InjectSettings,
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

    tracing::info!(%addr, path = MUTATE_PATH, "serving the admission webhook");
    let result = axum_server::from_tcp_rustls(listener, config)
        .map_err(InjectError::Listen)?
        .handle(handle)
        .serve(router(Arc::new(settings)).into_make_service())
        .await
        .map_err(InjectError::Serve);
    watcher.abort();
    stopper.abort();
    result
}
