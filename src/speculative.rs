//! Provisional captures: taken early, shipped only when the OOM confirms.
//!
//! To win the fastest race, `imminent` fires on the slope, well below the
//! first rung. That is right when the OOM follows; but a healthy app that
//! fills a cache quickly and levels off sets it off too. So a capture
//! decided below the first rung is made durable at once (the race is
//! unchanged: same bytes, same timing) but held back from the store until
//! something confirms the climb within the window: a rung crossed, an OOM
//! kill of the app, a target restart, or a manual capture. Confirmed, it
//! ships with its manifest saying what confirmed it; unconfirmed, it is
//! discarded when the window ends, and counted.
//!
//! Pure logic: capture ids and times enter through [`Provisional::add`],
//! [`Provisional::finished`], [`Provisional::confirm`] and
//! [`Provisional::expire`]; [`Action`]s leave for the pipeline to carry out
//! on the spool. Time comes from the caller, so tests step it by hand.

use std::time::{Duration, Instant};

/// What to do with a settled provisional capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make it shippable, recording what confirmed it.
    Confirm { id: String, by: String },
    /// Delete it: nothing confirmed it within the window.
    Discard { id: String },
}

/// Where a provisional capture stands. A finished capture that is
/// confirmed is settled at once, so it has no state of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Its capture is still running.
    Running,
    /// Confirmed (by this) while its capture was still running.
    RunningConfirmed(String),
    /// Its bundle is complete in the spool, waiting for confirmation.
    Finished,
}

#[derive(Debug, Clone)]
struct Entry {
    id: String,
    decided: Instant,
    state: State,
}

/// The provisional captures not yet settled.
#[derive(Debug, Clone, Default)]
pub struct Provisional {
    entries: Vec<Entry>,
}

impl Provisional {
    /// A provisional capture decided at `decided` has begun.
    pub fn add(&mut self, id: &str, decided: Instant) {
        self.entries.push(Entry {
            id: id.to_string(),
            decided,
            state: State::Running,
        });
    }

    /// Its bundle is complete: confirmed already, it ships now.
    pub fn finished(&mut self, id: &str) -> Option<Action> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        match std::mem::replace(&mut self.entries[i].state, State::Finished) {
            State::RunningConfirmed(by) => {
                self.entries.remove(i);
                Some(Action::Confirm { id: id.into(), by })
            }
            State::Running | State::Finished => None,
        }
    }

    /// Something confirmed the climb at `now`: every capture decided within
    /// `window` before it is confirmed (a finished one at once, a running
    /// one when it finishes).
    pub fn confirm(&mut self, by: &str, now: Instant, window: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        self.entries.retain_mut(|e| {
            if now.saturating_duration_since(e.decided) > window {
                return true; // expired: `expire` discards it
            }
            match e.state {
                State::Finished => {
                    out.push(Action::Confirm {
                        id: e.id.clone(),
                        by: by.into(),
                    });
                    false
                }
                State::Running => {
                    e.state = State::RunningConfirmed(by.into());
                    true
                }
                // The first confirmation is the one recorded.
                State::RunningConfirmed(_) => true,
            }
        });
        out
    }

    /// Discards what nothing confirmed within `window` of its decision.
    /// A capture still running waits for its end.
    pub fn expire(&mut self, now: Instant, window: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        self.entries.retain(|e| {
            let late = now.saturating_duration_since(e.decided) > window;
            if late && e.state == State::Finished {
                out.push(Action::Discard { id: e.id.clone() });
                false
            } else {
                true
            }
        });
        out
    }

    /// Ids still waiting, oldest first.
    pub fn waiting(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn a_rung_crossed_in_time_confirms_a_finished_capture() {
        let t0 = Instant::now();
        let mut p = Provisional::default();
        p.add("a", t0);
        assert_eq!(p.finished("a"), None);
        let acts = p.confirm("threshold-80", t0 + Duration::from_secs(1), W);
        assert_eq!(
            acts,
            [Action::Confirm {
                id: "a".into(),
                by: "threshold-80".into()
            }]
        );
        assert!(p.waiting().is_empty());
    }

    #[test]
    fn a_confirmation_during_the_capture_applies_when_it_finishes() {
        let t0 = Instant::now();
        let mut p = Provisional::default();
        p.add("a", t0);
        assert!(p
            .confirm("oom_kill", t0 + Duration::from_millis(30), W)
            .is_empty());
        // Even past the window: it was confirmed in time.
        assert!(p.expire(t0 + W * 2, W).is_empty());
        assert_eq!(
            p.finished("a"),
            Some(Action::Confirm {
                id: "a".into(),
                by: "oom_kill".into()
            })
        );
    }

    #[test]
    fn nothing_in_the_window_discards_it() {
        let t0 = Instant::now();
        let mut p = Provisional::default();
        p.add("a", t0);
        p.finished("a");
        assert!(p.expire(t0 + W, W).is_empty(), "not before the window ends");
        assert_eq!(
            p.expire(t0 + W + Duration::from_millis(1), W),
            [Action::Discard { id: "a".into() }]
        );
        // A late confirmation finds nothing.
        assert!(p.confirm("threshold-80", t0 + W * 2, W).is_empty());
    }

    #[test]
    fn a_late_confirmation_does_not_rescue_an_expired_capture() {
        let t0 = Instant::now();
        let mut p = Provisional::default();
        p.add("old", t0);
        p.finished("old");
        p.add("new", t0 + W);
        p.finished("new");
        let acts = p.confirm("manual", t0 + W + Duration::from_secs(1), W);
        assert_eq!(
            acts,
            [Action::Confirm {
                id: "new".into(),
                by: "manual".into()
            }]
        );
        assert_eq!(
            p.expire(t0 + W + Duration::from_secs(1), W),
            [Action::Discard { id: "old".into() }]
        );
    }
}
