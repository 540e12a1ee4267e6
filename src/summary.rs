//! What grew: fills a capture's manifest with pprof summaries.
//!
//! Runs on a blocking thread after the profiles are spooled and before the
//! manifest is written. Reads the bundle's `heap.pb.gz` and
//! `goroutine.pb.gz`, and the baseline heap kept beside the spool; writes
//! [`Summary`] (top functions, goroutines, growth since the baseline and a
//! one-line verdict) into the [`Manifest`]. A baseline capture's heap is
//! copied to `<spool>/.baseline-heap.pb.gz` so later captures can diff
//! against it even after the baseline bundle has shipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::pprof::{self, GoroutineSummary, HeapDiff, HeapSummary};

/// Where the last baseline heap is kept, and its capture id.
pub const BASELINE_HEAP: &str = ".baseline-heap.pb.gz";
pub const BASELINE_ID: &str = ".baseline-id";
/// Rows kept in each table.
pub const TOP_FUNCTIONS: usize = 10;
pub const TOP_STACKS: usize = 5;

/// The `summary` object of `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub verdict: Option<String>,
    pub heap: Option<HeapSummary>,
    pub goroutines: Option<GoroutineSummary>,
    pub diff: Option<HeapDiff>,
    /// Why a part is missing (a profile failed to decode, no baseline yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The largest profile file summarised, and what it may inflate to: the
/// sidecar runs in a 32Mi limit, and a summary is a convenience while the
/// profile itself is the evidence.
pub const MAX_SUMMARY_FILE: u64 = 4 << 20;
pub const MAX_SUMMARY_DECODED: u64 = 16 << 20;

fn decode_small(p: &Path) -> Result<pprof::Profile, String> {
    let len = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
    if len > MAX_SUMMARY_FILE {
        return Err(format!(
            "{} bytes is too large to summarise inside the sidecar; use go tool pprof",
            len
        ));
    }
    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
    pprof::decode_with_limit(&bytes, MAX_SUMMARY_DECODED).map_err(|e| e.to_string())
}

/// Builds the summary from profile files; pure apart from reading them.
pub fn build(heap: Option<&Path>, goroutine: Option<&Path>, baseline: Option<&Path>) -> Summary {
    let mut notes = Vec::new();
    let mut decode = |what: &str, p: &Path| match decode_small(p) {
        Ok(prof) => Some(prof),
        Err(e) => {
            notes.push(format!("{what}: {e}"));
            None
        }
    };
    let heap_p = heap.and_then(|p| decode("heap", p));
    let gor_p = goroutine.and_then(|p| decode("goroutine", p));
    let base_p = baseline.and_then(|p| decode("baseline heap", p));
    let heap_s = heap_p
        .as_ref()
        .and_then(|h| match pprof::heap_summary(h, TOP_FUNCTIONS) {
            Ok(s) => Some(s),
            Err(e) => {
                notes.push(format!("heap: {e}"));
                None
            }
        });
    let diff = match (&base_p, &heap_p) {
        (Some(b), Some(h)) => match pprof::heap_diff(b, h, TOP_FUNCTIONS) {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("diff: {e}"));
                None
            }
        },
        (None, Some(_)) if baseline.is_none() => {
            notes.push("no baseline heap yet, so no diff".into());
            None
        }
        _ => None,
    };
    let goroutines = gor_p
        .as_ref()
        .map(|g| pprof::goroutine_summary(g, TOP_STACKS));
    let verdict = heap_s.as_ref().map(|h| pprof::verdict(h, diff.as_ref()));
    Summary {
        verdict,
        heap: heap_s,
        goroutines,
        diff,
        notes,
    }
}

/// Fills `m.summary`; never fails the capture (a summary is a convenience,
/// the profiles are the evidence).
pub fn summarise(bundle_dir: &Path, spool_dir: &Path, m: &mut Manifest, is_baseline: bool) {
    let present = |name: &str| {
        m.profiles
            .iter()
            .any(|p| p.ok() && p.file.as_deref() == Some(name))
            .then(|| bundle_dir.join(name))
    };
    let heap = present("heap.pb.gz");
    let goroutine = present("goroutine.pb.gz");
    if heap.is_none() && goroutine.is_none() {
        return;
    }
    let base_path = spool_dir.join(BASELINE_HEAP);
    let baseline = (!is_baseline && base_path.exists()).then_some(base_path.as_path());
    let s = build(heap.as_deref(), goroutine.as_deref(), baseline);
    if s.diff.is_some() {
        m.baseline = std::fs::read_to_string(spool_dir.join(BASELINE_ID)).ok();
    }
    m.summary = serde_json::to_value(&s).ok();
    if is_baseline {
        if let Some(h) = &heap {
            let tmp = spool_dir.join(format!("{BASELINE_HEAP}.tmp"));
            let kept = std::fs::copy(h, &tmp)
                .and_then(|_| std::fs::rename(&tmp, &base_path))
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    crate::spool::write_atomic(spool_dir, BASELINE_ID, m.capture_id.as_bytes())
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = kept {
                tracing::warn!(error = %e, "cannot keep the baseline heap for later diffs");
            }
        }
    }
}

/// The summary of a manifest, typed.
pub fn of(m: &Manifest) -> Option<Summary> {
    m.summary
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The one-line verdict of a manifest, when it has one.
pub fn verdict_of(m: &Manifest) -> Option<String> {
    m.summary
        .as_ref()
        .and_then(|s| s.get("verdict"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pprof")
            .join(name)
    }

    #[test]
    fn summary_names_the_leak_and_its_growth() {
        let s = build(
            Some(&fixture("heap_leak.pb.gz")),
            Some(&fixture("goroutine.pb.gz")),
            Some(&fixture("heap_baseline.pb.gz")),
        );
        let v = s.verdict.unwrap();
        assert!(
            v.contains("main.(*leakyCache).put") && v.contains("since baseline"),
            "{v}"
        );
        assert_eq!(
            s.diff.unwrap().top_growth[0].function,
            "main.(*leakyCache).put"
        );
        assert!(s.goroutines.unwrap().total_goroutines >= 1000);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
    }

    #[test]
    fn a_broken_profile_is_a_note_not_a_failure() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("heap.pb.gz");
        std::fs::write(&bad, b"<html>404</html>").unwrap();
        let s = build(Some(&bad), None, None);
        assert!(s.heap.is_none());
        assert_eq!(s.notes.len(), 1);
    }
}
