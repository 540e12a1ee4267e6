//! The metrics observed as events happen (counters and histograms).
//!
//! The pipeline records into a [`Metrics`] held by the shared state; the
//! admin server registers these families once and adds, at each scrape, the
//! gauges and counters it reads from the state. Names carry their units
//! (`_seconds`, `_bytes`); counters get `_total` from the encoder.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub reason: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabels {
    pub profile: String,
}

/// A profile not taken, and why (`headroom`: it would have cost the app
/// more memory than it had left).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub profile: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

fn fetch_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Metrics observed as events happen.
#[derive(Clone)]
pub struct Metrics {
    pub captures: Family<CaptureLabels, Counter>,
    pub fetch_seconds: Family<ProfileLabels, Histogram, fn() -> Histogram>,
    pub profiles_skipped: Family<SkipLabels, Counter>,
    /// Provisional captures nothing confirmed, by reason.
    pub captures_discarded: Family<ReasonLabel, Counter>,
    pub lead_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            captures: Family::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram),
            profiles_skipped: Family::default(),
            captures_discarded: Family::default(),
            lead_seconds: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        }
    }
}
