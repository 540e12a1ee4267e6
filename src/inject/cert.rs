//! TLS material for the webhook: a self-signed CA and serving certificate
//! for `--self-signed`, and a watcher that reloads the serving certificate
//! when its files change (cert-manager and Secret volume updates rotate them
//! in place; the API server must never see an expired certificate).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::InjectError;

/// File names written by `--self-signed`, the same as a `kubernetes.io/tls`
/// Secret's keys (plus `ca.crt`), so the directory can become that Secret.
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// How long a generated certificate lasts.
pub const VALIDITY_YEARS: i32 = 10;

/// A CA and a serving certificate signed by it, all PEM.
#[derive(Debug, Clone)]
pub struct Generated {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Generated {
    /// The `caBundle` of a webhook configuration: base64 of the CA's PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

/// The DNS names the API server may use for `<service>.<namespace>`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Makes a fresh CA and a serving certificate for `names`.
///
/// A separate CA (rather than one self-signed leaf) because TLS clients such
/// as rustls refuse a CA certificate as the server's own, and the API server
/// wants a CA in `caBundle`; this shape satisfies both.
pub fn generate(names: &[String]) -> Result<Generated, rcgen::Error> {
    let year = 1970
        + (SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / 31_556_952) as i32;
    let not_after = rcgen::date_time_ymd(year + VALIDITY_YEARS, 1, 1);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "oomsnap injector CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.first() {
        leaf.distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;

    Ok(Generated {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created if needed;
/// the key is mode 0600).
pub fn write(dir: &Path, generated: &Generated) -> Result<(), InjectError> {
    let io = |path: PathBuf| move |source| InjectError::WriteCert { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    for (name, text) in [
        (CA_FILE, &generated.ca_pem),
        (CERT_FILE, &generated.cert_pem),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(p.clone()))?;
    }
    let p = dir.join(KEY_FILE);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .map_err(io(p.clone()))?;
        f.write_all(generated.key_pem.as_bytes())
            .map_err(io(p.clone()))?;
    }
    Ok(())
}

/// What identifies one version of a file: its modification time, size and
/// inode (a Secret volume swaps a symlink, which changes all three).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Polls `cert` and `key` every `every`; when either changed, reloads
/// `config`. A failed reload (say the key was written before the certificate)
/// keeps the old certificate and is retried on the next tick.
pub async fn watch(config: RustlsConfig, cert: PathBuf, key: PathBuf, every: Duration) {
    let mut seen = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
                seen = now;
            }
            Err(e) => tracing::warn!(
                cert = %cert.display(),
                key = %key.display(),
                error = %e,
                "the TLS files changed but could not be loaded; still serving the previous certificate"
            ),
        }
    }
}
