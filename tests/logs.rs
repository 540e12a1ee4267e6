//! The sidecar's JSON logs, as log pipelines read them: every line is a
//! JSON object, and every value is a plain JSON value — numbers for numbers,
//! no Rust `Debug` text (`Some(…)`, `None`, `[80.0, 90.0]`), no terminal
//! escape codes.
//!
//! A real Go app leaks in a real memory cgroup until the kernel kills it,
//! with a bad annotation and an unknown variable on the way, so the log
//! holds start-up, problems, decisions, captures, the kill and shipping.

mod common;

use std::time::Duration;

use common::*;

/// Every string value, with the key it sits under.
fn strings<'a>(key: &str, v: &'a serde_json::Value, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key.to_string(), s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(key, x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| strings(k, x, out)),
        _ => {}
    }
}

#[test]
fn json_log_lines_carry_plain_values() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let mut leaker = Leaker::spawn(
        Some(&cg),
        &["-baseline", "16", "-rate", "64", "-delay", "3s"],
    );
    let dir = temp_dir("logs");
    let ann = dir.path().join("annotations");
    std::fs::write(&ann, "oomsnap.dev/thresholds=\"high\"\n").unwrap();
    let env = OomsnapEnv::local(cg.path(), &leaker.pprof_base(), dir.path())
        .set("OOMSNAP_LOG_FORMAT", "json")
        .set("OOMSNAP_ANNOTATIONS_FILE", ann.display())
        .set("OOMSNAP_THRESHOLD", "80");
    let snap = Oomsnap::run(&env);
    assert!(
        leaker.wait_exit(Duration::from_secs(30)).is_some(),
        "the app was never OOM-killed"
    );
    let store = dir.path().join("store");
    assert!(wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || { files_under(&store).iter().any(|p| p.ends_with("oom.json")) }
    ));
    let logs = snap.logs();
    drop(snap);

    let mut messages = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        messages.push(obj["message"].as_str().unwrap_or_default().to_string());
        let mut all = Vec::new();
        strings("", &v, &mut all);
        for (key, s) in all {
            assert!(
                !s.contains("Some(") && s != "None" && !s.contains("None)"),
                "{key} holds Rust Debug text {s:?} in: {line}"
            );
            assert!(
                !s.contains('\u{1b}'),
                "{key} holds an escape code in: {line}"
            );
            // A number written as text is a number a pipeline cannot sum.
            let numeric = ["_bytes", "_ms", "_seconds", "percent", "_count"]
                .iter()
                .any(|suffix| key.ends_with(suffix));
            assert!(
                !numeric || s.parse::<f64>().is_err(),
                "{key} is a number written as a string ({s:?}) in: {line}"
            );
            assert!(
                !(s.starts_with('[') && s.ends_with(']') && s.contains(", ")),
                "{key} holds a Debug list {s:?} in: {line}"
            );
        }
        for key in [
            "working_set_bytes",
            "limit_bytes",
            "percent",
            "lead_seconds",
        ] {
            if let Some(x) = obj.get(key) {
                assert!(x.is_number(), "{key} is not a JSON number in: {line}");
            }
        }
    }
    // The run really went through what the test means to read.
    for m in [
        "started",
        "is ignored",
        "is not an oomsnap variable",
        "capturing",
        "capture spooled",
        "OOM-killed",
        "capture shipped",
    ] {
        assert!(
            messages.iter().any(|x| x.contains(m)),
            "no log line says {m:?}:\n{logs}"
        );
    }
}
