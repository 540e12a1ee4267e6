//! The Go target: `tests/leaky`, built once per `cargo test` into
//! `target/leaky/`, and [`Leaker`], one running copy of it (optionally
//! inside a [`MemCgroup`]) whose pprof port is read from its first line.
//! Also `go tool pprof -top`, to read what a capture holds.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use super::cgroup::MemCgroup;
use super::files::{manifest_dir, target_dir, FileLock};
use super::process::wait_child;
use super::skip::require_live;
use super::tools::which;

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
