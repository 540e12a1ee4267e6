//! Shared harness for the integration tests: the Go `leaky` target, v1
//! memory cgroups, SeaweedFS (S3) and Azurite (Azure Blob) on loopback.
//!
//! Every guard cleans up in `Drop`, so a panicking test leaves no process,
//! cgroup or server behind. Every server binds 127.0.0.1 and is stopped by
//! its PID (or its own process group).
//!
//! A missing capability (no `go`, no writable v1 memory controller, no `weed`,
//! no Azurite) is reported with [`require_live`]: a loud skip message, or a
//! panic when `OOMSNAP_REQUIRE_LIVE=1` (CI), so nothing passes silently.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};

// ---------------------------------------------------------------------------
// Skips and small helpers
// ---------------------------------------------------------------------------

/// Call when `what` is missing. Prints a loud skip message and returns
/// `false`; panics instead when `OOMSNAP_REQUIRE_LIVE=1`.
///
/// ```ignore
/// if !common::go_available() && !common::require_live("go toolchain") { return; }
/// ```
pub fn require_live(what: &str) -> bool {
    if std::env::var("OOMSNAP_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("OOMSNAP_REQUIRE_LIVE=1 but {what} is not available");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: {what} is not available on this machine.");
    eprintln!("!!! This test did NOT run. Set OOMSNAP_REQUIRE_LIVE=1 to make it fail.");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!();
    false
}

/// The crate root (`CARGO_MANIFEST_DIR`).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<crate>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                manifest_dir().join(d)
            }
        }
        None => manifest_dir().join("target"),
    }
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("oomsnap-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// Polls `f` every `poll` until it returns true or `timeout` passes.
/// Returns whether it became true.
pub fn wait_until(timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
}

/// A loopback port that was free a moment ago (bind `127.0.0.1:0`, drop).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct loopback ports, all bound at the same time before release.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Finds an executable named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A minimal blocking HTTP/1.0 request to a loopback server. Returns the
/// status code and the body. HTTP/1.0 keeps servers from chunking.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other(format!("not an http:// url: {url}")))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| std::io::Error::other(format!("{hostport}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status_line = String::from_utf8_lossy(&resp[..head_end]);
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {status_line}")))?;
    Ok((code, resp[head_end + 4..].to_vec()))
}

/// `GET url` with a 10 s timeout.
pub fn http_get(url: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http_request("GET", url, &[], &[], Duration::from_secs(10))
}

/// Runs `go tool pprof -top <file>` and returns its stdout (panics on failure).
pub fn pprof_top(file: &Path) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(file)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof -top {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a future to completion on a fresh current-thread runtime in its own
/// OS thread, so it works both from sync code and inside `#[tokio::test]`.
pub fn block_on_thread<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(fut)
    })
    .join()
    .expect("block_on_thread: future panicked")
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || last_errno() == libc::EPERM)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: plain kill(2) on a pid we started (or found in our cgroup).
        unsafe { libc::kill(pid, sig) };
    }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) on the process group of a child we started with
        // process_group(0), so pgid == its pid.
        unsafe { libc::kill(-pgid, sig) };
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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
fn stop_group(child: &mut Child, grace: Duration) {
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

/// An exclusive `flock` held until dropped.
pub struct FileLock {
    file: fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> FileLock {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("create lock dir");
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("open lock file");
        loop {
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            assert_eq!(last_errno(), libc::EINTR, "flock {}", path.display());
        }
        FileLock { file }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking an fd we own (closing it would unlock too).
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

// ---------------------------------------------------------------------------
// The Go target
// ---------------------------------------------------------------------------

/// Whether a `go` toolchain is on PATH.
pub fn go_available() -> bool {
    which("go").is_some()
}

/// Builds `tests/leaky` into `target/leaky/leaky` once per `cargo test`
/// (a file lock makes concurrent test binaries wait for one build; the build
/// goes to a temp name and is renamed into place; an up-to-date binary is
/// reused). Returns `None` after [`require_live`] when `go` is missing.
pub fn try_leaky_binary() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        // A prebuilt one (the benches inside the v2 VM have no Go).
        if let Some(bin) = std::env::var_os("OOMSNAP_LEAKY_BIN") {
            return Some(PathBuf::from(bin));
        }
        if !go_available() {
            require_live("go toolchain (needed to build tests/leaky)");
            return None;
        }
        Some(build_leaky())
    })
    .clone()
}

/// Like [`try_leaky_binary`], but panics when the binary can't be had.
/// Check [`go_available`] first to skip cleanly.
pub fn leaky_binary() -> PathBuf {
    try_leaky_binary().expect("tests/leaky cannot be built: go is not available")
}

fn build_leaky() -> PathBuf {
    let src = manifest_dir().join("tests/leaky");
    let out_dir = target_dir().join("leaky");
    let bin = out_dir.join("leaky");
    let _lock = FileLock::acquire(&out_dir.join(".build.lock"));

    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_src = ["main.go", "go.mod"]
        .iter()
        .filter_map(|f| mtime(&src.join(f)))
        .max()
        .expect("tests/leaky/main.go is missing");
    if let Some(built) = mtime(&bin) {
        if built > newest_src {
            return bin;
        }
    }

    let tmp = out_dir.join(format!(".leaky.tmp.{}", std::process::id()));
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build");
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        panic!(
            "go build of tests/leaky failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &bin).expect("rename leaky into place");
    bin
}

// ---------------------------------------------------------------------------
// v1 memory cgroups
// ---------------------------------------------------------------------------

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

fn cgroup_pids(dir: &Path) -> Vec<i32> {
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

// ---------------------------------------------------------------------------
// The leaky process
// ---------------------------------------------------------------------------

/// A running `leaky`, killed on drop.
pub struct Leaker {
    child: Child,
    port: u16,
    exited: Option<ExitStatus>,
}

impl Leaker {
    /// Starts `leaky args…` (inside `cgroup` if given: a shell writes its own
    /// PID to `cgroup.procs`, then execs leaky, so the PID is leaky's). Unless
    /// `args` has `-addr`, it listens on `127.0.0.1:0` — the kernel picks a
    /// free port, no race — and the port is read from the
    /// `leaky: listening on ADDR pid PID` line (waited for up to 10 s).
    pub fn spawn(cgroup: Option<&MemCgroup>, args: &[&str]) -> Leaker {
        Leaker::spawn_in(cgroup.map(MemCgroup::path), args)
    }

    /// [`Leaker::spawn`] into any cgroup directory (v1 or v2).
    pub fn spawn_in(cgroup: Option<&Path>, args: &[&str]) -> Leaker {
        let bin = leaky_binary();
        let mut full: Vec<String> = Vec::new();
        if !args
            .iter()
            .any(|a| *a == "-addr" || a.starts_with("-addr="))
        {
            full.push("-addr".into());
            full.push("127.0.0.1:0".into());
        }
        full.extend(args.iter().map(|s| s.to_string()));

        let mut cmd = match cgroup {
            Some(cg) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(r#"echo $$ > "$0" && exec "$@""#)
                    .arg(cg.join("cgroup.procs"))
                    .arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn leaky");

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && line.starts_with("leaky: listening on ") {
                    let _ = tx.send(line);
                    sent = true;
                } else {
                    eprintln!("leaky stdout: {line}");
                }
            }
        });
        let mut leaker = Leaker {
            child,
            port: 0,
            exited: None,
        };
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(_) => {
                let status = leaker.child.try_wait().ok().flatten();
                panic!("leaky did not print its listening line within 10 s (exit: {status:?}, args {full:?})");
            }
        };
        // "leaky: listening on 127.0.0.1:PORT pid PID"
        let mut words = line.split_whitespace();
        let addr = words.nth(3).expect("address in listening line");
        leaker.port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad listening line: {line}"));
        let pid: u32 = words
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("bad listening line: {line}"));
        assert_eq!(pid, leaker.child.id(), "leaky pid != spawned pid");
        leaker
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/debug/pprof`
    pub fn pprof_base(&self) -> String {
        format!("http://127.0.0.1:{}/debug/pprof", self.port)
    }

    /// Waits up to `timeout` for leaky to exit (an OOM kill shows as
    /// SIGKILL: `status.signal() == Some(9)`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, timeout);
        }
        self.exited
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------
// SeaweedFS (S3)
// ---------------------------------------------------------------------------

pub const S3_BUCKET: &str = "test-bucket";
pub const S3_ACCESS_KEY: &str = "k";
pub const S3_SECRET_KEY: &str = "s";

/// `weed mini` on loopback with every port moved to a free one, so several
/// tests can run their own SeaweedFS at once. Stopped on drop (SIGTERM to
/// its process group, 2 s, then SIGKILL).
pub struct SeaweedFs {
    child: Child,
    s3_port: u16,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
}

impl SeaweedFs {
    /// Starts SeaweedFS and waits until S3 answers and `test-bucket` lists.
    /// `None` (after [`require_live`]) when `weed` isn't on PATH.
    pub fn start() -> Option<SeaweedFs> {
        if which("weed").is_none() {
            require_live("SeaweedFS `weed` binary");
            return None;
        }
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(s) => return Some(s),
                Err(e) => {
                    eprintln!("harness: weed mini failed to start: {e}; retrying");
                    last_err = e;
                }
            }
        }
        panic!("weed mini did not start: {last_err}");
    }

    fn try_start() -> Result<SeaweedFs, String> {
        let dir = temp_dir("weed");
        // Ports: master, master grpc, volume, volume grpc, filer, filer grpc,
        // s3, s3 grpc, admin grpc. The admin http port is chosen so that
        // port+10000 is free too: the embedded worker dials admin+10000.
        let p = free_ports(9);
        let admin = free_port_with_grpc_offset();
        let log = fs::File::create(dir.path().join("weed.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-metricsPort=0",
            ])
            .arg(format!("-bucket={S3_BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={admin}"))
            .arg(format!("-admin.port.grpc={}", admin + 10000))
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| format!("spawn weed: {e}"))?;
        let s3_port = p[6];
        let mut ports = p.clone();
        ports.push(admin);
        ports.push(admin + 10000);
        let store = s3_store(s3_port);
        let mut me = SeaweedFs {
            child,
            s3_port,
            ports,
            dir,
            store,
        };
        me.wait_ready(Duration::from_secs(30))?;
        Ok(me)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/", self.s3_port);
        // 1. S3 answers HTTP at all.
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("weed exited early: {st}; log:\n{}", self.log()));
            }
            if http_request("GET", &url, &[], &[], Duration::from_secs(1)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("S3 did not answer on {url}; log:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // 2. The bucket exists and signed requests work.
        loop {
            let store = self.store.clone();
            let res = block_on_thread(async move {
                use futures_util::TryStreamExt;
                store
                    .list(None)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            match res {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("bucket not listable: {e}; log:\n{}", self.log()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn s3_port(&self) -> u16 {
        self.s3_port
    }

    /// `http://127.0.0.1:<s3 port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Environment for the oomsnap process.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `s3://test-bucket/<prefix>`
    pub fn store_url(&self, prefix: &str) -> String {
        format!("s3://{S3_BUCKET}/{}", prefix.trim_start_matches('/'))
    }

    /// The harness's own client for the bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Every key under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(&self.store, prefix).await
    }

    /// The bytes of `key` (panics if missing).
    pub async fn get(&self, key: &str) -> Vec<u8> {
        get_bytes(&self.store, key).await
    }

    /// Writes `key`.
    pub async fn put(&self, key: &str, data: Vec<u8>) {
        put_bytes(&self.store, key, data).await
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::from_secs(2));
        // weed leaves unix sockets named after its ports in /tmp.
        for kind in [
            "master-grpc",
            "volume-grpc",
            "filer",
            "filer-grpc",
            "s3",
            "s3-grpc",
            "admin-grpc",
        ] {
            for port in &self.ports {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{kind}-{port}.sock"));
            }
        }
    }
}

/// A free port `p` (≤ 55535) for which `p + 10000` is free as well.
fn free_port_with_grpc_offset() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().unwrap().port();
        if p <= 55535 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair p, p+10000 found");
}

fn quick_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn s3_store(port: u16) -> Arc<dyn ObjectStore> {
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(S3_BUCKET)
        .with_access_key_id(S3_ACCESS_KEY)
        .with_secret_access_key(S3_SECRET_KEY)
        .with_retry(quick_retry())
        .build()
        .expect("build S3 client");
    Arc::new(s3)
}

async fn list_keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let prefix = prefix.trim_matches('/');
    let p = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let mut keys: Vec<String> = store
        .list(p.as_ref())
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
    keys.sort();
    keys
}

async fn get_bytes(store: &Arc<dyn ObjectStore>, key: &str) -> Vec<u8> {
    let r = store
        .get(&ObjectPath::from(key))
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
    r.bytes()
        .await
        .unwrap_or_else(|e| panic!("read {key:?}: {e}"))
        .to_vec()
}

async fn put_bytes(store: &Arc<dyn ObjectStore>, key: &str, data: Vec<u8>) {
    store
        .put(&ObjectPath::from(key), data.into())
        .await
        .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
}

// ---------------------------------------------------------------------------
// Azurite (Azure Blob)
// ---------------------------------------------------------------------------

pub const AZURE_CONTAINER: &str = "test-container";
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented).
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where `azurite-blob` is: PATH, then `OOMSNAP_AZURITE_BLOB`, then
/// `/tmp/npmaz/node_modules/.bin/azurite-blob`.
pub fn azurite_binary() -> Option<PathBuf> {
    which("azurite-blob")
        .or_else(|| {
            std::env::var_os("OOMSNAP_AZURITE_BLOB")
                .map(PathBuf::from)
                .filter(|p| is_executable(p))
        })
        .or_else(|| {
            let p = PathBuf::from("/tmp/npmaz/node_modules/.bin/azurite-blob");
            is_executable(&p).then_some(p)
        })
}

/// `azurite-blob` on a free loopback port, in memory, with the container
/// `test-container` created. Killed on drop.
pub struct Azurite {
    child: Child,
    port: u16,
    store: Arc<dyn ObjectStore>,
}

impl Azurite {
    /// `None` (after [`require_live`]) when Azurite isn't installed.
    pub fn start() -> Option<Azurite> {
        let Some(bin) = azurite_binary() else {
            require_live("Azurite (`azurite-blob`)");
            return None;
        };
        let mut last_err = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&bin) {
                Ok(a) => return Some(a),
                Err(e) => {
                    eprintln!("harness: azurite failed to start: {e}; retrying");
                    last_err = e;
                }
            }
        }
        panic!("azurite did not start: {last_err}");
    }

    fn try_start(bin: &Path) -> Result<Azurite, String> {
        let port = free_port();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(port.to_string())
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut me = Azurite {
            child,
            port,
            store: azure_store(port),
        };
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = me.child.try_wait() {
                return Err(format!("azurite exited early: {st}"));
            }
            if http_request("GET", &url, &[], &[], Duration::from_secs(1)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("azurite did not answer on {url}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        me.create_container(AZURE_CONTAINER)?;
        Ok(me)
    }

    /// `PUT /<account>/<container>?restype=container`, signed with Shared Key.
    /// 201 Created or 409 (already exists) are success.
    pub fn create_container(&self, name: &str) -> Result<(), String> {
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        let resource = format!("/{AZURE_ACCOUNT}/{AZURE_ACCOUNT}/{name}\nrestype:container");
        // VERB, Content-Encoding, -Language, -Length (empty for 0), -MD5,
        // -Type, Date, If-Modified-Since, If-Match, If-None-Match,
        // If-Unmodified-Since, Range, canonical x-ms-* headers, resource.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let auth = format!(
            "SharedKey {AZURE_ACCOUNT}:{}",
            shared_key_signature(AZURE_KEY, &to_sign)
        );
        let url = format!(
            "http://127.0.0.1:{}/{AZURE_ACCOUNT}/{name}?restype=container",
            self.port
        );
        let (code, body) = http_request(
            "PUT",
            &url,
            &[
                ("x-ms-date", &date),
                ("x-ms-version", version),
                ("Authorization", &auth),
            ],
            &[],
            Duration::from_secs(10),
        )
        .map_err(|e| format!("create container: {e}"))?;
        match code {
            201 | 409 => Ok(()),
            _ => Err(format!(
                "create container {name}: HTTP {code}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for the oomsnap process. object_store's emulator mode
    /// (`AZURE_STORAGE_USE_EMULATOR=true`) reads the endpoint from
    /// `AZURITE_BLOB_STORAGE_URL` (default `http://127.0.0.1:10000`); the
    /// account name and key are Azurite's well-known ones.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURE_ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURE_KEY.to_string()),
            ("AZURITE_BLOB_STORAGE_URL", self.blob_url()),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `az://test-container/<prefix>`
    pub fn store_url(&self, prefix: &str) -> String {
        format!("az://{AZURE_CONTAINER}/{}", prefix.trim_start_matches('/'))
    }

    /// The harness's own client for the container.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub async fn list(&self, prefix: &str) -> Vec<String> {
        list_keys(&self.store, prefix).await
    }

    pub async fn get(&self, key: &str) -> Vec<u8> {
        get_bytes(&self.store, key).await
    }

    pub async fn put(&self, key: &str, data: Vec<u8>) {
        put_bytes(&self.store, key, data).await
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        stop_group(&mut self.child, Duration::ZERO);
    }
}

/// The harness's Azure client. Not emulator mode: that reads the port from
/// the process environment (`AZURITE_BLOB_STORAGE_URL`), which tests must
/// not mutate. An explicit endpoint `http://127.0.0.1:PORT/devstoreaccount1`
/// gives the same path-style URLs and signatures.
fn azure_store(port: u16) -> Arc<dyn ObjectStore> {
    let az = object_store::azure::MicrosoftAzureBuilder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}"))
        .with_allow_http(true)
        .with_account(AZURE_ACCOUNT)
        .with_access_key(AZURE_KEY)
        .with_container_name(AZURE_CONTAINER)
        .with_retry(quick_retry())
        .build()
        .expect("build Azure client");
    Arc::new(az)
}

/// base64(HMAC-SHA256(base64decode(key), to_sign)), HMAC per RFC 2104 on
/// the crate's `sha2`.
fn shared_key_signature(key_b64: &str, to_sign: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(key_b64).expect("account key is base64");
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(&key));
    } else {
        block[..key.len()].copy_from_slice(&key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(to_sign.as_bytes())
        .finalize();
    let mac = Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize();
    engine.encode(mac)
}

/// RFC 1123 date (`Sun, 22 Nov 2026 03:26:34 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// oomsnap itself
// ---------------------------------------------------------------------------

/// A running `oomsnap` binary; stderr goes to a file so tests can read the
/// logs; killed on drop.
pub struct Oomsnap {
    child: Child,
    pub admin: String,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

/// The path of the oomsnap binary under test (set by cargo for tests).
pub fn oomsnap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oomsnap"))
}

impl Oomsnap {
    /// Starts `oomsnap <args>` with `env` on top of a clean environment (no
    /// inherited `OOMSNAP_*`), an admin port on loopback and text logs.
    pub fn start(args: &[&str], env: &[(String, String)]) -> Oomsnap {
        let dir = temp_dir("oomsnap-log");
        let log = dir.path().join("oomsnap.log");
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(oomsnap_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,oomsnap=debug")
            .env("OOMSNAP_ADMIN_ADDR", &admin)
            .env("OOMSNAP_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn oomsnap");
        let me = Oomsnap {
            child,
            admin,
            log,
            _dir: Some(dir),
        };
        let up = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            http_get(&format!("http://{}/healthz", me.admin)).is_ok()
        });
        assert!(
            up,
            "oomsnap did not serve its admin port; log:\n{}",
            me.logs()
        );
        me
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an admin path; the body as text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let (s, b) = http_get(&format!("http://{}{path}", self.admin)).expect("admin GET");
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// POST /capture; the status code and body.
    pub fn capture(&self) -> (u16, String) {
        let (s, b) = http_request(
            "POST",
            &format!("http://{}/capture", self.admin),
            &[],
            b"",
            Duration::from_secs(60),
        )
        .expect("admin POST");
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// SIGTERM and wait; the exit status.
    pub fn terminate(mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as the kernel or kubelet would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Oomsnap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from Prometheus text (first sample whose name and
/// labels start with `prefix`).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// A cgroup v2 directory whose numbers the test writes
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A loopback proxy in front of a store that misbehaves on demand
// ---------------------------------------------------------------------------

/// What the proxy does with the next connections.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyMode {
    /// Forward everything.
    Up,
    /// Accept and drop at once: the store refuses connections.
    Down,
    /// Answer every request with this status and an S3 error body (e.g.
    /// 500, or 503 SlowDown), then close.
    Status(u16),
    /// Wait this long before forwarding each connection.
    Slow(Duration),
    /// Forward the request head and this many body bytes, then cut both
    /// sides: the connection drops mid-upload.
    CutAfter(usize),
}

/// A switchable TCP proxy on loopback; counts the connections it spoiled.
pub struct StoreProxy {
    pub port: u16,
    mode: Arc<std::sync::Mutex<ProxyMode>>,
    pub spoiled: Arc<AtomicU64>,
}

impl StoreProxy {
    pub fn start(upstream: u16, mode: ProxyMode) -> StoreProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::Mutex::new(mode));
        let spoiled = Arc::new(AtomicU64::new(0));
        let (m, sp) = (mode.clone(), spoiled.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                let mode = m.lock().unwrap().clone();
                let sp = sp.clone();
                std::thread::spawn(move || proxy_one(client, upstream, mode, sp));
            }
        });
        StoreProxy {
            port,
            mode,
            spoiled,
        }
    }

    pub fn set(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn proxy_one(mut client: TcpStream, upstream: u16, mode: ProxyMode, spoiled: Arc<AtomicU64>) {
    match mode {
        ProxyMode::Down => {
            spoiled.fetch_add(1, Ordering::Relaxed);
        }
        ProxyMode::Status(code) => {
            // Read the request head so the client sees a response, not a reset.
            let mut buf = [0u8; 16384];
            let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = client.read(&mut buf);
            let (reason, s3code) = match code {
                503 => ("Slow Down", "SlowDown"),
                _ => ("Internal Server Error", "InternalError"),
            };
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code><Message>injected by the test</Message></Error>");
            let _ = write!(
                client,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            spoiled.fetch_add(1, Ordering::Relaxed);
        }
        ProxyMode::Slow(d) => {
            std::thread::sleep(d);
            forward(client, upstream);
        }
        ProxyMode::CutAfter(n) => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let mut head = Vec::new();
            let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
            // Forward until the head plus n body bytes have passed, then cut.
            while let Ok(k) = client.read(&mut buf) {
                if k == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..k]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let is_put = head.starts_with(b"PUT") || head.starts_with(b"POST");
                    if !is_put {
                        // Not an upload: answer this one request, then close,
                        // so the client's next request (maybe a PUT) comes
                        // on a new connection that can be cut.
                        let _ = server.write_all(&head);
                        let _ = server.shutdown(std::net::Shutdown::Write);
                        let _ = std::io::copy(&mut server, &mut client);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    let upto = (end + 4 + n).min(head.len());
                    let _ = server.write_all(&head[..upto]);
                    if head.len() >= end + 4 + n {
                        break;
                    }
                }
            }
            spoiled.fetch_add(1, Ordering::Relaxed);
            let _ = server.shutdown(std::net::Shutdown::Both);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        ProxyMode::Up => forward(client, upstream),
    }
}

fn forward(client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let c2 = client.try_clone().unwrap();
    let s2 = server.try_clone().unwrap();
    std::thread::spawn(move || pipe(s2, c2));
    pipe(client, server);
}

// ---------------------------------------------------------------------------
// Small shared helpers
// ---------------------------------------------------------------------------

/// Every file under `dir`, recursively (empty when `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The first file named `name` under `dir`.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    files_under(dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
}

/// The newest Kubernetes version `kubernetes-validate` bundles (its default).
pub fn newest_kubernetes() -> String {
    let out = Command::new("kubernetes-validate")
        .arg("--help")
        .output()
        .expect("kubernetes-validate runs");
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let at = help
        .find("Defaults to ")
        .expect("kubernetes-validate --help names its default (newest) version");
    help[at + "Defaults to ".len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string()
}
