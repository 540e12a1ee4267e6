//! What grew: fills a capture's manifest with pprof summaries.
//!
//! Runs on a blocking thread after the profiles are spooled and before the
//! manifest is written. Reads the bundle's `heap.pb.gz` and
//! `goroutine.pb.gz`, and the baseline heap kept beside the spool; writes
//! [`Summary`] (top functions, goroutines, growth since the baseline and a
//! one-line verdict) into the [`Manifest`].
//!
//! Profiles are decoded **one at a time**, within [`Budget::SIDECAR`]: the
//! heap is decoded, reduced to per-function totals and dropped; then the
//! baseline, within what the heap's totals leave of the budget; then the
//! goroutines, once the totals are gone. A profile over the budget is not
//! summarised and a note says why; it is already spooled and ships as is.
//!
//! A baseline capture's heap is copied to `<spool>/.baseline-heap.pb.gz` so
//! later captures can diff against it even after the baseline bundle has
//! shipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::pprof::{self, Budget, GoroutineSummary, HeapDiff, HeapSummary, HeapTotals};

/// Where the last baseline heap is kept, and its capture id.
pub const BASELINE_HEAP: &str = ".baseline-heap.pb.gz";
pub const BASELINE_ID: &str = ".baseline-id";
/// The baseline's breakdown of the working set, for "what grew".
pub const BASELINE_MEMORY: &str = ".baseline-memory.json";
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
    /// Why a part is missing (a profile failed to decode or is over the
    /// decode budget, no baseline yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A heap profile file decoded within `budget` and reduced; the decoded
/// profile is dropped before this returns.
fn reduce(path: &Path, budget: Budget) -> Result<HeapTotals, pprof::PprofError> {
    HeapTotals::of(&pprof::decode_file_with_budget(path, budget)?)
}

/// Builds the summary from profile files within the sidecar's budget; pure
/// apart from reading them.
pub fn build(heap: Option<&Path>, goroutine: Option<&Path>, baseline: Option<&Path>) -> Summary {
    build_within(heap, goroutine, baseline, Budget::SIDECAR)
}

fn build_within(
    heap: Option<&Path>,
    goroutine: Option<&Path>,
    baseline: Option<&Path>,
    budget: Budget,
) -> Summary {
    let mut notes = Vec::new();
    let current = heap.and_then(|p| noted(&mut notes, "heap", reduce(p, budget)));
    let diff = match (&current, baseline) {
        (Some(cur), Some(b)) => {
            let base = reduce(b, budget.less(cur.heap_bytes()));
            noted(&mut notes, "baseline heap", base).and_then(|base| {
                noted(
                    &mut notes,
                    "diff",
                    HeapTotals::diff(&base, cur, TOP_FUNCTIONS),
                )
            })
        }
        (Some(_), None) => {
            notes.push("no baseline heap yet, so no diff".into());
            None
        }
        (None, _) => None,
    };
    // The totals go before the goroutines are decoded.
    let heap = current.map(|t| t.summary(TOP_FUNCTIONS));
    let goroutines = goroutine
        .and_then(|p| {
            noted(
                &mut notes,
                "goroutine",
                pprof::decode_file_with_budget(p, budget),
            )
        })
        .map(|g| pprof::goroutine_summary(&g, TOP_STACKS));
    Summary {
        verdict: heap.as_ref().map(|h| pprof::verdict(h, diff.as_ref())),
        heap,
        goroutines,
        diff,
        notes,
    }
}

/// The value, or `None` and a note saying what failed and why.
fn noted<T>(notes: &mut Vec<String>, what: &str, r: Result<T, pprof::PprofError>) -> Option<T> {
    r.map_err(|e| notes.push(format!("{what}: {e}"))).ok()
}

/// Fills `m.summary` and `m.memory` (the working set's breakdown, from the
/// manifest's `go_memstats`, `cgroup` and the heap profile); never fails
/// the capture (a summary is a convenience, the profiles are the evidence).
/// The verdict is the breakdown's — which part grew, and for the heap in
/// which function — when there is one, else the heap's.
pub fn summarise(
    bundle_dir: &Path,
    spool_dir: &Path,
    m: &mut Manifest,
    is_baseline: bool,
    cgroup: Option<crate::breakdown::CgroupMemory>,
) {
    let present = |name: &str| {
        m.profiles
            .iter()
            .any(|p| p.ok() && p.file.as_deref() == Some(name))
            .then(|| bundle_dir.join(name))
    };
    let heap = present("heap.pb.gz");
    let goroutine = present("goroutine.pb.gz");
    let mut s = if heap.is_none() && goroutine.is_none() {
        None
    } else {
        Some(summarise_profiles(
            spool_dir,
            m,
            is_baseline,
            heap.as_deref(),
            goroutine.as_deref(),
        ))
    };
    if m.go_memstats.is_none() && cgroup.is_none() {
        m.summary = s.and_then(|s| serde_json::to_value(&s).ok());
        return;
    }
    let b = crate::breakdown::compute(&crate::breakdown::Inputs {
        working_set: m.trigger.working_set_bytes,
        cgroup,
        go: m.go_memstats.clone(),
        heap_profile_bytes: s
            .as_ref()
            .and_then(|s| s.heap.as_ref())
            .map(|h| h.total_bytes),
        at: Some(std::time::SystemTime::now()),
    });
    let base_file = spool_dir.join(BASELINE_MEMORY);
    let base: Option<crate::breakdown::Breakdown> = (!is_baseline)
        .then(|| std::fs::read(&base_file).ok())
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(s) = s.as_mut() {
        let growth = s
            .diff
            .as_ref()
            .and_then(|d| d.top_growth.first())
            .map(|f| (f.function.clone(), f.growth_percent))
            .or_else(|| {
                s.heap
                    .as_ref()
                    .and_then(|h| h.top_flat.first())
                    .map(|f| (f.function.clone(), f.flat_percent))
            });
        s.verdict = Some(b.verdict(
            base.as_ref(),
            growth.as_ref().map(|(f, p)| (f.as_str(), *p)),
        ));
    }
    if is_baseline {
        let kept = serde_json::to_vec(&b)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                crate::spool::write_atomic(spool_dir, BASELINE_MEMORY, &bytes)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the baseline's breakdown for later comparisons");
        }
    }
    m.memory = Some(b);
    m.summary = s.and_then(|s| serde_json::to_value(&s).ok());
}

/// The profiles' part of the summary; keeps a baseline's heap for later
/// diffs.
fn summarise_profiles(
    spool_dir: &Path,
    m: &mut Manifest,
    is_baseline: bool,
    heap: Option<&Path>,
    goroutine: Option<&Path>,
) -> Summary {
    let base_path = spool_dir.join(BASELINE_HEAP);
    let baseline = (!is_baseline && base_path.exists()).then_some(base_path.as_path());
    let s = build(heap, goroutine, baseline);
    if s.diff.is_some() {
        m.baseline = std::fs::read_to_string(spool_dir.join(BASELINE_ID)).ok();
    }
    if is_baseline {
        if let Some(h) = heap {
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
    s
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

    #[test]
    fn a_profile_over_the_budget_is_a_note_and_the_rest_is_summarised() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        // One location with 1 M empty lines: 2 MiB on the wire, 24 MiB of
        // Line structs.
        let payload = [0x22u8, 0x00].repeat(1 << 20);
        let mut raw = vec![0x22, 0x80, 0x80, 0x80, 0x01]; // field 4, length 2 MiB
        raw.extend_from_slice(&payload);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let bomb = d.path().join("heap.pb.gz");
        std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
        let s = build(Some(&bomb), Some(&fixture("goroutine.pb.gz")), None);
        assert!(s.heap.is_none() && s.verdict.is_none());
        assert!(s.goroutines.is_some(), "the goroutines still summarise");
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(
            s.notes[0].starts_with("heap: 1 048 576 Line entries ≈"),
            "{}",
            s.notes[0]
        );
        assert!(
            s.notes[0].contains("over the 8MiB decode budget"),
            "{}",
            s.notes[0]
        );
    }

    #[test]
    fn the_baseline_decodes_within_what_the_heap_totals_leave() {
        // The larger of the two as the baseline, so a budget that fits it
        // alone fits the heap too.
        let (heap, base) = (fixture("heap_baseline.pb.gz"), fixture("heap_leak.pb.gz"));
        let priced = |p: &Path| {
            pprof::estimate(&std::fs::read(p).unwrap(), Budget::SIDECAR)
                .unwrap()
                .total_bytes()
        };
        assert!(priced(&base) >= priced(&heap));
        let alone = Budget {
            decoded_bytes: priced(&base),
            ..Budget::SIDECAR
        };
        // Each fits alone, so the heap summarises; the baseline does not fit
        // beside the heap's totals, so there is no diff, and a note.
        let s = build_within(Some(&heap), None, Some(&base), alone);
        assert!(s.heap.is_some());
        assert!(s.diff.is_none());
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(s.notes[0].starts_with("baseline heap: "), "{}", s.notes[0]);
        assert!(s.notes[0].contains("decode budget"), "{}", s.notes[0]);
        // With room for both, the diff is there.
        let room = Budget {
            decoded_bytes: alone.decoded_bytes * 2,
            ..alone
        };
        assert!(build_within(Some(&heap), None, Some(&base), room)
            .diff
            .is_some());
    }
}
