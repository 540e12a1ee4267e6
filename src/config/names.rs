//! The names of every variable oomsnap reads, with their forms and
//! defaults as typed constants next to them.
//!
//! Each name is listed in docs/configuration.md; `tests/docs_drift.rs` keeps
//! the two in step. Nothing here reads the environment.

use std::time::Duration;

use crate::profiles::ProfileKind;

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
/// What a capture decided by `imminent` below the first rung does:
/// `speculative` (spooled at once, shipped only once a rung, a kill, a
/// restart or a manual capture confirms it within `OOMSNAP_CONFIRM_WINDOW`),
/// `ship` (shipped at once) or `off` (imminent never fires). Default
/// `speculative`.
pub const IMMINENT: &str = "OOMSNAP_IMMINENT";
/// How long a provisional capture waits for confirmation. Default `30s`.
pub const CONFIRM_WINDOW: &str = "OOMSNAP_CONFIRM_WINDOW";
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
/// Who may `POST /capture`: `loopback`, `network` (any address, with the
/// bearer token of `OOMSNAP_ADMIN_TOKEN`) or `off`. Default `loopback`.
pub const ADMIN_CAPTURE: &str = "OOMSNAP_ADMIN_CAPTURE";
/// The bearer token `POST /capture` needs from a non-loopback peer when
/// `OOMSNAP_ADMIN_CAPTURE=network`. Never printed.
pub const ADMIN_TOKEN: &str = "OOMSNAP_ADMIN_TOKEN";
/// Manual captures allowed in a burst, on a quota of their own (refilling
/// one per `OOMSNAP_RATE_PERIOD`). Default `2`.
pub const MANUAL_RATE_BURST: &str = "OOMSNAP_MANUAL_RATE_BURST";
/// `true` makes `oomsnap run` exit with code 2 on a bad variable, for people
/// who prefer fail-fast. Default `false`: run degraded and report.
pub const STRICT: &str = "OOMSNAP_STRICT";
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
    IMMINENT,
    CONFIRM_WINDOW,
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
    ADMIN_TOKEN,
    MANUAL_RATE_BURST,
    STRICT,
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
/// Imminent fires when the slope predicts the limit within the lead time;
/// a leak that goes on crosses the first rung, which lies below the limit,
/// sooner still. Fifteen lead times leave room for a leak that slows down
/// on its way, and are short enough that a start-up burst that levels off
/// is forgotten within the minute.
pub const DEFAULT_CONFIRM_WINDOW: Duration = Duration::from_secs(30);
/// One climb decides up to four captures (imminent and three rungs); a
/// burst of four lets the one closest to the OOM through.
pub const DEFAULT_RATE_BURST: u32 = 4;
pub const DEFAULT_RATE_PERIOD: Duration = Duration::from_secs(600);
/// Enough for a person to retry once; a peer on the network cannot spend
/// more than this, and never the near-OOM quota.
pub const DEFAULT_MANUAL_RATE_BURST: u32 = 2;
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
