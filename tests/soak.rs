//! Soak: the app oscillates around the thresholds for a while; oomsnap's
//! RSS and open fds must not grow, captures must match what the quota
//! allows, and every capture must be shipped.
//!
//! CI runs a short variant (45 s). The long one:
//! `OOMSNAP_SOAK_SECONDS=1800 cargo test --release --test soak -- --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn oscillating_around_the_thresholds_stays_bounded_and_ships_everything() {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(cg) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let secs: u64 = std::env::var("OOMSNAP_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let period = Duration::from_secs((secs / 6).max(5));
    let burst = 3u64;
    let leaker = Leaker::spawn(
        Some(&cg),
        &[
            "-mode",
            "oscillate",
            "-low",
            "120",
            "-high",
            "220",
            "-rate",
            "150",
        ],
    );
    let dir = temp_dir("soak");
    let env = OomsnapEnv::local(cg.path(), &leaker.pprof_base(), dir.path())
        .set("OOMSNAP_RATE_BURST", burst)
        .set("OOMSNAP_RATE_PERIOD", format!("{}s", period.as_secs()))
        .set("RUST_LOG", "warn");
    let snap = Oomsnap::run(&env);
    let pid = snap.pid();
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        samples.push((start.elapsed().as_secs_f64(), rss_kib(pid), fds(pid)));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        cg.oom_kill_count(),
        0,
        "the oscillation must stay below the limit"
    );

    // Growth: compare the second half with the first, after warm-up.
    let warm: Vec<_> = samples.iter().filter(|s| s.0 > 5.0).collect();
    let half = warm.len() / 2;
    let max_rss = |s: &[&(f64, u64, usize)]| s.iter().map(|x| x.1).max().unwrap();
    let max_fd = |s: &[&(f64, u64, usize)]| s.iter().map(|x| x.2).max().unwrap();
    let (r1, r2) = (max_rss(&warm[..half]), max_rss(&warm[half..]));
    let (f1, f2) = (max_fd(&warm[..half]), max_fd(&warm[half..]));

    let text = snap.get("/metrics").1;
    let taken: f64 = text
        .lines()
        .filter(|l| l.starts_with("oomsnap_captures_total{") && !l.contains("baseline"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let allowed = burst + secs / period.as_secs() + 1;
    let dropped: f64 = text
        .lines()
        .filter(|l| l.starts_with("oomsnap_captures_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            snap.status()["spool"]["waiting"]
                .as_array()
                .unwrap()
                .is_empty()
        }
    ));
    let manifests = files_under(&dir.path().join("store"))
        .iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count();
    let all_captures: f64 = text
        .lines()
        .filter(|l| l.starts_with("oomsnap_captures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "soak {secs}s: RSS max {:.1} MiB (first half) → {:.1} MiB (second half); fds {f1} → {f2}; \
         near-OOM captures {taken} (quota allows {allowed}), dropped {dropped}, shipped manifests {manifests}",
        r1 as f64 / 1024.0,
        r2 as f64 / 1024.0
    );
    assert!(r2 <= r1 + 2048, "RSS grew from {r1} KiB to {r2} KiB");
    assert!(f2 <= f1 + 2, "open fds grew from {f1} to {f2}");
    assert!(
        taken >= burst as f64,
        "the oscillation should have spent the burst"
    );
    assert!(
        taken <= allowed as f64,
        "{taken} captures exceed the quota's {allowed}"
    );
    assert!(
        dropped > 0.0,
        "crossings beyond the quota must be counted as dropped"
    );
    assert_eq!(
        manifests as f64, all_captures,
        "every capture must be shipped"
    );
}
