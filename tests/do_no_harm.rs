//! First, do no harm: `oomsnap run` never exits over a fault, and its
//! capture never costs the app its life.
//!
//! Each test runs the real binary into one fault that used to stop it
//! (exit 2, a panic, a crash loop — a crash-looping sidecar makes the pod
//! NotReady, and a native sidecar that cannot start blocks the app) and
//! checks that it keeps running: `/healthz` 200, the fault named in
//! `/status` under `problems` and in `oomsnap_problems{kind}`. Where the
//! fault can clear, the test clears it and sees oomsnap recover without a
//! restart. The last test parks 100 000 goroutines near a real cgroup limit
//! and checks that the capture spares the app.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[test]
fn bad_variables_fall_back_to_defaults_and_are_reported_while_run_stays_up() {
    let dir = temp_dir("harm-config");
    let spool = dir.path().join("spool").display().to_string();
    let bad = env(&[
        ("OOMSNAP_SPOOL_DIR", spool),
        ("OOMSNAP_THRESHOLDS", "90,80".into()),
        ("OOMSNAP_LEAD_TIME", "soon".into()),
        ("OOMSNAP_RATE_BURST", "lots".into()),
        ("OOMSNAP_FETCH_TIMEOUT", "300000000000y".into()),
        ("OOMSNAP_STORE", "ftp://nowhere".into()),
        ("OOMSNAP_THRESHOLD", "80".into()),
    ]);
    let snap = Oomsnap::start(&["run"], &bad);
    assert_eq!(snap.get("/healthz").0, 200);
    let s = snap.status();
    let config = problem_in(&s, "config").expect("a config problem");
    for v in [
        "OOMSNAP_THRESHOLDS",
        "OOMSNAP_LEAD_TIME",
        "OOMSNAP_RATE_BURST",
        "OOMSNAP_FETCH_TIMEOUT",
        "OOMSNAP_STORE",
        "did you mean OOMSNAP_THRESHOLDS",
    ] {
        assert!(config.contains(v), "{v} is not named: {config}");
    }
    assert!(problem_in(&s, "store").is_some_and(|m| m.contains("stay in the spool")));
    // The defaults are in force.
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || snap
            .logs()
            .contains("thresholds=80,90,95")),
        "{}",
        snap.logs()
    );
    let (_, metrics) = snap.get("/metrics");
    assert_eq!(
        metric(&metrics, "oomsnap_problems{kind=\"config\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "oomsnap_problems{kind=\"admin\"}"),
        Some(0.0)
    );

    // Fail-fast is one explicit variable away.
    let mut strict: Vec<(String, String)> = bad.clone();
    strict.push(("OOMSNAP_STRICT".into(), "true".into()));
    let out = std::process::Command::new(oomsnap_bin())
        .arg("run")
        .env_clear()
        .envs(strict)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OOMSNAP_FETCH_TIMEOUT") && err.contains("at most 1h"),
        "{err}"
    );
}

#[test]
fn a_spool_that_cannot_be_created_is_retried_and_opens_once_it_can() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let leaker = Leaker::spawn(Some(&cg), &["-max", "8"]);
    let dir = temp_dir("harm-spool");
    // The spool's parent is a file: mkdir fails with ENOTDIR.
    let blocker = dir.path().join("volume");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let store = dir.path().join("store");
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            (
                "OOMSNAP_SPOOL_DIR",
                blocker.join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", format!("file://{}", store.display())),
        ]),
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            snap.problem("spool")
                .is_some_and(|m| m.contains("OOMSNAP_SPOOL_DIR"))
        }
    ));
    let (code, body) = snap.capture();
    assert_eq!(code, 503, "a capture without a spool: {body}");
    assert_eq!(snap.get("/healthz").0, 200);

    std::fs::remove_file(&blocker).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            snap.problem("spool").is_none()
        }),
        "the spool never opened: {}",
        snap.logs()
    );
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || { !manifests_under(&store).is_empty() }
    ));
}

#[test]
fn a_store_that_cannot_open_keeps_captures_in_the_spool_until_it_does() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let leaker = Leaker::spawn(Some(&cg), &["-max", "8"]);
    let dir = temp_dir("harm-store");
    let blocker = dir.path().join("bucket");
    std::fs::write(&blocker, b"a file where the store directory belongs").unwrap();
    let store = blocker.join("captures");
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            (
                "OOMSNAP_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", format!("file://{}", store.display())),
            ("OOMSNAP_BASELINE_EVERY", "0".into()),
        ]),
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            snap.problem("store")
                .is_some_and(|m| m.contains("cannot open the store"))
        }
    ));
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "a capture waits in the spool: {body}");
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || { snap.status()["spool"]["bundles"] == 1 }
    ));

    std::fs::remove_file(&blocker).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            manifests_under(&store).len() == 1
        }),
        "the spooled capture never shipped: {}",
        snap.logs()
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || { snap.problem("store").is_none() }
    ));
}

#[test]
fn a_taken_admin_port_is_retried_and_served_once_free() {
    let dir = temp_dir("harm-admin");
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap();
    let log = dir.path().join("oomsnap.log");
    let mut child = std::process::Command::new(oomsnap_bin())
        .arg("run")
        .env_clear()
        .env("OOMSNAP_ADMIN_ADDR", addr.to_string())
        .env("OOMSNAP_SPOOL_DIR", dir.path().join("spool"))
        .env(
            "OOMSNAP_STORE",
            format!("file://{}/store", dir.path().display()),
        )
        .env("OOMSNAP_LOG_FORMAT", "text")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || { logs().contains("cannot serve the admin port") }
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "oomsnap exited: {}",
        logs()
    );

    drop(squatter);
    let healthy = wait_until(Duration::from_secs(40), Duration::from_millis(100), || {
        http_get(&format!("http://{addr}/healthz")).is_ok_and(|(c, _)| c == 200)
    });
    let (_, status) = http_get(&format!("http://{addr}/status")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy, "the admin port was never served: {}", logs());
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(problem_in(&status, "admin"), None);
}

#[test]
fn no_ca_bundle_is_needed_for_an_http_target_and_a_file_store() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let leaker = Leaker::spawn(Some(&cg), &["-max", "8"]);
    let dir = temp_dir("harm-ca");
    let store = dir.path().join("store");
    // Where rustls looks for the system's roots: nowhere usable.
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            (
                "OOMSNAP_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", format!("file://{}", store.display())),
            (
                "SSL_CERT_FILE",
                empty.join("none.pem").display().to_string(),
            ),
            ("SSL_CERT_DIR", empty.display().to_string()),
            ("OOMSNAP_BASELINE_EVERY", "0".into()),
        ]),
    );
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}\n{}", snap.logs());
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || { manifests_under(&store).len() == 1 }
    ));
}

#[test]
fn an_endpoint_without_a_scheme_is_a_problem_not_a_crash() {
    let dir = temp_dir("harm-endpoint");
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            (
                "OOMSNAP_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", "s3://bucket/prefix".into()),
            ("AWS_ENDPOINT", "127.0.0.1:9000".into()),
            ("AWS_ACCESS_KEY_ID", "k".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]),
    );
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            snap.problem("store")
                .is_some_and(|m| m.contains("AWS_ENDPOINT"))
        }),
        "{}",
        snap.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(snap.pid()));
    assert_eq!(snap.get("/healthz").0, 200);
}

/// Tolerance: the process must be gone within the grace plus 1.5 s (the
/// watcher's join and the runtime's own teardown); measured 26.9 s against
/// a 5 s grace before the fix.
#[test]
fn sigterm_with_a_store_that_never_answers_exits_within_the_grace() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let leaker = Leaker::spawn(Some(&cg), &["-max", "8"]);
    let dir = temp_dir("harm-grace");
    // Accepts connections and never answers a byte.
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", tarpit.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in tarpit.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let grace = Duration::from_secs(3);
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            (
                "OOMSNAP_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", "s3://bucket/p".into()),
            ("OOMSNAP_SHUTDOWN_GRACE", "3s".into()),
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "k".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]),
    );
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}");
    // An upload is now hanging on the tarpit.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let status = snap.terminate(Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(
        status.is_some(),
        "oomsnap did not exit within 30 s of SIGTERM"
    );
    assert!(
        took <= grace + Duration::from_millis(1500),
        "SIGTERM took {took:?} against a {grace:?} grace"
    );
    // The capture is still in the spool for the next start.
    assert!(files_under(&dir.path().join("spool"))
        .iter()
        .any(|p| p.ends_with("manifest.json")));
}

/// A Go app parks 100 000 goroutines (~270 MiB) at about 91 % of its
/// limit. The goroutine profile would cost it ~45 MiB, more than it has
/// left, and the kernel would kill it; oomsnap skips that profile, says so
/// in the manifest, and the app lives.
#[test]
fn a_capture_never_costs_a_parked_app_its_life() {
    let Some(cg) = MemCgroup::create(2 << 30) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let mut leaker = Leaker::spawn(Some(&cg), &["-goroutines", "100000", "-max", "8"]);
    std::thread::sleep(Duration::from_secs(2));
    let settled = cg.usage();
    let limit = settled * 100 / 91;
    std::fs::write(cg.path().join("memory.limit_in_bytes"), limit.to_string()).unwrap();
    let dir = temp_dir("harm-parked");
    let store = dir.path().join("store");
    let snap = Oomsnap::start(
        &["run"],
        &env(&[
            ("OOMSNAP_CGROUP", cg.path().display().to_string()),
            ("OOMSNAP_TARGET", leaker.pprof_base()),
            (
                "OOMSNAP_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_STORE", format!("file://{}", store.display())),
            ("OOMSNAP_BASELINE_EVERY", "0".into()),
        ]),
    );
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            !manifests_under(&store).is_empty()
        }),
        "no capture at 91 %: {}",
        snap.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cg.oom_kill_count(), 0, "the capture OOM-killed the app");
    assert!(
        leaker.wait_exit(Duration::from_millis(10)).is_none(),
        "the app died"
    );
    let m = &manifests_under(&store)[0];
    let profiles = m["profiles"].as_array().unwrap();
    let heap = profiles.iter().find(|p| p["name"] == "heap").unwrap();
    assert!(
        heap["error"].is_null() && heap["file"] == "heap.pb.gz",
        "{heap}"
    );
    let gor = profiles.iter().find(|p| p["name"] == "goroutine").unwrap();
    let why = gor["skipped"]
        .as_str()
        .unwrap_or_else(|| panic!("goroutine was not skipped: {gor}"));
    assert!(
        why.contains("goroutine records") && why.contains("left below the limit"),
        "{why}"
    );
    assert!(gor["estimated_app_cost_bytes"].as_u64().unwrap() > 40 << 20);
    assert!(m["target_counts"]["goroutine"].as_u64().unwrap() >= 100_000);
    let (_, metrics) = snap.get("/metrics");
    // One skip per capture at this level (the rung, and imminent when the
    // climb to 91 % was steep enough for it).
    let skipped = metric(
        &metrics,
        "oomsnap_profiles_skipped_total{profile=\"goroutine\",cause=\"headroom\"}",
    );
    assert!(skipped.is_some_and(|n| n >= 1.0), "{metrics}");
}
