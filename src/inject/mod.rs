//! `oomsnap inject`: a mutating admission webhook that adds the oomsnap
//! sidecar to pods annotated `oomsnap.dev/inject: "true"`.
//!
//! - [`review`]   — AdmissionReview v1 serde types (small, hand-written)
//! - [`settings`] — the sidecar's image, resources and store, from the
//!   injector's environment (`OOMSNAP_INJECT_*`)
//! - [`patch`]    — pure: pod JSON → JSONPatch + warnings
//! - [`server`]   — HTTPS (rustls) server with a bounded body
//! - [`cert`]     — `--self-signed` certificates and the reload watcher
//!
//! [`mutate`] is the whole decision without a server; [`serve`] puts it on
//! the network; [`run`] is what the CLI calls.

pub mod cert;
pub mod patch;
pub mod review;
pub mod server;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

pub use patch::{plan, Plan};
pub use review::{AdmissionRequest, AdmissionResponse, AdmissionReview, ReviewError};
pub use server::{serve, TlsFiles, MAX_BODY_BYTES};
pub use settings::{InjectSettings, KNOWN_VARS};

use crate::config::{ConfigErrors, ProcessEnv, Vars};

/// Flags of `oomsnap inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct InjectArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate (chain) to serve; reloaded when the file changes.
    #[arg(long, default_value = "/etc/oomsnap/tls/tls.crt")]
    pub tls_cert: PathBuf,
    /// PEM private key to serve; reloaded when the file changes.
    #[arg(long, default_value = "/etc/oomsnap/tls/tls.key")]
    pub tls_key: PathBuf,
    /// How often to check the certificate files for changes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub reload_every: Duration,
    /// Write a new CA (ca.crt) and a serving certificate (tls.crt, tls.key)
    /// for <service>.<namespace>.svc into DIR, print the base64 caBundle for
    /// the webhook configuration, and exit without serving.
    #[arg(long, value_name = "DIR")]
    pub self_signed: Option<PathBuf>,
    /// Service name the certificate is for (with --self-signed).
    #[arg(long, default_value = "oomsnap-injector")]
    pub service: String,
    /// Namespace of that Service (with --self-signed).
    #[arg(long, default_value = "oomsnap")]
    pub namespace: String,
}

/// Why `oomsnap inject` stopped.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("the injector's environment is not valid.\n{0}")]
    Config(#[from] ConfigErrors),
    #[error(
        "could not load the TLS certificate {cert} and key {key}: {source}. \
         Mount a kubernetes.io/tls Secret there, or make one with `oomsnap inject --self-signed DIR`"
    )]
    LoadCert {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("could not generate a certificate for {names:?}: {source}")]
    GenerateCert {
        names: Vec<String>,
        source: rcgen::Error,
    },
    #[error("could not write {path}: {source}")]
    WriteCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not listen for HTTPS: {0}")]
    Listen(std::io::Error),
    #[error("could not listen on {addr}: {source}. Is another process using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the webhook server failed: {0}")]
    Serve(std::io::Error),
}

/// Decides one review: never refuses a pod (`allowed` is always true; the
/// webhook only adds), patches opted-in pods, and explains in `warnings`
/// what it could not do.
pub fn mutate(request: &AdmissionRequest, settings: &InjectSettings) -> AdmissionReview {
    let mut response = AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    };
    let is_pod = request.kind.kind == "Pod" && request.kind.group.is_empty();
    // Only CREATE: containers cannot be added to a pod that already exists.
    let is_create = request.operation.is_empty() || request.operation == "CREATE";
    if is_pod && is_create {
        match request.object.as_ref().filter(|o| o.is_object()) {
            None => response
                .warnings
                .push("oomsnap: the review carries no pod object; not injected".into()),
            Some(pod) => {
                let plan = patch::plan(pod, settings);
                response.warnings = plan.warnings;
                if let Some(ops) = plan.patch {
                    let text = serde_json::to_vec(&ops).expect("JSON values serialise");
                    response.patch_type = Some("JSONPatch".into());
                    response.patch = Some(base64::engine::general_purpose::STANDARD.encode(text));
                }
            }
        }
    }
    AdmissionReview::answer(response)
}

/// [`mutate`] from a raw request body.
pub fn mutate_body(body: &[u8], settings: &InjectSettings) -> Result<AdmissionReview, ReviewError> {
    let request = AdmissionReview::parse_request(body)?;
    Ok(mutate(&request, settings))
}

/// `oomsnap inject`: either write a self-signed certificate and exit, or
/// serve the webhook until SIGTERM / Ctrl-C.
pub async fn run(args: InjectArgs) -> Result<(), InjectError> {
    if let Some(dir) = &args.self_signed {
        let names = cert::service_names(&args.service, &args.namespace);
        let generated = cert::generate(&names).map_err(|source| InjectError::GenerateCert {
            names: names.clone(),
            source,
        })?;
        cert::write(dir, &generated)?;
        eprintln!(
            "wrote {}, {} and {} for {} into {}; the caBundle is:",
            cert::CA_FILE,
            cert::CERT_FILE,
            cert::KEY_FILE,
            names.join(", "),
            dir.display()
        );
        println!("{}", generated.ca_bundle());
        return Ok(());
    }

    let settings = InjectSettings::from_vars(&ProcessEnv)?;
    for key in ProcessEnv.keys() {
        if key.starts_with("OOMSNAP_INJECT_") && !KNOWN_VARS.contains(&key.as_str()) {
            tracing::warn!(variable = %key, "unknown OOMSNAP_INJECT_ variable (a typo?); ignored");
        }
    }
    tracing::info!(?settings, "injector settings");
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|source| InjectError::Bind {
            addr: args.listen,
            source,
        })?;
    let tls = TlsFiles {
        cert: args.tls_cert,
        key: args.tls_key,
        reload_every: args.reload_every,
    };
    serve(listener, tls, settings, shutdown_signal()).await
}

/// Completes on SIGTERM (what kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
