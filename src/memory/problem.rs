//! What keeps the watcher from watching, as a typed value.
//!
//! `oomsnap run` never stops for these (a crash-looping sidecar makes the pod
//! NotReady): the watcher keeps retrying and publishes the current
//! [`SourceProblem`] in its state. The pipeline mirrors it once a second
//! into the problem registry (kind `no_limit`, or `locate` for the rest),
//! which `/status` and `oomsnap_problems` show. [`ProblemLog`] turns the
//! stream of problems into log lines (at warn) at a bounded rate: a new
//! problem at once, the same one again only every [`REPEAT_EVERY`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::locate::LocateError;

/// A persisting problem is logged again this often.
pub(crate) const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// Why the watcher cannot (fully) watch right now. It serialises as
/// `{"kind": "locate", "cause": "explicit", "message": "…"}`: `kind` is
/// [`SourceProblem::kind`], `cause` the variant, `message` the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceProblem {
    /// No strategy found the app's memory; each strategy's reason.
    NotFound { why: String },
    /// `OOMSNAP_CGROUP` is set but cannot be watched.
    Explicit { dir: PathBuf, why: String },
    /// Memory is watched but no limit is known: samples flow, nothing can
    /// trigger until the cgroup gets a limit or `OOMSNAP_MEMORY_LIMIT` is set.
    NoLimit { source: String },
    /// The source was found but a sample cannot be read.
    Read { why: String },
}

impl SourceProblem {
    /// A stable label: `locate`, `no_limit` or `read`.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceProblem::NotFound { .. } | SourceProblem::Explicit { .. } => "locate",
            SourceProblem::NoLimit { .. } => "no_limit",
            SourceProblem::Read { .. } => "read",
        }
    }
}

impl SourceProblem {
    /// The variant, in snake case: `not_found`, `explicit`, `no_limit`,
    /// `read`.
    pub fn cause(&self) -> &'static str {
        match self {
            SourceProblem::NotFound { .. } => "not_found",
            SourceProblem::Explicit { .. } => "explicit",
            SourceProblem::NoLimit { .. } => "no_limit",
            SourceProblem::Read { .. } => "read",
        }
    }
}

impl serde::Serialize for SourceProblem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SourceProblem", 3)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("cause", self.cause())?;
        st.serialize_field("message", &self.to_string())?;
        st.end()
    }
}

impl std::fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceProblem::NotFound { why } => {
                write!(f, "the app's memory was not found; retrying:\n{why}")
            }
            SourceProblem::Explicit { dir, why } => write!(
                f,
                "OOMSNAP_CGROUP={} cannot be watched ({why}); retrying",
                dir.display()
            ),
            SourceProblem::NoLimit { source } => write!(
                f,
                "{source} has no memory limit and OOMSNAP_MEMORY_LIMIT is not set: samples are \
                 read but nothing can trigger until a limit appears (in Kubernetes, set the app \
                 container's limits.memory, or feed OOMSNAP_MEMORY_LIMIT from it through \
                 resourceFieldRef)"
            ),
            SourceProblem::Read { why } => write!(f, "cannot read a memory sample: {why}"),
        }
    }
}

impl From<&LocateError> for SourceProblem {
    fn from(e: &LocateError) -> SourceProblem {
        match e {
            LocateError::Explicit { dir, why } => SourceProblem::Explicit {
                dir: dir.clone(),
                why: why.clone(),
            },
            LocateError::NotFound(why) => SourceProblem::NotFound { why: why.clone() },
            LocateError::NoLimit { found, .. } => SourceProblem::NoLimit {
                source: found.clone(),
            },
        }
    }
}

/// Decides which problems are worth a log line.
#[derive(Debug, Default)]
pub(crate) struct ProblemLog {
    last: Option<(SourceProblem, Instant)>,
}

impl ProblemLog {
    /// True when `p` should be logged now: it is of a new kind, or its kind
    /// was last logged [`REPEAT_EVERY`] ago. The kind, not the sentence,
    /// decides: a retried locate names other PIDs each time.
    pub(crate) fn should_log(&mut self, p: &SourceProblem, now: Instant) -> bool {
        let due = match &self.last {
            Some((q, at)) if q.kind() == p.kind() => {
                now.saturating_duration_since(*at) >= REPEAT_EVERY
            }
            _ => true,
        };
        if due {
            self.last = Some((p.clone(), now));
        }
        due
    }

    /// The problem is over: the next one is logged at once.
    pub(crate) fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_stable_labels() {
        let p = SourceProblem::Explicit {
            dir: "/x".into(),
            why: "gone".into(),
        };
        assert_eq!(p.kind(), "locate");
        assert!(p.to_string().contains("OOMSNAP_CGROUP=/x"), "{p}");
        assert_eq!(SourceProblem::NotFound { why: "-".into() }.kind(), "locate");
        assert_eq!(
            SourceProblem::NoLimit { source: "c".into() }.kind(),
            "no_limit"
        );
        assert_eq!(SourceProblem::Read { why: "r".into() }.kind(), "read");
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["kind"], "locate");
        assert_eq!(j["cause"], "explicit");
        assert!(j["message"].as_str().unwrap().contains("OOMSNAP_CGROUP=/x"));
    }

    #[test]
    fn a_persisting_problem_is_logged_once_a_minute() {
        let mut log = ProblemLog::default();
        let t0 = Instant::now();
        let p = SourceProblem::Read { why: "EIO".into() };
        assert!(log.should_log(&p, t0));
        assert!(!log.should_log(&p, t0 + Duration::from_secs(5)));
        assert!(log.should_log(&p, t0 + REPEAT_EVERY));
        // Another sentence of the same kind is not news; another kind is.
        let t1 = t0 + REPEAT_EVERY + Duration::from_secs(1);
        assert!(!log.should_log(
            &SourceProblem::Read {
                why: "EACCES".into()
            },
            t1
        ));
        let q = SourceProblem::NotFound { why: "x".into() };
        assert!(log.should_log(&q, t1));
        assert!(log.clear());
        assert!(log.should_log(&q, t1));
    }
}
