//! Capture early, ship only what the OOM confirms.
//!
//! A real Go app in a real 256 MiB memory cgroup fills memory fast and then
//! stops at 58 % of the limit, below the first rung: `imminent` fires on the
//! slope, its capture is spooled at once as provisional, nothing confirms
//! it, and when the window ends it is discarded. Nothing near-OOM reaches
//! the store, and `oomsnap_captures_discarded_total` says what happened.
//! The same app leaking on to the kill has its provisional capture
//! confirmed and shipped, with its manifest saying by what.
//!
//!   cargo test --test speculative -- --nocapture --test-threads 1
//!
//! prints the table quoted in docs/benchmarks.md.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const LIMIT: u64 = 256 << 20;
/// Stop at 58 % of the limit: 148 MiB held by the leak, the rest is the
/// runtime and the baseline.
const STOP_AT_MIB: &str = "140";

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn start(cg: &MemCgroup, leaker: &Leaker, dir: &Path) -> Oomsnap {
    Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            ("OOMSNAP_SPOOL_DIR", dir.join("spool").display().to_string()),
            (
                "OOMSNAP_STORE",
                format!("file://{}", dir.join("store").display()),
            ),
            ("OOMSNAP_BASELINE_EVERY", "0".into()),
            ("OOMSNAP_CONFIRM_WINDOW", "3s".into()),
        ]),
    )
}

/// One false alarm at `rate` MiB/s (0 = as fast as the app can).
/// What one false alarm left: where imminent fired and the peak (percent
/// of the limit), and how many captures reached the store or were
/// discarded, as measured.
struct Alarm {
    fired: f64,
    peak: f64,
    shipped: usize,
    discarded: f64,
}

fn false_alarm(rate: &str) -> Option<Alarm> {
    let cg = MemCgroup::create(LIMIT)?;
    let leaker = Leaker::spawn(
        Some(&cg),
        &["-rate", rate, "-max", STOP_AT_MIB, "-delay", "1500ms"],
    );
    let dir = temp_dir("speculative");
    let snap = start(&cg, &leaker, dir.path());
    let store = dir.path().join("store");
    let discarded = || {
        let (_, m) = snap.get("/metrics");
        metric(&m, "oomsnap_captures_discarded_total{reason=\"imminent\"}").unwrap_or(0.0)
    };
    assert!(
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || discarded() >= 1.0
        ),
        "rate {rate}: no provisional capture was discarded\n{}",
        snap.logs()
    );
    // Give a wrongly shipped capture every chance to show up.
    std::thread::sleep(Duration::from_secs(2));
    let shipped = manifests_under(&store);
    assert!(
        shipped.is_empty(),
        "rate {rate}: a false alarm reached the store: {:?}",
        shipped
            .iter()
            .map(|m| m["reason"].clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(cg.oom_kill_count(), 0);
    let s = snap.status();
    let entry = s["captures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reason"] == "imminent")
        .cloned()
        .unwrap_or_else(|| panic!("no imminent capture in {s:#}"));
    assert_eq!(entry["provisional"], "discarded");
    let peak = cg
        .read("memory.max_usage_in_bytes")
        .trim()
        .parse::<f64>()
        .unwrap();
    Some(Alarm {
        fired: entry["percent"].as_f64().unwrap(),
        peak: peak * 100.0 / LIMIT as f64,
        shipped: shipped.len(),
        discarded: discarded(),
    })
}

#[test]
fn a_leak_that_stops_below_the_first_rung_leaves_nothing_in_the_store() {
    if MemCgroup::create(LIMIT).is_none() {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    }
    let mut rows = Vec::new();
    for rate in ["64", "128", "0"] {
        rows.push((rate, false_alarm(rate).expect("memory cgroup")));
    }
    println!("\n| leak rate | imminent fired at | peak usage | near-OOM captures in the store | discarded |");
    println!("|---|---|---|---|---|");
    for (rate, a) in rows {
        let rate = if rate == "0" {
            "flat out".to_string()
        } else {
            format!("{rate} MiB/s")
        };
        println!(
            "| {rate} | {:.1} % | {:.1} % | {} | {} |",
            a.fired, a.peak, a.shipped, a.discarded
        );
    }
}

#[test]
fn a_leak_that_goes_on_to_the_kill_ships_its_provisional_capture_confirmed() {
    let Some(cg) = MemCgroup::create(LIMIT) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let mut leaker = Leaker::spawn(Some(&cg), &["-rate", "128", "-delay", "1500ms"]);
    let dir = temp_dir("speculative-oom");
    let snap = start(&cg, &leaker, dir.path());
    assert!(
        leaker.wait_exit(Duration::from_secs(30)).is_some(),
        "the app was never OOM-killed"
    );
    let store = dir.path().join("store");
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            manifests_under(&store)
                .iter()
                .any(|m| m["reason"] == "imminent")
        }),
        "the provisional capture never shipped\n{}",
        snap.logs()
    );
    let m = manifests_under(&store)
        .into_iter()
        .find(|m| m["reason"] == "imminent")
        .unwrap();
    let by = m["confirmed_by"]
        .as_str()
        .unwrap_or_else(|| panic!("{m:#}"));
    assert!(
        by.starts_with("threshold-") || by == "oom_kill",
        "confirmed by {by}"
    );
    let (_, metrics) = snap.get("/metrics");
    assert_eq!(
        metric(
            &metrics,
            "oomsnap_captures_discarded_total{reason=\"imminent\"}"
        )
        .unwrap_or(0.0),
        0.0
    );
}
