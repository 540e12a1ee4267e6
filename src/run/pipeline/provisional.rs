//! The pipeline's side of provisional captures: deciding which capture is
//! one, passing confirmations to [`crate::speculative::Provisional`], and
//! carrying out what it settles on the spool (off the runtime thread).

use std::time::Instant;

use crate::oom::Fate;
use crate::speculative::Action;
use crate::trigger::{Decision, Reason};

use super::Pipeline;

impl Pipeline {
    /// Whether `d` is provisional: imminent, below the first rung, with
    /// `OOMSNAP_IMMINENT=speculative`.
    pub(super) fn is_speculative(&self, d: &Decision) -> bool {
        if self.shared.config.imminent != crate::config::Imminent::Speculative
            || d.reason != Reason::Imminent
        {
            return false;
        }
        let first = self
            .shared
            .tunables
            .lock()
            .ok()
            .and_then(|t| t.as_ref().and_then(|t| t.thresholds.first().copied()))
            .or_else(|| self.shared.config.thresholds.first().copied())
            .unwrap_or(100.0);
        d.sample.percent() < first
    }

    /// Something confirmed the climb: provisional captures ship.
    pub(super) fn confirm(&mut self, by: &str) {
        let window = self.shared.config.confirm_window;
        for a in self.provisional.confirm(by, Instant::now(), window) {
            self.apply(a);
        }
        self.publish_provisional();
    }

    /// Discards the provisional captures past their window.
    pub(super) fn expire(&mut self) {
        let window = self.shared.config.confirm_window;
        for a in self.provisional.expire(Instant::now(), window) {
            self.apply(a);
        }
    }

    pub(super) fn publish_provisional(&self) {
        if let Ok(mut p) = self.shared.provisional.lock() {
            *p = self.provisional.waiting();
        }
    }

    pub(super) fn mark(&self, id: &str, state: Fate) {
        if let Ok(mut c) = self.shared.captures.lock() {
            if let Some(e) = c.iter_mut().find(|e| e.id == id) {
                e.provisional = Some(state);
            }
        }
    }

    /// Carries out a settled provisional capture's fate on the spool.
    pub(super) fn apply(&mut self, a: Action) {
        self.publish_provisional();
        match a {
            Action::Confirm { id, by } => {
                // Confirmed, it is a near-OOM capture like any other and
                // takes its unit of the near-OOM quota; with none left it is
                // dropped like any decision over the quota, so the quota
                // bounds what ships whatever the mix of captures.
                let charged = self.shared.admission.lock().charge();
                if !charged {
                    self.count_drop(&Reason::Imminent, "quota");
                    tracing::info!(
                        capture = %id,
                        confirmed_by = %by,
                        "a provisional capture is confirmed, but the quota (OOMSNAP_RATE_BURST per OOMSNAP_RATE_PERIOD) is spent: it is dropped"
                    );
                    self.mark(&id, Fate::Dropped { by });
                    self.remove(id);
                    return;
                }
                tracing::info!(
                    capture = %id,
                    confirmed_by = %by,
                    "a provisional capture is confirmed and ships"
                );
                self.mark(&id, Fate::Confirmed { by: by.clone() });
                self.shared
                    .spool_work("confirm a provisional capture", true, move |spool| {
                        spool.confirm(&id, &by)
                    });
            }
            Action::Discard { id } => {
                tracing::info!(
                    capture = %id,
                    window_seconds = self.shared.config.confirm_window.as_secs(),
                    "a provisional imminent capture is discarded: no rung, kill, restart or manual capture followed within OOMSNAP_CONFIRM_WINDOW"
                );
                self.shared
                    .metrics
                    .captures_discarded
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: Reason::Imminent.label(),
                    })
                    .inc();
                self.mark(&id, Fate::Discarded);
                self.remove(id);
            }
        }
    }

    /// Deletes a provisional bundle, off the runtime thread.
    fn remove(&self, id: String) {
        self.shared
            .spool_work("discard a provisional capture", false, move |spool| {
                spool.discard(&id)
            });
    }
}
