//! Synthetic captures for the CLI tests and the `ls` benchmark: the objects
//! a shipped capture leaves (`manifest.json`, a real heap profile from
//! `tests/data/pprof`, and `oom.json` when asked), built from the library's
//! own types and keys so they read exactly like the sidecar's.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime};

use oomsnap::config::Identity;
use oomsnap::manifest::{Manifest, OomRecord, ProfileRecord, TriggerSample, SCHEMA};
use oomsnap::pprof::{FunctionBytes, HeapSummary};
use oomsnap::summary::Summary;

pub const HEAP: &[u8] = include_bytes!("../data/pprof/heap_leak.pb.gz");
pub const BASELINE_HEAP: &[u8] = include_bytes!("../data/pprof/heap_baseline.pb.gz");

/// One capture to write.
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub namespace: String,
    pub pod: String,
    pub reason: String,
    pub at: SystemTime,
    pub top_function: String,
    /// `oom.json`'s `lead_seconds`, when the capture has one.
    pub lead: Option<Option<f64>>,
    pub baseline: Option<String>,
    /// A manifest that is not JSON: reading it logs a warning.
    pub corrupt: bool,
}

impl Synthetic {
    pub fn new(namespace: &str, pod: &str, reason: &str, ago: Duration) -> Synthetic {
        Synthetic {
            namespace: namespace.into(),
            pod: pod.into(),
            reason: reason.into(),
            at: SystemTime::now() - ago,
            top_function: "main.(*leakyCache).put".into(),
            lead: None,
            baseline: None,
            corrupt: false,
        }
    }

    pub fn id(&self) -> String {
        oomsnap::keys::capture_id(self.at, &self.reason)
    }

    /// The capture folder's key under `prefix`.
    pub fn key(&self, prefix: &str) -> String {
        let who = Identity {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: "app".into(),
            node: "node-1".into(),
            pod_uid: None,
        };
        oomsnap::keys::capture_prefix(&prefix.into(), &who, &self.id()).to_string()
    }

    pub fn manifest(&self) -> Manifest {
        let stamp = oomsnap::manifest::timestamp(self.at);
        let heap = if self.reason == "baseline" {
            BASELINE_HEAP
        } else {
            HEAP
        };
        let top = FunctionBytes {
            function: self.top_function.clone(),
            flat_bytes: 40 << 20,
            flat_percent: 90.0,
            cum_bytes: 40 << 20,
            cum_percent: 90.0,
        };
        let summary = Summary {
            verdict: Some(format!("heap 44MiB in use, 90% in {}", self.top_function)),
            heap: Some(HeapSummary {
                sample_type: "inuse_space/bytes".into(),
                sample_type_fallback: false,
                total_bytes: 44 << 20,
                sample_count: 3,
                function_count: 3,
                top_flat: vec![top.clone()],
                top_cum: vec![top],
            }),
            goroutines: None,
            diff: None,
            notes: vec![],
        };
        Manifest {
            schema: SCHEMA,
            oomsnap_version: "test".into(),
            capture_id: self.id(),
            reason: self.reason.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: "app".into(),
            node: "node-1".into(),
            pod_uid: None,
            target: "http://127.0.0.1:6060/debug/pprof".into(),
            target_pid: Some(42),
            target_restarts: 0,
            source: None,
            trigger: TriggerSample {
                sampled_at: stamp.clone(),
                usage_bytes: 230 << 20,
                working_set_bytes: 230 << 20,
                limit_bytes: Some(256 << 20),
                percent: 89.84,
                anon_bytes: None,
                file_bytes: None,
                slope_bytes_per_second: None,
                predicted_seconds_to_oom: None,
                wake: Some("poll".into()),
            },
            decided_at: stamp.clone(),
            first_request_after_decision_ms: Some(0.2),
            spooled_at: stamp.clone(),
            profiles: vec![ProfileRecord {
                name: "heap".into(),
                file: Some("heap.pb.gz".into()),
                url: "http://127.0.0.1:6060/debug/pprof/heap".into(),
                bytes: heap.len() as u64,
                durable_after_decision_ms: Some(5.0),
                durable_at: Some(stamp),
                fetch_ms: 4.0,
                ..ProfileRecord::default()
            }],
            summary: Some(serde_json::to_value(summary).expect("summary serialises")),
            baseline: self.baseline.clone(),
            confirmed_by: None,
            target_counts: None,
            ..Default::default()
        }
    }

    /// Every object of the capture: (key, bytes), the manifest last.
    pub fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let key = self.key(prefix);
        let heap = if self.reason == "baseline" {
            BASELINE_HEAP
        } else {
            HEAP
        };
        let mut out = vec![(format!("{key}/heap.pb.gz"), heap.to_vec())];
        if let Some(lead) = self.lead {
            let rec = OomRecord {
                schema: SCHEMA,
                capture_id: self.id(),
                detected_at: oomsnap::manifest::timestamp(self.at + Duration::from_secs(1)),
                evidence: "oom_kill".into(),
                oom_kills: Some(1),
                lead_seconds: lead,
                chosen: None,
                last_sample: None,
            };
            out.push((
                format!("{key}/oom.json"),
                serde_json::to_vec(&rec).expect("oom record serialises"),
            ));
        }
        let manifest = if self.corrupt {
            b"{ this is not a manifest".to_vec()
        } else {
            serde_json::to_vec_pretty(&self.manifest()).expect("manifest serialises")
        };
        out.push((format!("{key}/manifest.json"), manifest));
        out
    }

    /// Writes the capture into a `file://` store rooted at `root`.
    pub fn write_to(&self, root: &Path) {
        for (key, bytes) in self.objects("") {
            let path = root.join(key);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, bytes).expect("write object");
        }
    }
}
