//! oomsnap's own footprint:
//! - idle: RSS and CPU at default settings over 60 s while the watched app
//!   (the leaker holding 20 MiB in a 256 MiB cgroup) stays below the first
//!   rung, with the kernel's threshold wake-ups and with polling only
//!   (`OOMSNAP_KERNEL_WAKEUPS=false`, the cgroup v2 situation); and near a
//!   rung (the leaker holding 76 % of the limit, polled at the fastest);
//! - what one read costs: the usage sentinel, a full sample, the
//!   `memory.stat` breakdown, and a sentinel tick with its wake-up, on the
//!   host's v1 and (with `OOMSNAP_BENCH_V2VM=1` and a static build) on v2 in
//!   the VM;
//! - peak RSS (VmHWM) during one capture of heap + goroutine +
//!   goroutine-stacks from a leaker running 100 000 goroutines (its
//!   `goroutine?debug=2` dump is ~58 MB);
//! - the size of the stripped release binary.
//!
//!   cargo bench --bench footprint                # 60 s per idle case, 2 big captures
//!   cargo bench --bench footprint -- --quick     # 15 s idle, 1 big capture
//!   OOMSNAP_BENCH_IDLE_SECS=120 cargo bench --bench footprint
//!   OOMSNAP_BENCH_V2VM=1 cargo bench --bench footprint --target x86_64-unknown-linux-musl

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// oomsnap watching the leaker holding `held_mib` of a 256 MiB cgroup.
fn idle(secs: u64, held_mib: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let dir = temp_dir("bench-idle");
    let cg = MemCgroup::create(256 * MIB).expect("memory cgroup");
    let leaker = Leaker::spawn(Some(&cg), &["-max", held_mib, "-rate", "256"]);
    std::thread::sleep(Duration::from_secs(2));
    let snap = Oomsnap::start(dir.path(), cg.path(), &leaker.pprof_base(), extra);
    let pid = snap.pid();
    // Warm-up: start, locate, the baseline capture at start, its upload.
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let sch0 = sched_seconds(pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(r) = status_kb(pid, "VmRSS") {
            rss.push(mib(r));
        }
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(pid).unwrap_or(0.0);
    let sch1 = sched_seconds(pid).unwrap_or(0.0);
    let hwm = status_kb(pid, "VmHWM").map(mib);
    let usage_pct = 100.0 * cg.usage() as f64 / cg.limit() as f64;
    let r = json!({
        "held_mib": held_mib,
        "env": extra.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "seconds": el,
        "cgroup_usage_percent": usage_pct,
        "cpu_percent_stat": 100.0 * (cpu1 - cpu0) / el,
        "cpu_percent_schedstat": 100.0 * (sch1 - sch0) / el,
        "cpu_seconds_stat": cpu1 - cpu0,
        "rss_mib_median": median(&rss),
        "rss_mib_max": max(&rss),
        "vmhwm_mib": hwm,
    });
    eprintln!("footprint idle: {r}");
    drop(snap);
    drop(leaker);
    drop(cg);
    r
}

const COSTS_HEAD: &str = "| CPU µs per call | usage sentinel (1 `pread`) | full sample (usage, limit, `memory.stat`, OOM counter) | `memory.stat` breakdown (`StatBreakdown::read`) | idle tick: 20 ms sleep + wake-up + sentinel |\n|---|---|---|---|---|\n";

fn big_capture(rep: usize) -> serde_json::Value {
    let dir = temp_dir("bench-big");
    let cg = MemCgroup::create(1024 * MIB).expect("memory cgroup");
    let leaker = Leaker::spawn(Some(&cg), &["-goroutines", "100000", "-max", "10"]);
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let mut snap = Oomsnap::start(
        dir.path(),
        cg.path(),
        &leaker.pprof_base(),
        &[
            ("OOMSNAP_PROFILES", "heap,goroutine,goroutine-stacks"),
            ("OOMSNAP_FETCH_TIMEOUT", "60s"),
            ("OOMSNAP_ADMIN_ADDR", &admin),
            // One capture only: the manual one (no baseline at start).
            ("OOMSNAP_BASELINE_EVERY", "0"),
        ],
    );
    let pid = snap.pid();
    let up = snap.admin_addr(Duration::from_secs(10)).is_some();
    assert!(
        up,
        "oomsnap's admin server did not come up; see {}",
        snap.log.display()
    );
    std::thread::sleep(Duration::from_secs(2));
    let hwm_before = status_kb(pid, "VmHWM").unwrap_or(0);
    let rss_before = status_kb(pid, "VmRSS").unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let Some(r) = status_kb(pid, "VmRSS") {
                p.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let t = Instant::now();
    let resp = http_request(
        "POST",
        &format!("http://{admin}/capture"),
        &[],
        &[],
        Duration::from_secs(120),
    );
    let took = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm_after = status_kb(pid, "VmHWM").unwrap_or(0);
    let rss_after = status_kb(pid, "VmRSS").unwrap_or(0);
    let (code, body) = resp.unwrap_or((0, Vec::new()));
    std::thread::sleep(Duration::from_millis(500));
    snap.stop(Duration::from_secs(25));
    let m = snap.manifests();
    let profiles: Vec<_> = m
        .iter()
        .filter(|m| m["reason"] == "manual")
        .flat_map(|m| m["profiles"].as_array().cloned().unwrap_or_default())
        .map(|p| json!({"name": p["name"], "bytes": p["bytes"], "fetch_ms": p["fetch_ms"], "error": p["error"]}))
        .collect();
    let r = json!({
        "rep": rep,
        "http_status": code,
        "response": String::from_utf8_lossy(&body).trim(),
        "capture_seconds": took,
        "vmhwm_before_mib": mib(hwm_before),
        "vmhwm_after_mib": mib(hwm_after),
        "rss_before_mib": mib(rss_before),
        "rss_peak_sampled_mib": mib(peak.load(Ordering::Relaxed)),
        "rss_after_mib": mib(rss_after),
        "profiles": profiles,
    });
    eprintln!("footprint big capture: {r}");
    drop(leaker);
    drop(cg);
    r
}

/// Thread CPU time, in seconds (user and system: a syscall's kernel work
/// counts).
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// CPU microseconds per call of `f`, over `n` calls back to back.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    let c0 = thread_cpu();
    for _ in 0..n {
        f();
    }
    (thread_cpu() - c0) * 1e6 / n as f64
}

/// What each read of the watcher costs on the cgroup at `dir`, in CPU µs.
fn read_costs(dir: &std::path::Path) -> serde_json::Value {
    use oomsnap::memory::cgroup::CgroupReader;
    use oomsnap::memory::StatBreakdown;
    let mut r = CgroupReader::open(dir, None).expect("open the cgroup");
    let n = 20_000;
    let sentinel = per_call(n, || {
        r.read_usage().expect("usage");
    });
    let full = per_call(n, || {
        r.read().expect("sample");
    });
    let breakdown = per_call(n / 10, || {
        StatBreakdown::read(dir).expect("breakdown");
    });
    // A timer tick as the watcher takes it when nothing moved: sleep, wake,
    // read the sentinel. The wake-up is most of it.
    let ticks = 150;
    let tick = per_call(ticks, || {
        std::thread::sleep(Duration::from_millis(20));
        r.read_usage().expect("usage");
    });
    json!({
        "version": format!("{:?}", r.version()),
        "sentinel_us": sentinel,
        "full_sample_us": full,
        "stat_breakdown_us": breakdown,
        "sentinel_tick_us": tick,
    })
}

fn costs_row(md: &mut String, where_: &str, c: &serde_json::Value) {
    md.push_str(&format!(
        "| {where_} | {} | {} | {} | {} |\n",
        fmt(c["sentinel_us"].as_f64(), 1),
        fmt(c["full_sample_us"].as_f64(), 1),
        fmt(c["stat_breakdown_us"].as_f64(), 1),
        fmt(c["sentinel_tick_us"].as_f64(), 1),
    ));
}

fn main() {
    if v2vm::inside() {
        // In the VM: the leaker holding 60 MiB in a v2 cgroup.
        let cg = V2Cgroup::create("cost", 256 * MIB);
        let _leaker = Leaker::spawn_in(Some(cg.path()), &["-max", "60", "-rate", "256"]);
        std::thread::sleep(Duration::from_secs(2));
        v2vm::emit(&read_costs(cg.path()));
        return;
    }
    if v2vm::requested() {
        let Some(r) = v2vm::run("", 600) else { return };
        let mut md = String::from(COSTS_HEAD);
        for c in &r {
            costs_row(
                &mut md,
                "cgroup v2, 6.1 kernel in the VM (TCG: compare within the row)",
                c,
            );
        }
        report("footprint_v2", json!({ "read_costs": r }), &md);
        return;
    }
    if !can_run() {
        return;
    }
    let secs = std::env::var("OOMSNAP_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 15 } else { 60 });
    let reps = runs(2, 1);
    let _ = harness::leaky_binary();
    let bin = oomsnap_bin();
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let file = Command::new("file")
        .arg(&bin)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let stripped = if file.is_empty() {
        None
    } else {
        Some(!file.contains("not stripped"))
    };

    let costs = {
        let cg = MemCgroup::create(256 * MIB).expect("memory cgroup");
        let _leaker = Leaker::spawn(Some(&cg), &["-max", "20", "-rate", "256"]);
        std::thread::sleep(Duration::from_secs(1));
        read_costs(cg.path())
    };
    // OOMSNAP_BENCH_POLL_MAX=50ms: the polling cases with another idle
    // interval than the default.
    let pm = std::env::var("OOMSNAP_BENCH_POLL_MAX").ok();
    let mut poll_only = vec![("OOMSNAP_KERNEL_WAKEUPS", "false")];
    if let Some(p) = &pm {
        poll_only.push(("OOMSNAP_POLL_MAX", p));
    }
    let id = idle(secs, "20", &[]);
    let id_poll = idle(secs, "20", &poll_only);
    let near = idle(secs, "186", &poll_only);
    let big: Vec<_> = (0..reps).map(big_capture).collect();
    let hwm: Vec<f64> = big
        .iter()
        .filter_map(|b| b["vmhwm_after_mib"].as_f64())
        .collect();
    let took: Vec<f64> = big
        .iter()
        .filter_map(|b| b["capture_seconds"].as_f64())
        .collect();
    let stacks_mb: Vec<f64> = big
        .iter()
        .flat_map(|b| b["profiles"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["name"] == "goroutine-stacks")
        .filter_map(|p| p["bytes"].as_f64())
        .map(|b| b / 1e6)
        .collect();
    let all_ok = big.iter().all(|b| {
        b["http_status"] == 200
            && b["profiles"]
                .as_array()
                .is_some_and(|ps| ps.len() == 3 && ps.iter().all(|p| p["error"].is_null()))
    });

    let mut md = String::from("| measure | value |\n|---|---|\n");
    for (what, r) in [
        ("idle, kernel wake-ups (default on v1)", &id),
        (
            "idle, polling only (`OOMSNAP_KERNEL_WAKEUPS=false`, as on v2)",
            &id_poll,
        ),
        ("near a rung (76 %), polling only", &near),
    ] {
        md.push_str(&format!(
            "| CPU {what}, {:.0} s at {:.1} % of the limit: `/proc/<pid>/stat` / all threads' `schedstat` | {} % / {} % of one core |\n",
            r["seconds"].as_f64().unwrap_or(0.0),
            r["cgroup_usage_percent"].as_f64().unwrap_or(0.0),
            fmt(r["cpu_percent_stat"].as_f64(), 3),
            fmt(r["cpu_percent_schedstat"].as_f64(), 3)
        ));
    }
    md.push_str(&format!(
        "| idle RSS (VmRSS median / max) | {} / {} MiB |\n",
        fmt(id["rss_mib_median"].as_f64(), 2),
        fmt(id["rss_mib_max"].as_f64(), 2)
    ));
    md.push_str(&format!(
        "| VmHWM after idle (includes the baseline capture at start) | {} MiB |\n",
        fmt(id["vmhwm_mib"].as_f64(), 2)
    ));
    md.push_str(&format!(
        "| peak RSS (VmHWM) over a heap + goroutine + goroutine-stacks capture of 100 000 goroutines, max of {} | {} MiB |\n",
        big.len(),
        fmt(max(&hwm), 2)
    ));
    md.push_str(&format!(
        "| … that capture's duration / goroutine-stacks size / all 3 profiles ok | {} s / {} MB / {} |\n",
        fmt(median(&took), 2),
        fmt(median(&stacks_mb), 1),
        if all_ok { "yes" } else { "NO" }
    ));
    md.push_str(&format!(
        "| release binary (`target/release/oomsnap`{}) | {:.2} MB ({} bytes) |\n",
        match stripped {
            Some(true) => ", stripped",
            Some(false) => ", NOT stripped",
            None => "",
        },
        size as f64 / 1e6,
        size
    ));
    md.push('\n');
    md.push_str(COSTS_HEAD);
    costs_row(&mut md, "cgroup v1, host", &costs);
    report(
        "footprint",
        json!({
            "read_costs": costs,
            "idle_polling_only": id_poll,
            "near_rung_polling_only": near,
            "idle": id,
            "big_capture": big,
            "binary": { "path": bin, "bytes": size, "file": file, "stripped": stripped },
        }),
        &md,
    );
}
