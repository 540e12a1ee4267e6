//! The OOM race: are heap AND goroutine durable before the kernel kills the
//! app? The Go leaker runs in a real 256 MiB memory cgroup, watched by the
//! release `oomsnap run` at default settings and, in the same run, by the
//! seeds' approach: a loop that fetches `/debug/pprof/heap` every second.
//!
//! - On the host (cgroup v1): ~32 MiB/s, ~128 MiB/s and as fast as it can
//!   (`-rate 0`), once with the kernel's threshold wake-ups and once with
//!   polling only (`OOMSNAP_KERNEL_WAKEUPS=false`, which is what cgroup v2
//!   offers: no usage threshold).
//! - In the v2 VM (`OOMSNAP_BENCH_V2VM=1`, a static build): ~16 MiB/s,
//!   ~48 MiB/s and the VM's fastest, from a 64 MiB baseline; a PSI trigger
//!   probe records whether `memory.pressure` would have warned earlier.
//!
//! A poller thread reads the usage and the kill counter every 0.5 ms (1 ms
//! in the VM): it timestamps the 80 % crossing, the first time usage hits
//! the limit (when v2's inotify on `memory.events` first fires) and the kill
//! (the moment the `oom_kill` counter rises).
//!
//!   cargo bench --bench oom_race                # 10 runs per rate and mode
//!   cargo bench --bench oom_race -- --quick     # 3 runs
//!   OOMSNAP_BENCH_RUNS=20 OOMSNAP_BENCH_RATES=0 cargo bench --bench oom_race
//!   OOMSNAP_BENCH_WAKEUPS=poll cargo bench --bench oom_race   # or kernel
//!   OOMSNAP_BENCH_POLL_MAX=500ms …            # another idle interval
//!   OOMSNAP_BENCH_V2VM=1 cargo bench --bench oom_race --target x86_64-unknown-linux-musl

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: u64 = 256 * MIB;

/// Where one run happens, and how oomsnap wakes.
#[derive(Clone, Copy)]
struct Setup {
    v2: bool,
    kernel_wakeups: bool,
}

impl Setup {
    fn mode(self) -> &'static str {
        match (self.v2, self.kernel_wakeups) {
            (true, _) => "v2",
            (false, true) => "kernel",
            (false, false) => "poll",
        }
    }
}

/// The run's memory cgroup: a v1 child of ours, or a v2 child of the VM's
/// root.
enum Cgroup {
    V1(MemCgroup),
    V2(V2Cgroup),
}

impl Cgroup {
    fn path(&self) -> &Path {
        match self {
            Cgroup::V1(c) => c.path(),
            Cgroup::V2(c) => c.path(),
        }
    }
}

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

fn one_run(setup: Setup, rate: &str, run: usize) -> serde_json::Value {
    let dir = temp_dir("bench-race");
    let cg = if setup.v2 {
        Cgroup::V2(V2Cgroup::create(&format!("race-{rate}-{run}"), LIMIT))
    } else {
        Cgroup::V1(MemCgroup::create(LIMIT).expect("memory cgroup"))
    };
    let every = Duration::from_micros(if setup.v2 { 1000 } else { 500 });
    let poller = Poller::start(cg.path(), LIMIT, every);
    // Under TCG the VM leaks at most ~100 MiB/s: a 64 MiB baseline keeps a
    // slow run short without changing the last 20 %.
    let mut args = vec!["-rate", rate, "-delay", "2s"];
    if setup.v2 {
        args.extend(["-baseline", "64"]);
    }
    let mut leaker = Leaker::spawn_in(Some(cg.path()), &args);
    // The most sensitive trigger the kernel accepts: 1 ms of stall in the
    // shortest window (500 ms).
    let psi = match setup.v2 {
        true => match PsiProbe::start(cg.path(), 1000, 500_000) {
            Ok(p) => Some(p),
            Err(e) => panic!("cannot register a PSI trigger: {e}"),
        },
        false => None,
    };
    let wakeups = if setup.kernel_wakeups {
        "true"
    } else {
        "false"
    };
    let mut env = vec![("OOMSNAP_KERNEL_WAKEUPS", wakeups)];
    // OOMSNAP_BENCH_POLL_MAX=500ms: another idle interval than the default.
    let poll_max = std::env::var("OOMSNAP_BENCH_POLL_MAX").ok();
    if let Some(p) = &poll_max {
        env.push(("OOMSNAP_POLL_MAX", p));
    }
    let mut snap = Oomsnap::start(dir.path(), cg.path(), &leaker.pprof_base(), &env);
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
    // A PSI event after the kill still counts as "fired", just too late.
    let psi_first = psi.and_then(PsiProbe::finish);
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

    let before_kill = |t: Option<f64>| match (kill, t) {
        (Some(k), Some(t)) => Some(k - t),
        _ => None,
    };
    let imminent_percent = caps
        .iter()
        .find(|c| c["reason"] == "imminent")
        .and_then(|c| c["percent"].as_f64());
    let rec = json!({
        "mode": setup.mode(),
        "poll_max": poll_max,
        "rate": rate,
        "run": run,
        "killed": killed && kill.is_some(),
        "timeline": tl,
        "window_s": window,
        "limit_hit_before_kill_s": before_kill(tl.first_max_event),
        "psi_fired": psi_first.is_some(),
        "psi_before_kill_s": before_kill(psi_first),
        "imminent_percent": imminent_percent,
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
        "race {} rate={rate:>3} run={run:>2}: window {} ms, oomsnap {} lead {} ms, curl-loop {} | captures: {}",
        setup.mode(),
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
    if (!snap_ok || std::env::var_os("OOMSNAP_BENCH_KEEP_LOGS").is_some()) && !setup.v2 {
        let keep = out_dir().join(format!("oom_race-miss-{}-{rate}-{run}.log", setup.mode()));
        let _ = fs::copy(&snap.log, &keep);
    }
    drop(leaker);
    drop(cg);
    rec
}

fn col(runs: &[&serde_json::Value], tool: &str, field: &str) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r[tool][field].as_f64())
        .collect()
}

fn field_ms(runs: &[&serde_json::Value], field: &str) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r[field].as_f64())
        .map(|x| x * 1e3)
        .collect()
}

/// `OOMSNAP_BENCH_RATES=0,128` keeps only those leaker `-rate` values.
fn rates(all: Vec<(&'static str, &'static str)>) -> Vec<(&'static str, &'static str)> {
    let only: Option<Vec<String>> = std::env::var("OOMSNAP_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect());
    all.into_iter()
        .filter(|(r, _)| only.as_ref().is_none_or(|o| o.iter().any(|x| x == r)))
        .collect()
}

/// One table row: a tool over the runs it took part in.
fn row(
    md: &mut String,
    summary: &mut Vec<serde_json::Value>,
    label: &str,
    name: &str,
    tool: &str,
    runs: &[&serde_json::Value],
) {
    let windows: Vec<f64> = field_ms(runs, "window_s");
    let ok = runs.iter().filter(|r| r[tool]["success"] == true).count();
    let leads = col(runs, tool, "lead_s");
    let pct = if runs.is_empty() {
        0.0
    } else {
        100.0 * ok as f64 / runs.len() as f64
    };
    let imminent: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["imminent_percent"].as_f64())
        .collect();
    md.push_str(&format!(
        "| {label} | {name} | {} | {pct:.0} % ({ok}/{}) | {} | {} | {} | {} |\n",
        runs.len(),
        runs.len(),
        fmt(median(&leads).map(|x| x * 1e3), 1),
        fmt(min(&leads).map(|x| x * 1e3), 1),
        fmt(median(&windows), 1),
        if tool == "oomsnap" {
            fmt(median(&imminent), 1)
        } else {
            "".into()
        },
    ));
    summary.push(json!({
        "rate": label, "tool": name, "runs": runs.len(), "success": ok, "success_pct": pct,
        "median_lead_ms": median(&leads).map(|x| x * 1e3),
        "min_lead_ms": min(&leads).map(|x| x * 1e3),
        "median_window_ms": median(&windows),
        "min_window_ms": min(&windows),
        "median_imminent_percent": median(&imminent),
    }));
}

const HEAD: &str = "| leak rate | tool | runs | success | median lead (ms) | min lead (ms) | median window 80 %→kill (ms) | median `imminent` at (%) |\n|---|---|---|---|---|---|---|---|\n";

const LEGEND: &str = "\nsuccess: oomsnap = heap AND goroutine of a near-OOM (non-baseline) capture durable (manifest `durable_at`) before the kernel's `oom_kill` counter rose; \
curl loop = a heap profile requested after usage crossed 80 % and written before the kill. \
lead = kill − the first such capture/profile became durable. window = kill − usage first ≥ 80 % (poller).\n";

fn main() {
    if v2vm::inside() {
        return inside_vm();
    }
    if v2vm::requested() {
        return vm_race();
    }
    host_race();
}

/// Kernel wake-ups and polling only on the host's cgroup v1.
fn host_race() {
    if !can_run() {
        return;
    }
    let n = runs(10, 3);
    let modes: Vec<Setup> = match std::env::var("OOMSNAP_BENCH_WAKEUPS").as_deref() {
        Ok("kernel") => vec![Setup {
            v2: false,
            kernel_wakeups: true,
        }],
        Ok("poll") => vec![Setup {
            v2: false,
            kernel_wakeups: false,
        }],
        _ => vec![
            Setup {
                v2: false,
                kernel_wakeups: true,
            },
            Setup {
                v2: false,
                kernel_wakeups: false,
            },
        ],
    };
    let _ = harness::leaky_binary();
    eprintln!(
        "oom_race: {n} runs per rate and mode, oomsnap {}",
        oomsnap_bin().display()
    );
    let mut all = Vec::new();
    let mut md = String::from(HEAD);
    let mut summary = Vec::new();
    for (rate, label) in rates(vec![
        ("32", "~32 MiB/s"),
        ("128", "~128 MiB/s"),
        ("0", "fastest (-rate 0)"),
    ]) {
        let mut rs = Vec::new();
        for setup in &modes {
            for i in 0..n {
                rs.push(one_run(*setup, rate, i));
            }
        }
        let valid: Vec<&serde_json::Value> = rs.iter().filter(|r| r["killed"] == true).collect();
        for setup in &modes {
            let of: Vec<&serde_json::Value> = valid
                .iter()
                .copied()
                .filter(|r| r["mode"] == setup.mode())
                .collect();
            let name = if setup.kernel_wakeups {
                "oomsnap, kernel wake-ups"
            } else {
                "oomsnap, polling only"
            };
            row(&mut md, &mut summary, label, name, "oomsnap", &of);
        }
        row(
            &mut md,
            &mut summary,
            label,
            "curl loop, 1 s (same runs)",
            "curl_loop",
            &valid,
        );
        let not_killed = rs.len() - valid.len();
        if not_killed > 0 {
            md.push_str(&format!(
                "| {label} | (runs without a kill in 60 s, excluded) | {not_killed} | | | | | |\n"
            ));
        }
        all.extend(rs);
    }
    md.push_str(LEGEND);
    report(
        "oom_race",
        json!({ "limit_bytes": LIMIT, "runs_per_rate": n, "summary": summary, "runs": all }),
        &md,
    );
}

/// Inside the VM: every run of every rate, one `BENCH` line each.
fn inside_vm() {
    let n = runs(5, 2);
    let setup = Setup {
        v2: true,
        kernel_wakeups: true,
    };
    for (rate, _) in rates(vm_rates()) {
        for i in 0..n {
            v2vm::emit(&one_run(setup, rate, i));
        }
    }
}

fn vm_rates() -> Vec<(&'static str, &'static str)> {
    vec![
        ("16", "~16 MiB/s"),
        ("48", "~48 MiB/s"),
        ("0", "VM's fastest (-rate 0)"),
    ]
}

/// The v2 race, in the VM; the table is made here.
fn vm_race() {
    let n = runs(5, 2);
    let mut append = format!("OOMSNAP_BENCH_RUNS={n}");
    if let Ok(r) = std::env::var("OOMSNAP_BENCH_RATES") {
        append.push_str(&format!(" OOMSNAP_BENCH_RATES={r}"));
    }
    let Some(all) = v2vm::run(&append, 3000) else {
        return;
    };
    let mut md = String::from(HEAD);
    let mut summary = Vec::new();
    let mut kernel = String::from(
        "\n| leak rate | usage first hits `memory.max` (when inotify on `memory.events` first fires) → kill, median (ms) | PSI trigger `some 1ms` in 500 ms: event → kill, median (ms; negative: after the kill) | PSI events before the kill / runs |\n|---|---|---|---|\n",
    );
    for (rate, label) in rates(vm_rates()) {
        let of: Vec<&serde_json::Value> = all
            .iter()
            .filter(|r| r["rate"] == rate && r["killed"] == true)
            .collect();
        row(
            &mut md,
            &mut summary,
            label,
            "oomsnap (v2, default settings)",
            "oomsnap",
            &of,
        );
        row(
            &mut md,
            &mut summary,
            label,
            "curl loop, 1 s (same runs)",
            "curl_loop",
            &of,
        );
        let psi = field_ms(&of, "psi_before_kill_s");
        kernel.push_str(&format!(
            "| {label} | {} | {} | {}/{} |\n",
            fmt(median(&field_ms(&of, "limit_hit_before_kill_s")), 1),
            fmt(median(&psi), 1),
            psi.iter().filter(|x| **x > 0.0).count(),
            of.len()
        ));
    }
    md.push_str(LEGEND);
    md.push_str(&kernel);
    report(
        "oom_race_v2",
        json!({ "limit_bytes": LIMIT, "runs_per_rate": n, "summary": summary, "runs": all }),
        &md,
    );
}
