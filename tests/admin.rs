//! The admin server, live annotations and OOM confirmation against a
//! running oomsnap: metrics parsed by a real Prometheus text parser,
//! /status against a live cgroup, annotations rewritten while it runs.

mod common;

use std::time::Duration;

use common::*;

fn parse_with_prometheus_client(text: &str) -> Result<Vec<String>, String> {
    // The reference parser of the format, from the Prometheus project.
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    print(f.name, f.type, len(f.samples))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn have_prometheus_client() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn metrics_parse_and_status_reflects_a_live_cgroup() {
    if !go_available() && !require_live("go") {
        return;
    }
    if !have_prometheus_client()
        && !require_live("python3 prometheus_client (pip install prometheus_client)")
    {
        return;
    }
    let Some(cg) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let leaker = Leaker::spawn(Some(&cg), &["-max", "12", "-rate", "100"]);
    let dir = temp_dir("admin");
    let snap = Oomsnap::start(
        &["run"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}/store", dir.path().display()),
            ),
            (
                "OOMSNAP_SPOOL_DIR".into(),
                dir.path().join("spool").display().to_string(),
            ),
        ],
    );
    // The baseline capture of a healthy pod shows up in the metrics.
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            snap.get("/metrics")
                .1
                .contains("oomsnap_captures_total{reason=\"baseline\",outcome=\"complete\"} 1")
        }),
        "no baseline capture:\n{}\n{}",
        snap.get("/metrics").1,
        snap.logs()
    );
    let (code, text) = snap.get("/metrics");
    assert_eq!(code, 200);
    let families =
        parse_with_prometheus_client(&text).unwrap_or_else(|e| panic!("not valid: {e}\n{text}"));
    for name in [
        "oomsnap_memory_working_set_bytes gauge",
        "oomsnap_memory_usage_bytes gauge",
        "oomsnap_memory_limit_bytes gauge",
        "oomsnap_captures counter",
        "oomsnap_captures_dropped counter",
        "oomsnap_profile_fetch_seconds histogram",
        "oomsnap_uploads counter",
        "oomsnap_spool_bytes gauge",
        "oomsnap_spool_dropped counter",
        "oomsnap_oom_kills counter",
        "oomsnap_capture_lead_seconds histogram",
    ] {
        assert!(
            families.iter().any(|f| f.starts_with(name)),
            "{name} missing: {families:#?}"
        );
    }
    assert_eq!(
        metric(&text, "oomsnap_memory_limit_bytes"),
        Some((256u64 << 20) as f64)
    );
    assert!(metric(&text, "oomsnap_memory_working_set_bytes").unwrap() > 0.0);

    let s = snap.status();
    assert_eq!(s["source"]["strategy"], "explicit", "{s:#}");
    assert_eq!(s["source"]["kind"]["dir"], cg.path().display().to_string());
    assert_eq!(s["last_sample"]["limit_bytes"], 256u64 << 20);
    assert_eq!(s["thresholds"].as_array().unwrap().len(), 3);
    assert_eq!(s["thresholds"][0]["armed"], true);
    assert_eq!(s["captures"][0]["reason"], "baseline");
    assert_eq!(
        s["quota"]["remaining"],
        oomsnap::config::DEFAULT_RATE_BURST,
        "a baseline spends no quota"
    );
    assert_eq!(snap.get("/healthz").0, 200);
    assert_eq!(snap.get("/readyz").0, 200, "{}", snap.get("/readyz").1);
}

fn write_annotations(path: &std::path::Path, lines: &[(&str, &str)]) {
    let body: String = lines
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\"\n"))
        .collect();
    // The kubelet swaps the file atomically; so do we.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn captures(snap: &Oomsnap) -> Vec<String> {
    snap.status()["captures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn annotations_change_thresholds_and_pause_captures_without_a_restart() {
    if !go_available() && !require_live("go") {
        return;
    }
    let leaker = Leaker::spawn(None, &["-max", "4"]);
    let cg = FakeCgroup::new(1 << 30, 10.0);
    let dir = temp_dir("annotations");
    let ann = dir.path().join("annotations");
    write_annotations(&ann, &[("oomsnap.dev/thresholds", "30,40"), ("app", "x")]);
    let snap = Oomsnap::start(
        &["run"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}/store", dir.path().display()),
            ),
            (
                "OOMSNAP_SPOOL_DIR".into(),
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_ANNOTATIONS_FILE".into(), ann.display().to_string()),
            ("OOMSNAP_LEAD_TIME".into(), "0s".into()),
            ("OOMSNAP_BASELINE_EVERY".into(), "0".into()),
            ("OOMSNAP_POLL_MAX".into(), "50ms".into()),
        ],
    );
    let thresholds = |snap: &Oomsnap| -> Vec<f64> {
        snap.status()["thresholds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["percent"].as_f64().unwrap())
            .collect()
    };
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || thresholds(&snap) == vec![30.0, 40.0]
    ));
    cg.set(35.0);
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || captures(&snap) == ["threshold-30"]
        ),
        "{:?}\n{}",
        captures(&snap),
        snap.logs()
    );

    // Pause, live.
    write_annotations(
        &ann,
        &[
            ("oomsnap.dev/thresholds", "30,40"),
            ("oomsnap.dev/enabled", "false"),
        ],
    );
    assert!(wait_until(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || snap.status()["enabled"] == false
    ));
    cg.set(45.0);
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || snap.status()["quota"]["dropped"]["paused"] == 1
    ));
    assert_eq!(
        captures(&snap),
        ["threshold-30"],
        "a paused oomsnap captured"
    );

    // A bad value is reported and ignored; the last good value stays.
    write_annotations(
        &ann,
        &[
            ("oomsnap.dev/thresholds", "ninety"),
            ("oomsnap.dev/enabled", "false"),
            ("oomsnap.dev/port", "evil.example:80"),
        ],
    );
    assert!(wait_until(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || annotation_problem(&snap.status())
            .matches("is ignored")
            .count()
            == 2
    ));
    let s = snap.status();
    let problems = annotation_problem(&s);
    assert!(
        problems.contains("oomsnap.dev/thresholds") && problems.contains("ninety"),
        "{problems}"
    );
    assert!(problems.contains("never a host"), "{problems}");
    assert_eq!(thresholds(&snap), vec![30.0, 40.0]);
    assert_eq!(s["target"], leaker.pprof_base());
    assert_eq!(
        snap.logs().lines().filter(|l| l.contains("ninety")).count(),
        1,
        "a bad value is logged once:\n{}",
        snap.logs()
    );

    // New rungs and resume.
    cg.set(20.0);
    write_annotations(
        &ann,
        &[
            ("oomsnap.dev/thresholds", "50,60"),
            ("oomsnap.dev/enabled", "true"),
        ],
    );
    assert!(wait_until(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || thresholds(&snap) == vec![50.0, 60.0]
    ));
    cg.set(55.0);
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || captures(&snap).len() == 2
        ),
        "{:?}",
        captures(&snap)
    );
    assert_eq!(captures(&snap)[0], "threshold-50");
}

#[test]
fn an_oom_kill_writes_oom_json_beside_the_last_capture() {
    if !go_available() && !require_live("go") {
        return;
    }
    let leaker = Leaker::spawn(None, &["-max", "4"]);
    let cg = FakeCgroup::new(1 << 30, 10.0);
    let dir = temp_dir("oomjson");
    let snap = Oomsnap::start(
        &["run"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}/store", dir.path().display()),
            ),
            (
                "OOMSNAP_SPOOL_DIR".into(),
                dir.path().join("spool").display().to_string(),
            ),
            ("OOMSNAP_POLL_MAX".into(), "20ms".into()),
            ("OOMSNAP_LEAD_TIME".into(), "0s".into()),
        ],
    );
    cg.set(92.0);
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || { captures(&snap).first().is_some_and(|c| c == "threshold-90") }
    ));
    std::thread::sleep(Duration::from_millis(100));
    cg.oom_kill(1);
    let store = dir.path().join("store");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            files_under(&store).iter().any(|p| p.ends_with("oom.json"))
        }),
        "{}",
        snap.logs()
    );
    let oom = files_under(&store)
        .into_iter()
        .find(|p| p.ends_with("oom.json"))
        .unwrap();
    assert!(
        oom.parent()
            .unwrap()
            .display()
            .to_string()
            .ends_with("_threshold-90"),
        "{}",
        oom.display()
    );
    let rec: oomsnap::manifest::OomRecord =
        serde_json::from_slice(&std::fs::read(&oom).unwrap()).unwrap();
    assert!(rec.lead_seconds.unwrap() > 0.05, "{rec:?}");
    assert_eq!(rec.evidence, "oom_kill");
    assert!(rec.last_sample.unwrap().percent > 90.0);
    let m = snap.get("/metrics").1;
    assert_eq!(metric(&m, "oomsnap_oom_kills_total"), Some(1.0));
    assert_eq!(metric(&m, "oomsnap_capture_lead_seconds_count"), Some(1.0));
}

/// The annotation problem `/status` shows, or an empty string.
fn annotation_problem(status: &serde_json::Value) -> String {
    status["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["kind"] == "annotations")
        .and_then(|p| p["message"].as_str())
        .unwrap_or_default()
        .to_string()
}
