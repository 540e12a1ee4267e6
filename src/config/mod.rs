//! Turns the environment into one [`Config`], every problem reported at once.
//!
//! Data enters as key→value pairs through the small [`Vars`] trait (the
//! process environment in production, a map in tests). [`Config::load`]
//! returns a [`Loaded`]: a `Config` in which every bad variable has fallen
//! back to its default, the warnings (unknown `OOMSNAP_*` names), and the
//! errors naming each bad variable, its value and the expected form. That is
//! what `oomsnap run` uses: it never exits over a bad value (a crash-looping
//! sidecar makes the pod NotReady), it runs on the defaults and reports.
//! [`Config::from_vars`] is the strict face of the same parse, for `oomsnap
//! check`, `oomsnap capture` and `OOMSNAP_STRICT=true`.
//!
//! The names and defaults are in [`names`]; the forms (durations, sizes,
//! rung lists, the quota…) are pure functions in [`parse`], shared with the
//! live annotations and the injector.

pub mod names;
pub mod parse;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use names::*;
pub use parse::*;

use crate::profiles::ProfileKind;
pub use crate::vars::{ProcessEnv, Vars};

/// Who may trigger a capture over the admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminCapture {
    /// Only from the pod itself (`kubectl exec … curl localhost`).
    Loopback,
    /// From any address that presents `OOMSNAP_ADMIN_TOKEN`, and loopback.
    Network,
    Off,
}

/// What becomes of a capture decided by `imminent` below the first rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Imminent {
    /// Spooled at once, shipped only when confirmed (`crate::speculative`).
    Speculative,
    /// Shipped at once, like a rung's capture.
    Ship,
    /// Imminent never fires.
    Off,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Where the pod runs; every field is a sanitised-later path part of the keys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: String,
    pub pod_uid: Option<String>,
}

/// The one configuration of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub cgroup: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    pub target: String,
    pub target_port: u16,
    pub target_process: Option<String>,
    pub memory_limit: Option<u64>,
    pub thresholds: Vec<f64>,
    pub hysteresis: f64,
    #[serde(with = "humantime_serde_compat")]
    pub lead_time: Duration,
    pub imminent: Imminent,
    #[serde(with = "humantime_serde_compat")]
    pub confirm_window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub baseline_every: Duration,
    pub rate_burst: u32,
    #[serde(with = "humantime_serde_compat")]
    pub rate_period: Duration,
    pub manual_rate_burst: u32,
    pub profiles: Vec<ProfileKind>,
    #[serde(with = "humantime_serde_compat")]
    pub cpu_profile_duration: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub fetch_timeout: Duration,
    pub max_profile_bytes: u64,
    pub store: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub annotations_file: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    pub admin_capture: AdminCapture,
    /// Never serialised: `oomsnap check` prints the config.
    #[serde(skip)]
    pub admin_token: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub poll_min: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub poll_max: Duration,
    pub kernel_wakeups: bool,
    pub log_format: LogFormat,
    pub strict: bool,
    pub identity: Identity,
}

mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// One bad variable: its name, the value given and the form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    pub var: String,
    pub value: String,
    pub expected: String,
}

/// Every bad variable of one start-up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the configuration has {} problem{}:",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// True when `var` was set to a value that could not be used.
    pub fn names(&self, var: &str) -> bool {
        self.0.iter().any(|e| e.var == var)
    }
}

/// The outcome of reading the environment leniently.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Every bad variable replaced by its default (see [`ConfigErrors`]).
    pub config: Config,
    /// Unknown `OOMSNAP_*` names, and safe fallbacks that need saying.
    pub warnings: Vec<String>,
    pub errors: ConfigErrors,
}

/// Collects errors while every variable is parsed.
struct Reader<'a> {
    vars: &'a dyn Vars,
    errors: Vec<ConfigError>,
}

impl Reader<'_> {
    fn raw(&self, var: &str) -> Option<String> {
        self.vars.get(var).map(|v| v.trim().to_string())
    }

    fn parse<T>(
        &mut self,
        var: &str,
        default: T,
        expected: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.raw(var) {
            None => default,
            Some(v) => match f(&v) {
                Ok(t) => t,
                Err(why) => {
                    let expected = if why.is_empty() {
                        expected.to_string()
                    } else {
                        format!("{expected} ({why})")
                    };
                    self.errors.push(ConfigError {
                        var: var.to_string(),
                        value: redact(&v),
                        expected,
                    });
                    default
                }
            },
        }
    }

    /// A duration up to `max`: larger values would overflow the arithmetic
    /// that uses them long after start, so they are refused here.
    fn duration(&mut self, var: &str, default: Duration, max: Duration) -> Duration {
        self.parse(
            var,
            default,
            &format!(
                "a duration such as 250ms, 10s or 5m, at most {}",
                humantime::format_duration(max)
            ),
            |v| bounded(v, Duration::ZERO, max),
        )
    }

    fn error(&mut self, var: &str, value: &str, expected: impl Into<String>) {
        self.errors.push(ConfigError {
            var: var.into(),
            value: value.into(),
            expected: expected.into(),
        });
    }
}

impl Config {
    /// Strict: the config and its warnings, or every error at once.
    pub fn from_vars(vars: &dyn Vars) -> Result<(Config, Vec<String>), ConfigErrors> {
        Config::from_vars_known(vars, &[])
    }

    /// As [`Config::from_vars`], with more names that are known elsewhere
    /// (the binary passes the injector's), so they raise no typo warning.
    pub fn from_vars_known(
        vars: &dyn Vars,
        also_known: &[&str],
    ) -> Result<(Config, Vec<String>), ConfigErrors> {
        let l = Config::load(vars, also_known);
        if l.errors.0.is_empty() {
            Ok((l.config, l.warnings))
        } else {
            Err(l.errors)
        }
    }

    /// Lenient: reads every variable, and replaces each bad one by its
    /// default (a bad `OOMSNAP_ADMIN_CAPTURE` by `loopback`, the safest).
    pub fn load(vars: &dyn Vars, also_known: &[&str]) -> Loaded {
        let mut r = Reader {
            vars,
            errors: Vec::new(),
        };
        let mut warnings = Vec::new();
        let cgroup = r.raw(CGROUP).map(PathBuf::from);
        let cgroup_root = PathBuf::from(r.raw(CGROUP_ROOT).unwrap_or(DEFAULT_CGROUP_ROOT.into()));
        let (target, target_port) = r.parse(
            TARGET,
            (DEFAULT_TARGET.to_string(), 6060),
            "an http:// URL of the Go pprof index, such as http://127.0.0.1:6060/debug/pprof",
            parse_target,
        );
        let target_process = r.raw(TARGET_PROCESS);
        let memory_limit = r.parse(
            MEMORY_LIMIT,
            None,
            "a size above zero such as 512Mi, 1GiB or 268435456",
            |v| parse_memory_limit(v).map(Some),
        );
        let thresholds = r.parse(
            THRESHOLDS,
            DEFAULT_THRESHOLDS.to_vec(),
            "ascending percents of the limit from 1 to below 100, such as 80,90,95",
            parse_percent_list,
        );
        let hysteresis = r.parse(
            HYSTERESIS,
            DEFAULT_HYSTERESIS,
            "percentage points between 0 and 50, such as 5",
            |v| {
                let p = parse_percent(v)?;
                if p > 50.0 {
                    Err("it must be at most 50".into())
                } else {
                    Ok(p)
                }
            },
        );
        let lead_time = r.duration(LEAD_TIME, DEFAULT_LEAD_TIME, MAX_SHORT_DURATION);
        let imminent = r.parse(
            IMMINENT,
            Imminent::Speculative,
            "one of speculative, ship, off",
            |v| match v.to_ascii_lowercase().as_str() {
                "speculative" => Ok(Imminent::Speculative),
                "ship" => Ok(Imminent::Ship),
                "off" => Ok(Imminent::Off),
                _ => Err(String::new()),
            },
        );
        let confirm_window = r.parse(
            CONFIRM_WINDOW,
            DEFAULT_CONFIRM_WINDOW,
            "a duration such as 30s, from 1s to 1h",
            |v| bounded(v, Duration::from_secs(1), MAX_SHORT_DURATION),
        );
        let baseline_every = r.duration(BASELINE_EVERY, DEFAULT_BASELINE_EVERY, MAX_LONG_DURATION);
        let rate_burst = r.parse(
            RATE_BURST,
            DEFAULT_RATE_BURST,
            "a whole number of captures from 1 to 1000",
            parse_rate_burst,
        );
        let rate_period = r.parse(
            RATE_PERIOD,
            DEFAULT_RATE_PERIOD,
            "a duration such as 10m, from 1s to 30days",
            parse_rate_period,
        );
        let manual_rate_burst = r.parse(
            MANUAL_RATE_BURST,
            DEFAULT_MANUAL_RATE_BURST,
            "a whole number of captures from 1 to 1000",
            parse_rate_burst,
        );
        let profiles = r.parse(
            PROFILES,
            DEFAULT_PROFILES.to_vec(),
            &format!(
                "a comma-separated list of {}",
                ProfileKind::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            parse_profiles,
        );
        let cpu_profile_duration = r.duration(
            CPU_PROFILE_DURATION,
            DEFAULT_CPU_PROFILE_DURATION,
            MAX_SHORT_DURATION,
        );
        let fetch_timeout = r.parse(
            FETCH_TIMEOUT,
            DEFAULT_FETCH_TIMEOUT,
            "a duration above zero such as 10s, at most 1h",
            |v| bounded(v, Duration::from_millis(1), MAX_SHORT_DURATION),
        );
        let max_profile_bytes = r.parse(
            MAX_PROFILE_BYTES,
            DEFAULT_MAX_PROFILE_BYTES,
            "a size above zero such as 256MiB",
            nonzero_size,
        );
        let store = r.parse(
            STORE,
            DEFAULT_STORE.to_string(),
            "an object store URL: file:///path, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or memory://",
            |v| crate::store::StoreUrl::parse(v).map(|_| v.to_string()).map_err(|e| e.to_string()),
        );
        let spool_dir = PathBuf::from(r.raw(SPOOL_DIR).unwrap_or(DEFAULT_SPOOL_DIR.into()));
        let spool_max_bytes = r.parse(
            SPOOL_MAX_BYTES,
            DEFAULT_SPOOL_MAX_BYTES,
            "a size above zero such as 1GiB",
            nonzero_size,
        );
        let annotations_file = PathBuf::from(
            r.raw(ANNOTATIONS_FILE)
                .unwrap_or(DEFAULT_ANNOTATIONS_FILE.into()),
        );
        let admin_addr = r.parse(
            ADMIN_ADDR,
            Some(DEFAULT_ADMIN_ADDR.parse().expect("default admin address")),
            "host:port such as 0.0.0.0:9186, or off",
            |v| {
                if v.eq_ignore_ascii_case("off") {
                    Ok(None)
                } else {
                    v.parse::<SocketAddr>().map(Some).map_err(|_| String::new())
                }
            },
        );
        let admin_token = r.raw(ADMIN_TOKEN);
        let mut admin_capture = r.parse(
            ADMIN_CAPTURE,
            AdminCapture::Loopback,
            "one of loopback, network, off",
            |v| match v.to_ascii_lowercase().as_str() {
                "loopback" => Ok(AdminCapture::Loopback),
                // `any` was the old name of an open endpoint; it now needs
                // the token too.
                "network" | "any" => Ok(AdminCapture::Network),
                "off" => Ok(AdminCapture::Off),
                _ => Err(String::new()),
            },
        );
        if admin_capture == AdminCapture::Network
            && admin_token.as_deref().is_none_or(|t| t.len() < 16)
        {
            let v = r.raw(ADMIN_CAPTURE).unwrap_or_default();
            r.error(
                ADMIN_CAPTURE,
                &v,
                format!(
                    "loopback or off, or network together with {ADMIN_TOKEN} set to a secret of at least 16 characters (captures from the network would otherwise be open to anyone who reaches the pod)"
                ),
            );
            admin_capture = AdminCapture::Loopback;
        }
        let shutdown_grace = r.duration(SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE, MAX_SHORT_DURATION);
        let poll_min = r.parse(
            POLL_MIN,
            DEFAULT_POLL_MIN,
            "a duration of at least 1ms such as 2ms",
            |v| match parse_duration(v)? {
                d if d < Duration::from_millis(1) => Err("it must be at least 1ms".into()),
                d => Ok(d),
            },
        );
        let mut poll_max = r.parse(
            POLL_MAX,
            DEFAULT_POLL_MAX,
            "a duration between 1ms and 1m such as 500ms",
            |v| match parse_duration(v)? {
                d if d < Duration::from_millis(1) || d > Duration::from_secs(60) => {
                    Err("it must be between 1ms and 1m".into())
                }
                d => Ok(d),
            },
        );
        if poll_min > poll_max {
            // Name the variable the user set; both may be.
            let (var, other, bound) = match r.raw(POLL_MIN) {
                Some(_) => (POLL_MIN, POLL_MAX, poll_max),
                None => (POLL_MAX, POLL_MIN, poll_min),
            };
            let v = r.raw(var).unwrap_or_default();
            let rel = if var == POLL_MIN {
                "no longer"
            } else {
                "no shorter"
            };
            r.error(
                var,
                &v,
                format!(
                    "a duration {rel} than {other} ({})",
                    humantime::format_duration(bound)
                ),
            );
            poll_max = poll_min;
        }
        let kernel_wakeups = r.parse(KERNEL_WAKEUPS, true, "true or false", parse_bool);
        let log_format = r.parse(
            LOG_FORMAT,
            LogFormat::Auto,
            "one of auto, json, text",
            |v| match v.to_ascii_lowercase().as_str() {
                "auto" => Ok(LogFormat::Auto),
                "json" => Ok(LogFormat::Json),
                "text" => Ok(LogFormat::Text),
                _ => Err(String::new()),
            },
        );
        let strict = r.parse(STRICT, false, "true or false", parse_bool);
        let identity = Identity {
            namespace: r.raw(POD_NAMESPACE).unwrap_or_else(|| "default".into()),
            pod: r.raw(POD_NAME).unwrap_or_else(hostname),
            container: r.raw(CONTAINER).unwrap_or_else(|| DEFAULT_CONTAINER.into()),
            node: r.raw(NODE_NAME).unwrap_or_else(hostname),
            pod_uid: r.raw(POD_UID),
        };
        let known: Vec<&str> = KNOWN.iter().chain(also_known).copied().collect();
        warnings.extend(unknown_var_warnings(vars, &known));
        Loaded {
            config: Config {
                cgroup,
                cgroup_root,
                target,
                target_port,
                target_process,
                memory_limit,
                thresholds,
                hysteresis,
                lead_time,
                imminent,
                confirm_window,
                baseline_every,
                rate_burst,
                rate_period,
                manual_rate_burst,
                profiles,
                cpu_profile_duration,
                fetch_timeout,
                max_profile_bytes,
                store,
                spool_dir,
                spool_max_bytes,
                annotations_file,
                admin_addr,
                admin_capture,
                admin_token,
                shutdown_grace,
                poll_min,
                poll_max,
                kernel_wakeups,
                log_format,
                strict,
                identity,
            },
            warnings,
            errors: ConfigErrors(r.errors),
        }
    }
}

/// Warnings for `OOMSNAP_*` names that nothing reads, with the closest known name.
pub fn unknown_var_warnings(vars: &dyn Vars, known: &[&str]) -> Vec<String> {
    let mut keys = vars.keys();
    keys.sort();
    keys.into_iter()
        .filter(|k| k.starts_with("OOMSNAP_") && !known.contains(&k.as_str()))
        .map(|k| {
            let best = known.iter().map(|n| (strsim::levenshtein(&k, n), *n)).min();
            match best {
                Some((d, n)) if d <= 4 => {
                    format!("{k} is not an oomsnap variable and is ignored; did you mean {n}?")
                }
                _ => format!("{k} is not an oomsnap variable and is ignored"),
            }
        })
        .collect()
}

/// A map of `pairs`, standing in for the environment (or an annotations
/// file) in unit tests.
#[cfg(test)]
pub(crate) fn vars(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
