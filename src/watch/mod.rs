//! Follows the memory source and turns samples into decisions.
//!
//! - [`pace`] — pure: the adaptive poll interval
//! - [`notify`] — the kernel's wake-ups (v1 thresholds, v2 inotify), through
//!   `rustix`
//!
//! The readers live in [`crate::memory`] and the policy in
//! [`crate::trigger`]; this module is where the two meet, so neither of them
//! depends on the other's neighbour.
//!
//! A [`WatchConfig`] enters; [`WatchEvent`]s leave over a channel, and the
//! live [`WatchState`] (last sample, source, current problem) is shared with
//! the admin server. The watcher runs on its own OS thread, not on the async
//! runtime: it blocks in `poll(2)` on the kernel's notification fds (see
//! [`notify`]) with the timeout [`pace`] picks, reads the
//! sentinel or a full sample, feeds the [`Trigger`], and sends events.
//! Keeping it off the runtime means a busy upload can never delay a wake-up.
//!
//! What wakes it:
//! - v1: a `cgroup.event_control` usage threshold per rung, plus four
//!   early-warning levels 40, 30, 20 and 10 points below the first rung,
//!   which switch polling to its fastest so the slope (and "imminent") has
//!   samples to work with;
//! - v2: inotify on `memory.events`, which the kernel touches only once
//!   usage reaches `memory.max` (and on a kill);
//! - always: the timer. Each tick reads the sentinel (the usage file alone)
//!   and takes a full sample only when the usage moved, so a short idle
//!   interval stays cheap; a leak that jumps between two ticks gets the
//!   fastest interval at once. On v2 this is the early warning.
//!
//! It never stops on its own: a source that cannot be found, a cgroup
//! without a limit or a file that cannot be read is published as a
//! [`SourceProblem`], logged at a bounded rate, and retried (locating with a
//! backoff up to [`LOCATE_BACKOFF_MAX`]); once the fault clears it watches
//! and triggers without a restart.
//!
//! The loop does not allocate per sample: the reader owns its buffer, the
//! trigger owns a fixed ring, the poll set lives on the stack, and the
//! status is a copy into a mutex.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

pub(crate) mod notify;
pub mod pace;

use crate::memory::locate::{locate, locate_watchable, LocateInput};
use crate::memory::problem::{ProblemLog, SourceProblem};
use crate::memory::proc::{self, ProcessId};
use crate::memory::{MemorySource, ReadError, Reader, Sample, SourceKind, Version};
use crate::trigger::{Decision, Policy, Trigger};
use notify::{wait, Notifier, Waker, Woke};
use pace::Pace;

/// The first wait between attempts to locate the memory (or to read it
/// again after an error); it doubles up to [`LOCATE_BACKOFF_MAX`].
const LOCATE_BACKOFF_MIN: Duration = Duration::from_millis(200);

/// The longest wait between attempts to locate the memory; /healthz
/// allows for it.
pub const LOCATE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How often a target process is checked for a restart.
const PID_CHECK_EVERY: Duration = Duration::from_millis(500);

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
    /// The last full sample.
    pub last: Mutex<Option<Sample>>,
    pub source: Mutex<Option<MemorySource>>,
    pub armed: Mutex<Vec<(f64, bool)>>,
    /// What keeps the watcher from watching right now, if anything.
    pub problem: Mutex<Option<SourceProblem>>,
    /// The current problem as a sentence (the same as `problem`'s Display).
    pub last_error: Mutex<Option<String>>,
    /// Milliseconds since `started` at the last loop turn, for /healthz.
    pub last_tick_ms: AtomicU64,
    /// Full samples read.
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

    fn publish(&self, p: Option<&SourceProblem>) {
        if let Ok(mut g) = self.problem.lock() {
            *g = p.cloned();
        }
        if let Ok(mut g) = self.last_error.lock() {
            *g = p.map(|p| p.to_string());
        }
    }
}

/// Handle to stop the watcher or change its policy from another thread.
#[derive(Clone)]
pub struct WatchControl {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<Policy>>>,
}

impl WatchControl {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Applies a new policy at the next loop turn (live annotations).
    pub fn set_policy(&self, p: Policy) {
        if let Ok(mut g) = self.pending.lock() {
            *g = Some(p);
        }
        self.waker.wake();
    }
}

/// Spawns the watcher thread.
pub fn spawn(
    cfg: WatchConfig,
    tx: UnboundedSender<WatchEvent>,
    state: Arc<WatchState>,
) -> std::io::Result<(WatchControl, std::thread::JoinHandle<()>)> {
    let control = WatchControl {
        waker: Arc::new(Waker::new()?),
        stop: Arc::new(AtomicBool::new(false)),
        pending: Arc::new(Mutex::new(None)),
    };
    let c = control.clone();
    let handle = std::thread::Builder::new()
        .name("oomsnap-watch".into())
        .spawn(move || Watcher::new(cfg, tx, state, c).run())?;
    Ok((control, handle))
}

/// A source being watched.
struct Located {
    source: MemorySource,
    reader: Reader,
    notifier: Notifier,
    /// The limit the notifier was registered for.
    limit: Option<u64>,
    pid: Option<ProcessId>,
    last_kills: Option<u64>,
    last_pid_check: Instant,
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
            tracing::debug!(fds = n.len(), "kernel wake-ups registered");
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

/// The loop's state between turns.
struct Watcher {
    cfg: WatchConfig,
    tx: UnboundedSender<WatchEvent>,
    state: Arc<WatchState>,
    control: WatchControl,
    started: Instant,
    policy: Policy,
    trigger: Trigger,
    located: Option<Located>,
    pace: Pace,
    /// What woke the watcher before this turn.
    wake: Wake,
    /// The timeout picked after the last full sample.
    interval: Duration,
    backoff: Duration,
    restarts: u32,
    /// The problem being reported, if any, and when it was last logged.
    problem: Option<SourceProblem>,
    /// When a source without a limit next looks for a better one.
    next_relocate: Instant,
    problem_log: ProblemLog,
}

impl Watcher {
    fn new(
        cfg: WatchConfig,
        tx: UnboundedSender<WatchEvent>,
        state: Arc<WatchState>,
        control: WatchControl,
    ) -> Watcher {
        let policy = cfg.policy.clone();
        Watcher {
            trigger: Trigger::new(policy.clone()),
            policy,
            interval: cfg.poll_max,
            cfg,
            tx,
            state,
            control,
            started: Instant::now(),
            located: None,
            pace: Pace::default(),
            wake: Wake::Start,
            backoff: LOCATE_BACKOFF_MIN,
            restarts: 0,
            problem: None,
            next_relocate: Instant::now(),
            problem_log: ProblemLog::default(),
        }
    }

    fn send(&self, ev: WatchEvent) {
        // The receiver is gone only while the sidecar shuts down.
        let _ = self.tx.send(ev);
    }

    /// Publishes `p` and logs it when it is news or due again.
    fn report(&mut self, p: SourceProblem) {
        if self.problem_log.should_log(&p, Instant::now()) {
            tracing::warn!(problem = p.kind(), "{p}");
        }
        if self.problem.as_ref() != Some(&p) {
            self.state.publish(Some(&p));
            self.problem = Some(p);
        }
    }

    fn clear_problem(&mut self) {
        if self.problem.take().is_some() {
            self.problem_log.clear();
            self.state.publish(None);
            tracing::info!("the memory source is watched normally again");
        }
    }

    /// Waits for the backoff (the waker still ends it at once), then
    /// doubles it.
    fn back_off(&mut self) {
        wait(&self.control.waker, &Notifier::none(), self.backoff);
        self.backoff = (self.backoff * 2).min(LOCATE_BACKOFF_MAX);
        self.wake = Wake::Start;
    }

    fn run(mut self) {
        if let Ok(mut s) = self.state.started.lock() {
            *s = Some(self.started);
        }
        while !self.control.stop.load(Ordering::SeqCst) {
            self.state
                .last_tick_ms
                .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            self.apply_pending_policy();
            if self.located.is_none() {
                self.try_locate();
                continue;
            }
            self.turn();
        }
    }

    fn apply_pending_policy(&mut self) {
        let Some(p) = self.control.pending.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        tracing::info!(thresholds = %p.thresholds.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","), "trigger policy changed");
        self.trigger.set_policy(p.clone());
        self.policy = p;
        // Re-register thresholds for the new rungs.
        if let Some(l) = &mut self.located {
            l.notifier = Notifier::none();
            l.notifier = kernel_notifier(&l.source, l.limit, self.cfg.kernel_wakeups, &self.policy);
        }
    }

    fn try_locate(&mut self) {
        let found = locate_watchable(&self.cfg.locate)
            .map_err(|e| SourceProblem::from(&e))
            .and_then(|s| self.open(s).map_err(|e| SourceProblem::Read { why: e }));
        match found {
            Ok(l) => {
                tracing::info!(
                    source = %l.source.describe(),
                    strategy = l.source.strategy.name(),
                    how = %l.source.how,
                    "memory source located"
                );
                if let Ok(mut s) = self.state.source.lock() {
                    *s = Some(l.source.clone());
                }
                self.send(WatchEvent::Located(l.source.clone()));
                if self.problem.as_ref().is_some_and(|p| p.kind() == "locate") {
                    self.clear_problem();
                }
                self.located = Some(l);
                self.pace.reset();
                self.wake = Wake::Start;
                self.backoff = LOCATE_BACKOFF_MIN;
            }
            Err(p) => {
                self.report(p);
                self.back_off();
            }
        }
    }

    fn open(&self, source: MemorySource) -> Result<Located, String> {
        let mut reader = source.open().map_err(|e| e.to_string())?;
        let first = reader.read().map_err(|e| e.to_string())?;
        let notifier = kernel_notifier(&source, first.limit, self.cfg.kernel_wakeups, &self.policy);
        let pid = match (source.pid, source.pid_start) {
            (Some(pid), Some(start)) => Some(ProcessId { pid, start }),
            _ => None,
        };
        Ok(Located {
            source,
            reader,
            notifier,
            limit: first.limit,
            pid,
            last_kills: first.oom_kills,
            last_pid_check: Instant::now(),
        })
    }

    /// A read failed: a source that is gone is located again; any other
    /// error is reported and retried after a backoff.
    fn read_failed(&mut self, e: ReadError) {
        if e.is_gone() {
            let why = e.to_string();
            tracing::warn!(error = %why, "memory source is gone; locating it again");
            self.send(WatchEvent::Lost { why });
            self.located = None;
        } else {
            self.report(SourceProblem::Read { why: e.to_string() });
            self.back_off();
        }
    }

    /// One turn with a source: the sentinel on a timer tick, a full sample
    /// when it is due, then the wait.
    fn turn(&mut self) {
        let Some(loc) = self.located.as_mut() else {
            return;
        };
        if self.wake == Wake::Poll && loc.reader.has_sentinel() {
            match loc.reader.read_usage() {
                Ok(usage) if !self.pace.needs_full(Instant::now(), usage) => {
                    self.sleep();
                    return;
                }
                Ok(_) => {}
                Err(e) => return self.read_failed(e),
            }
        }
        let sample = match loc.reader.read() {
            Ok(s) => s,
            Err(e) => return self.read_failed(e),
        };
        self.backoff = LOCATE_BACKOFF_MIN;
        self.pace.took_full(sample.at, sample.usage, sample.limit);
        self.state.samples.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.last.lock() {
            *s = Some(sample);
        }
        self.observe(sample);
        if self.target_restarted() || self.found_better_source() {
            return;
        }
        self.interval = self.next_interval(&sample);
        self.state
            .interval_ms
            .store(self.interval.as_millis() as u64, Ordering::Relaxed);
        self.sleep();
    }

    /// Everything a full sample says: a kill, a limit that moved or is
    /// missing, and the trigger's decision.
    fn observe(&mut self, sample: Sample) {
        let Some(loc) = self.located.as_mut() else {
            return;
        };
        // A rising OOM counter is the proof a kill happened.
        if let (Some(now), Some(before)) = (sample.oom_kills, loc.last_kills) {
            if now > before {
                let _ = self.tx.send(WatchEvent::OomKill {
                    at: sample.wall,
                    kills: now,
                    last: sample,
                });
            }
        }
        if sample.oom_kills.is_some() {
            loc.last_kills = sample.oom_kills;
        }

        // The limit moved, appeared or went away: v1 thresholds are in bytes.
        if sample.limit != loc.limit {
            tracing::info!(
                limit_bytes = sample.limit,
                before_bytes = loc.limit,
                "the memory limit changed"
            );
            loc.limit = sample.limit;
            if matches!(
                loc.source.kind,
                SourceKind::Cgroup {
                    version: Version::V1,
                    ..
                }
            ) {
                loc.notifier = Notifier::none();
                loc.notifier = kernel_notifier(
                    &loc.source,
                    loc.limit,
                    self.cfg.kernel_wakeups,
                    &self.policy,
                );
            }
        }
        // Samples flow without a limit; only the trigger cannot act. The
        // problem is built (and allocates) only when it starts.
        let no_limit_yet =
            sample.limit.is_none() && self.problem.as_ref().is_none_or(|p| p.kind() != "no_limit");
        let source = no_limit_yet.then(|| loc.source.describe());
        match source {
            Some(source) => self.report(SourceProblem::NoLimit { source }),
            None if sample.limit.is_some() => self.clear_problem(),
            None => {
                if let Some(p) = &self.problem {
                    if self.problem_log.should_log(p, sample.at) {
                        tracing::warn!(problem = p.kind(), "{p}");
                    }
                }
            }
        }

        // Only samples with news reach the trigger: a flat one would sit in
        // its one-second slope window and dilute the slope of a leak that
        // starts right after it.
        let crossing = self
            .trigger
            .next_rung()
            .is_some_and(|r| sample.percent() >= r);
        if self.pace.worth_observing(&sample, crossing) {
            self.pace.observed(&sample);
            if let Some(d) = self.trigger.observe(&sample) {
                self.send(WatchEvent::Decision {
                    decision: d,
                    wake: self.wake,
                });
            }
        }
        if let Ok(mut a) = self.state.armed.lock() {
            a.clear();
            a.extend(
                self.policy
                    .thresholds
                    .iter()
                    .copied()
                    .zip(self.trigger.armed().iter().copied()),
            );
        }
    }

    /// A target restart (new PID) may move its cgroup: true when the
    /// watcher must locate again.
    fn target_restarted(&mut self) -> bool {
        let Some(loc) = self.located.as_mut() else {
            return false;
        };
        let Some(pid) = loc.pid else {
            return false;
        };
        if loc.last_pid_check.elapsed() < PID_CHECK_EVERY {
            return false;
        }
        loc.last_pid_check = Instant::now();
        if proc::alive(pid) {
            return false;
        }
        self.restarts += 1;
        self.state.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            pid = pid.pid,
            restarts = self.restarts,
            "the target process exited; locating it again"
        );
        self.send(WatchEvent::Restarted {
            old_pid: pid.pid,
            new_pid: None,
            restarts: self.restarts,
        });
        self.located = None;
        true
    }

    fn next_interval(&self, sample: &Sample) -> Duration {
        let pct_per_s = match (self.trigger.slope(), sample.limit) {
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
        self.pace.interval(
            usage_pct,
            self.trigger.next_rung(),
            pct_per_s,
            self.cfg.poll_min,
            self.cfg.poll_max,
        )
    }

    /// While the source has no limit, a source with one may turn up (the
    /// app was still starting when its unlimited neighbour was taken): the
    /// strict strategies run again every [`LOCATE_BACKOFF_MAX`], and a
    /// different source with a limit replaces the watched one. True when it
    /// did (the next turn starts on it).
    fn found_better_source(&mut self) -> bool {
        let no_limit = self
            .problem
            .as_ref()
            .is_some_and(|p| p.kind() == "no_limit");
        let now = Instant::now();
        if !no_limit || now < self.next_relocate {
            return false;
        }
        self.next_relocate = now + LOCATE_BACKOFF_MAX;
        let Ok(better) = locate(&self.cfg.locate) else {
            return false;
        };
        if self
            .located
            .as_ref()
            .is_some_and(|l| l.source.kind == better.kind)
        {
            return false;
        }
        match self.open(better) {
            Ok(l) => {
                tracing::info!(
                    source = %l.source.describe(),
                    strategy = l.source.strategy.name(),
                    "a memory source with a limit was found; watching it instead"
                );
                if let Ok(mut s) = self.state.source.lock() {
                    *s = Some(l.source.clone());
                }
                self.send(WatchEvent::Located(l.source.clone()));
                self.located = Some(l);
                self.pace.reset();
                self.wake = Wake::Start;
                true
            }
            Err(_) => false,
        }
    }

    /// Waits for the current interval; notes what ended the wait.
    fn sleep(&mut self) {
        let Some(loc) = self.located.as_ref() else {
            return;
        };
        self.wake = match wait(&self.control.waker, &loc.notifier, self.interval) {
            Woke::Kernel => {
                self.state.kernel_wakes.fetch_add(1, Ordering::Relaxed);
                Wake::Kernel
            }
            Woke::Timeout | Woke::Control => Wake::Poll,
        };
    }
}
