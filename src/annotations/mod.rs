//! Live pod annotations: tune one pod without a restart.
//!
//! - [`rules`] — pure: the annotation names, the Downward API file format,
//!   and how values override the environment (shared with the injector)
//!
//! The Downward API file (`OOMSNAP_ANNOTATIONS_FILE`) enters as text; its
//! `oomsnap.dev/*` tunables leave as [`Tunables`] pushed into the shared
//! state and the watcher. [`spawn`] re-reads the file every two seconds. A
//! bad value is reported (logged once, shown on `/status`, counted in
//! `oomsnap_problems{kind="annotations"}`) and ignored: the last good value
//! stays, and the sidecar never stops over an annotation.
//!
//! The file is read on a blocking thread, never the runtime's, opened
//! non-blocking, only when it is a regular file, and only up to
//! [`MAX_FILE_BYTES`]: whoever controls it (a pod owner, a broken volume)
//! cannot hang the admin server or the captures with a FIFO, nor fill the
//! sidecar's memory with a huge file.
//!
//! Annotations choose a port and a path, never a host: the target host
//! stays what the environment says, so a pod owner cannot point oomsnap's
//! requests at another service.

pub mod rules;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use rules::*;

use crate::memory::watch::WatchControl;
use crate::problems::ProblemKind;
use crate::state::Shared;
use crate::trigger::Policy;

/// The largest annotations file read: the Kubernetes API caps a pod's
/// annotations at 256 KiB in total.
pub const MAX_FILE_BYTES: u64 = 256 << 10;

/// Reads the annotations file, or `None` when there is none. Blocking.
pub fn read_file(path: &Path) -> Result<Option<String>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO would block `open` until a writer came; non-blocking, it
        // opens at once and is then refused below for what it is.
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // Outside Kubernetes the file is simply absent.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} (OOMSNAP_ANNOTATIONS_FILE) is not a regular file; expected the Downward API annotations file",
            path.display()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {} KiB, the most a pod's annotations can hold; it is ignored",
            path.display(),
            MAX_FILE_BYTES >> 10
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The running annotation follower.
pub struct Follower {
    shared: Arc<Shared>,
    last_content: Option<String>,
    current: Tunables,
}

impl Follower {
    /// Reads the file once, applies it to `shared`, and returns the follower
    /// (whose policy the watcher starts with).
    pub async fn load(shared: Arc<Shared>) -> Follower {
        let current = Tunables::from_config(&shared.config);
        let mut f = Follower {
            shared,
            last_content: None,
            current,
        };
        f.reload(None).await;
        f
    }

    pub fn policy(&self) -> Policy {
        self.current.policy(&self.shared.config)
    }

    async fn reload(&mut self, control: Option<&WatchControl>) {
        let path = self.shared.config.annotations_file.clone();
        let read = tokio::task::spawn_blocking(move || read_file(&path))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let content = match read {
            Ok(c) => c.unwrap_or_default(),
            Err(why) => {
                self.shared.problems.set(ProblemKind::Annotations, why);
                return;
            }
        };
        if self.last_content.as_deref() == Some(content.as_str()) {
            return;
        }
        let ann = parse_file(&content);
        self.last_content = Some(content);
        let (next, problems) = apply(&ann, &self.shared.config, &self.current);
        self.shared.problems.report(
            ProblemKind::Annotations,
            (!problems.is_empty()).then(|| problems.join("; ")),
        );
        if next == self.current {
            return;
        }
        let prev = std::mem::replace(&mut self.current, next.clone());
        if prev.enabled != next.enabled {
            tracing::info!(
                enabled = next.enabled,
                "captures {} by annotation",
                if next.enabled { "resumed" } else { "paused" }
            );
        }
        self.shared.enabled.store(next.enabled, Ordering::Relaxed);
        if let Ok(mut s) = self.shared.capture_settings.write() {
            s.profiles = next.profiles.clone();
            s.target = next.target.clone();
        }
        // The speculative quota mirrors the near-OOM one; the manual quota
        // keeps its own burst but shares the period.
        for a in [&self.shared.admission, &self.shared.speculative_admission] {
            if let Ok(mut a) = a.lock() {
                a.reconfigure(next.rate_burst, next.rate_period);
            }
        }
        if let Ok(mut a) = self.shared.manual_admission.lock() {
            a.reconfigure(self.shared.config.manual_rate_burst, next.rate_period);
        }
        if prev.thresholds != next.thresholds {
            if let Some(c) = control {
                c.set_policy(next.policy(&self.shared.config));
            }
        }
        if let Ok(mut t) = self.shared.tunables.lock() {
            *t = Some(next.clone());
        }
        tracing::info!(
            thresholds = %next.thresholds.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","),
            profiles = %next.profiles.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
            target = %next.target,
            rate_burst = next.rate_burst,
            rate_period = %humantime::format_duration(next.rate_period),
            "annotations applied"
        );
    }
}

/// Follows the file until the task is aborted.
pub fn spawn(mut f: Follower, control: WatchControl) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f.reload(Some(&control)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("annotations");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_file(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_huge_file_is_refused_and_a_missing_one_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("annotations");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_file(&big).unwrap_err().contains("larger than"));
        assert_eq!(read_file(&d.path().join("none")).unwrap(), None);
    }
}
