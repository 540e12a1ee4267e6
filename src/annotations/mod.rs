//! Live pod annotations: tune one pod without a restart (DESIGN §7).
//!
//! The Downward API file (`OOMSNAP_ANNOTATIONS_FILE`) enters as text; its
//! `oomsnap.dev/*` tunables leave as [`Tunables`] that override the
//! environment. Parsing and applying are pure ([`parse_file`], [`apply`]);
//! [`spawn`] re-reads the file every two seconds and pushes changes into the
//! running pipeline. A bad value is reported (logged once, shown on
//! `/status`) and ignored: the last good value stays, and the sidecar never
//! stops over an annotation.
//!
//! Annotations choose a port and a path, never a host: the target host
//! stays what the environment says, so a pod owner cannot point oomsnap's
//! requests at another service.

use std::sync::atomic::Ordering;
use std::sync::Arc;

pub mod rules;
pub use rules::*;

use crate::memory::watch::WatchControl;
use crate::run::Shared;
use crate::trigger::Policy;

/// The running annotation follower.
pub struct Follower {
    shared: Arc<Shared>,
    last_content: Option<String>,
    current: Tunables,
    reported: Vec<String>,
}

impl Follower {
    /// Reads the file once, applies it to `shared`, and returns the follower
    /// (whose policy the watcher starts with).
    pub fn load(shared: Arc<Shared>) -> Follower {
        let current = Tunables::from_config(&shared.config);
        let mut f = Follower {
            shared,
            last_content: None,
            current,
            reported: Vec::new(),
        };
        f.reload(None);
        f
    }

    pub fn policy(&self) -> Policy {
        self.current.policy(&self.shared.config)
    }

    fn reload(&mut self, control: Option<&WatchControl>) {
        let path = &self.shared.config.annotations_file;
        let content = match std::fs::read_to_string(path) {
            Ok(c) => c,
            // Outside Kubernetes the file is simply absent.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                self.report(vec![msg]);
                return;
            }
        };
        if self.last_content.as_deref() == Some(content.as_str()) {
            return;
        }
        self.last_content = Some(content.clone());
        let ann = parse_file(&content);
        let (next, problems) = apply(&ann, &self.shared.config, &self.current);
        self.report(problems);
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
        if let Ok(mut a) = self.shared.admission.lock() {
            a.reconfigure(next.rate_burst, next.rate_period);
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
            thresholds = ?next.thresholds,
            profiles = ?next.profiles.iter().map(|p| p.name()).collect::<Vec<_>>(),
            target = %next.target,
            rate_burst = next.rate_burst,
            rate_period = %humantime::format_duration(next.rate_period),
            "annotations applied"
        );
    }

    /// Logs each new problem once and shows the current ones on /status.
    fn report(&mut self, problems: Vec<String>) {
        for p in &problems {
            if !self.reported.contains(p) {
                tracing::warn!("{p}");
            }
        }
        self.reported = problems.clone();
        if let Ok(mut a) = self.shared.annotation_problems.lock() {
            *a = problems;
        }
    }
}

/// Follows the file until the runtime stops.
pub fn spawn(mut f: Follower, control: WatchControl) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f.reload(Some(&control));
        }
    })
}
