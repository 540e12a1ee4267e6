//! `oomsnap inject`: a mutating admission webhook that adds the oomsnap
//! sidecar to pods that ask for it (a label or annotation
//! `oomsnap.dev/inject: "true"`, or a namespace labelled
//! `oomsnap.dev/inject=enabled`).
//!
//! - [`pod`]      — a borrowed, lenient view of the review: parsed once
//! - [`review`]   — the AdmissionReview envelope in and out
//! - [`decide`]   — pure: is the pod ours, and with which values
//! - [`patch`]    — pure: the decision → JSONPatch + warnings
//! - [`quantity`] — Kubernetes resource quantities, one parser
//! - [`kubelet`]  — the environment the kubelet would give the sidecar
//! - [`settings`] — the sidecar's image, resources and store, from the
//!   injector's environment (`OOMSNAP_INJECT_*`)
//! - [`server`]   — HTTPS (rustls), bounded in bodies and concurrent reviews
//! - [`cert`]     — `--self-signed` certificates and the reload watcher
//!
//! [`mutate`] is the whole decision without a server; [`serve`] puts it on
//! the network; [`run`] is what the CLI calls.

pub mod cert;
pub mod decide;
pub mod kubelet;
pub mod patch;
pub mod pod;
pub mod quantity;
pub mod review;
pub mod server;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

pub use decide::Scope;
pub use patch::{plan, Outcome, Plan};
pub use review::{parse_request, AdmissionResponse, AdmissionReview, ReviewError};
pub use server::{serve, ServeLimits, TlsFiles, MAX_BODY_BYTES};
pub use settings::{InjectSettings, KNOWN_VARS};

use crate::config::{ConfigErrors, ProcessEnv, Vars};
use pod::Request;

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
/// webhook only adds), patches pods that get the sidecar or are skipped,
/// explains in `warnings` what it could not do, and logs the decision with
/// its reason at info.
pub fn mutate(request: &Request<'_>, scope: Scope, settings: &InjectSettings) -> AdmissionReview {
    let mut response = AdmissionResponse {
        uid: request.uid.get().unwrap_or_default().to_string(),
        allowed: true,
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    };
    let is_pod = request
        .kind
        .get()
        .is_some_and(|k| k.kind.get() == Some("Pod") && k.group.get().unwrap_or("").is_empty());
    // Only CREATE: containers cannot be added to a pod that already exists.
    let operation = request.operation.get().unwrap_or("");
    let is_create = operation.is_empty() || operation == "CREATE";
    let meta = request.object.get().and_then(|p| p.metadata.get());
    let namespace = request
        .namespace
        .get()
        .or_else(|| meta.and_then(|m| m.namespace.get()))
        .unwrap_or("?");
    let name = meta.map_or_else(|| "?".to_string(), |m| m.display_name());
    let (outcome, reason) = match request.object.get() {
        _ if !is_pod || !is_create => (Outcome::LeftAlone, "not a pod CREATE".to_string()),
        None => {
            response
                .warnings
                .push("oomsnap: the review carries no pod object; not injected".into());
            (
                Outcome::LeftAlone,
                "the review carries no pod object".to_string(),
            )
        }
        Some(pod) => {
            let plan = patch::plan(pod, scope, settings);
            response.warnings = plan.warnings;
            if let Some(ops) = plan.patch {
                let text = serde_json::to_vec(&ops).expect("JSON values serialise");
                response.patch_type = Some("JSONPatch".into());
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(text));
            }
            (plan.outcome, plan.reason)
        }
    };
    tracing::info!(
        namespace = %namespace,
        pod = %name,
        scope = scope.name(),
        outcome = outcome.name(),
        reason = %reason,
        warnings = %response.warnings.join("; "),
        "admission decision"
    );
    AdmissionReview::answer(response)
}

/// [`mutate`] from a raw request body, parsed once, for the webhook entry
/// `scope` ([`server::MUTATE_PATH`] is [`Scope::Pod`],
/// [`server::MUTATE_NAMESPACE_PATH`] is [`Scope::Namespace`]).
pub fn mutate_scoped(
    body: &[u8],
    scope: Scope,
    settings: &InjectSettings,
) -> Result<AdmissionReview, ReviewError> {
    let request = review::parse_request(body)?;
    Ok(mutate(&request, scope, settings))
}

/// [`mutate_scoped`] for pods that opt in themselves ([`Scope::Pod`]).
pub fn mutate_body(body: &[u8], settings: &InjectSettings) -> Result<AdmissionReview, ReviewError> {
    mutate_scoped(body, Scope::Pod, settings)
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
    // Field by field: JSON log pipelines get plain values, not Rust debug text.
    tracing::info!(
        image = %settings.image,
        image_pull_policy = %settings.image_pull_policy,
        cpu_request = %settings.cpu_request,
        memory_request = %settings.memory_request,
        memory_limit = %settings.memory_limit,
        store = settings.store.as_deref().unwrap_or(""),
        env_from_secret = settings.env_from_secret.as_deref().unwrap_or(""),
        native_sidecar = settings.native_sidecar,
        sys_ptrace = settings.sys_ptrace,
        "injector settings"
    );
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
    serve(
        listener,
        tls,
        settings,
        ServeLimits::default(),
        shutdown_signal(),
    )
    .await
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
