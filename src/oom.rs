//! Which capture an OOM kill belongs to, and the lead it had.
//!
//! Pure logic: the recent captures ([`CaptureEntry`]), the time the kill was
//! seen and its evidence enter [`attribute`]; an [`Attribution`] (the
//! capture, the lead in seconds, and a sentence saying why that one was
//! chosen) or nothing leaves. `run` writes the result into `oom.json`.
//!
//! The rules, in order:
//! - Only captures decided after the previous kill are candidates: each
//!   capture is evidence for the first kill that follows it.
//! - A capture with no profile on disk is no evidence; a baseline is not
//!   near-OOM evidence.
//! - An automatic capture beats a manual one, whoever asked for the manual
//!   one: a decoy request from the network must never take the place of the
//!   capture the climb decided.
//! - Among those, the newest that was durable before the kill wins; one that
//!   became durable only after the kill (fetched from the dying app) counts
//!   when there is nothing better, with a negative lead.
//! - A restart without a kernel OOM counter is taken as the kill only when a
//!   capture became durable shortly before it.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::trigger::Reason;

/// Without a kernel OOM counter, a restart this soon after a near-OOM
/// capture is recorded as the kill it most likely was.
pub const RESTART_EVIDENCE_WINDOW: Duration = Duration::from_secs(120);

/// One capture, as remembered for `/status` and `oom.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureEntry {
    pub id: String,
    pub key: String,
    #[serde(serialize_with = "reason_label")]
    pub reason: Reason,
    pub outcome: Outcome,
    pub percent: f64,
    #[serde(skip)]
    pub decided_at: SystemTime,
    #[serde(skip)]
    pub durable_at: Option<SystemTime>,
    pub durable_after_decision_ms: Option<f64>,
    pub profiles_ok: usize,
    pub profiles_failed: usize,
    pub profiles_skipped: usize,
    pub verdict: Option<String>,
    /// For a provisional capture, what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisional: Option<Fate>,
}

/// What became of a provisional capture; `/status` shows it as a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Waiting,
    Confirmed {
        by: String,
    },
    /// Nothing confirmed it within the window.
    Discarded,
    /// Confirmed by `by` when the near-OOM quota was spent.
    Dropped {
        by: String,
    },
}

impl Fate {
    /// Deleted unshipped, so never a kill's evidence.
    pub fn deleted(&self) -> bool {
        matches!(self, Fate::Discarded | Fate::Dropped { .. })
    }
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Waiting => f.write_str("waiting"),
            Fate::Confirmed { by } => write!(f, "confirmed by {by}"),
            Fate::Discarded => f.write_str("discarded"),
            Fate::Dropped { by } => {
                write!(f, "dropped: the quota was spent when {by} confirmed it")
            }
        }
    }
}

impl serde::Serialize for Fate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn reason_label<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&r.label())
}

/// How a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every profile is in the spool.
    Complete,
    /// Some profiles failed or were skipped; the rest are in the spool.
    Partial,
    /// Nothing usable was captured (the manifest still ships).
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
        }
    }
}

/// What showed that the app was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The cgroup's `oom_kill` counter rose to this value.
    OomKill { kills: u64 },
    /// The target process was replaced and no OOM counter exists.
    Restart,
}

impl Evidence {
    pub fn name(self) -> &'static str {
        match self {
            Evidence::OomKill { .. } => "oom_kill",
            Evidence::Restart => "restart",
        }
    }
}

/// The capture a kill is attributed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub capture_id: String,
    pub key: String,
    /// Kill time minus durable time; negative when durable only after.
    pub lead_seconds: Option<f64>,
    /// Why this capture, in a few words (written into `oom.json`).
    pub chosen: &'static str,
}

/// Picks the capture for a kill seen at `at`, or `None` when there is no
/// evidence for it. `since` is the previous kill's time.
pub fn attribute(
    recent: &VecDeque<CaptureEntry>,
    at: SystemTime,
    evidence: Evidence,
    since: Option<SystemTime>,
) -> Option<Attribution> {
    let candidates: Vec<&CaptureEntry> = recent
        .iter()
        .filter(|c| c.reason != Reason::Baseline && c.profiles_ok > 0)
        // Deleted unshipped: never a kill's evidence.
        .filter(|c| !c.provisional.as_ref().is_some_and(Fate::deleted))
        .filter(|c| since.is_none_or(|s| c.decided_at > s) && c.decided_at <= at)
        .collect();
    let before = |c: &&&CaptureEntry| c.durable_at.is_some_and(|d| d <= at);
    let automatic = |c: &&&CaptureEntry| c.reason != Reason::Manual;
    let (cap, chosen) = if let Some(c) = candidates.iter().rev().find(|c| automatic(c) && before(c))
    {
        (*c, "the newest automatic capture durable before the kill")
    } else if let Some(c) = candidates.iter().rev().find(automatic) {
        (
            *c,
            "the newest automatic capture, durable only after the kill",
        )
    } else if let Some(c) = candidates.iter().rev().find(before) {
        (*c, "no automatic capture; the newest manual one")
    } else {
        (
            *candidates.last()?,
            "no automatic capture; the newest manual one, durable only after the kill",
        )
    };
    let lead = cap.durable_at.map(|d| match at.duration_since(d) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    });
    if evidence == Evidence::Restart
        && !lead.is_some_and(|l| (0.0..=RESTART_EVIDENCE_WINDOW.as_secs_f64()).contains(&l))
    {
        return None;
    }
    Some(Attribution {
        capture_id: cap.id.clone(),
        key: cap.key.clone(),
        lead_seconds: lead.map(|l| (l * 1e6).round() / 1e6),
        chosen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn cap(id: &str, reason: Reason, decided: u64, durable: Option<u64>) -> CaptureEntry {
        CaptureEntry {
            id: id.into(),
            key: format!("k/{id}"),
            reason,
            outcome: Outcome::Complete,
            percent: 90.0,
            decided_at: t(decided),
            durable_at: durable.map(t),
            durable_after_decision_ms: None,
            profiles_ok: 2,
            profiles_failed: 0,
            profiles_skipped: 0,
            verdict: None,
            provisional: None,
        }
    }

    fn list(v: Vec<CaptureEntry>) -> VecDeque<CaptureEntry> {
        v.into()
    }

    #[test]
    fn a_provisional_capture_deleted_unshipped_is_never_the_evidence() {
        let fated = |id, fate| CaptureEntry {
            provisional: Some(fate),
            ..cap(id, Reason::Imminent, 12, Some(13))
        };
        let by = || "threshold-80".to_string();
        let r = list(vec![
            fated("a", Fate::Confirmed { by: by() }),
            fated("b", Fate::Discarded),
            fated("c", Fate::Dropped { by: by() }),
        ]);
        let a = attribute(&r, t(20), Evidence::Restart, None).unwrap();
        assert_eq!(a.capture_id, "a");
        assert_eq!(
            serde_json::to_value(&r[2]).unwrap()["provisional"],
            "dropped: the quota was spent when threshold-80 confirmed it"
        );
    }

    #[test]
    fn the_newest_automatic_capture_before_the_kill_wins() {
        let r = list(vec![
            cap("a", Reason::Imminent, 10, Some(11)),
            cap("b", Reason::Threshold(90.0), 12, Some(13)),
            cap("c", Reason::Threshold(95.0), 14, Some(30)),
        ]);
        let a = attribute(&r, t(20), Evidence::OomKill { kills: 1 }, None).unwrap();
        assert_eq!(a.capture_id, "b");
        assert_eq!(a.lead_seconds, Some(7.0));
    }

    #[test]
    fn a_decoy_manual_capture_never_takes_the_place_of_an_automatic_one() {
        let r = list(vec![
            cap("auto", Reason::Threshold(80.0), 10, Some(12)),
            cap("decoy", Reason::Manual, 15, Some(16)),
        ]);
        let a = attribute(&r, t(20), Evidence::OomKill { kills: 1 }, None).unwrap();
        assert_eq!(a.capture_id, "auto");
        assert!(a.chosen.contains("automatic"));
    }

    #[test]
    fn a_capture_durable_after_the_kill_gets_a_negative_lead() {
        let r = list(vec![cap("late", Reason::Imminent, 10, Some(25))]);
        let a = attribute(&r, t(20), Evidence::OomKill { kills: 1 }, None).unwrap();
        assert_eq!(a.lead_seconds, Some(-5.0));
        assert!(a.chosen.contains("only after"));
    }

    #[test]
    fn manual_captures_count_only_when_nothing_automatic_exists() {
        let r = list(vec![cap("m", Reason::Manual, 10, Some(11))]);
        let a = attribute(&r, t(20), Evidence::OomKill { kills: 1 }, None).unwrap();
        assert_eq!(a.capture_id, "m");
        assert!(a.chosen.contains("manual"));
    }

    #[test]
    fn captures_before_the_previous_kill_belong_to_it() {
        let r = list(vec![cap("old", Reason::Threshold(80.0), 10, Some(11))]);
        assert!(attribute(&r, t(40), Evidence::OomKill { kills: 2 }, Some(t(20))).is_none());
    }

    #[test]
    fn baselines_and_empty_captures_are_no_evidence() {
        let mut empty = cap("e", Reason::Imminent, 10, None);
        empty.profiles_ok = 0;
        let r = list(vec![cap("b", Reason::Baseline, 5, Some(6)), empty]);
        assert!(attribute(&r, t(20), Evidence::OomKill { kills: 1 }, None).is_none());
    }

    #[test]
    fn a_restart_counts_only_soon_after_a_capture() {
        let r = list(vec![cap("a", Reason::Threshold(90.0), 10, Some(11))]);
        assert!(attribute(&r, t(20), Evidence::Restart, None).is_some());
        assert!(attribute(&r, t(11 + 121), Evidence::Restart, None).is_none());
    }
}
