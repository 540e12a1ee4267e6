//! The fault catalogue beyond the store: a target that is not up yet or
//! dies in a loop, a spool that is full or read-only, a cgroup that
//! vanishes, changes its limit or moves, and a sidecar SIGKILLed at random
//! points of a capture. Each asserts that nothing spooled is lost and that
//! the fault is said clearly. `docs/reliability.md` lists them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use oomsnap::manifest::Manifest;

#[test]
fn a_target_not_listening_yet_is_reported_then_captured_once_it_is() {
    if !go_available() && !require_live("go") {
        return;
    }
    let port = free_port();
    let target = format!("http://127.0.0.1:{port}/debug/pprof");
    let cg = FakeCgroup::new(1 << 30, 50.0);
    let dir = temp_dir("notyet");
    let snap = Oomsnap::run(&OomsnapEnv::local(cg.path(), &target, dir.path()));
    let (code, body) = snap.capture();
    // Nothing answered: the manifest of failures is still kept, and the
    // reply says why.
    assert_ne!(code, 200, "{body}");
    assert!(
        body.contains("connect") || body.contains("request failed"),
        "{body}"
    );
    assert_eq!(snap.get("/healthz").0, 200, "the watcher must keep running");

    let addr = format!("127.0.0.1:{port}");
    let _leaker = Leaker::spawn(None, &["-addr", &addr, "-max", "4"]);
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}\n{}", snap.logs());
}

#[test]
fn a_target_in_a_crash_loop_is_followed_and_the_quota_holds() {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(cg) = MemCgroup::create(128 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let dir = temp_dir("crashloop");
    let target = format!("http://{addr}/debug/pprof");
    // No OOMSNAP_CGROUP: the app is found by its port, so a restart is a
    // new PID, seen and counted.
    let env = OomsnapEnv::new()
        .target(&target)
        .file_store(&dir.path().join("store"))
        .spool(&dir.path().join("spool"))
        .set("OOMSNAP_SPOOL_MAX_BYTES", "256KiB")
        .set("OOMSNAP_RATE_BURST", 6)
        .set("OOMSNAP_RATE_PERIOD", "1h")
        .set("OOMSNAP_BASELINE_EVERY", 0);
    let mut leaker = Leaker::spawn(Some(&cg), &["-addr", &addr, "-rate", "200", "-delay", "1s"]);
    let snap = Oomsnap::run(&env);
    let mut kills = 0;
    for round in 0..4 {
        assert!(
            wait_until(Duration::from_secs(30), Duration::from_millis(20), || cg
                .oom_kill_count()
                > kills),
            "round {round}: no kill\n{}",
            snap.logs()
        );
        kills = cg.oom_kill_count();
        leaker.wait_exit(Duration::from_secs(10));
        // The kubelet restarts the container: same port, new PID.
        leaker = Leaker::spawn(
            Some(&cg),
            &["-addr", &addr, "-rate", "200", "-delay", "1500ms"],
        );
    }
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            snap.status()["captures"].as_array().unwrap().len() >= 6
                && snap.status()["spool"]["waiting"]
                    .as_array()
                    .unwrap()
                    .is_empty()
        }
    ));
    let s = snap.status();
    // What ships: provisional captures dropped (the quota was spent when a
    // rung confirmed them) or discarded are deleted unshipped.
    let caps: Vec<&serde_json::Value> = s["captures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            !c["provisional"]
                .as_str()
                .is_some_and(|p| p == "discarded" || p.starts_with("dropped"))
        })
        .collect();
    assert_eq!(
        caps.len(),
        6,
        "the quota of 6 must hold over {kills} kills: {s:#}"
    );
    let dropped: u64 = s["quota"]["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        dropped >= 1,
        "later decisions must be counted as dropped: {s:#}"
    );
    assert!(snap
        .get("/metrics")
        .1
        .contains("oomsnap_target_restarts_total"));
    let restarts = metric(&snap.get("/metrics").1, "oomsnap_target_restarts_total").unwrap();
    assert!(
        restarts >= 3.0,
        "restarts seen: {restarts}\n{}",
        snap.logs()
    );
    let store = dir.path().join("store");
    let manifests: Vec<Manifest> = files_under(&store)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert_eq!(manifests.len(), 6);
    for m in &manifests {
        assert!(
            m.target_pid.is_some(),
            "each capture names the PID it profiled"
        );
    }
    let pids: std::collections::BTreeSet<_> = manifests
        .iter()
        .map(|m| (m.target_pid, m.target_restarts))
        .collect();
    assert!(
        pids.len() >= 2,
        "the captures are tagged with the life of the app they come from: {pids:?}"
    );
    let spool_bytes: u64 = files_under(&dir.path().join("spool"))
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(spool_bytes <= 256 << 10);
}

/// A tmpfs the test mounts and unmounts.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
    fn remount_ro(&self) {
        assert!(std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_or_read_only_spool_is_said_loudly_and_watching_goes_on() {
    if !go_available() && !require_live("go") {
        return;
    }
    let dir = temp_dir("diskfull");
    let Some(mount) = Mount::tmpfs(&dir.path().join("spool"), "48k") else {
        require_live("mount (root) for a small tmpfs");
        return;
    };
    let _leaker = Leaker::spawn(None, &["-max", "4", "-goroutines", "2000"]);
    let cg = FakeCgroup::new(1 << 30, 50.0);
    // The store is down, so captures pile up in the little spool.
    let env = OomsnapEnv::local(cg.path(), &_leaker.pprof_base(), dir.path())
        .store("s3://nowhere/x")
        .set("AWS_ENDPOINT", "http://127.0.0.1:1")
        .set("AWS_ALLOW_HTTP", true)
        .set("AWS_ACCESS_KEY_ID", "k")
        .set("AWS_SECRET_ACCESS_KEY", "s")
        .set("AWS_REGION", "us-east-1")
        .set("OOMSNAP_RATE_BURST", 50)
        .set("OOMSNAP_MANUAL_RATE_BURST", 50)
        .set("OOMSNAP_PROFILES", "heap,goroutine,goroutine-stacks");
    let snap = Oomsnap::run(&env);
    let mut failures = 0;
    for _ in 0..12 {
        let (code, body) = snap.capture();
        if code != 200 {
            failures += 1;
            assert!(
                body.contains("No space left") || body.contains("failed"),
                "{body}"
            );
        }
    }
    assert!(failures > 0, "a 48 KiB spool cannot hold 12 captures");
    assert!(
        snap.logs().contains("No space left on device"),
        "{}",
        snap.logs()
    );
    assert_eq!(snap.get("/healthz").0, 200);

    mount.remount_ro();
    let (code, body) = snap.capture();
    assert_ne!(code, 200);
    assert!(body.contains("Read-only file system"), "{body}");
    let logs = snap.logs();
    assert!(logs.contains("Read-only file system"), "{logs}");
    // Still watching: a new sample within 5 s (the slowest poll is 500 ms
    // by default; 5 s leaves room for a loaded machine).
    let before = snap.status()["samples"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            snap.status()["samples"].as_u64().unwrap() > before
        }),
        "no new sample in 5 s after the spool went read-only:\n{}",
        snap.logs()
    );
    assert_eq!(snap.get("/healthz").0, 200);
}

#[test]
fn a_vanishing_cgroup_a_new_limit_and_a_moved_cgroup_are_followed() {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(cg1) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let leaker = Leaker::spawn(Some(&cg1), &["-addr", &addr, "-max", "8"]);
    let dir = temp_dir("cgmove");
    let env = OomsnapEnv::new()
        .target(&format!("http://{addr}/debug/pprof"))
        .file_store(&dir.path().join("store"))
        .spool(&dir.path().join("spool"));
    let snap = Oomsnap::run(&env);
    let dir_of = |s: &serde_json::Value| {
        s["source"]["kind"]["dir"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || { dir_of(&snap.status()).ends_with(cg1.path().file_name().unwrap().to_str().unwrap()) }
    ));

    // The limit changes at run time.
    std::fs::write(
        cg1.path().join("memory.limit_in_bytes"),
        (200u64 << 20).to_string(),
    )
    .unwrap();
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || { snap.status()["last_sample"]["limit_bytes"] == 200u64 << 20 }
    ));
    assert!(snap.logs().contains("the memory limit changed"));

    // The app restarts in another cgroup; the old one is removed.
    drop(leaker);
    drop(cg1);
    let cg2 = MemCgroup::create(128 << 20).unwrap();
    let _leaker2 = Leaker::spawn(Some(&cg2), &["-addr", &addr, "-max", "8"]);
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            dir_of(&snap.status()).ends_with(cg2.path().file_name().unwrap().to_str().unwrap())
        }),
        "{}",
        snap.logs()
    );
    assert_eq!(snap.status()["last_sample"]["limit_bytes"], 128u64 << 20);
    let logs = snap.logs();
    assert!(logs.contains("locating it again"), "{logs}");
    assert_eq!(snap.get("/healthz").0, 200);
}

#[test]
fn sigkill_at_random_points_of_a_capture_never_leaves_a_corrupt_object() {
    if !go_available() && !require_live("go") {
        return;
    }
    let Some(s3) = SeaweedFs::start() else {
        return;
    };
    let leaker = Leaker::spawn(None, &["-max", "4", "-goroutines", "3000"]);
    let cg = FakeCgroup::new(1 << 30, 50.0);
    let dir = temp_dir("sigkill50");
    let env = OomsnapEnv::local(cg.path(), &leaker.pprof_base(), dir.path())
        .store(&s3.store_url("kill50"))
        .with(s3.env())
        .set("OOMSNAP_RATE_BURST", 1000)
        .set("OOMSNAP_PROFILES", "heap,goroutine,goroutine-stacks");
    for i in 0..50u64 {
        let snap = Oomsnap::run(&env);
        let admin = snap.admin.clone();
        std::thread::spawn(move || {
            let _ = http_request(
                "POST",
                &format!("http://{admin}/capture"),
                &[],
                b"",
                Duration::from_secs(5),
            );
        });
        // A pseudo-random point from 0 to ~60 ms into the capture.
        std::thread::sleep(Duration::from_micros((i * 7919 % 61) * 1000));
        snap.kill9();
    }
    // One clean run ships whatever was left.
    let snap = Oomsnap::run(&env);
    let spool = dir.path().join("spool");
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            std::fs::read_dir(&spool)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .count()
                == 0
        }),
        "the spool still holds {:#?} after 60 s:\n{}",
        spool_listing(&spool),
        snap.logs()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt.block_on(s3.list("kill50"));
    let manifests: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .collect();
    assert!(
        !manifests.is_empty(),
        "no capture survived 50 kills: {keys:#?}"
    );
    // Every folder has its manifest (manifest last), and every object the
    // manifest lists matches the sha256 it records.
    let folders: std::collections::BTreeSet<&str> =
        keys.iter().map(|k| k.rsplit_once('/').unwrap().0).collect();
    for f in &folders {
        let mkey = format!("{f}/manifest.json");
        assert!(
            keys.contains(&mkey),
            "{f} has objects but no manifest: {keys:#?}"
        );
        let m: Manifest = serde_json::from_slice(&rt.block_on(s3.get(&mkey))).unwrap();
        for p in m.profiles.iter().filter(|p| p.ok()) {
            let bytes = rt.block_on(s3.get(&format!("{f}/{}", p.file.as_deref().unwrap())));
            let sha = oomsnap::spool::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(Some(sha), p.sha256, "{f}/{} is corrupt", p.name);
        }
    }
    eprintln!(
        "50 SIGKILLs: {} captures reached the store intact",
        manifests.len()
    );
}

/// Each folder left in the spool with the files it holds, for a failure
/// message that shows what could not ship.
fn spool_listing(spool: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let names = |p: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    names(spool)
        .into_iter()
        .filter(|n| spool.join(n).is_dir())
        .map(|n| {
            let files = names(&spool.join(&n));
            (n, files)
        })
        .collect()
}
