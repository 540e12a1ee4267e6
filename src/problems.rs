//! What is wrong with the sidecar right now, said loudly and kept short.
//!
//! `oomsnap run` never exits over a fault: it runs degraded and reports.
//! Every stage that meets a fault it cannot fix calls [`Problems::set`] with
//! a [`ProblemKind`] and a sentence; when the fault clears it calls
//! [`Problems::clear`]. The registry then:
//!
//! - logs the sentence at error level when it is new or changed, and again
//!   at most once per [`REPEAT_LOG_EVERY`] while it lasts (a fault that
//!   retries every second must not flood the log);
//! - logs at info when the problem is resolved;
//! - is read by `/status` (`problems`) and `/metrics`
//!   (`oomsnap_problems{kind}`, 1 while active, present for every kind from
//!   the first scrape so an alert can rely on the series existing).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a lasting problem is logged again.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The longest problem sentence kept: messages can quote values that others
/// control (annotations, HTTP bodies), and `/status` must stay small.
pub const MAX_MESSAGE: usize = 2048;

/// The kinds of fault; each is one `kind` label value of `oomsnap_problems`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A bad or unknown `OOMSNAP_*` variable (the default is used instead).
    Config,
    /// The app's memory cannot be found or read.
    Locate,
    /// Memory is found, but no limit is known, so nothing can trigger.
    NoLimit,
    /// The spool directory cannot be created, recovered or written.
    Spool,
    /// The object store cannot be opened or does not accept uploads.
    Store,
    /// The admin port cannot be served.
    Admin,
    /// The app's pprof endpoint does not answer a capture.
    Target,
    /// A pod annotation is bad and ignored.
    Annotations,
}

impl ProblemKind {
    pub const ALL: &'static [ProblemKind] = &[
        ProblemKind::Config,
        ProblemKind::Locate,
        ProblemKind::NoLimit,
        ProblemKind::Spool,
        ProblemKind::Store,
        ProblemKind::Admin,
        ProblemKind::Target,
        ProblemKind::Annotations,
    ];

    /// The metric label and `/status` key.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Config => "config",
            ProblemKind::Locate => "locate",
            ProblemKind::NoLimit => "no_limit",
            ProblemKind::Spool => "spool",
            ProblemKind::Store => "store",
            ProblemKind::Admin => "admin",
            ProblemKind::Target => "target",
            ProblemKind::Annotations => "annotations",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    message: String,
    since: SystemTime,
    last_logged: Instant,
    /// Times it was reported since it began (retries of the same fault).
    count: u64,
}

/// One active problem, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProblemView {
    pub kind: ProblemKind,
    pub message: String,
    pub since: String,
    pub count: u64,
}

/// The registry of active problems.
#[derive(Debug, Default)]
pub struct Problems {
    active: Mutex<BTreeMap<ProblemKind, Entry>>,
}

/// Cuts a message to [`MAX_MESSAGE`] bytes on a character boundary.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

impl Problems {
    /// Records (or refreshes) a problem of `kind`.
    pub fn set(&self, kind: ProblemKind, message: impl Into<String>) {
        let message = bounded(message.into());
        let now = Instant::now();
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        let log = match active.get_mut(&kind) {
            Some(e) if e.message == message => {
                e.count += 1;
                if now.duration_since(e.last_logged) >= REPEAT_LOG_EVERY {
                    e.last_logged = now;
                    Some(e.count)
                } else {
                    None
                }
            }
            Some(e) => {
                e.message = message.clone();
                e.count += 1;
                e.last_logged = now;
                Some(e.count)
            }
            None => {
                active.insert(
                    kind,
                    Entry {
                        message: message.clone(),
                        since: SystemTime::now(),
                        last_logged: now,
                        count: 1,
                    },
                );
                Some(1)
            }
        };
        drop(active);
        if let Some(count) = log {
            tracing::error!(problem = kind.name(), count, "{message}");
        }
    }

    /// Records a problem another part has already logged at its own bounded
    /// rate (the watcher thread), so it shows on `/status` and in the metric
    /// without a second log line.
    pub fn mirror(&self, kind: ProblemKind, message: impl Into<String>) {
        let message = bounded(message.into());
        if let Ok(mut active) = self.active.lock() {
            let e = active.entry(kind).or_insert_with(|| Entry {
                message: message.clone(),
                since: SystemTime::now(),
                last_logged: Instant::now(),
                count: 0,
            });
            if e.message != message {
                e.message = message;
            }
            e.count += 1;
        }
    }

    /// Clears a problem of `kind`, saying so once.
    pub fn clear(&self, kind: ProblemKind) {
        self.clear_if(kind, |_| true);
    }

    /// Clears a problem of `kind` only when its message passes `which`: a
    /// success of one operation must not clear another's fault of the same
    /// kind (a capture that spooled does not make a stuck spool bound work).
    pub fn clear_if(&self, kind: ProblemKind, which: impl Fn(&str) -> bool) {
        let gone = self.active.lock().ok().and_then(|mut a| {
            if a.get(&kind).is_some_and(|e| which(&e.message)) {
                a.remove(&kind)
            } else {
                None
            }
        });
        if let Some(e) = gone {
            tracing::info!(problem = kind.name(), was = %e.message, "resolved");
        }
    }

    /// Sets the problem when `message` is `Some`, clears it otherwise.
    pub fn report(&self, kind: ProblemKind, message: Option<String>) {
        match message {
            Some(m) => self.set(kind, m),
            None => self.clear(kind),
        }
    }

    pub fn is_active(&self, kind: ProblemKind) -> bool {
        self.active
            .lock()
            .map(|a| a.contains_key(&kind))
            .unwrap_or(false)
    }

    /// The active problems, by kind.
    pub fn snapshot(&self) -> Vec<ProblemView> {
        self.active
            .lock()
            .map(|a| {
                a.iter()
                    .map(|(kind, e)| ProblemView {
                        kind: *kind,
                        message: e.message.clone(),
                        since: crate::manifest::timestamp(e.since),
                        count: e.count,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_refresh_and_clear() {
        let p = Problems::default();
        assert!(!p.is_active(ProblemKind::Store));
        p.set(ProblemKind::Store, "the store refuses connections");
        p.set(ProblemKind::Store, "the store refuses connections");
        let s = p.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 2);
        assert_eq!(s[0].kind.name(), "store");
        p.set(ProblemKind::Store, "the store answers 403");
        assert_eq!(p.snapshot()[0].message, "the store answers 403");
        p.report(ProblemKind::Store, None);
        assert!(p.snapshot().is_empty());
    }

    #[test]
    fn clear_if_leaves_another_fault_of_the_same_kind() {
        let p = Problems::default();
        p.set(ProblemKind::Spool, "cannot keep the spool bounded: EACCES");
        p.clear_if(ProblemKind::Spool, |m| {
            m.starts_with("cannot spool a capture")
        });
        assert!(p.is_active(ProblemKind::Spool));
        p.set(ProblemKind::Spool, "cannot spool a capture: ENOSPC");
        p.clear_if(ProblemKind::Spool, |m| {
            m.starts_with("cannot spool a capture")
        });
        assert!(!p.is_active(ProblemKind::Spool));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let p = Problems::default();
        p.set(ProblemKind::Annotations, "é".repeat(MAX_MESSAGE));
        let m = &p.snapshot()[0].message;
        assert!(m.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(m.ends_with('…'));
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let mut names: Vec<_> = ProblemKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ProblemKind::ALL.len());
    }
}
