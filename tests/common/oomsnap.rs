//! Driving the oomsnap binary under test: [`OomsnapEnv`] builds its
//! environment by name (no pasted `OOMSNAP_*` blocks), [`Oomsnap`] is one
//! running `oomsnap run` with its admin port and log file, killed on drop,
//! and [`OomsnapEnv::command`] runs one-shot subcommands (`capture`, …).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::files::temp_dir;
use super::http::{free_port, http_get, http_request};
use super::timing::wait_until;

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

    /// The message of the active problem of `kind` on `/status`, if any.
    pub fn problem(&self, kind: &str) -> Option<String> {
        problem_in(&self.status(), kind)
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

/// The environment of an oomsnap process under test, built by name. Every
/// setter replaces an earlier value of the same variable, so a test starts
/// from a shared base and overrides what it needs. Nothing is inherited from
/// the test's own environment but `PATH` (see [`Oomsnap::start`]).
///
/// ```ignore
/// let env = OomsnapEnv::local(cg.path(), &leaker.pprof_base(), dir.path())
///     .set("OOMSNAP_RATE_BURST", 3);
/// let snap = Oomsnap::run(&env);
/// ```
#[derive(Debug, Clone, Default)]
pub struct OomsnapEnv {
    vars: Vec<(String, String)>,
}

impl OomsnapEnv {
    /// No variables at all: oomsnap's defaults.
    pub fn new() -> OomsnapEnv {
        OomsnapEnv::default()
    }

    /// The usual local rig: watch `cgroup`, profile `target`, spool to
    /// `dir/spool` and ship to the local store `file://dir/store`.
    pub fn local(cgroup: &Path, target: &str, dir: &Path) -> OomsnapEnv {
        OomsnapEnv::new()
            .cgroup(cgroup)
            .target(target)
            .file_store(&dir.join("store"))
            .spool(&dir.join("spool"))
    }

    /// `OOMSNAP_CGROUP`: the cgroup directory to watch.
    pub fn cgroup(self, dir: &Path) -> OomsnapEnv {
        self.set("OOMSNAP_CGROUP", dir.display())
    }

    /// `OOMSNAP_TARGET`: the app's pprof index URL.
    pub fn target(self, url: &str) -> OomsnapEnv {
        self.set("OOMSNAP_TARGET", url)
    }

    /// `OOMSNAP_STORE`: any store URL (`s3://…`, `az://…`, `file://…`).
    pub fn store(self, url: &str) -> OomsnapEnv {
        self.set("OOMSNAP_STORE", url)
    }

    /// `OOMSNAP_STORE=file://<dir>`.
    pub fn file_store(self, dir: &Path) -> OomsnapEnv {
        self.store(&format!("file://{}", dir.display()))
    }

    /// `OOMSNAP_SPOOL_DIR`.
    pub fn spool(self, dir: &Path) -> OomsnapEnv {
        self.set("OOMSNAP_SPOOL_DIR", dir.display())
    }

    /// `POD_NAMESPACE` and `POD_NAME`, as the Downward API gives them.
    pub fn pod(self, namespace: &str, name: &str) -> OomsnapEnv {
        self.set("POD_NAMESPACE", namespace).set("POD_NAME", name)
    }

    /// Any variable; replaces an earlier value of `key`.
    pub fn set(mut self, key: &str, value: impl std::fmt::Display) -> OomsnapEnv {
        let value = value.to_string();
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((key.to_string(), value)),
        }
        self
    }

    /// Several variables at once, e.g. a store guard's `env()`.
    pub fn with(self, vars: impl IntoIterator<Item = (String, String)>) -> OomsnapEnv {
        vars.into_iter().fold(self, |env, (k, v)| env.set(&k, v))
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every variable, in the order first set.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// `oomsnap <args>` with exactly these variables and `PATH`, for the
    /// one-shot subcommands (`capture`, `check`, …).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(oomsnap_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

impl Oomsnap {
    /// `oomsnap run` with `env` (see [`Oomsnap::start`]).
    pub fn run(env: &OomsnapEnv) -> Oomsnap {
        Oomsnap::start(&["run"], env.vars())
    }
}

/// The message of the active problem of `kind` in a `/status` document.
pub fn problem_in(status: &serde_json::Value, kind: &str) -> Option<String> {
    status["problems"]
        .as_array()?
        .iter()
        .find(|p| p["kind"] == kind)
        .and_then(|p| p["message"].as_str())
        .map(str::to_string)
}
