//! The watcher's wake-ups from the kernel, and the control fd that wakes it
//! from another thread.
//!
//! A cgroup directory, its version, its limit and the trigger policy enter;
//! a [`Notifier`] holding the kernel's notification fds leaves. [`wait`]
//! blocks on those fds, the watcher's [`Waker`] and a timeout, and says
//! which of them ended the wait.
//!
//! What each cgroup version offers (measured; see `docs/how-it-works.md`):
//! - v1: a usage threshold per eventfd through `cgroup.event_control`. The
//!   kernel signals it at the crossing, so the watcher registers one per rung
//!   and four early-warning levels below the first rung.
//! - v2: no usage threshold at all. inotify on `memory.events` fires when
//!   usage reaches `memory.max` (about 20 ms before a kill, in the v2 VM), so
//!   it is a last-moment wake-up and the prompt notice of a kill, not an
//!   early warning: on v2 the poll schedule is the early warning.
//!
//! The syscalls go through `rustix`, which is already in the dependency tree
//! (procfs uses it): no `unsafe` here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

use crate::trigger::Policy;

/// Early-warning levels below the first rung, in points of the limit.
const EARLY_LEVELS: [f64; 4] = [40.0, 30.0, 20.0, 10.0];

/// The most notification fds one wait watches: 16 rungs (the configuration's
/// cap) plus the early levels, and one to spare.
const MAX_FDS: usize = 16 + EARLY_LEVELS.len() + 1;

/// An eventfd another thread signals to end the watcher's wait at once
/// (stop, or a new policy).
#[derive(Debug)]
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> std::io::Result<Waker> {
        Ok(Waker {
            fd: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?,
        })
    }

    pub(crate) fn wake(&self) {
        // Only fails when the counter would overflow, i.e. it is already
        // signalled many times over; the waiter wakes either way.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }
}

/// Reads a non-blocking fd until it is empty, so the next poll blocks again.
fn drain(fd: impl AsFd) {
    let mut buf = [0u8; 512];
    while matches!(rustix::io::read(&fd, &mut buf), Ok(n) if n > 0) {}
}

/// The kernel notification fds for one cgroup.
#[derive(Default)]
pub(crate) struct Notifier {
    fds: Vec<OwnedFd>,
}

impl Notifier {
    /// No kernel wake-ups: the watcher polls.
    pub(crate) fn none() -> Notifier {
        Notifier::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.fds.len()
    }

    /// The usage levels, in percent, that get a v1 threshold: every rung and
    /// four early-warning levels below the first. A wake-up there costs one
    /// sample; on a fast leak it gives the slope, and so "imminent", a head
    /// start of up to 40 points of the limit.
    pub(crate) fn levels(policy: &Policy) -> Vec<f64> {
        let first = policy.thresholds.first().copied().unwrap_or(80.0);
        let mut v: Vec<f64> = EARLY_LEVELS
            .iter()
            .map(|d| first - d)
            .filter(|l| *l > 0.0)
            .chain(policy.thresholds.iter().copied())
            .collect();
        v.dedup();
        v
    }

    /// v1: one eventfd per level against `memory.usage_in_bytes`.
    pub(crate) fn v1(dir: &Path, limit: u64, policy: &Policy) -> std::io::Result<Notifier> {
        let usage = File::open(dir.join("memory.usage_in_bytes"))?;
        let mut control = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.event_control"))?;
        let mut fds = Vec::new();
        for pct in Self::levels(policy) {
            let efd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
            let bytes = (limit as f64 * pct / 100.0) as u64;
            // The kernel parses "<event fd> <usage fd> <threshold>" and keeps
            // its own references: neither file needs to stay open for it.
            let line = format!("{} {} {}", efd.as_raw_fd(), usage.as_raw_fd(), bytes);
            control.write_all(line.as_bytes())?;
            fds.push(efd);
        }
        Ok(Notifier { fds })
    }

    /// v2: inotify on `memory.events`.
    pub(crate) fn v2(dir: &Path) -> std::io::Result<Notifier> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(&fd, dir.join("memory.events"), inotify::WatchFlags::MODIFY)?;
        Ok(Notifier { fds: vec![fd] })
    }
}

/// What ended a [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    Timeout,
    /// A kernel notification (and maybe the waker too).
    Kernel,
    /// Only the waker.
    Control,
}

/// Blocks until a notification, the waker or the timeout. Allocates nothing.
pub(crate) fn wait(waker: &Waker, notifier: &Notifier, timeout: Duration) -> Woke {
    let kernel = &notifier.fds[..notifier.fds.len().min(MAX_FDS - 1)];
    let n = 1 + kernel.len();
    // Unused slots repeat the waker; only the first `n` are polled.
    let mut pfds: [PollFd<'_>; MAX_FDS] = std::array::from_fn(|i| {
        let fd = match i {
            0 => waker.fd.as_fd(),
            i if i < n => kernel[i - 1].as_fd(),
            _ => waker.fd.as_fd(),
        };
        PollFd::from_borrowed_fd(fd, PollFlags::IN)
    });
    let ts = Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: timeout.subsec_nanos().into(),
    };
    match poll(&mut pfds[..n], Some(&ts)) {
        Ok(0) | Err(_) => return Woke::Timeout,
        Ok(_) => {}
    }
    let mut woke = Woke::Timeout;
    for (i, p) in pfds[..n].iter().enumerate() {
        if !p.revents().is_empty() {
            drain(p);
            woke = match (i, woke) {
                (0, Woke::Timeout) => Woke::Control,
                (0, w) => w,
                _ => Woke::Kernel,
            };
        }
    }
    woke
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_waker_ends_a_wait_and_a_timeout_ends_the_next() {
        let w = Waker::new().unwrap();
        w.wake();
        assert_eq!(
            wait(&w, &Notifier::none(), Duration::from_secs(5)),
            Woke::Control
        );
        // Drained: the next wait times out.
        let t = std::time::Instant::now();
        assert_eq!(
            wait(&w, &Notifier::none(), Duration::from_millis(20)),
            Woke::Timeout
        );
        assert!(t.elapsed() >= Duration::from_millis(19));
    }

    #[test]
    fn a_modified_memory_events_wakes_the_v2_notifier() {
        let d = tempfile::tempdir().unwrap();
        let events = d.path().join("memory.events");
        std::fs::write(&events, "oom_kill 0\n").unwrap();
        let n = Notifier::v2(d.path()).unwrap();
        let w = Waker::new().unwrap();
        assert_eq!(wait(&w, &n, Duration::from_millis(10)), Woke::Timeout);
        std::fs::write(&events, "oom_kill 1\n").unwrap();
        assert_eq!(wait(&w, &n, Duration::from_secs(5)), Woke::Kernel);
        assert_eq!(wait(&w, &n, Duration::from_millis(10)), Woke::Timeout);
    }
}
