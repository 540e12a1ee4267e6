//! The Prometheus face of the shared state.
//!
//! [`registry`] registers the event metrics of [`crate::metrics::Metrics`]
//! and a collector that reads gauges and counters from the [`Shared`] state
//! at each scrape. Every family is present from the first scrape, before any
//! sample or capture, so alerts and dashboards never see a missing series
//! where a zero (or `NaN`, for a reading not taken yet) belongs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::problems::ProblemKind;
use crate::state::Shared;

/// Builds the registry served on `/metrics`.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    let m = shared.metrics.clone();
    registry.register(
        "oomsnap_captures",
        "Captures taken, by reason and outcome (complete, partial, failed)",
        m.captures,
    );
    registry.register(
        "oomsnap_profile_fetch_seconds",
        "Time to fetch and spool one profile",
        m.fetch_seconds,
    );
    registry.register(
        "oomsnap_profiles_skipped",
        "Profiles not requested because serving them would have cost the app more memory than it had left, by profile and cause",
        m.profiles_skipped,
    );
    registry.register(
        "oomsnap_captures_discarded",
        "Provisional captures (imminent, below the first rung) that nothing confirmed within OOMSNAP_CONFIRM_WINDOW, deleted unshipped",
        m.captures_discarded,
    );
    registry.register(
        "oomsnap_capture_lead_seconds",
        "Time between a capture becoming durable and the OOM kill it preceded",
        m.lead_seconds,
    );
    registry.register_collector(Box::new(StateCollector(shared)));
    registry
}

/// Reads gauges and counters from the shared state at each scrape.
#[derive(Debug)]
struct StateCollector(Arc<Shared>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
    cause: String,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A family of gauges with one label.
fn labelled_gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (String, f64)>,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, ConstGauge::new(0.0).metric_type())?;
    for (v, x) in values {
        // The label's name is fixed per family; encode it as `label="v"`.
        ConstGauge::new(x).encode(fam.encode_family(&[(label, v)])?)?;
    }
    Ok(())
}

/// A family of counters with one label.
fn labelled_counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (v, x) in values {
        ConstCounter::new(x).encode(fam.encode_family(&[(label, v)])?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        labelled_gauges(
            &mut enc,
            "oomsnap_build_info",
            "Always 1; the version label says which oomsnap runs",
            "version",
            [(crate::VERSION.to_string(), 1.0)],
        )?;
        labelled_gauges(
            &mut enc,
            "oomsnap_problems",
            "1 while a problem of this kind is active (oomsnap then runs degraded; /status says what and why), else 0",
            "kind",
            ProblemKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), f64::from(u8::from(s.problems.is_active(*k))))),
        )?;
        let last = s.watch.last.lock().ok().and_then(|l| *l);
        // NaN until the first sample: a reading not taken yet is not zero.
        let or_nan = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64);
        gauge(
            &mut enc,
            "oomsnap_memory_working_set_bytes",
            "Working set of the watched memory (usage minus inactive file)",
            or_nan(last.map(|l| l.working_set)),
        )?;
        gauge(
            &mut enc,
            "oomsnap_memory_usage_bytes",
            "Usage of the watched memory",
            or_nan(last.map(|l| l.usage)),
        )?;
        gauge(
            &mut enc,
            "oomsnap_memory_limit_bytes",
            "The memory limit that triggers the OOM killer (NaN while none is known)",
            or_nan(last.and_then(|l| l.limit)),
        )?;
        counter(
            &mut enc,
            "oomsnap_memory_samples",
            "Memory samples read",
            s.watch.samples.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "oomsnap_kernel_wakeups",
            "Wake-ups by kernel notification (eventfd, inotify)",
            s.watch.kernel_wakes.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "oomsnap_target_restarts",
            "Restarts of the target process seen",
            s.watch.restarts.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut enc,
            "oomsnap_poll_interval_seconds",
            "The current poll interval",
            s.watch.interval_ms.load(Ordering::Relaxed) as f64 / 1e3,
        )?;
        counter(
            &mut enc,
            "oomsnap_oom_kills",
            "OOM kills of the target confirmed by the kernel's counter",
            s.oom_kills.load(Ordering::Relaxed),
        )?;
        {
            let mut fam = enc.encode_descriptor(
                "oomsnap_captures_dropped",
                "Capture decisions not taken, by the decision's reason and the cause (quota, speculative_quota, paused, superseded, outranked, no_spool, spool, shutdown)",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            // Summed over the three quotas: one label set appears once.
            let mut dropped = std::collections::BTreeMap::<_, u64>::new();
            for a in [&s.admission, &s.manual_admission, &s.speculative_admission] {
                for (labels, n) in a.lock().dropped() {
                    *dropped.entry(labels.clone()).or_default() += n;
                }
            }
            for ((reason, cause), n) in dropped {
                ConstCounter::new(n).encode(fam.encode_family(&DropLabels { reason, cause })?)?;
            }
        }
        let remaining = |q: &crate::state::Quota| q.lock().remaining() as f64;
        gauge(
            &mut enc,
            "oomsnap_quota_remaining_captures",
            "Near-OOM captures left in the burst as of the last decision",
            remaining(&s.admission),
        )?;
        gauge(
            &mut enc,
            "oomsnap_manual_quota_remaining_captures",
            "Manual captures left in their own burst as of the last request",
            remaining(&s.manual_admission),
        )?;
        let stats = s.storage.shipper.get().map(|ship| ship.stats.clone());
        let load = |f: fn(&crate::ship::ShipStats) -> u64| stats.as_deref().map_or(0, f);
        labelled_counters(
            &mut enc,
            "oomsnap_uploads",
            "Object uploads, by outcome",
            "outcome",
            [
                (
                    "ok".to_string(),
                    load(|s| s.objects_ok.load(Ordering::Relaxed)),
                ),
                (
                    "error".to_string(),
                    load(|s| s.objects_failed.load(Ordering::Relaxed)),
                ),
            ],
        )?;
        counter(
            &mut enc,
            "oomsnap_uploaded_bytes",
            "Bytes uploaded to the store",
            load(|s| s.bytes_uploaded.load(Ordering::Relaxed)),
        )?;
        let view_bytes = s.spool_view.lock().map(|v| v.bytes).unwrap_or(0);
        gauge(
            &mut enc,
            "oomsnap_spool_bytes",
            "Bytes waiting in the spool",
            view_bytes as f64,
        )?;
        gauge(
            &mut enc,
            "oomsnap_spool_limit_bytes",
            "The spool's bound (OOMSNAP_SPOOL_MAX_BYTES)",
            s.config.spool_max_bytes as f64,
        )?;
        counter(
            &mut enc,
            "oomsnap_spool_dropped",
            "Bundles dropped because the spool was full",
            s.storage.spool.get().map_or(0, |sp| sp.dropped()),
        )?;
        Ok(())
    }
}
