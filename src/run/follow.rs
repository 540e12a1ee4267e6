//! Follows the pod's annotations file while the sidecar runs.
//!
//! [`Follower::load`] reads `OOMSNAP_ANNOTATIONS_FILE` once before the
//! watcher starts (its policy is the watcher's first); [`spawn`] re-reads it
//! every [`RELOAD_EVERY`] on a blocking thread (see
//! [`annotations::read_file`]). What changed leaves as writes into the
//! [`Shared`] state (enabled, capture settings, the three quotas, the
//! tunables `/status` shows) and as a new policy sent to the watcher. A bad
//! value is reported (logged once, shown on `/status`, counted in
//! `oomsnap_problems{kind="annotations"}`) and ignored: the last good value
//! stays, and the sidecar never stops over an annotation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::annotations::{self, apply, parse_file, Tunables, RELOAD_EVERY};
use crate::problems::ProblemKind;
use crate::state::Shared;
use crate::trigger::Policy;
use crate::watch::WatchControl;

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
        let read = tokio::task::spawn_blocking(move || annotations::read_file(&path))
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
            a.lock().reconfigure(next.rate_burst, next.rate_period);
        }
        self.shared
            .manual_admission
            .lock()
            .reconfigure(self.shared.config.manual_rate_burst, next.rate_period);
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
