//! The OOM race: are heap AND goroutine durable before the kernel kills the
//! app? The Go leaker runs in a real 256 MiB v1 memory cgroup at ~32 MiB/s,
//! ~128 MiB/s and as fast as it can (`-rate 0`), watched by the release
//! `oomsnap run` at default settings and, in the same run, by the seeds'
//! approach: a loop that fetches `/debug/pprof/heap` every second.
//!
//! A poller thread reads `memory.usage_in_bytes` and `memory.oom_control`
//! every 0.5 ms: it timestamps the 80 % crossing and the kill (the moment the
//! `oom_kill` counter rises).
//!
//!   cargo bench --bench oom_race                # 10 runs per rate
//!   cargo bench --bench oom_race -- --quick     # 3 runs per rate
//!   OOMSNAP_BENCH_RUNS=20 cargo bench --bench oom_race

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: u64 = 256 * MIB;

/// One heap fetch of the curl loop.
#[derive(Debug, Clone, serde::Serialize)]
struct LoopFetch {
    started: f64,
    finished: f64,
    ok: bool,
    bytes: usize,
}

/// `while true; do curl …/heap > heap.$(date +%s).pb.gz; sleep 1; done`,
/// in-process: blocking GETs, each body written to a timestamped file.
fn curl_loop(
    base: String,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<LoopFetch>> {
    std::thread::Builder::new()
        .name("bench-curl-loop".into())
        .spawn(move || {
            fs::create_dir_all(&dir).unwrap();
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = now();
                let r = http_request(
                    "GET",
                    &format!("{base}/heap"),
                    &[],
                    &[],
                    Duration::from_secs(10),
                );
                let (ok, bytes) = match r {
                    Ok((200, body)) if body.starts_with(&[0x1f, 0x8b]) => {
                        let f = dir.join(format!("heap.{started:.6}.pb.gz"));
                        (fs::write(&f, &body).is_ok(), body.len())
                    }
                    _ => (false, 0),
                };
                out.push(LoopFetch {
                    started,
                    finished: now(),
                    ok,
                    bytes,
                });
                // sleep 1, in small steps so the bench can stop it
                for _ in 0..20 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            out
        })
        .expect("spawn curl loop")
}

/// The durable time of a profile of a manifest, if it succeeded.
fn profile_durable(m: &serde_json::Value, name: &str) -> Option<f64> {
    m["profiles"].as_array()?.iter().find_map(|p| {
        (p["name"] == name && p["error"].is_null() && !p["file"].is_null())
            .then(|| p["durable_at"].as_str().and_then(parse_ts))
            .flatten()
    })
}

fn one_run(rate: &str, run: usize) -> serde_json::Value {
    let dir = temp_dir("bench-race");
    let cg = MemCgroup::create(LIMIT).expect("memory cgroup");
    let poller = Poller::start(cg.path(), LIMIT, Duration::from_micros(500));
    let mut leaker = Leaker::spawn(Some(&cg), &["-rate", rate, "-delay", "2s"]);
    let mut snap = Oomsnap::start(dir.path(), cg.path(), &leaker.pprof_base(), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let lp = curl_loop(leaker.pprof_base(), dir.path().join("curl"), stop.clone());

    // Wait for the kill (the fastest rate can stall for seconds at the limit).
    let killed = wait_until(Duration::from_secs(60), Duration::from_millis(5), || {
        poller.is_done()
    });
    let tl = poller.finish();
    let _ = leaker.wait_exit(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    // Let oomsnap finish the capture in flight and ship, then stop it.
    std::thread::sleep(Duration::from_millis(1500));
    snap.stop(Duration::from_secs(25));
    let fetches = lp.join().unwrap_or_default();
    let manifests = snap.manifests();

    let kill = tl.kill;
    let window = match (kill, tl.cross80) {
        (Some(k), Some(c)) => Some(k - c),
        _ => None,
    };

    // oomsnap: the first near-OOM capture whose heap and goroutine were both
    // durable before the kill.
    let mut caps = Vec::new();
    let mut first_complete: Option<f64> = None;
    for m in &manifests {
        let reason = m["reason"].as_str().unwrap_or_default().to_string();
        let heap = profile_durable(m, "heap");
        let gor = profile_durable(m, "goroutine");
        let durable = match (heap, gor) {
            (Some(h), Some(g)) => Some(h.max(g)),
            _ => None,
        };
        let before_kill = match (durable, kill) {
            (Some(d), Some(k)) => d < k,
            _ => false,
        };
        if reason != "baseline" && before_kill && first_complete.is_none() {
            first_complete = durable;
        }
        caps.push(json!({
            "id": m["capture_id"],
            "reason": reason,
            "wake": m["trigger"]["wake"],
            "percent": m["trigger"]["percent"],
            "decided_at": m["decided_at"].as_str().and_then(parse_ts),
            "first_request_after_decision_ms": m["first_request_after_decision_ms"],
            "heap_durable": heap,
            "goroutine_durable": gor,
            "durable_before_kill": before_kill,
            "profile_timings_ms": m["profiles"].as_array().map(|ps| ps.iter().map(|p| json!({
                "name": p["name"],
                "requested": p["requested_after_decision_ms"],
                "first_byte": p["first_byte_after_decision_ms"],
                "durable": p["durable_after_decision_ms"],
            })).collect::<Vec<_>>()),
            "errors": m["profiles"].as_array().map(|ps| ps.iter().filter_map(|p| p["error"].as_str().map(|e| format!("{}: {e}", p["name"].as_str().unwrap_or("")))).collect::<Vec<_>>()),
        }));
    }
    let snap_ok = first_complete.is_some();
    let snap_lead = match (kill, first_complete) {
        (Some(k), Some(d)) => Some(k - d),
        _ => None,
    };

    // The curl loop: a heap profile requested after the 80 % crossing and
    // on disk before the kill.
    let loop_hit = match (tl.cross80, kill) {
        (Some(c), Some(k)) => fetches
            .iter()
            .filter(|f| f.ok && f.started >= c && f.finished < k)
            .map(|f| f.finished)
            .reduce(f64::min),
        _ => None,
    };
    let loop_lead = match (kill, loop_hit) {
        (Some(k), Some(d)) => Some(k - d),
        _ => None,
    };

    let rec = json!({
        "rate": rate,
        "run": run,
        "killed": killed && kill.is_some(),
        "timeline": tl,
        "window_s": window,
        "cross80_to_limit_s": match (tl.at_limit, tl.cross80) { (Some(a), Some(c)) => Some(a - c), _ => None },
        "oomsnap": { "success": snap_ok, "lead_s": snap_lead, "captures": caps },
        "curl_loop": {
            "success": loop_hit.is_some(),
            "lead_s": loop_lead,
            "fetches": fetches.len(),
            "ok_fetches": fetches.iter().filter(|f| f.ok).count(),
        },
    });
    eprintln!(
        "race rate={rate:>3} run={run:>2}: window {} ms, oomsnap {} lead {} ms, curl-loop {} | captures: {}",
        fmt(window.map(|w| w * 1e3), 1),
        if snap_ok { "ok  " } else { "MISS" },
        fmt(snap_lead.map(|w| w * 1e3), 1),
        if loop_hit.is_some() { "ok" } else { "miss" },
        caps.iter()
            .map(|c| format!(
                "{}@{}%({})",
                c["reason"].as_str().unwrap_or(""),
                c["percent"],
                if c["durable_before_kill"].as_bool() == Some(true) { "before" } else { "late/failed" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !snap_ok {
        let keep = out_dir().join(format!("oom_race-miss-{rate}-{run}.log"));
        let _ = fs::copy(&snap.log, &keep);
    }
    drop(leaker);
    drop(cg);
    rec
}

fn col(runs: &[serde_json::Value], tool: &str, field: &str) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r[tool][field].as_f64())
        .collect()
}

fn main() {
    if !can_run() {
        return;
    }
    let n = runs(10, 3);
    let all_rates = [
        ("32", "~32 MiB/s"),
        ("128", "~128 MiB/s"),
        ("0", "fastest (-rate 0)"),
    ];
    // OOMSNAP_BENCH_RATES=0 (or 32,128) runs only those leaker -rate values.
    let only: Option<Vec<String>> = std::env::var("OOMSNAP_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect());
    let rates: Vec<_> = all_rates
        .into_iter()
        .filter(|(r, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == r)))
        .collect();
    let _ = harness::leaky_binary();
    eprintln!(
        "oom_race: {n} runs per rate, oomsnap {}",
        oomsnap_bin().display()
    );
    let mut all = Vec::new();
    let mut md = String::from(
        "| leak rate | tool | runs | success | median lead (ms) | min lead (ms) | median window 80 %→kill (ms) |\n|---|---|---|---|---|---|---|\n",
    );
    let mut summary = Vec::new();
    for (rate, label) in rates {
        let mut rs = Vec::new();
        for i in 0..n {
            rs.push(one_run(rate, i));
        }
        let valid: Vec<_> = rs.iter().filter(|r| r["killed"] == true).cloned().collect();
        let windows: Vec<f64> = valid
            .iter()
            .filter_map(|r| r["window_s"].as_f64())
            .collect();
        let measured_rate: Vec<f64> = valid
            .iter()
            .filter_map(|r| r["cross80_to_limit_s"].as_f64())
            .map(|s| 0.2 * 256.0 / s)
            .collect();
        for (tool, name) in [("oomsnap", "oomsnap"), ("curl_loop", "curl loop, 1 s")] {
            let ok = valid.iter().filter(|r| r[tool]["success"] == true).count();
            let leads = col(&valid, tool, "lead_s");
            let pct = if valid.is_empty() {
                0.0
            } else {
                100.0 * ok as f64 / valid.len() as f64
            };
            md.push_str(&format!(
                "| {label} | {name} | {} | {pct:.0} % ({ok}/{}) | {} | {} | {} |\n",
                valid.len(),
                valid.len(),
                fmt(median(&leads).map(|x| x * 1e3), 1),
                fmt(min(&leads).map(|x| x * 1e3), 1),
                fmt(median(&windows).map(|x| x * 1e3), 1),
            ));
            summary.push(json!({
                "rate": rate, "tool": tool, "runs": valid.len(), "success": ok,
                "success_pct": pct,
                "median_lead_ms": median(&leads).map(|x| x * 1e3),
                "min_lead_ms": min(&leads).map(|x| x * 1e3),
                "median_window_ms": median(&windows).map(|x| x * 1e3),
                "min_window_ms": min(&windows).map(|x| x * 1e3),
                "max_window_ms": max(&windows).map(|x| x * 1e3),
                "median_rate_80_to_limit_mib_s": median(&measured_rate),
            }));
        }
        let not_killed = rs.len() - valid.len();
        if not_killed > 0 {
            md.push_str(&format!(
                "| {label} | (runs without a kill in 60 s, excluded) | {not_killed} | | | | |\n"
            ));
        }
        all.extend(rs);
    }
    md.push_str(
        "\nsuccess: oomsnap = heap AND goroutine of a near-OOM (non-baseline) capture durable (manifest `durable_at`) before the kernel's `oom_kill` counter rose; \
curl loop = a heap profile requested after usage crossed 80 % and written before the kill. \
lead = kill − the first such capture/profile became durable. window = kill − usage first ≥ 80 % (0.5 ms poller).\n",
    );
    report(
        "oom_race",
        json!({ "limit_bytes": LIMIT, "runs_per_rate": n, "summary": summary, "runs": all }),
        &md,
    );
}
