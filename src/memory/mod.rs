//! Where the app's memory is, and how full it is.
//!
//! [`locate`] turns the configuration into a [`MemorySource`] (which cgroup
//! or process, found by which strategy). A source opens into a [`Reader`]
//! that yields [`Sample`]s (and, between them, the cheap usage sentinel).
//! [`stat`] reads the full `memory.stat` breakdown on demand, for a
//! capture's manifest. Nothing here decides anything: [`crate::watch`] runs
//! the reader on its own thread and feeds the [`crate::trigger`].

pub mod cgroup;
pub mod locate;
pub mod problem;
pub mod proc;
pub mod stat;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

pub use cgroup::{CgroupError, CgroupReader, Version};
pub use locate::{locate, LocateError, Strategy};
pub use problem::SourceProblem;
pub use stat::StatBreakdown;

/// One reading of the watched memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Monotonic time of the reading, for slopes and latencies.
    pub at: Instant,
    /// Wall-clock time of the reading, for manifests.
    pub wall: SystemTime,
    pub usage: u64,
    /// `usage − inactive_file`, floored at 0: what kubelet evicts on and what
    /// triggers by default.
    pub working_set: u64,
    /// The effective limit; `None` when neither the cgroup nor the
    /// configuration gives one.
    pub limit: Option<u64>,
    pub anon: Option<u64>,
    pub file: Option<u64>,
    /// The kernel's count of OOM kills in this cgroup, when it shows one.
    pub oom_kills: Option<u64>,
}

impl Sample {
    /// Working set as a percent of the limit (0 when there is no limit).
    pub fn percent(&self) -> f64 {
        match self.limit {
            Some(l) if l > 0 => self.working_set as f64 * 100.0 / l as f64,
            _ => 0.0,
        }
    }

    /// A sample for tests and synthetic series.
    pub fn synthetic(at: Instant, working_set: u64, limit: u64) -> Sample {
        Sample {
            at,
            wall: SystemTime::now(),
            usage: working_set,
            working_set,
            limit: Some(limit),
            anon: None,
            file: None,
            oom_kills: None,
        }
    }
}

/// What is being watched.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceKind {
    /// A memory cgroup directory.
    Cgroup { dir: PathBuf, version: Version },
    /// A process's resident set against a configured limit.
    Process { pid: u32 },
}

/// A located memory source: what, how it was found, and the process behind
/// it when known (so a restart can be noticed).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemorySource {
    pub kind: SourceKind,
    pub strategy: Strategy,
    /// Human sentence: how it was found and why earlier strategies were not
    /// used.
    pub how: String,
    /// The target process, when one was found.
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot, to tell a restart from a
    /// PID that was merely reused.
    #[serde(skip)]
    pub pid_start: Option<u64>,
    /// The configured limit that fills in when the cgroup has none.
    pub fallback_limit: Option<u64>,
}

impl MemorySource {
    pub fn describe(&self) -> String {
        match &self.kind {
            SourceKind::Cgroup { dir, version } => {
                format!("cgroup {version:?} {}", dir.display())
            }
            SourceKind::Process { pid } => format!("RSS of pid {pid}"),
        }
    }

    /// The full `memory.stat` breakdown, read now, for a capture's manifest
    /// (allocates; never per sample). `None` for a process source, which
    /// has no `memory.stat`.
    pub fn stat_breakdown(&self) -> Option<Result<StatBreakdown, CgroupError>> {
        match &self.kind {
            SourceKind::Cgroup { dir, .. } => Some(StatBreakdown::read(dir)),
            SourceKind::Process { .. } => None,
        }
    }

    /// Opens the source for sampling.
    pub(crate) fn open(&self) -> Result<Reader, ReadError> {
        match &self.kind {
            SourceKind::Cgroup { dir, .. } => Ok(Reader::Cgroup(CgroupReader::open(
                dir,
                self.fallback_limit,
            )?)),
            SourceKind::Process { pid } => Ok(Reader::Process(proc::RssReader::open(
                *pid,
                self.fallback_limit,
            )?)),
        }
    }
}

/// Why a sample could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Process(#[from] proc::ProcError),
}

impl ReadError {
    /// The source disappeared (cgroup removed, process exited): locate again.
    pub(crate) fn is_gone(&self) -> bool {
        match self {
            ReadError::Cgroup(e) => e.is_gone(),
            ReadError::Process(e) => e.is_gone(),
        }
    }
}

/// An open source.
pub(crate) enum Reader {
    Cgroup(CgroupReader),
    Process(proc::RssReader),
}

impl Reader {
    /// One full sample.
    pub(crate) fn read(&mut self) -> Result<Sample, ReadError> {
        match self {
            Reader::Cgroup(r) => Ok(r.read()?),
            Reader::Process(r) => Ok(r.read()?),
        }
    }

    /// Whether [`Reader::read_usage`] is cheaper than a full sample (a
    /// process's RSS is one small file either way).
    pub(crate) fn has_sentinel(&self) -> bool {
        matches!(self, Reader::Cgroup(_))
    }

    /// The usage alone: the sentinel read between full samples.
    pub(crate) fn read_usage(&mut self) -> Result<u64, ReadError> {
        match self {
            Reader::Cgroup(r) => Ok(r.read_usage()?),
            Reader::Process(r) => Ok(r.read()?.usage),
        }
    }
}
