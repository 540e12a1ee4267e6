//! Follows the memory source and turns samples into decisions.
//!
//! The watcher runs on its own OS thread, not on the async runtime: it
//! blocks in `poll(2)` on kernel notification fds with an adaptive timeout,
//! reads a sample, feeds the [`Trigger`], and sends [`WatchEvent`]s to the
//! pipeline over a channel. Keeping it off the runtime means a busy upload
//! can never delay a wake-up.
//!
//! Wake-ups:
//! - v1: a `cgroup.event_control` usage threshold per rung, plus two
//!   early-warning levels below the first rung that switch polling to its
//!   fastest, so the slope (and "imminent") has samples to work with;
//! - v2: inotify on `memory.events` (it changes on `high`/`max`/`oom`);
//! - always: polling, whose interval shrinks from `poll_max` far below the
//!   first rung to `poll_min` near it or when the slope says a rung is close.
//!
//! The loop does not allocate per sample: the reader owns its buffer, the
//! trigger owns a fixed ring, and the status is a copy into a mutex.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use super::locate::{locate, LocateError, LocateInput};
use super::proc::{self, ProcessId};
use super::{MemorySource, Reader, Sample, SourceKind, Version};
use crate::trigger::{Decision, Policy, Trigger};

/// The longest wait between attempts to locate the memory; /healthz
/// allows for it.
pub const LOCATE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What woke the watcher before the sample that caused a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wake {
    /// A kernel notification (eventfd threshold or inotify).
    Kernel,
    /// The poll timer.
    Poll,
    /// The first sample after (re)locating.
    Start,
    /// Not the watcher at all: a manual capture.
    Manual,
}

impl Wake {
    /// The name written into manifests.
    pub fn name(self) -> &'static str {
        match self {
            Wake::Kernel => "kernel",
            Wake::Poll => "poll",
            Wake::Start => "start",
            Wake::Manual => "manual",
        }
    }
}

/// What the watcher tells the pipeline.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A source was found (at start, or after the target restarted).
    Located(MemorySource),
    /// The source disappeared; the watcher is looking for it again.
    Lost { why: String },
    /// The target process was replaced by a new one.
    Restarted {
        old_pid: u32,
        new_pid: Option<u32>,
        restarts: u32,
    },
    /// A capture should be taken.
    Decision { decision: Decision, wake: Wake },
    /// The memory cannot be watched as configured; the sidecar must stop.
    Fatal(String),
    /// The kernel's OOM kill counter rose.
    OomKill {
        at: SystemTime,
        kills: u64,
        last: Sample,
    },
}

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub locate: LocateInput,
    pub policy: Policy,
    pub poll_min: Duration,
    pub poll_max: Duration,
    pub kernel_wakeups: bool,
}

impl WatchConfig {
    pub fn from_config(c: &crate::config::Config) -> WatchConfig {
        WatchConfig {
            locate: LocateInput::from_config(c),
            policy: Policy::from_config(c),
            poll_min: c.poll_min,
            poll_max: c.poll_max,
            kernel_wakeups: c.kernel_wakeups,
        }
    }
}

/// Live state shared with the admin server.
#[derive(Debug, Default)]
pub struct WatchState {
    pub last: Mutex<Option<Sample>>,
    pub source: Mutex<Option<MemorySource>>,
    pub armed: Mutex<Vec<(f64, bool)>>,
    pub last_error: Mutex<Option<String>>,
    /// Milliseconds since `started` at the last loop turn, for /healthz.
    pub last_tick_ms: AtomicU64,
    pub samples: AtomicU64,
    pub kernel_wakes: AtomicU64,
    pub restarts: AtomicU64,
    pub interval_ms: AtomicU64,
    pub started: Mutex<Option<Instant>>,
}

impl WatchState {
    /// Time since the loop last turned.
    pub fn since_tick(&self) -> Option<Duration> {
        let started = (*self.started.lock().ok()?)?;
        let tick = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        Some(started.elapsed().saturating_sub(tick))
    }
}

/// Handle to stop the watcher or change its policy from another thread.
#[derive(Clone)]
pub struct WatchControl {
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<Policy>>>,
}

impl WatchControl {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        signal(self.wake.as_raw_fd());
    }

    /// Applies a new policy at the next loop turn (live annotations).
    pub fn set_policy(&self, p: Policy) {
        if let Ok(mut g) = self.pending.lock() {
            *g = Some(p);
        }
        signal(self.wake.as_raw_fd());
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 512];
    // SAFETY: reading into a stack buffer of the given length; the fd is
    // non-blocking, so this returns at once when empty.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Kernel notification fds for one cgroup.
struct Notifier {
    fds: Vec<OwnedFd>,
    /// Kept open: v1 thresholds are registered against this fd.
    _usage: Option<std::fs::File>,
    /// The limit the thresholds were registered for.
    limit: Option<u64>,
}

impl Notifier {
    fn none() -> Notifier {
        Notifier {
            fds: Vec::new(),
            _usage: None,
            limit: None,
        }
    }

    /// The usage levels, in percent, that get a v1 threshold: every rung and
    /// four early-warning levels below the first. A wake-up there costs one
    /// sample; on a fast leak it gives the slope, and so "imminent", a head
    /// start of up to 40 points of the limit.
    fn levels(policy: &Policy) -> Vec<f64> {
        let first = policy.thresholds.first().copied().unwrap_or(80.0);
        let mut v: Vec<f64> = [first - 40.0, first - 30.0, first - 20.0, first - 10.0]
            .into_iter()
            .filter(|l| *l > 0.0)
            .chain(policy.thresholds.iter().copied())
            .collect();
        v.dedup();
        v
    }

    fn v1(dir: &std::path::Path, limit: u64, policy: &Policy) -> std::io::Result<Notifier> {
        use std::io::Write;
        let usage = std::fs::File::open(dir.join("memory.usage_in_bytes"))?;
        let mut control = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?;
        let mut fds = Vec::new();
        for pct in Self::levels(policy) {
            let efd = eventfd()?;
            let bytes = (limit as f64 * pct / 100.0) as u64;
            // The kernel parses "<event fd> <usage fd> <threshold>".
            let line = format!("{} {} {}", efd.as_raw_fd(), usage.as_raw_fd(), bytes);
            control.write_all(line.as_bytes())?;
            fds.push(efd);
        }
        Ok(Notifier {
            fds,
            _usage: Some(usage),
            limit: Some(limit),
        })
    }

    fn v2(dir: &std::path::Path) -> std::io::Result<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: inotify_init1 returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.join("memory.events").as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Notifier {
            fds: vec![fd],
            _usage: None,
            limit: None,
        })
    }
}

/// The poll interval: `max` far below the next rung, `min` close to it, and
/// never longer than a tenth of the time the slope needs to reach it.
pub fn poll_interval(
    percent: f64,
    next_rung: Option<f64>,
    slope_percent_per_s: Option<f64>,
    min: Duration,
    max: Duration,
) -> Duration {
    let target = next_rung.unwrap_or(100.0);
    let distance = (target - percent).max(0.0);
    // Geometric between 5 points (min) and 40 points (max) of distance.
    let by_distance = if distance <= 5.0 {
        min
    } else if distance >= 40.0 {
        max
    } else {
        let f = (distance - 5.0) / 35.0;
        let lo = min.as_secs_f64().ln();
        let hi = max.as_secs_f64().ln();
        Duration::from_secs_f64((lo + f * (hi - lo)).exp())
    };
    let by_slope = match slope_percent_per_s {
        Some(k) if k > 0.0 => Duration::from_secs_f64((distance / k / 10.0).min(3600.0)),
        _ => max,
    };
    by_distance.min(by_slope).clamp(min, max)
}

/// Spawns the watcher thread.
pub fn spawn(
    cfg: WatchConfig,
    tx: UnboundedSender<WatchEvent>,
    state: Arc<WatchState>,
) -> std::io::Result<(WatchControl, std::thread::JoinHandle<()>)> {
    let control = WatchControl {
        wake: Arc::new(eventfd()?),
        stop: Arc::new(AtomicBool::new(false)),
        pending: Arc::new(Mutex::new(None)),
    };
    let c = control.clone();
    let handle = std::thread::Builder::new()
        .name("oomsnap-watch".into())
        .spawn(move || run(cfg, tx, state, c))?;
    Ok((control, handle))
}

struct Located {
    source: MemorySource,
    reader: Reader,
    notifier: Notifier,
    pid: Option<ProcessId>,
    last_kills: Option<u64>,
    last_pid_check: Instant,
}

fn open(source: MemorySource, cfg: &WatchConfig, policy: &Policy) -> Result<Located, String> {
    let mut reader = source.open().map_err(|e| e.to_string())?;
    let first = reader.read().map_err(|e| e.to_string())?;
    let notifier = kernel_notifier(&source, first.limit, cfg.kernel_wakeups, policy);
    let pid = match (source.pid, source.pid_start) {
        (Some(pid), Some(start)) => Some(ProcessId { pid, start }),
        _ => None,
    };
    Ok(Located {
        source,
        reader,
        notifier,
        pid,
        last_kills: first.oom_kills,
        last_pid_check: Instant::now(),
    })
}

fn kernel_notifier(
    source: &MemorySource,
    limit: Option<u64>,
    enabled: bool,
    policy: &Policy,
) -> Notifier {
    if !enabled {
        return Notifier::none();
    }
    let SourceKind::Cgroup { dir, version } = &source.kind else {
        return Notifier::none();
    };
    let made = match (version, limit) {
        (Version::V1, Some(l)) => Notifier::v1(dir, l, policy),
        (Version::V2, _) => Notifier::v2(dir),
        (Version::V1, None) => return Notifier::none(),
    };
    match made {
        Ok(n) => {
            tracing::debug!(fds = n.fds.len(), "kernel wake-ups registered");
            n
        }
        Err(e) => {
            tracing::warn!(
                cgroup = %dir.display(),
                error = %e,
                "kernel wake-ups are unavailable; polling only"
            );
            Notifier::none()
        }
    }
}

/// Blocks until a notification or the timeout; true when the kernel woke us.
fn wait(control: RawFd, notifier: &Notifier, timeout: Duration) -> bool {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 22];
    pfds[0] = libc::pollfd {
        fd: control,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut n = 1;
    // At most 16 rungs plus four early levels (config caps the rungs).
    for fd in notifier.fds.iter().take(21) {
        pfds[n] = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        n += 1;
    }
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
    // SAFETY: pfds holds n initialised pollfd entries.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r <= 0 {
        return false;
    }
    let mut kernel = false;
    for p in &pfds[..n] {
        if p.revents != 0 {
            drain(p.fd);
            if p.fd != control {
                kernel = true;
            }
        }
    }
    kernel
}

fn run(
    cfg: WatchConfig,
    tx: UnboundedSender<WatchEvent>,
    state: Arc<WatchState>,
    control: WatchControl,
) {
    let started = Instant::now();
    if let Ok(mut s) = state.started.lock() {
        *s = Some(started);
    }
    let mut policy = cfg.policy.clone();
    let mut trigger = Trigger::new(policy.clone());
    let mut located: Option<Located> = None;
    let mut ever_located = false;
    let mut wake = Wake::Start;
    let mut restarts: u32 = 0;
    let mut locate_backoff = Duration::from_millis(200);
    let mut last_locate_error = String::new();
    let control_fd = control.wake.as_raw_fd();

    while !control.stop.load(Ordering::SeqCst) {
        state
            .last_tick_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);

        if let Some(p) = control.pending.lock().ok().and_then(|mut g| g.take()) {
            tracing::info!(thresholds = ?p.thresholds, "trigger policy changed");
            trigger.set_policy(p.clone());
            policy = p;
            // Re-register thresholds for the new rungs.
            if let Some(l) = &mut located {
                let limit = l.notifier.limit;
                l.notifier = Notifier::none();
                l.notifier = kernel_notifier(&l.source, limit, cfg.kernel_wakeups, &policy);
            }
        }

        // Find the source when we have none.
        let Some(loc) = located.as_mut() else {
            let found = match locate(&cfg.locate) {
                // A wrong OOMSNAP_CGROUP, or memory without any limit, is a
                // configuration error: at start it stops the sidecar rather
                // than leave it watching something that can never trigger.
                Err(e @ (LocateError::Explicit { .. } | LocateError::NoLimit { .. }))
                    if !ever_located =>
                {
                    let _ = tx.send(WatchEvent::Fatal(e.to_string()));
                    break;
                }
                Err(e) => Err(e.to_string()),
                Ok(s) => open(s, &cfg, &policy),
            };
            match found {
                Ok(l) => {
                    tracing::info!(
                        source = %l.source.describe(),
                        strategy = l.source.strategy.name(),
                        how = %l.source.how,
                        "memory source located"
                    );
                    if let Ok(mut s) = state.source.lock() {
                        *s = Some(l.source.clone());
                    }
                    if let Ok(mut e) = state.last_error.lock() {
                        *e = None;
                    }
                    let _ = tx.send(WatchEvent::Located(l.source.clone()));
                    ever_located = true;
                    located = Some(l);
                    wake = Wake::Start;
                    locate_backoff = Duration::from_millis(200);
                    continue;
                }
                Err(e) => {
                    if e != last_locate_error {
                        tracing::warn!(error = %e, "cannot locate the app's memory yet; retrying");
                        last_locate_error = e.clone();
                    }
                    if let Ok(mut s) = state.last_error.lock() {
                        *s = Some(e);
                    }
                    wait(control_fd, &Notifier::none(), locate_backoff);
                    locate_backoff = (locate_backoff * 2).min(LOCATE_BACKOFF_MAX);
                    continue;
                }
            }
        };

        let sample = match loc.reader.read() {
            Ok(s) => s,
            Err(e) => {
                let gone = e.is_gone();
                let why = e.to_string();
                if let Ok(mut s) = state.last_error.lock() {
                    *s = Some(why.clone());
                }
                if gone {
                    tracing::warn!(error = %why, "memory source is gone; locating it again");
                    let _ = tx.send(WatchEvent::Lost { why });
                    located = None;
                } else {
                    tracing::error!(error = %why, "cannot read a memory sample");
                    wait(control_fd, &loc.notifier, cfg.poll_max);
                }
                continue;
            }
        };
        state.samples.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = state.last.lock() {
            *s = Some(sample);
        }

        // A rising OOM counter is the proof a kill happened.
        if let (Some(now), Some(before)) = (sample.oom_kills, loc.last_kills) {
            if now > before {
                let _ = tx.send(WatchEvent::OomKill {
                    at: sample.wall,
                    kills: now,
                    last: sample,
                });
            }
        }
        if sample.oom_kills.is_some() {
            loc.last_kills = sample.oom_kills;
        }

        // The limit moved: thresholds were registered in bytes.
        if loc.notifier.limit.is_some() && sample.limit != loc.notifier.limit {
            tracing::info!(limit = ?sample.limit, "the memory limit changed");
            loc.notifier = Notifier::none();
            loc.notifier = kernel_notifier(&loc.source, sample.limit, cfg.kernel_wakeups, &policy);
        }

        if let Some(d) = trigger.observe(&sample) {
            let _ = tx.send(WatchEvent::Decision { decision: d, wake });
        }
        if let Ok(mut a) = state.armed.lock() {
            a.clear();
            a.extend(
                policy
                    .thresholds
                    .iter()
                    .copied()
                    .zip(trigger.armed().iter().copied()),
            );
        }

        // A target restart (new PID) may move its cgroup: locate again.
        if let Some(pid) = loc.pid {
            if loc.last_pid_check.elapsed() >= Duration::from_millis(500) {
                loc.last_pid_check = Instant::now();
                if !proc::alive(pid) {
                    restarts += 1;
                    state.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        pid = pid.pid,
                        restarts,
                        "the target process exited; locating it again"
                    );
                    let _ = tx.send(WatchEvent::Restarted {
                        old_pid: pid.pid,
                        new_pid: None,
                        restarts,
                    });
                    located = None;
                    continue;
                }
            }
        }

        let pct_per_s = match (trigger.slope(), sample.limit) {
            (Some(k), Some(l)) if l > 0 => Some(k * 100.0 / l as f64),
            _ => None,
        };
        // The distance is measured on usage, which is at least the working
        // set: the kernel's thresholds are on usage too, so once usage is
        // past a rung the working set may follow any moment, and polling
        // must already be at its fastest.
        let usage_pct = match sample.limit {
            Some(l) if l > 0 => sample.usage as f64 * 100.0 / l as f64,
            _ => sample.percent(),
        };
        let interval = poll_interval(
            usage_pct,
            trigger.next_rung(),
            pct_per_s,
            cfg.poll_min,
            cfg.poll_max,
        );
        state
            .interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
        wake = if wait(control_fd, &loc.notifier, interval) {
            state.kernel_wakes.fetch_add(1, Ordering::Relaxed);
            Wake::Kernel
        } else {
            Wake::Poll
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(500);

    #[test]
    fn polls_slowly_far_away_and_fast_near_a_rung() {
        assert_eq!(poll_interval(10.0, Some(80.0), None, MIN, MAX), MAX);
        assert_eq!(poll_interval(77.0, Some(80.0), None, MIN, MAX), MIN);
        let mid = poll_interval(55.0, Some(80.0), None, MIN, MAX);
        assert!(mid > MIN && mid < MAX, "{mid:?}");
    }

    #[test]
    fn a_steep_slope_shortens_the_interval() {
        // 50 points away at 137 %/s: a rung in ~365 ms, so poll every ~36 ms.
        let d = poll_interval(30.0, Some(80.0), Some(137.0), MIN, MAX);
        assert!(
            d < Duration::from_millis(40) && d > Duration::from_millis(30),
            "{d:?}"
        );
    }

    #[test]
    fn spent_ladder_polls_against_the_limit() {
        assert_eq!(poll_interval(97.0, None, None, MIN, MAX), MIN);
    }

    #[test]
    fn early_warning_levels_sit_below_the_first_rung() {
        let p = Policy {
            thresholds: vec![80.0, 90.0],
            hysteresis: 5.0,
            lead_time: Duration::from_secs(2),
            imminent: true,
            baseline_every: None,
        };
        assert_eq!(
            Notifier::levels(&p),
            vec![40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
        );
    }
}
