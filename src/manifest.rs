//! `manifest.json` and `oom.json`: what a capture and a kill looked like.
//!
//! Plain serde types; the capture stage fills a [`Manifest`], the spool
//! writes it last into a bundle, and the CLI reads it back. The `schema`
//! field is bumped on any change a reader must know about.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The manifest format this build writes. 2 added the working set's
/// breakdown (`memory`, `go_memstats`, `cgroup_memory`), skipped profiles,
/// the pprof index's counts and `confirmed_by`; every field 1 had keeps its
/// meaning, and readers of 2 read 1.
pub const SCHEMA: u32 = 2;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const OOM_FILE: &str = "oom.json";

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

/// Milliseconds as a float, for latencies in the manifest.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The sample that caused the capture.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TriggerSample {
    pub sampled_at: String,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub percent: f64,
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub slope_bytes_per_second: Option<f64>,
    pub predicted_seconds_to_oom: Option<f64>,
    /// `kernel`, `poll` or `start`: what woke the watcher for this sample.
    pub wake: Option<String>,
}

impl TriggerSample {
    /// A bare sample, without what a decision adds.
    pub fn from_sample(s: &crate::memory::Sample) -> TriggerSample {
        TriggerSample {
            sampled_at: timestamp(s.wall),
            usage_bytes: s.usage,
            working_set_bytes: s.working_set,
            limit_bytes: s.limit,
            percent: (s.percent() * 100.0).round() / 100.0,
            anon_bytes: s.anon,
            file_bytes: s.file,
            slope_bytes_per_second: None,
            predicted_seconds_to_oom: None,
            wake: None,
        }
    }

    pub fn from_decision(d: &crate::trigger::Decision, wake: Option<&str>) -> TriggerSample {
        TriggerSample {
            slope_bytes_per_second: d.slope.map(f64::round),
            predicted_seconds_to_oom: d
                .predicted_oom_in
                .map(|p| (p.as_secs_f64() * 1e3).round() / 1e3),
            wake: wake.map(str::to_string),
            ..TriggerSample::from_sample(&d.sample)
        }
    }
}

/// How the memory was found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    pub strategy: String,
    pub description: String,
}

/// One profile of a capture; `error` is set when it failed, and then the
/// file may be absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ProfileRecord {
    pub name: String,
    pub file: Option<String>,
    pub url: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub http_status: Option<u16>,
    pub content_type: Option<String>,
    /// From the decision to the request leaving.
    pub requested_after_decision_ms: f64,
    /// From the decision to the first body byte.
    pub first_byte_after_decision_ms: Option<f64>,
    /// From the decision to the file being fsynced and renamed into place.
    pub durable_after_decision_ms: Option<f64>,
    pub durable_at: Option<String>,
    pub fetch_ms: f64,
    pub error: Option<String>,
    /// Set when the profile was not requested because serving it would have
    /// cost the app more memory than it had left; says how much and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// What serving it was estimated to cost the app, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_app_cost_bytes: Option<u64>,
}

impl ProfileRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.skipped.is_none() && self.file.is_some()
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    pub schema: u32,
    pub oomsnap_version: String,
    pub capture_id: String,
    pub reason: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub node: String,
    pub pod_uid: Option<String>,
    pub target: String,
    pub target_pid: Option<u32>,
    /// How many times the target restarted since oomsnap started.
    pub target_restarts: u32,
    pub source: Option<SourceInfo>,
    pub trigger: TriggerSample,
    pub decided_at: String,
    /// From the decision to the first profile request leaving.
    pub first_request_after_decision_ms: Option<f64>,
    pub spooled_at: String,
    /// The counts of the target's pprof index page at capture time
    /// (`goroutine`: the number of goroutines), when it served one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_counts: Option<std::collections::BTreeMap<String, u64>>,
    pub profiles: Vec<ProfileRecord>,
    /// The Go runtime's memory numbers at the capture (the `# runtime.MemStats`
    /// trailer of `heap?debug=1`), when the target served them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_memstats: Option<crate::pprof::memstats::MemStats>,
    /// Why there are no runtime numbers, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_memstats_error: Option<String>,
    /// The cgroup's `memory.stat` at the capture, in detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_memory: Option<serde_json::Value>,
    /// Where the working set went: parts that add up, from the two above
    /// and the heap profile (see `breakdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::breakdown::Breakdown>,
    /// What grew: top functions, goroutines, diff against the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<serde_json::Value>,
    /// For a capture decided by `imminent` below the first rung: what
    /// confirmed the climb before it shipped (`threshold-80`, `oom_kill`,
    /// `restart`, `manual`; see docs/how-it-works.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    /// The baseline capture the diff was taken against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

impl Manifest {
    /// The time the last successful profile became durable.
    pub fn durable_at(&self) -> Option<SystemTime> {
        self.profiles
            .iter()
            .filter(|p| p.ok())
            .filter_map(|p| p.durable_at.as_deref().and_then(parse_timestamp))
            .max()
    }
}

/// `oom.json`: written beside the last capture when the kernel kills the app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OomRecord {
    pub schema: u32,
    pub capture_id: String,
    /// When oomsnap saw the kill counter rise (or the target restart).
    pub detected_at: String,
    /// `oom_kill` counter, or `restart` when only a restart was seen.
    pub evidence: String,
    pub oom_kills: Option<u64>,
    /// Kill time minus the time the capture became durable.
    pub lead_seconds: Option<f64>,
    /// Why this capture was chosen as the kill's evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    pub last_sample: Option<TriggerSample>,
}
