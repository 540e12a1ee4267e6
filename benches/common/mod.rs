//! Code the benchmarks share: the oomsnap process guard, a high-frequency
//! cgroup poller (v1 or v2) that timestamps the 80 % crossing, the first
//! time usage hits the limit and the kernel's OOM kill, a PSI trigger probe,
//! a v1 threshold eventfd that timestamps crossings, a fake pprof server that
//! timestamps request arrivals, the v2 VM runner ([`v2vm`]), statistics and
//! the JSON/Markdown output.
//!
//! The Go leaker, memory cgroups and small helpers come from the integration
//! test harness (`tests/common/mod.rs`), included as `harness`.
#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
pub mod harness;
pub mod kernel;
pub mod v2vm;

#[allow(unused_imports)]
pub use kernel::{CrossingClock, Poller, PsiProbe, Timeline, V2Cgroup};

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[allow(unused_imports)]
pub use harness::{free_port, http_request, temp_dir, wait_until, Leaker, MemCgroup};

pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Knobs
// ---------------------------------------------------------------------------

/// `--quick` on the command line or `OOMSNAP_BENCH_QUICK=1`.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
        || std::env::var("OOMSNAP_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// `OOMSNAP_BENCH_RUNS`, else `quick_default` with `--quick`, else `default`.
pub fn runs(default: usize, quick_default: usize) -> usize {
    if let Some(n) = std::env::var("OOMSNAP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if quick() {
        quick_default
    } else {
        default
    }
}

/// Root is needed for memory cgroups; Go for the leaker. Prints why and
/// returns false when the bench cannot run here.
pub fn can_run() -> bool {
    if harness::own_memory_cgroup().is_none() {
        eprintln!("bench skipped: no writable v1 memory cgroup (run as root on a cgroup v1 host)");
        return false;
    }
    if !harness::go_available() {
        eprintln!("bench skipped: go is not on PATH (needed to build tests/leaky)");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Wall clock as seconds since the epoch (manifests use the wall clock).
pub fn now() -> f64 {
    to_secs(SystemTime::now())
}

pub fn to_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// An RFC 3339 timestamp from a manifest, as epoch seconds.
pub fn parse_ts(s: &str) -> Option<f64> {
    humantime::parse_rfc3339(s).ok().map(to_secs)
}

// ---------------------------------------------------------------------------
// The oomsnap process
// ---------------------------------------------------------------------------

/// The release binary cargo built for this bench (`target/release/oomsnap`),
/// or `OOMSNAP_BIN` (inside the v2 VM, where cargo's path does not exist).
pub fn oomsnap_bin() -> PathBuf {
    std::env::var_os("OOMSNAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oomsnap")))
}

/// A running `oomsnap run`; SIGTERM (then SIGKILL) on drop.
pub struct Oomsnap {
    pub child: Child,
    pub log: PathBuf,
    pub store: PathBuf,
    pub spool: PathBuf,
    pub started: Instant,
}

impl Oomsnap {
    /// Starts `oomsnap run` against `cgroup` and `target` (a pprof base URL),
    /// storing into `<dir>/store` with the spool in `<dir>/spool`. `extra`
    /// overrides or adds `OOMSNAP_*` variables; any `OOMSNAP_*` of the bench's
    /// own environment is removed so the defaults are the defaults.
    pub fn start(dir: &Path, cgroup: &Path, target: &str, extra: &[(&str, &str)]) -> Oomsnap {
        let store = dir.join("store");
        let spool = dir.join("spool");
        let log = dir.join("oomsnap.log");
        let mut cmd = Command::new(oomsnap_bin());
        cmd.arg("run");
        for (k, _) in std::env::vars() {
            if k.starts_with("OOMSNAP_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("OOMSNAP_CGROUP", cgroup)
            .env("OOMSNAP_TARGET", target)
            .env("OOMSNAP_STORE", format!("file://{}", store.display()))
            .env("OOMSNAP_SPOOL_DIR", &spool)
            .env("OOMSNAP_ADMIN_ADDR", "127.0.0.1:0")
            .env("OOMSNAP_LOG_FORMAT", "json")
            .env("OOMSNAP_ANNOTATIONS_FILE", dir.join("no-annotations"))
            .env("POD_NAMESPACE", "bench")
            .env("POD_NAME", "leaky");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = fs::File::create(&log).expect("create oomsnap log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .expect("spawn oomsnap (build it with cargo build --release)");
        Oomsnap {
            child,
            log,
            store,
            spool,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait up to `grace` (it finishes a capture and the uploads
    /// first), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every manifest in the store and the spool, deduplicated by capture id.
    pub fn manifests(&self) -> Vec<serde_json::Value> {
        let mut files = Vec::new();
        find_named(&self.store, "manifest.json", &mut files);
        find_named(&self.spool, "manifest.json", &mut files);
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for f in files {
            let Ok(bytes) = fs::read(&f) else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            let id = v["capture_id"].as_str().unwrap_or_default().to_string();
            if seen.insert(id) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| {
            a["decided_at"]
                .as_str()
                .unwrap_or_default()
                .cmp(b["decided_at"].as_str().unwrap_or_default())
        });
        out
    }

    /// Waits until the admin server logged its address; returns it.
    pub fn admin_addr(&self, timeout: Duration) -> Option<String> {
        let mut addr = None;
        wait_until(timeout, Duration::from_millis(20), || {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            addr = text.lines().find_map(admin_addr_in);
            addr.is_some()
        });
        addr
    }
}

fn admin_addr_in(line: &str) -> Option<String> {
    if !line.contains("admin") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    for k in ["addr", "address", "listen"] {
        if let Some(s) = v[k].as_str().or_else(|| v["fields"][k].as_str()) {
            return Some(s.to_string());
        }
    }
    None
}

impl Drop for Oomsnap {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

pub fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_named(&p, name, out);
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
}

// ---------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------

/// utime + stime of a process, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ", field 3 (state) is index 0; utime is field 14.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) as f64 / hz)
}

/// Time on CPU of every thread of a process, in seconds, from
/// `/proc/<pid>/task/*/schedstat` (nanosecond resolution; threads that
/// already exited are not counted).
pub fn sched_seconds(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        if let Ok(s) = fs::read_to_string(e.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total as f64 / 1e9)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

// ---------------------------------------------------------------------------
// A fake pprof server that timestamps request arrivals
// ---------------------------------------------------------------------------

/// Serves `/debug/pprof/heap` and `/debug/pprof/goroutine` (real profiles
/// from `tests/data/pprof`) over keep-alive HTTP/1.1 and logs the arrival
/// time of every request line with its path.
pub struct FakePprof {
    pub port: u16,
    pub arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl FakePprof {
    pub fn start() -> FakePprof {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake pprof");
        let port = listener.local_addr().unwrap().port();
        let data = harness::manifest_dir().join("tests/data/pprof");
        let heap = Arc::new(fs::read(data.join("heap_baseline.pb.gz")).expect("heap fixture"));
        let gor = Arc::new(fs::read(data.join("goroutine.pb.gz")).expect("goroutine fixture"));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (arrivals.clone(), stop.clone());
        std::thread::Builder::new()
            .name("bench-fake-pprof".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (a, heap, gor) = (a.clone(), heap.clone(), gor.clone());
                    std::thread::spawn(move || serve_conn(conn, &a, &heap, &gor));
                }
            })
            .expect("spawn fake pprof");
        FakePprof {
            port,
            arrivals,
            stop,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/debug/pprof", self.port)
    }
}

impl Drop for FakePprof {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_conn(conn: TcpStream, log: &Mutex<Vec<(Instant, String)>>, heap: &[u8], gor: &[u8]) {
    let _ = conn.set_nodelay(true);
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        // Headers until the empty line.
        let mut h = String::new();
        loop {
            h.clear();
            match r.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) if h == "\r\n" || h == "\n" => break,
                Ok(_) => {}
            }
        }
        log.lock().unwrap().push((at, path.clone()));
        let body: &[u8] = if path.starts_with("/debug/pprof/heap") {
            heap
        } else if path.starts_with("/debug/pprof/goroutine") {
            gor
        } else {
            b"fake"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(body).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Statistics and output
// ---------------------------------------------------------------------------

/// The q-quantile (0..=1) by nearest rank of a sample; `None` when empty.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

pub fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::min)
}

pub fn max(v: &[f64]) -> Option<f64> {
    v.iter().copied().reduce(f64::max)
}

/// A number for a table, or an em dash.
pub fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// `target/bench`, created.
pub fn out_dir() -> PathBuf {
    let d = harness::target_dir().join("bench");
    fs::create_dir_all(&d).expect("create target/bench");
    d
}

/// Writes `target/bench/<name>.json` and `<name>.md`, prints the table.
pub fn report(name: &str, json: serde_json::Value, markdown: &str) {
    let d = out_dir();
    let mut full = json;
    full["machine"] = machine();
    full["generated_at"] =
        serde_json::Value::String(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    fs::write(
        d.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&full).unwrap(),
    )
    .expect("write bench json");
    fs::write(d.join(format!("{name}.md")), markdown).expect("write bench markdown");
    println!("\n{markdown}");
    println!("(written to {}/{name}.json and .md)", d.display());
}

/// nproc, kernel, CPU model.
pub fn machine() -> serde_json::Value {
    let uname = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "kernel": uname,
        "cpu": cpu,
        "memory": mem,
    })
}
