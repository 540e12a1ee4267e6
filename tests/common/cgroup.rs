//! Memory cgroups for tests. [`MemCgroup`] is a real v1 child of the test's
//! own cgroup with a limit, emptied (SIGKILL) and removed on drop; stale
//! ones from a crashed run are swept first. [`FakeCgroup`] is a directory of
//! v2 memory files whose numbers the test writes, to drive the watcher
//! deterministically without a kernel memory controller.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::files::temp_dir;
use super::process::{pid_alive, signal};
use super::timing::wait_until;

const V1_MEMORY_MOUNT: &str = "/sys/fs/cgroup/memory";
/// Name prefix of every cgroup the tests make: `oomsnap-test-<pid>-<n>`.
pub const CGROUP_PREFIX: &str = "oomsnap-test-";

/// This process's v1 memory cgroup directory, from `/proc/self/cgroup`.
pub fn own_memory_cgroup() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let dir = PathBuf::from(V1_MEMORY_MOUNT).join(path.trim_start_matches('/'));
            return dir.join("memory.limit_in_bytes").exists().then_some(dir);
        }
    }
    None
}

/// Removes `oomsnap-test-*` cgroups under `parent` left by an earlier run
/// whose process is gone (kills what is still inside them first).
pub fn remove_stale_cgroups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
            continue;
        };
        let owner: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if owner == std::process::id() as i32 || pid_alive(owner) {
            continue;
        }
        eprintln!("harness: removing stale cgroup {}", e.path().display());
        empty_and_remove_cgroup(&e.path());
    }
}

pub(super) fn cgroup_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs everything in `dir` until it is empty (≤ 5 s), then rmdir.
fn empty_and_remove_cgroup(dir: &Path) {
    let emptied = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
        let pids = cgroup_pids(dir);
        for &p in &pids {
            signal(p, libc::SIGKILL);
        }
        pids.is_empty()
    });
    if !emptied {
        eprintln!(
            "harness: cgroup {} still has tasks {:?}",
            dir.display(),
            cgroup_pids(dir)
        );
    }
    // rmdir can report EBUSY for a moment after the last task exits.
    let removed = wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
        fs::remove_dir(dir).is_ok() || !dir.exists()
    });
    if !removed {
        eprintln!("harness: could not rmdir {}", dir.display());
    }
}

/// A child v1 memory cgroup of this process's cgroup, removed on drop
/// (after SIGKILLing every task in it).
pub struct MemCgroup {
    path: PathBuf,
}

impl MemCgroup {
    /// Makes `oomsnap-test-<pid>-<n>` with `memory.limit_in_bytes = limit`.
    /// `None` when the v1 memory controller isn't there or isn't writable —
    /// the caller reports that with [`require_live`].
    pub fn create(limit_bytes: u64) -> Option<MemCgroup> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let parent = own_memory_cgroup()?;
        remove_stale_cgroups(&parent);
        let name = format!(
            "{CGROUP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(name);
        if let Err(e) = fs::create_dir(&path) {
            eprintln!("harness: cannot create cgroup {}: {e}", path.display());
            return None;
        }
        let cg = MemCgroup { path };
        if let Err(e) = fs::write(
            cg.path.join("memory.limit_in_bytes"),
            limit_bytes.to_string(),
        ) {
            eprintln!("harness: cannot set memory.limit_in_bytes: {e}");
            return None; // Drop removes the directory
        }
        Some(cg)
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one file of the cgroup (panics if it can't).
    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.path.join(file))
            .unwrap_or_else(|e| panic!("read {}/{file}: {e}", self.path.display()))
    }

    fn read_u64(&self, file: &str) -> u64 {
        let text = self.read(file);
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {text:?}: {e}"))
    }

    /// `oom_kill N` from `memory.oom_control` (0 on kernels without it).
    pub fn oom_kill_count(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `memory.usage_in_bytes`.
    pub fn usage(&self) -> u64 {
        self.read_u64("memory.usage_in_bytes")
    }

    /// `memory.limit_in_bytes`.
    pub fn limit(&self) -> u64 {
        self.read_u64("memory.limit_in_bytes")
    }

    /// The PIDs in `cgroup.procs`.
    pub fn pids(&self) -> Vec<i32> {
        cgroup_pids(&self.path)
    }

    /// Moves `pid` into this cgroup.
    pub fn add_pid(&self, pid: u32) -> std::io::Result<()> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        empty_and_remove_cgroup(&self.path);
    }
}

/// A directory with the v2 memory files, in the kernel's formats, whose
/// `memory.current` the test sets: drives the watcher deterministically
/// without a kernel memory controller.
pub struct FakeCgroup {
    dir: tempfile::TempDir,
    pub limit: u64,
}

impl FakeCgroup {
    pub fn new(limit: u64, percent: f64) -> FakeCgroup {
        let dir = temp_dir("fake-cgroup");
        let f = FakeCgroup { dir, limit };
        fs::write(f.path().join("memory.max"), format!("{limit}\n")).unwrap();
        fs::write(
            f.path().join("memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
        )
        .unwrap();
        f.set(percent);
        f
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sets the usage to `percent` of the limit (no inactive file).
    pub fn set(&self, percent: f64) {
        let bytes = (self.limit as f64 * percent / 100.0) as u64 / 4096 * 4096;
        fs::write(
            self.path().join("memory.stat"),
            format!("anon {bytes}\nfile 0\nkernel 0\ninactive_anon {bytes}\nactive_anon 0\ninactive_file 0\nactive_file 0\n"),
        )
        .unwrap();
        fs::write(self.path().join("memory.current"), format!("{bytes}\n")).unwrap();
    }

    /// Counts an OOM kill the way the kernel would.
    pub fn oom_kill(&self, n: u64) {
        fs::write(
            self.path().join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom {n}\noom_kill {n}\noom_group_kill 0\n"),
        )
        .unwrap();
    }
}
