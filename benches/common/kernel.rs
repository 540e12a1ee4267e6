//! What the kernel says about one memory cgroup, timestamped by the bench
//! itself: a high-frequency poller (v1 or v2) for the 80 % crossing, the
//! first time usage hits the limit and the OOM kill; a PSI trigger probe; a
//! v1 threshold eventfd for the exact crossing time; and a v2 cgroup made
//! by hand inside the VM.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{now, wait_until, MIB};

fn parse_u64(buf: &[u8]) -> u64 {
    std::str::from_utf8(buf)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The value of `key` in a flat-keyed cgroup file (0 when absent).
fn keyed_of(buf: &[u8], key: &str) -> u64 {
    std::str::from_utf8(buf)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The high-frequency poller
// ---------------------------------------------------------------------------

/// What the poller saw, wall-clock epoch seconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timeline {
    /// First sample with usage ≥ 80 % of the limit.
    pub cross80: Option<f64>,
    /// First sample with usage within 1 MiB of the limit.
    pub at_limit: Option<f64>,
    /// First sample after the kernel counted usage hitting the limit (v2
    /// `memory.events` `max`, v1 `memory.failcnt`): when v2's inotify on
    /// `memory.events` would first wake a watcher.
    pub first_max_event: Option<f64>,
    /// First sample with the `oom_kill` counter above its start value.
    pub kill: Option<f64>,
    pub peak_usage: u64,
    pub samples: u64,
    /// The longest gap between two samples (the poller's worst resolution).
    pub max_gap_ms: f64,
    /// The gap before the sample that saw the kill.
    pub kill_gap_ms: Option<f64>,
}

/// The files of one cgroup version the poller reads.
struct PollFiles {
    usage: fs::File,
    /// `memory.events` (v2) or `memory.oom_control` (v1): `oom_kill`.
    kills: fs::File,
    /// `memory.events` `max` (v2) or `memory.failcnt` (v1).
    max_events: fs::File,
    max_key: Option<&'static str>,
}

impl PollFiles {
    fn open(cg: &Path) -> PollFiles {
        let open = |f: &str| fs::File::open(cg.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if cg.join("memory.current").exists() {
            PollFiles {
                usage: open("memory.current"),
                kills: open("memory.events"),
                max_events: open("memory.events"),
                max_key: Some("max"),
            }
        } else {
            PollFiles {
                usage: open("memory.usage_in_bytes"),
                kills: open("memory.oom_control"),
                max_events: open("memory.failcnt"),
                max_key: None,
            }
        }
    }

    fn read(&self, buf: &mut [u8]) -> (u64, u64, u64) {
        let n = self.usage.read_at(buf, 0).unwrap_or(0);
        let u = parse_u64(&buf[..n]);
        let n = self.kills.read_at(buf, 0).unwrap_or(0);
        let k = keyed_of(&buf[..n], "oom_kill");
        let n = self.max_events.read_at(buf, 0).unwrap_or(0);
        let m = match self.max_key {
            Some(key) => keyed_of(&buf[..n], key),
            None => parse_u64(&buf[..n]),
        };
        (u, k, m)
    }
}

/// Reads usage, the limit-hit counter and the OOM kill counter of a v1 or v2
/// cgroup every `every` on its own thread until the kill is seen or it is
/// stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Timeline>>,
}

impl Poller {
    pub fn start(cg: &Path, limit: u64, every: Duration) -> Poller {
        let files = PollFiles::open(cg);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("bench-poller".into())
            .spawn(move || {
                let mut t = Timeline::default();
                let mut buf = [0u8; 512];
                let (_, kills0, max0) = files.read(&mut buf);
                let thr80 = (limit as f64 * 0.8) as u64;
                let mut last: Option<f64> = None;
                while !s.load(Ordering::Relaxed) {
                    let (u, k, m) = files.read(&mut buf);
                    let at = now();
                    t.samples += 1;
                    let gap = last.map(|l| (at - l) * 1e3).unwrap_or(0.0);
                    t.max_gap_ms = t.max_gap_ms.max(gap);
                    last = Some(at);
                    t.peak_usage = t.peak_usage.max(u);
                    if t.cross80.is_none() && u >= thr80 {
                        t.cross80 = Some(at);
                    }
                    if t.at_limit.is_none() && u + MIB >= limit {
                        t.at_limit = Some(at);
                    }
                    if t.first_max_event.is_none() && m > max0 {
                        t.first_max_event = Some(at);
                    }
                    if k > kills0 {
                        t.kill = Some(at);
                        t.kill_gap_ms = Some(gap);
                        break;
                    }
                    std::thread::sleep(every);
                }
                t
            })
            .expect("spawn poller");
        Poller {
            stop,
            handle: Some(handle),
        }
    }

    pub fn is_done(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    pub fn finish(mut self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("poller thread")
    }
}

// ---------------------------------------------------------------------------
// A PSI trigger on memory.pressure (v2): would it warn early?
// ---------------------------------------------------------------------------

/// Registers a PSI trigger (`some <stall µs> <window µs>`) on a v2 cgroup's
/// `memory.pressure` and timestamps (epoch seconds) its first event on a
/// dedicated thread.
pub struct PsiProbe {
    first: Arc<Mutex<Option<f64>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl PsiProbe {
    pub fn start(cg: &Path, stall_us: u64, window_us: u64) -> std::io::Result<PsiProbe> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(cg.join("memory.pressure"))?;
        f.write_all(format!("some {stall_us} {window_us}\0").as_bytes())?;
        let first = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (fi, st) = (first.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("bench-psi".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    let mut p = libc::pollfd {
                        fd: f.as_raw_fd(),
                        events: libc::POLLPRI,
                        revents: 0,
                    };
                    // SAFETY: one initialised pollfd on an fd we own.
                    let r = unsafe { libc::poll(&mut p, 1, 50) };
                    if r > 0 && p.revents & libc::POLLPRI != 0 {
                        fi.lock().unwrap().get_or_insert(now());
                        break;
                    }
                    if r > 0 && p.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                        break;
                    }
                }
            })?;
        Ok(PsiProbe {
            first,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the probe; the first event's time, if any.
    pub fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        *self.first.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------
// A v2 memory cgroup made by hand (inside the v2 VM)
// ---------------------------------------------------------------------------

/// A child of the v2 root with `memory.max` = `limit` and no swap; emptied
/// (`cgroup.kill`) and removed on drop.
pub struct V2Cgroup {
    path: PathBuf,
}

impl V2Cgroup {
    pub fn create(name: &str, limit: u64) -> V2Cgroup {
        let path = Path::new("/sys/fs/cgroup").join(name);
        fs::create_dir_all(&path).expect("mkdir v2 cgroup");
        fs::write(path.join("memory.max"), limit.to_string()).expect("memory.max");
        let _ = fs::write(path.join("memory.swap.max"), "0");
        V2Cgroup { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for V2Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            fs::remove_dir(&self.path).is_ok() || !self.path.exists()
        });
    }
}

// ---------------------------------------------------------------------------
// A v1 usage threshold eventfd: the kernel's own crossing time
// ---------------------------------------------------------------------------

/// Timestamps (monotonic) each upward crossing of `threshold` bytes, as the
/// kernel reports it through `cgroup.event_control`, on a dedicated thread.
pub struct CrossingClock {
    efd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    pub ups: Arc<Mutex<Vec<Instant>>>,
    pub downs: Arc<Mutex<Vec<Instant>>>,
    handle: Option<JoinHandle<()>>,
}

impl CrossingClock {
    pub fn start(cg: &Path, threshold: u64) -> std::io::Result<CrossingClock> {
        // SAFETY: eventfd returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let usage = fs::File::open(cg.join("memory.usage_in_bytes"))?;
        let mut control = fs::OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.event_control"))?;
        control.write_all(
            format!("{} {} {}", efd.as_raw_fd(), usage.as_raw_fd(), threshold).as_bytes(),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let ups = Arc::new(Mutex::new(Vec::new()));
        let downs = Arc::new(Mutex::new(Vec::new()));
        let (e, s, u, d) = (efd.clone(), stop.clone(), ups.clone(), downs.clone());
        let handle = std::thread::Builder::new()
            .name("bench-crossing".into())
            .spawn(move || {
                let _keep = usage;
                let mut buf = [0u8; 64];
                loop {
                    let mut v = 0u64;
                    // SAFETY: reading 8 bytes into a u64 from a blocking eventfd.
                    let r = unsafe { libc::read(e.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
                    let at = Instant::now();
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    if r != 8 {
                        continue;
                    }
                    let n = _keep.read_at(&mut buf, 0).unwrap_or(0);
                    if parse_u64(&buf[..n]) >= threshold {
                        u.lock().unwrap().push(at);
                    } else {
                        d.lock().unwrap().push(at);
                    }
                }
            })?;
        Ok(CrossingClock {
            efd,
            stop,
            ups,
            downs,
            handle: Some(handle),
        })
    }

    pub fn up_count(&self) -> usize {
        self.ups.lock().unwrap().len()
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a u64 to our eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for CrossingClock {
    fn drop(&mut self) {
        self.stop();
    }
}
