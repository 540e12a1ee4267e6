//! Reaction latency: from the 80 % threshold crossing to the first profile
//! request arriving at the target, for the kernel wake-up path (v1 eventfd
//! thresholds, the default) and the polling-only path
//! (`OOMSNAP_KERNEL_WAKEUPS=false`).
//!
//! The Go leaker oscillates in a 256 MiB cgroup (`-mode oscillate`, ~140 →
//! ~205 MiB held, 256 MiB/s), crossing the 80 % rung once per cycle and
//! falling below the 75 % re-arm point (hysteresis 5) after it. The crossing
//! time comes from the kernel: the bench registers its own
//! `cgroup.event_control` threshold at exactly oomsnap's byte value and
//! timestamps each upward wake on a dedicated thread. The request time comes
//! from a fake pprof server in the bench process that timestamps each request
//! line as it arrives. Both are on the bench's monotonic clock.
//!
//! oomsnap runs with `OOMSNAP_RATE_BURST=1000 OOMSNAP_RATE_PERIOD=1ms`
//! (every crossing may capture), `OOMSNAP_BASELINE_EVERY=0` and
//! `OOMSNAP_LEAD_TIME=0s` (no "imminent" captures before the rung, so each
//! capture is the crossing's).
//!
//!   cargo bench --bench reaction                 # 200 crossings per path
//!   cargo bench --bench reaction -- --quick      # 50
//!   OOMSNAP_BENCH_CROSSINGS=500 cargo bench --bench reaction

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const LIMIT: u64 = 256 * MIB;
const WARMUP: usize = 3;

fn crossings_wanted() -> usize {
    std::env::var("OOMSNAP_BENCH_CROSSINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 50 } else { 200 })
}

fn one_path(name: &str, kernel: bool, want: usize) -> serde_json::Value {
    let dir = temp_dir("bench-reaction");
    let cg = MemCgroup::create(LIMIT).expect("memory cgroup");
    let fake = FakePprof::start();
    // oomsnap registers (limit * pct / 100) as u64; so does the bench.
    let thr = (LIMIT as f64 * 80.0 / 100.0) as u64;
    let mut clock =
        CrossingClock::start(cg.path(), thr).expect("register the bench's threshold eventfd");
    let leaker = Leaker::spawn(
        Some(&cg),
        &[
            "-mode",
            "oscillate",
            "-low",
            "140",
            "-high",
            "205",
            "-rate",
            "256",
            "-delay",
            "1500ms",
        ],
    );
    let wake = if kernel { "true" } else { "false" };
    let mut snap = Oomsnap::start(
        dir.path(),
        cg.path(),
        &fake.base(),
        &[
            ("OOMSNAP_KERNEL_WAKEUPS", wake),
            ("OOMSNAP_RATE_BURST", "1000"),
            ("OOMSNAP_RATE_PERIOD", "1ms"),
            ("OOMSNAP_BASELINE_EVERY", "0"),
            ("OOMSNAP_LEAD_TIME", "0s"),
        ],
    );
    let _ = leaker.pid();
    let started = Instant::now();
    let total = want + WARMUP + 1;
    let deadline = Duration::from_secs(30 + total as u64);
    let mut last_print = Instant::now();
    while clock.up_count() < total && started.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("reaction {name}: {} crossings so far", clock.up_count());
            last_print = Instant::now();
        }
    }
    drop(leaker);
    std::thread::sleep(Duration::from_millis(300));
    snap.stop(Duration::from_secs(25));
    clock.stop();
    let ups = clock.ups.lock().unwrap().clone();
    let downs = clock.downs.lock().unwrap().len();
    let arrivals: Vec<(Instant, String)> = fake
        .arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| {
            p.starts_with("/debug/pprof/heap") || p.starts_with("/debug/pprof/goroutine")
        })
        .cloned()
        .collect();

    // Match each crossing to the first profile request in its cycle.
    let slack = Duration::from_millis(20);
    let mut lat = Vec::new();
    let mut missed = 0;
    let mut matched = 0;
    for i in WARMUP..ups.len().saturating_sub(1) {
        let c = ups[i];
        let next = ups[i + 1];
        let first = arrivals
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| *a + slack >= c && *a + slack < next)
            .min();
        match first {
            Some(a) => {
                matched += 1;
                let ms = if a >= c {
                    (a - c).as_secs_f64() * 1e3
                } else {
                    -((c - a).as_secs_f64() * 1e3)
                };
                lat.push(ms);
            }
            None => missed += 1,
        }
    }
    let manifests = snap.manifests();
    let dec_to_req: Vec<f64> = manifests
        .iter()
        .filter_map(|m| m["first_request_after_decision_ms"].as_f64())
        .collect();
    let kernel_woken = manifests
        .iter()
        .filter(|m| m["trigger"]["wake"] == "kernel")
        .count();
    let overshoot: Vec<f64> = manifests
        .iter()
        .filter_map(|m| m["trigger"]["working_set_bytes"].as_u64())
        .map(|ws| (ws as f64 - thr as f64) / MIB as f64)
        .collect();
    let r = json!({
        "path": name,
        "kernel_wakeups": kernel,
        "up_crossings": ups.len(),
        "down_crossings": downs,
        "warmup_skipped": WARMUP,
        "matched": matched,
        "missed": missed,
        "profile_requests": arrivals.len(),
        "captures": manifests.len(),
        "captures_woken_by_kernel": kernel_woken,
        "crossing_to_request_ms": {
            "p50": quantile(&lat, 0.5), "p90": quantile(&lat, 0.9), "p99": quantile(&lat, 0.99),
            "max": max(&lat), "min": min(&lat), "n": lat.len(),
        },
        "decision_to_request_ms": { "p50": quantile(&dec_to_req, 0.5), "p99": quantile(&dec_to_req, 0.99), "max": max(&dec_to_req) },
        "decision_overshoot_mib": { "p50": quantile(&overshoot, 0.5), "p99": quantile(&overshoot, 0.99), "max": max(&overshoot) },
        "latencies_ms": lat,
    });
    eprintln!(
        "reaction {name}: {} crossings, {} matched, {} missed, p50 {} p99 {} max {} ms",
        ups.len(),
        matched,
        missed,
        fmt(quantile(&lat, 0.5), 3),
        fmt(quantile(&lat, 0.99), 3),
        fmt(max(&lat), 3)
    );
    drop(cg);
    r
}

fn main() {
    if !can_run() {
        return;
    }
    let want = crossings_wanted();
    let _ = harness::leaky_binary();
    // The first cgroup to run the leaker is charged for its binary's page
    // cache (inactive file, a few MiB), which puts working set and usage a
    // few MiB apart there and nowhere after. Run it once in a throwaway
    // cgroup so every measured path starts from the same page cache.
    {
        let warm = MemCgroup::create(LIMIT).expect("memory cgroup");
        let _l = Leaker::spawn(Some(&warm), &["-max", "1"]);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let paths = [
        ("kernel wake-up (eventfd, default)", true),
        ("polling only (OOMSNAP_KERNEL_WAKEUPS=false)", false),
    ];
    let mut res = Vec::new();
    let mut md = String::from(
        "| path | crossings | captured | p50 (ms) | p99 (ms) | max (ms) | decision→request p50 / p99 (ms) |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, kernel) in paths {
        let r = one_path(name, kernel, want);
        let l = &r["crossing_to_request_ms"];
        let d = &r["decision_to_request_ms"];
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} / {} |\n",
            r["matched"].as_u64().unwrap_or(0) + r["missed"].as_u64().unwrap_or(0),
            r["matched"],
            fmt(l["p50"].as_f64(), 3),
            fmt(l["p99"].as_f64(), 3),
            fmt(l["max"].as_f64(), 3),
            fmt(d["p50"].as_f64(), 3),
            fmt(d["p99"].as_f64(), 3),
        ));
        res.push(r);
    }
    md.push_str(&format!(
        "\ncrossing = the kernel's v1 usage-threshold eventfd at 80 % of 256 MiB, timestamped by the bench; request = arrival of the first \
`/debug/pprof/heap` or `goroutine` request line at a fake pprof server in the bench. The first {WARMUP} crossings are warm-up and not counted. \
decision→request is the manifest's `first_request_after_decision_ms` (from the deciding sample).\n"
    ));
    report(
        "reaction",
        json!({ "limit_bytes": LIMIT, "crossings_wanted": want, "paths": res }),
        &md,
    );
}
