//! A capture streams: a goroutine dump of many MiB passes through oomsnap
//! without its peak RSS growing anywhere near the dump's size.

mod common;

use std::time::Duration;

use common::*;

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_large_goroutine_dump_streams_through_a_small_rss() {
    if !go_available() && !require_live("go") {
        return;
    }
    let leaker = Leaker::spawn(None, &["-goroutines", "40000", "-max", "4"]);
    let cg = FakeCgroup::new(1 << 30, 30.0);
    let dir = temp_dir("bound");
    let env = OomsnapEnv::local(cg.path(), &leaker.pprof_base(), dir.path())
        .set("OOMSNAP_PROFILES", "heap,goroutine,goroutine-stacks")
        .set("OOMSNAP_FETCH_TIMEOUT", "60s");
    let snap = Oomsnap::run(&env);
    // The baseline heap is taken at the first healthy sample; its peak
    // belongs to "before", so wait until it is in the store.
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            files_under(&dir.path().join("store")).iter().any(|p| {
                p.ends_with("manifest.json")
                    && p.parent()
                        .is_some_and(|f| f.to_string_lossy().ends_with("_baseline"))
            })
        }),
        "no baseline capture reached the store:\n{}",
        snap.logs()
    );
    let before = status_kib(snap.pid(), "VmHWM:");
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}\n{}", snap.logs());
    let key: serde_json::Value = serde_json::from_str(&body).unwrap();
    let folder = dir.path().join("store").join(key["key"].as_str().unwrap());
    // Spooled and shipped: both halves of the path are in the peak.
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || folder.join("manifest.json").exists()
    ));
    let peak = status_kib(snap.pid(), "VmHWM:");
    let dump = std::fs::metadata(folder.join("goroutine-stacks.txt"))
        .unwrap()
        .len();
    let text = std::fs::read_to_string(folder.join("goroutine-stacks.txt")).unwrap();
    assert!(text.matches("main.parkedWorker").count() >= 40000);
    eprintln!(
        "goroutine-stacks of {:.1} MiB: oomsnap peak RSS {:.1} MiB before the capture, {:.1} MiB after (+{:.1} MiB)",
        dump as f64 / 1048576.0,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        (peak - before) as f64 / 1024.0
    );
    assert!(
        dump > 16 << 20,
        "the dump is too small to prove anything: {dump} bytes"
    );
    assert!(
        (peak - before) * 1024 < dump / 4,
        "peak RSS grew by {} KiB for a {dump}-byte dump: the body is being held in memory",
        peak - before
    );
}
