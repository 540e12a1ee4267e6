//! Turns the environment into one validated [`Config`].
//!
//! Data enters as key→value pairs through the small [`Vars`] trait (the
//! process environment in production, a map in tests) and leaves as a
//! [`Config`] plus a list of warnings, or as [`ConfigErrors`] naming *every*
//! bad variable at once, so a user fixes their manifest in one round trip
//! instead of one restart per typo.
//!
//! Every variable is a named constant below with its form and default; the
//! parsers for durations, sizes and percent lists are pure functions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::profiles::ProfileKind;

/// A source of configuration strings. Tests hand in a map.
pub trait Vars {
    /// The value of `key`, if set (an empty value counts as unset).
    fn get(&self, key: &str) -> Option<String>;
    /// Every key that is set, so unknown `OOMSNAP_*` names can be warned about.
    fn keys(&self) -> Vec<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
    fn keys(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl<S: std::hash::BuildHasher> Vars for std::collections::HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::HashMap::get(self, key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
    fn keys(&self) -> Vec<String> {
        std::collections::HashMap::keys(self).cloned().collect()
    }
}

impl Vars for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key)
            .filter(|v| !v.trim().is_empty())
            .cloned()
    }
    fn keys(&self) -> Vec<String> {
        BTreeMap::keys(self).cloned().collect()
    }
}

// ---------------------------------------------------------------------------
// Variable names. Each one is listed in docs/configuration.md; a test keeps
// the two in step.
// ---------------------------------------------------------------------------

/// Explicit cgroup directory (v1 or v2) of the container to watch.
pub const CGROUP: &str = "OOMSNAP_CGROUP";
/// Where the cgroup filesystem is mounted (a hostPath of the node's cgroupfs
/// in Kubernetes). Default `/sys/fs/cgroup`.
pub const CGROUP_ROOT: &str = "OOMSNAP_CGROUP_ROOT";
/// The Go pprof base URL. Default `http://127.0.0.1:6060/debug/pprof`.
pub const TARGET: &str = "OOMSNAP_TARGET";
/// Name (`comm` or argv[0] basename) of the target process, when it cannot be
/// found by the port in `OOMSNAP_TARGET`.
pub const TARGET_PROCESS: &str = "OOMSNAP_TARGET_PROCESS";
/// The memory limit, when the cgroup shows none (RSS fallback). Size.
pub const MEMORY_LIMIT: &str = "OOMSNAP_MEMORY_LIMIT";
/// Percent-of-limit rungs, ascending. Default `80,90,95`.
pub const THRESHOLDS: &str = "OOMSNAP_THRESHOLDS";
/// Points below a rung that re-arm it. Default `5`.
pub const HYSTERESIS: &str = "OOMSNAP_HYSTERESIS";
/// Capture when the predicted time to OOM drops below this. Default `2s`.
pub const LEAD_TIME: &str = "OOMSNAP_LEAD_TIME";
/// Baseline heap refresh interval; `0` disables. Default `1h`.
pub const BASELINE_EVERY: &str = "OOMSNAP_BASELINE_EVERY";
/// Near-OOM captures allowed in a burst. Default `4`.
pub const RATE_BURST: &str = "OOMSNAP_RATE_BURST";
/// One capture of quota comes back every period. Default `10m`.
pub const RATE_PERIOD: &str = "OOMSNAP_RATE_PERIOD";
/// Profiles of each capture. Default `heap,goroutine`.
pub const PROFILES: &str = "OOMSNAP_PROFILES";
/// How long a `cpu` profile runs (whole seconds, at least 1). Default `5s`.
pub const CPU_PROFILE_DURATION: &str = "OOMSNAP_CPU_PROFILE_DURATION";
/// Per-profile fetch timeout. Default `10s`.
pub const FETCH_TIMEOUT: &str = "OOMSNAP_FETCH_TIMEOUT";
/// Per-profile size cap. Default `256MiB`.
pub const MAX_PROFILE_BYTES: &str = "OOMSNAP_MAX_PROFILE_BYTES";
/// Object store URL. Default `file:///var/lib/oomsnap/store`.
pub const STORE: &str = "OOMSNAP_STORE";
/// Local durable queue. Default `/var/lib/oomsnap/spool`.
pub const SPOOL_DIR: &str = "OOMSNAP_SPOOL_DIR";
/// Spool bound. Default `1GiB`.
pub const SPOOL_MAX_BYTES: &str = "OOMSNAP_SPOOL_MAX_BYTES";
/// Downward API annotations file. Default `/etc/podinfo/annotations`.
pub const ANNOTATIONS_FILE: &str = "OOMSNAP_ANNOTATIONS_FILE";
/// Admin server address. Default `0.0.0.0:9186`; `off` disables it.
pub const ADMIN_ADDR: &str = "OOMSNAP_ADMIN_ADDR";
/// Who may `POST /capture`: `any`, `loopback` or `off`. Default `any`.
pub const ADMIN_CAPTURE: &str = "OOMSNAP_ADMIN_CAPTURE";
/// Time to finish uploads on SIGTERM. Default `20s`.
pub const SHUTDOWN_GRACE: &str = "OOMSNAP_SHUTDOWN_GRACE";
/// Fastest poll interval, used near the next rung and while the usage
/// climbs. Default `2ms`.
pub const POLL_MIN: &str = "OOMSNAP_POLL_MIN";
/// Slowest poll interval, used far below the next rung; each tick reads
/// only the usage file. Default `50ms`.
pub const POLL_MAX: &str = "OOMSNAP_POLL_MAX";
/// Use kernel wake-ups (eventfd, inotify) as well as polling. Default `true`.
pub const KERNEL_WAKEUPS: &str = "OOMSNAP_KERNEL_WAKEUPS";
/// Log format: `auto` (JSON unless on a terminal), `json` or `text`.
pub const LOG_FORMAT: &str = "OOMSNAP_LOG_FORMAT";
/// Name of the watched container, used in object keys. Default `app`.
pub const CONTAINER: &str = "OOMSNAP_CONTAINER";

/// Kubernetes identity, fed from the Downward API.
pub const POD_NAME: &str = "POD_NAME";
/// Namespace of the pod.
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// UID of the pod, used to find its cgroup on the node.
pub const POD_UID: &str = "POD_UID";
/// Node the pod runs on.
pub const NODE_NAME: &str = "NODE_NAME";

/// Every `OOMSNAP_*` name the sidecar reads, for typo warnings and the docs
/// test. The binary adds the injector's names (`inject::KNOWN_VARS`) before it
/// warns, so a shared ConfigMap does not warn; this module knows nothing of
/// the injector.
pub const KNOWN: &[&str] = &[
    CGROUP,
    CGROUP_ROOT,
    TARGET,
    TARGET_PROCESS,
    MEMORY_LIMIT,
    THRESHOLDS,
    HYSTERESIS,
    LEAD_TIME,
    BASELINE_EVERY,
    RATE_BURST,
    RATE_PERIOD,
    PROFILES,
    CPU_PROFILE_DURATION,
    FETCH_TIMEOUT,
    MAX_PROFILE_BYTES,
    STORE,
    SPOOL_DIR,
    SPOOL_MAX_BYTES,
    ANNOTATIONS_FILE,
    ADMIN_ADDR,
    ADMIN_CAPTURE,
    SHUTDOWN_GRACE,
    POLL_MIN,
    POLL_MAX,
    KERNEL_WAKEUPS,
    LOG_FORMAT,
    CONTAINER,
];

// Defaults, typed, next to their names.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_TARGET: &str = "http://127.0.0.1:6060/debug/pprof";
pub const DEFAULT_THRESHOLDS: &[f64] = &[80.0, 90.0, 95.0];
pub const DEFAULT_HYSTERESIS: f64 = 5.0;
pub const DEFAULT_LEAD_TIME: Duration = Duration::from_secs(2);
pub const DEFAULT_BASELINE_EVERY: Duration = Duration::from_secs(3600);
/// One climb decides up to four captures (imminent and three rungs); a
/// burst of four lets the one closest to the OOM through.
pub const DEFAULT_RATE_BURST: u32 = 4;
pub const DEFAULT_RATE_PERIOD: Duration = Duration::from_secs(600);
pub const DEFAULT_PROFILES: &[ProfileKind] = &[ProfileKind::Heap, ProfileKind::Goroutine];
pub const DEFAULT_CPU_PROFILE_DURATION: Duration = Duration::from_secs(5);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_PROFILE_BYTES: u64 = 256 << 20;
pub const DEFAULT_STORE: &str = "file:///var/lib/oomsnap/store";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/oomsnap/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
pub const DEFAULT_ANNOTATIONS_FILE: &str = "/etc/podinfo/annotations";
pub const DEFAULT_ADMIN_ADDR: &str = "0.0.0.0:9186";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
pub const DEFAULT_POLL_MIN: Duration = Duration::from_millis(2);
pub const DEFAULT_POLL_MAX: Duration = Duration::from_millis(50);
pub const DEFAULT_CONTAINER: &str = "app";

/// Who may trigger a capture over the admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminCapture {
    Any,
    Loopback,
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

/// The one validated configuration of a run.
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
    #[serde(with = "humantime_serde_compat")]
    pub baseline_every: Duration,
    pub rate_burst: u32,
    #[serde(with = "humantime_serde_compat")]
    pub rate_period: Duration,
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
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub poll_min: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub poll_max: Duration,
    pub kernel_wakeups: bool,
    pub log_format: LogFormat,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Reads every variable; returns the config and warnings, or all errors.
    pub fn from_vars(vars: &dyn Vars) -> Result<(Config, Vec<String>), ConfigErrors> {
        Config::from_vars_known(vars, &[])
    }

    /// As [`Config::from_vars`], with more names that are known elsewhere
    /// (the binary passes the injector's), so they raise no typo warning.
    pub fn from_vars_known(
        vars: &dyn Vars,
        also_known: &[&str],
    ) -> Result<(Config, Vec<String>), ConfigErrors> {
        let mut r = Reader {
            vars,
            errors: Vec::new(),
        };
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
            "a size such as 512Mi, 1GiB or 268435456",
            |v| match parse_size(v)? {
                0 => Err("it must be above zero".into()),
                n => Ok(Some(n)),
            },
        );
        let thresholds = r.parse(
            THRESHOLDS,
            DEFAULT_THRESHOLDS.to_vec(),
            "ascending percents of the limit between 1 and 100, such as 80,90,95",
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
        let baseline_every = r.duration(BASELINE_EVERY, DEFAULT_BASELINE_EVERY, MAX_LONG_DURATION);
        let rate_burst = r.parse(
            RATE_BURST,
            DEFAULT_RATE_BURST,
            "a whole number of captures from 1 to 1000",
            |v| match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(String::new()),
            },
        );
        let rate_period = r.parse(
            RATE_PERIOD,
            DEFAULT_RATE_PERIOD,
            "a duration above zero such as 10m, at most 30days",
            |v| bounded(v, Duration::from_millis(1), MAX_LONG_DURATION),
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
        let admin_capture = r.parse(
            ADMIN_CAPTURE,
            AdminCapture::Any,
            "one of any, loopback, off",
            |v| match v.to_ascii_lowercase().as_str() {
                "any" => Ok(AdminCapture::Any),
                "loopback" => Ok(AdminCapture::Loopback),
                "off" => Ok(AdminCapture::Off),
                _ => Err(String::new()),
            },
        );
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
        let poll_max = r.parse(
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
        let identity = Identity {
            namespace: r.raw(POD_NAMESPACE).unwrap_or_else(|| "default".into()),
            pod: r.raw(POD_NAME).unwrap_or_else(hostname),
            container: r.raw(CONTAINER).unwrap_or_else(|| DEFAULT_CONTAINER.into()),
            node: r.raw(NODE_NAME).unwrap_or_else(hostname),
            pod_uid: r.raw(POD_UID),
        };

        if !r.errors.is_empty() {
            return Err(ConfigErrors(r.errors));
        }
        let known: Vec<&str> = KNOWN.iter().chain(also_known).copied().collect();
        let warnings = unknown_var_warnings(vars, &known);
        Ok((
            Config {
                cgroup,
                cgroup_root,
                target,
                target_port,
                target_process,
                memory_limit,
                thresholds,
                hysteresis,
                lead_time,
                baseline_every,
                rate_burst,
                rate_period,
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
                shutdown_grace,
                poll_min,
                poll_max,
                kernel_wakeups,
                log_format,
                identity,
            },
            warnings,
        ))
    }
}

/// A value fit to print: a URL's user and password are masked, since an
/// error message goes to logs.
pub fn redact(v: &str) -> String {
    match reqwest::Url::parse(v) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("REDACTED");
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => v.to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
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

/// `250ms`, `10s`, `1h 30m`; a bare `0` means zero.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(v).map_err(|e| e.to_string())
}

/// `true/false`, `1/0`, `yes/no`, `on/off`.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(String::new()),
    }
}

/// Plain bytes, binary units (`Ki`, `KiB`, `Mi`, `MiB`, …) and decimal units
/// (`k`, `KB`, `M`, `MB`, …) as Kubernetes quantities write them.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    if num.is_empty() {
        return Err("it has no number".into());
    }
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?}")),
    };
    if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| "bad number".to_string())?;
        let bytes = f * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err("too large".into());
        }
        Ok(bytes as u64)
    } else {
        let n: u64 = num.parse().map_err(|_| "too large".to_string())?;
        n.checked_mul(mult).ok_or_else(|| "too large".to_string())
    }
}

/// The longest timeout, grace, lead time or profile duration.
pub const MAX_SHORT_DURATION: Duration = Duration::from_secs(3600);
/// The longest period (quota refill, baseline refresh).
pub const MAX_LONG_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration within `min..=max`.
pub fn bounded(v: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d < min {
        Err(if min <= Duration::from_millis(1) {
            "it must be above zero".into()
        } else {
            format!("it must be at least {}", humantime::format_duration(min))
        })
    } else if d > max {
        Err(format!(
            "it must be at most {}",
            humantime::format_duration(max)
        ))
    } else {
        Ok(d)
    }
}

fn nonzero_size(v: &str) -> Result<u64, String> {
    match parse_size(v)? {
        0 => Err("it must be above zero".into()),
        n => Ok(n),
    }
}

/// A percent between 0 and 100, optionally written with `%`.
pub fn parse_percent(v: &str) -> Result<f64, String> {
    let p: f64 = v
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| String::new())?;
    if !(0.0..=100.0).contains(&p) || !p.is_finite() {
        return Err(format!("{p} is outside 0..100"));
    }
    Ok(p)
}

/// `80,90,95`: strictly ascending percents in 1..=100.
pub fn parse_percent_list(v: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let p = parse_percent(part).map_err(|why| {
            if why.is_empty() {
                format!("{:?} is not a number", part.trim())
            } else {
                why
            }
        })?;
        if p < 1.0 {
            return Err(format!("{p} is below 1"));
        }
        if let Some(last) = out.last() {
            if p <= *last {
                return Err("the rungs must ascend".into());
            }
        }
        out.push(p);
    }
    if out.len() > 16 {
        return Err("at most 16 rungs".into());
    }
    Ok(out)
}

/// `heap,goroutine`: known kinds, no duplicates.
pub fn parse_profiles(v: &str) -> Result<Vec<ProfileKind>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let part = part.trim();
        let k = ProfileKind::from_name(part).ok_or_else(|| format!("unknown profile {part:?}"))?;
        if out.contains(&k) {
            return Err(format!("{part} is listed twice"));
        }
        out.push(k);
    }
    Ok(out)
}

/// The pprof base URL must be plain `http://host:port/path`; returns it
/// without a trailing slash, and its port (used to find the process).
pub fn parse_target(v: &str) -> Result<(String, u16), String> {
    let url = reqwest::Url::parse(v).map_err(|e| e.to_string())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {} is not http", url.scheme()));
    }
    if url.host_str().is_none() {
        return Err("it has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it must not carry credentials (user:password@)".into());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    // The URL as it will be fetched: the parser drops tabs and newlines,
    // which must not reach logs or /status either.
    Ok((url.as_str().trim_end_matches('/').to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let (c, w) = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.thresholds, vec![80.0, 90.0, 95.0]);
        assert_eq!(c.target_port, 6060);
        assert_eq!(c.rate_burst, 4);
        assert_eq!(c.profiles, vec![ProfileKind::Heap, ProfileKind::Goroutine]);
        assert_eq!(c.store, DEFAULT_STORE);
        assert!(w.is_empty());
    }

    #[test]
    fn sizes_accept_kubernetes_and_binary_units() {
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("268435456").unwrap(), 268435456);
        assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("1.5Gi").unwrap(), 3 << 29);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("Mi").is_err());
    }

    #[test]
    fn percent_lists_must_ascend() {
        assert_eq!(
            parse_percent_list("80, 90,95").unwrap(),
            vec![80.0, 90.0, 95.0]
        );
        assert_eq!(parse_percent_list("97.5%").unwrap(), vec![97.5]);
        assert!(parse_percent_list("90,80").is_err());
        assert!(parse_percent_list("80,80").is_err());
        assert!(parse_percent_list("120").is_err());
        assert!(parse_percent_list("").is_err());
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        let w = unknown_var_warnings(&vars(&[("OOMSNAP_THRESHOLD", "80")]), KNOWN);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("did you mean OOMSNAP_THRESHOLDS"), "{}", w[0]);
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let bad = [
            (THRESHOLDS, "80,ninety"),
            (THRESHOLDS, "95,90"),
            (THRESHOLDS, "0.5"),
            (HYSTERESIS, "-1"),
            (HYSTERESIS, "70"),
            (LEAD_TIME, "soon"),
            (BASELINE_EVERY, "hourly"),
            (RATE_BURST, "0"),
            (RATE_BURST, "many"),
            (RATE_PERIOD, "0"),
            (PROFILES, "heap,stack"),
            (PROFILES, "heap,heap"),
            (FETCH_TIMEOUT, "0"),
            (MAX_PROFILE_BYTES, "big"),
            (SPOOL_MAX_BYTES, "1Zi"),
            (SPOOL_MAX_BYTES, "0"),
            (MAX_PROFILE_BYTES, "0B"),
            (MEMORY_LIMIT, "0"),
            (MEMORY_LIMIT, "lots"),
            (TARGET, "ftp://x/debug/pprof"),
            (TARGET, "not a url"),
            (STORE, "ftp://bucket"),
            (STORE, "s3://"),
            (ADMIN_ADDR, "9186"),
            (ADMIN_CAPTURE, "everyone"),
            (SHUTDOWN_GRACE, "later"),
            (POLL_MIN, "0ms"),
            (POLL_MAX, "2h"),
            (KERNEL_WAKEUPS, "maybe"),
            (LOG_FORMAT, "xml"),
            (CPU_PROFILE_DURATION, "long"),
        ];
        assert!(bad.len() >= 20);
        for (var, value) in bad {
            let err = Config::from_vars(&vars(&[(var, value)]))
                .expect_err(&format!("{var}={value} should be refused"));
            assert_eq!(err.0.len(), 1, "{var}={value}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(var), "message does not name {var}: {msg}");
            assert!(
                msg.contains(value),
                "message does not show {value:?}: {msg}"
            );
            assert!(
                msg.contains("expected"),
                "message says nothing expected: {msg}"
            );
        }
        // And all at once:
        let many: BTreeMap<String, String> = [
            (THRESHOLDS, "x"),
            (LEAD_TIME, "y"),
            (RATE_BURST, "z"),
            (STORE, "ftp://q"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let err = Config::from_vars(&many).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn poll_bounds_must_be_ordered() {
        let err = Config::from_vars(&vars(&[(POLL_MIN, "1s"), (POLL_MAX, "10ms")])).unwrap_err();
        assert!(err.to_string().contains(POLL_MIN));
        let err = Config::from_vars(&vars(&[(POLL_MAX, "1ms")])).unwrap_err();
        assert!(
            err.to_string().contains("OOMSNAP_POLL_MAX=\"1ms\""),
            "{err}"
        );
    }
}
