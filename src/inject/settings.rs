//! What the injected sidecar looks like, read from the injector's own
//! environment.
//!
//! The cluster operator configures the injector Deployment once; every pod it
//! patches gets the same image, resources and store. Values go through the
//! crate's [`Vars`] trait so tests hand in a map, and every bad variable is
//! reported at once, like the sidecar's own configuration.

use super::quantity;
use crate::config::{parse_bool, ConfigError, ConfigErrors, Vars};

/// Image of the injected sidecar. Default `ghcr.io/oomsnap/oomsnap:<version>`.
pub const IMAGE: &str = "OOMSNAP_INJECT_IMAGE";
/// `imagePullPolicy` of the sidecar: `IfNotPresent` (default), `Always`, `Never`.
pub const IMAGE_PULL_POLICY: &str = "OOMSNAP_INJECT_IMAGE_PULL_POLICY";
/// CPU request of the sidecar, a Kubernetes quantity. Default `10m`.
pub const CPU_REQUEST: &str = "OOMSNAP_INJECT_CPU_REQUEST";
/// Memory request of the sidecar, a Kubernetes quantity. Default `16Mi`.
pub const MEMORY_REQUEST: &str = "OOMSNAP_INJECT_MEMORY_REQUEST";
/// Memory limit of the sidecar, a Kubernetes quantity. Default `32Mi`.
pub const MEMORY_LIMIT: &str = "OOMSNAP_INJECT_MEMORY_LIMIT";
/// Object store URL given to every sidecar as `OOMSNAP_STORE`. Default: unset
/// (the sidecar's own default, a directory in its spool volume).
pub const STORE: &str = "OOMSNAP_INJECT_STORE";
/// Name of a Secret *in the pod's namespace* whose keys become the sidecar's
/// environment (`envFrom`, optional), e.g. `AWS_ACCESS_KEY_ID`. Default: none.
pub const ENV_FROM_SECRET: &str = "OOMSNAP_INJECT_ENV_FROM_SECRET";
/// `auto`, `true` or `false`: add the sidecar as a native sidecar (an init
/// container with `restartPolicy: Always`, Kubernetes ≥ 1.29). `auto` means
/// `true`: the review carries no server version. Set `false` before 1.29.
pub const NATIVE_SIDECAR: &str = "OOMSNAP_INJECT_NATIVE_SIDECAR";
/// Add the `SYS_PTRACE` capability to the sidecar, so it can read
/// `/proc/<pid>/root` of an app running as another UID. Default `false`
/// (the capability is outside the Pod Security "baseline" profile).
pub const SYS_PTRACE: &str = "OOMSNAP_INJECT_SYS_PTRACE";

/// Every variable the injector reads.
pub const KNOWN_VARS: &[&str] = &[
    IMAGE,
    IMAGE_PULL_POLICY,
    CPU_REQUEST,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    STORE,
    ENV_FROM_SECRET,
    NATIVE_SIDECAR,
    SYS_PTRACE,
];

/// Defaults, next to their names.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/oomsnap/oomsnap";
pub const DEFAULT_IMAGE_PULL_POLICY: &str = "IfNotPresent";
pub const DEFAULT_CPU_REQUEST: &str = "10m";
pub const DEFAULT_MEMORY_REQUEST: &str = "16Mi";
pub const DEFAULT_MEMORY_LIMIT: &str = "32Mi";

/// Everything [`super::patch`] needs to build a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    pub image: String,
    pub image_pull_policy: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub store: Option<String>,
    pub env_from_secret: Option<String>,
    pub native_sidecar: bool,
    pub sys_ptrace: bool,
}

impl Default for InjectSettings {
    fn default() -> Self {
        InjectSettings {
            image: format!("{DEFAULT_IMAGE_REPOSITORY}:{}", crate::VERSION),
            image_pull_policy: DEFAULT_IMAGE_PULL_POLICY.into(),
            cpu_request: DEFAULT_CPU_REQUEST.into(),
            memory_request: DEFAULT_MEMORY_REQUEST.into(),
            memory_limit: DEFAULT_MEMORY_LIMIT.into(),
            store: None,
            env_from_secret: None,
            native_sidecar: true,
            sys_ptrace: false,
        }
    }
}

impl InjectSettings {
    /// Reads every `OOMSNAP_INJECT_*` variable; on failure names each bad one.
    pub fn from_vars(vars: &dyn Vars) -> Result<InjectSettings, ConfigErrors> {
        let mut s = InjectSettings::default();
        let mut errors = Vec::new();
        let mut bad = |var: &str, value: &str, expected: &str| {
            errors.push(ConfigError {
                var: var.into(),
                value: value.into(),
                expected: expected.into(),
            })
        };

        if let Some(v) = vars.get(IMAGE) {
            let v = v.trim();
            if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad(
                    IMAGE,
                    v,
                    "an image reference such as ghcr.io/oomsnap/oomsnap:0.1.0",
                );
            } else {
                s.image = v.into();
            }
        }
        if let Some(v) = vars.get(IMAGE_PULL_POLICY) {
            match v.trim() {
                p @ ("IfNotPresent" | "Always" | "Never") => s.image_pull_policy = p.into(),
                _ => bad(IMAGE_PULL_POLICY, &v, "IfNotPresent, Always or Never"),
            }
        }
        for (var, slot) in [
            (CPU_REQUEST, &mut s.cpu_request),
            (MEMORY_REQUEST, &mut s.memory_request),
            (MEMORY_LIMIT, &mut s.memory_limit),
        ] {
            if let Some(v) = vars.get(var) {
                match quantity::parse(&v) {
                    Ok(q) if var == MEMORY_LIMIT && q.is_zero() => {
                        bad(var, &v, "a memory limit above zero, such as 32Mi")
                    }
                    Ok(_) => *slot = v.trim().into(),
                    Err(why) => bad(
                        var,
                        &v,
                        &format!("a Kubernetes quantity such as 10m, 16Mi or 0.5 ({why})"),
                    ),
                }
            }
        }
        // The one quantity parser read both (each slot holds a value it
        // accepted, or the default), so this check is never skipped.
        if let (Ok(req), Ok(lim)) = (
            quantity::parse(&s.memory_request),
            quantity::parse(&s.memory_limit),
        ) {
            if req.ceil() > lim.ceil() {
                bad(
                    MEMORY_REQUEST,
                    &s.memory_request,
                    &format!("at most the memory limit ({})", s.memory_limit),
                );
            }
        }
        if let Some(v) = vars.get(STORE) {
            let v = v.trim();
            // The same parser the sidecar uses, so the injector never
            // hands a pod a store its sidecar would refuse.
            match crate::store::StoreUrl::parse(v) {
                Ok(_) => s.store = Some(v.into()),
                Err(e) => bad(
                    STORE,
                    v,
                    &format!(
                        "an object store URL: file:///path, s3://bucket/prefix, gs://…, az://… or memory:// ({e})"
                    ),
                ),
            }
        }
        if let Some(v) = vars.get(ENV_FROM_SECRET) {
            let v = v.trim();
            if is_dns_subdomain(v) {
                s.env_from_secret = Some(v.into());
            } else {
                bad(
                    ENV_FROM_SECRET,
                    v,
                    "the name of a Secret (lower-case letters, digits, '-' and '.')",
                );
            }
        }
        if let Some(v) = vars.get(NATIVE_SIDECAR) {
            if v.trim().eq_ignore_ascii_case("auto") {
                s.native_sidecar = true;
            } else {
                match parse_bool(v.trim()) {
                    Ok(b) => s.native_sidecar = b,
                    Err(_) => bad(NATIVE_SIDECAR, &v, "auto, true or false"),
                }
            }
        }
        if let Some(v) = vars.get(SYS_PTRACE) {
            match parse_bool(v.trim()) {
                Ok(b) => s.sys_ptrace = b,
                Err(_) => bad(SYS_PTRACE, &v, "true or false"),
            }
        }

        if errors.is_empty() {
            Ok(s)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// An RFC 1123 subdomain, the form of most Kubernetes object names.
pub fn is_dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars;

    #[test]
    fn defaults_when_nothing_is_set() {
        let s = InjectSettings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s, InjectSettings::default());
        assert_eq!(
            s.image,
            format!("ghcr.io/oomsnap/oomsnap:{}", crate::VERSION)
        );
        assert!(s.native_sidecar);
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let err = InjectSettings::from_vars(&vars(&[
            (CPU_REQUEST, "ten"),
            (MEMORY_LIMIT, "32MiB"),
            (NATIVE_SIDECAR, "maybe"),
            (STORE, "bucket"),
            (ENV_FROM_SECRET, "My_Secret"),
            (IMAGE_PULL_POLICY, "sometimes"),
        ]))
        .unwrap_err();
        let names: Vec<_> = err.0.iter().map(|e| e.var.as_str()).collect();
        assert_eq!(
            names,
            [
                IMAGE_PULL_POLICY,
                CPU_REQUEST,
                MEMORY_LIMIT,
                STORE,
                ENV_FROM_SECRET,
                NATIVE_SIDECAR
            ]
        );
        assert!(err
            .to_string()
            .contains("OOMSNAP_INJECT_MEMORY_LIMIT=\"32MiB\""));
    }

    #[test]
    fn memory_request_above_limit_is_an_error() {
        let err = InjectSettings::from_vars(&vars(&[(MEMORY_REQUEST, "64Mi")])).unwrap_err();
        assert_eq!(err.0[0].var, MEMORY_REQUEST);
    }

    #[test]
    fn auto_native_sidecar_means_true_and_false_is_honoured() {
        let s = InjectSettings::from_vars(&vars(&[(NATIVE_SIDECAR, "auto")])).unwrap();
        assert!(s.native_sidecar);
        let s = InjectSettings::from_vars(&vars(&[(NATIVE_SIDECAR, "false")])).unwrap();
        assert!(!s.native_sidecar);
    }

    #[test]
    fn the_request_limit_check_reads_every_kubernetes_form() {
        // 1e9 bytes of request against a 512Mi limit: refused, not skipped.
        let err =
            InjectSettings::from_vars(&vars(&[(MEMORY_REQUEST, "1e9"), (MEMORY_LIMIT, "512Mi")]))
                .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].var, MEMORY_REQUEST);
        let s = InjectSettings::from_vars(&vars(&[
            (MEMORY_REQUEST, "16e6"),
            (MEMORY_LIMIT, "0.03Gi"),
            (CPU_REQUEST, "1e-2"),
        ]))
        .unwrap();
        assert_eq!(
            (s.memory_request.as_str(), s.cpu_request.as_str()),
            ("16e6", "1e-2")
        );
        let err = InjectSettings::from_vars(&vars(&[(MEMORY_LIMIT, "0")])).unwrap_err();
        assert!(err.to_string().contains("above zero"), "{err}");
    }
}
