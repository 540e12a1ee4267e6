//! Signals and waits for the processes a test starts: existence checks,
//! SIGTERM-then-SIGKILL of a process group, and bounded waits on a child.
//! Everything here acts only on PIDs the harness started or found in its
//! own cgroups.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

pub(super) fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || last_errno() == libc::EPERM)
}

pub(super) fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(super) fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: plain kill(2) on a pid we started (or found in our cgroup).
        unsafe { libc::kill(pid, sig) };
    }
}

pub(super) fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on the process group of a child we started with
        // process_group(0), so pgid == its pid.
        unsafe { libc::kill(-pgid, sig) };
    }
}

pub(super) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops a child started with `process_group(0)`: SIGTERM to the group,
/// up to `grace` for the leader to exit, then SIGKILL to the group.
pub(super) fn stop_group(child: &mut Child, grace: Duration) {
    let pgid = child.id() as i32;
    if grace > Duration::ZERO {
        signal_group(pgid, libc::SIGTERM);
        if wait_child(child, grace).is_some() {
            signal_group(pgid, libc::SIGKILL); // any straggler children
            return;
        }
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.kill();
    let _ = wait_child(child, Duration::from_secs(5));
}
