//! The capture's effect on the app, profile by profile, beside what oomsnap
//! estimates before it asks: the target's cgroup usage right before, at the
//! peak during (`memory.max_usage_in_bytes`, reset before each capture) and
//! right after serving a capture of one profile. Go builds each profile in
//! the app's own memory, so a profile needs headroom under the limit; one
//! that pushes the app over the limit kills it. oomsnap skips a profile
//! whose estimate (`src/capture/cost.rs`) does not fit the headroom, so the
//! estimate must never be below the measured cost: the table's last column
//! is estimate ÷ measured peak.
//!
//! Scenarios (a fresh leaker and oomsnap each; manual `POST /capture`):
//! - an app holding ~100 MiB (64 MiB baseline + 36 MiB leaked): heap, goroutine;
//! - 100 000 parked goroutines: heap, goroutine, goroutine-stacks (`debug=2`, ~58 MB).
//!
//!   cargo bench --bench app_effect               # 3 captures per scenario
//!   cargo bench --bench app_effect -- --quick    # 1

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Scenario {
    name: &'static str,
    limit: u64,
    args: &'static [&'static str],
    profiles: &'static str,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "~100 MiB heap, heap",
        limit: 256 * MIB,
        args: &["-baseline", "64", "-max", "36"],
        profiles: "heap",
    },
    Scenario {
        name: "~100 MiB heap, goroutine",
        limit: 256 * MIB,
        args: &["-baseline", "64", "-max", "36"],
        profiles: "goroutine",
    },
    Scenario {
        name: "100k goroutines, heap",
        limit: 1024 * MIB,
        args: &["-goroutines", "100000", "-max", "10"],
        profiles: "heap",
    },
    Scenario {
        name: "100k goroutines, goroutine",
        limit: 1024 * MIB,
        args: &["-goroutines", "100000", "-max", "10"],
        profiles: "goroutine",
    },
    Scenario {
        name: "100k goroutines, goroutine-stacks",
        limit: 1024 * MIB,
        args: &["-goroutines", "100000", "-max", "10"],
        profiles: "goroutine-stacks",
    },
];

fn scenario(s: &Scenario, reps: usize) -> serde_json::Value {
    let dir = temp_dir("bench-effect");
    let cg = MemCgroup::create(s.limit).expect("memory cgroup");
    let leaker = Leaker::spawn(Some(&cg), s.args);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut snap = Oomsnap::start(
        dir.path(),
        cg.path(),
        &leaker.pprof_base(),
        &[
            ("OOMSNAP_PROFILES", s.profiles),
            ("OOMSNAP_FETCH_TIMEOUT", "60s"),
            ("OOMSNAP_ADMIN_ADDR", &admin),
            ("OOMSNAP_BASELINE_EVERY", "0"),
            ("OOMSNAP_RATE_BURST", "100"),
        ],
    );
    assert!(
        snap.admin_addr(Duration::from_secs(10)).is_some(),
        "oomsnap's admin server did not come up; see {}",
        snap.log.display()
    );
    // Let the leaker settle (its -max GC) and oomsnap warm its connections.
    std::thread::sleep(Duration::from_secs(3));
    let mut caps = Vec::new();
    for rep in 0..reps {
        let before = cg.usage();
        let _ = fs::write(cg.path().join("memory.max_usage_in_bytes"), "0");
        let t = Instant::now();
        let (code, _) = http_request(
            "POST",
            &format!("http://{admin}/capture"),
            &[],
            &[],
            Duration::from_secs(120),
        )
        .unwrap_or((0, Vec::new()));
        let took = t.elapsed().as_secs_f64();
        let after = cg.usage();
        let peak: u64 = cg
            .read("memory.max_usage_in_bytes")
            .trim()
            .parse()
            .unwrap_or(0);
        std::thread::sleep(Duration::from_secs(2));
        let after2 = cg.usage();
        let c = json!({
            "rep": rep,
            "http_status": code,
            "capture_seconds": took,
            "usage_before_mib": mib(before),
            "usage_peak_mib": mib(peak),
            "usage_after_mib": mib(after),
            "usage_after_2s_mib": mib(after2),
            "peak_minus_before_mib": mib(peak) - mib(before),
            "after_minus_before_mib": mib(after) - mib(before),
        });
        eprintln!("app_effect {}: {c}", s.name);
        caps.push(c);
    }
    snap.stop(Duration::from_secs(25));
    let manual: Vec<serde_json::Value> = snap
        .manifests()
        .into_iter()
        .filter(|m| m["reason"] == "manual")
        .collect();
    let ok = manual.iter().all(|m| {
        m["profiles"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| p["error"].is_null() && p["skipped"].is_null())
        })
    });
    // What oomsnap estimated before asking, from the index page's counts.
    let estimate_mib = manual
        .iter()
        .filter_map(|m| m["profiles"][0]["estimated_app_cost_bytes"].as_u64())
        .map(mib)
        .reduce(f64::max);
    drop(leaker);
    drop(cg);
    json!({ "scenario": s.name, "limit_mib": mib(s.limit), "profiles": s.profiles, "all_profiles_ok": ok, "estimate_mib": estimate_mib, "captures": caps })
}

fn main() {
    if !can_run() {
        return;
    }
    let reps = runs(3, 1);
    let _ = harness::leaky_binary();
    let mut res = Vec::new();
    let mut md = String::from(
        "| app, profile | usage before (MiB) | peak during, first capture (MiB) | +peak first / max of all (MiB) | after − before (MiB) | capture (s) | oomsnap's estimate (MiB) | estimate ÷ max +peak |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in SCENARIOS {
        let r = scenario(s, reps);
        let caps = r["captures"].as_array().cloned().unwrap_or_default();
        let f = |k: &str| caps.first().and_then(|c| c[k].as_f64());
        let deltas: Vec<f64> = caps
            .iter()
            .filter_map(|c| c["peak_minus_before_mib"].as_f64())
            .collect();
        let took: Vec<f64> = caps
            .iter()
            .filter_map(|c| c["capture_seconds"].as_f64())
            .collect();
        let est = r["estimate_mib"].as_f64();
        let ratio = match (est, max(&deltas)) {
            (Some(e), Some(d)) if d > 0.05 => Some(e / d),
            _ => None,
        };
        md.push_str(&format!(
            "| {}{} | {} | {} | +{} / +{} | {} | {} | {} | {} |\n",
            s.name,
            if r["all_profiles_ok"] == true {
                ""
            } else {
                " (some profiles FAILED)"
            },
            fmt(f("usage_before_mib"), 1),
            fmt(f("usage_peak_mib"), 1),
            fmt(f("peak_minus_before_mib"), 1),
            fmt(max(&deltas), 1),
            fmt(f("after_minus_before_mib"), 1),
            fmt(median(&took), 2),
            fmt(est, 1),
            fmt(ratio, 2),
        ));
        res.push(r);
    }
    md.push_str(&format!(
        "\n{reps} capture(s) per scenario with one oomsnap and one app; peak = the cgroup's `memory.max_usage_in_bytes`, reset just before each capture. \
A profile needs this much headroom under the limit (the 95 % rung of a 256 MiB limit leaves 12.8 MiB); oomsnap skips one whose estimate does not fit, so the last column must stay at or above 1.\n"
    ));
    report("app_effect", json!({ "scenarios": res }), &md);
}
