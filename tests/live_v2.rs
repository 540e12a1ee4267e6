//! The live cgroup v2 tests, in a throwaway VM whose only hierarchy is
//! cgroup v2 (`../shared/tools/v2vm/run-in-v2vm.sh`): real `memory.max`,
//! `memory.stat`, `memory.events`, cgroup namespaces and OOM kills.
//!
//! One VM boot runs every scenario of `tests/v2vm/live.sh` with the static
//! release binary (`cargo build --release --target
//! x86_64-unknown-linux-musl`), a static `tests/leaky` and
//! `tests/v2vm/nsrun`; the payload prints machine-checkable lines, and each
//! test here asserts one scenario on them. The boot is shared: whichever
//! test runs first boots the VM, the others wait for its lines.
//!
//! A missing VM tool, qemu, kernel, busybox, Go or musl binary goes through
//! `common::require_live`. A musl binary older than the sources is an error:
//! the VM would test yesterday's code.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use common::{manifest_dir, require_live, target_dir, which};
use serde_json::Value;

/// What the payload printed, by scenario.
#[derive(Debug, Default)]
struct V2Run {
    /// `V2 <scenario> k=v …`, merged per scenario.
    facts: BTreeMap<String, BTreeMap<String, String>>,
    /// `V2OUT <scenario> <line>`.
    outs: BTreeMap<String, Vec<String>>,
    /// `V2JSON <scenario> <label> <json>`.
    docs: BTreeMap<String, Vec<(String, Value)>>,
    /// `V2END <scenario>` seen.
    ended: Vec<String>,
    /// Everything, for failure messages.
    raw: String,
}

impl V2Run {
    fn parse(text: &str) -> V2Run {
        let mut r = V2Run {
            raw: text.to_string(),
            ..Default::default()
        };
        for line in text.lines() {
            let mut w = line.splitn(3, ' ');
            let (Some(tag), Some(scenario)) = (w.next(), w.next()) else {
                continue;
            };
            let rest = w.next().unwrap_or("");
            let s = scenario.to_string();
            match tag {
                "V2" => {
                    let f = r.facts.entry(s).or_default();
                    for kv in rest.split_whitespace() {
                        if let Some((k, v)) = kv.split_once('=') {
                            f.insert(k.into(), v.into());
                        }
                    }
                }
                "V2OUT" => r.outs.entry(s).or_default().push(rest.into()),
                "V2JSON" => {
                    let (label, json) = rest.split_once(' ').unwrap_or((rest, ""));
                    // Not JSON (oomsnap did not answer): kept as text, so
                    // the test that reads it fails showing it.
                    let v = serde_json::from_str(json)
                        .unwrap_or_else(|e| Value::String(format!("not JSON ({e}): {json:?}")));
                    r.docs.entry(s).or_default().push((label.into(), v));
                }
                "V2END" => r.ended.push(s),
                _ => {}
            }
        }
        r
    }

    /// The facts of a scenario that ran to its end.
    fn scenario(&self, name: &str) -> &BTreeMap<String, String> {
        assert!(
            self.ended.iter().any(|e| e == name),
            "scenario {name} did not finish in the VM; output:\n{}",
            self.raw
        );
        self.facts
            .get(name)
            .unwrap_or_else(|| panic!("no facts for {name}:\n{}", self.raw))
    }

    fn fact(&self, scenario: &str, key: &str) -> &str {
        self.scenario(scenario)
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{scenario}: no {key}=…; output:\n{}", self.raw))
    }

    fn out(&self, scenario: &str) -> String {
        self.outs
            .get(scenario)
            .cloned()
            .unwrap_or_default()
            .join("\n")
    }

    fn docs(&self, scenario: &str, label: &str) -> Vec<&Value> {
        self.docs
            .get(scenario)
            .map(|d| {
                d.iter()
                    .filter(|(l, _)| l == label)
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn doc(&self, scenario: &str, label: &str) -> &Value {
        self.docs(scenario, label)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{scenario}: no {label}; output:\n{}", self.raw))
    }

    /// Manifests in decision order.
    fn manifests(&self, scenario: &str) -> Vec<&Value> {
        let mut m = self.docs(scenario, "manifest");
        m.sort_by_key(|v| v["decided_at"].as_str().unwrap_or_default().to_string());
        m
    }
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    common::files_under(dir)
        .iter()
        .filter_map(|p| p.metadata().and_then(|m| m.modified()).ok())
        .max()
}

/// Builds a Go program statically (CGO off) into `out`.
fn go_build(src: &Path, out: &Path) {
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run go build");
    assert!(
        o.status.success(),
        "go build {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The musl release binary, when it exists; panics when it is older than
/// the sources.
fn musl_oomsnap() -> Option<PathBuf> {
    let bin = target_dir().join("x86_64-unknown-linux-musl/release/oomsnap");
    let built = bin.metadata().and_then(|m| m.modified()).ok()?;
    let root = manifest_dir();
    let newest = [
        newest_mtime(&root.join("src")),
        root.join("Cargo.lock")
            .metadata()
            .and_then(|m| m.modified())
            .ok(),
    ]
    .into_iter()
    .flatten()
    .max();
    if newest.is_some_and(|n| n > built) {
        panic!(
            "{} is older than the sources: run `cargo build --release --target x86_64-unknown-linux-musl` first",
            bin.display()
        );
    }
    Some(bin)
}

fn boot() -> Option<V2Run> {
    let tool = manifest_dir().join("../shared/tools/v2vm/run-in-v2vm.sh");
    if !tool.exists() {
        require_live("the v2 VM tool ../shared/tools/v2vm/run-in-v2vm.sh");
        return None;
    }
    for (bin, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
    ] {
        if which(bin).is_none() {
            require_live(&format!("{bin} (apt-get install {pkg})"));
            return None;
        }
    }
    let has_kernel = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        })
        .unwrap_or(false);
    if !has_kernel {
        require_live("a kernel in /boot (apt-get install linux-image-amd64)");
        return None;
    }
    let leaky = common::try_leaky_binary()?;
    let Some(oomsnap) = musl_oomsnap() else {
        require_live(
            "the static oomsnap (cargo build --release --target x86_64-unknown-linux-musl)",
        );
        return None;
    };
    let bindir = common::temp_dir("v2vm-bin");
    std::fs::copy(&oomsnap, bindir.path().join("oomsnap")).unwrap();
    std::fs::copy(&leaky, bindir.path().join("leaky")).unwrap();
    go_build(
        &manifest_dir().join("tests/v2vm/nsrun"),
        &bindir.path().join("nsrun"),
    );

    let t = Instant::now();
    let out = Command::new(&tool)
        .arg(bindir.path())
        .arg(manifest_dir().join("tests/v2vm/live.sh"))
        .env("V2VM_TIMEOUT", "900")
        .output()
        .expect("run the v2 VM");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "v2 VM: {:.0} s, exit {:?}\n{}",
        t.elapsed().as_secs_f64(),
        out.status.code(),
        text.lines()
            .filter(|l| !l.starts_with("V2JSON"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "the v2 VM payload failed ({:?}):\n{text}",
        out.status
    );
    Some(V2Run::parse(&text))
}

/// The shared VM run; `None` when the VM cannot run here (after
/// `require_live`).
/// The boot runs once even when it fails: every test then reports the
/// same failure instead of booting again.
fn run() -> Option<&'static V2Run> {
    static RUN: OnceLock<Result<Option<V2Run>, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        std::panic::catch_unwind(boot).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the VM boot panicked".into())
        })
    });
    match r {
        Ok(run) => run.as_ref(),
        Err(why) => panic!("{why}"),
    }
}

fn durable_at(m: &Value, profile: &str) -> Option<SystemTime> {
    m["profiles"].as_array()?.iter().find_map(|p| {
        (p["name"] == profile && p["error"].is_null())
            .then(|| {
                p["durable_at"]
                    .as_str()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
            })
            .flatten()
    })
}

fn ts(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("a timestamp")).expect("RFC 3339")
}

/// The percent in oomsnap check's "sample" line: `… (23.9%) …`.
fn check_percent(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("sample"))
        .unwrap_or_else(|| panic!("no sample line in:\n{out}"));
    let open = line.find('(').expect("(percent)");
    let close = line[open..].find("%)").expect("percent)") + open;
    line[open + 1..close].parse().expect("a percent")
}

#[test]
fn v2_check_reads_the_explicit_cgroup_and_its_working_set_from_memory_stat() {
    let Some(r) = run() else { return };
    let out = r.out("check");
    assert_eq!(r.fact("check", "rc"), "0", "{out}");
    assert!(out.contains("strategy  explicit"), "{out}");
    assert!(out.contains("cgroup V2 /sys/fs/cgroup/app"), "{out}");
    // working set = memory.current − inactive_file, against memory.max, as
    // the kernel showed them a moment later (the app holds its memory).
    let n = |k: &str| -> f64 { r.fact("check", k).parse().unwrap() };
    let expected = (n("current") - n("inactive_file")) * 100.0 / n("max");
    let shown = check_percent(&out);
    assert!(
        (shown - expected).abs() < 1.0,
        "check showed {shown}% but memory.current − inactive_file is {expected:.1}% of memory.max\n{out}"
    );
    assert!(n("anon") > 50.0 * 1048576.0, "the app's 60 MiB is anon");
}

#[test]
fn v2_sidecar_in_a_pod_finds_the_app_by_its_port_across_cgroup_namespaces() {
    let Some(r) = run() else { return };
    let a = r.out("pod_own_mount");
    assert_eq!(r.fact("pod_own_mount", "rc"), "0", "{a}");
    assert!(
        a.contains("app_cgroup_seen_by_sidecar 0::/../cri-containerd-app.scope"),
        "the sidecar should see the app above its own namespace root:\n{a}"
    );
    assert!(a.contains("strategy  target-process"), "{a}");
    assert!(
        a.contains("/root/sys/fs/cgroup") && a.contains("of 200MiB"),
        "the app's own cgroupfs mount, with its 200 MiB limit:\n{a}"
    );

    let b = r.out("pod_host_path");
    assert_eq!(r.fact("pod_host_path", "rc"), "0", "{b}");
    assert!(b.contains("strategy  target-process"), "{b}");
    assert!(
        b.contains("/host/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/cri-containerd-app.scope")
            && b.contains("of 200MiB"),
        "resolved under the hostPath through POD_UID:\n{b}"
    );
}

#[test]
fn v2_slow_leak_fires_the_ladder_in_order_and_the_kill_is_confirmed() {
    let Some(r) = run() else { return };
    assert_eq!(r.fact("ladder", "leaky_rc"), "137", "the kernel killed it");
    assert_eq!(r.fact("ladder", "oom_kill"), "1");
    assert_eq!(r.fact("ladder", "snap_rc"), "0", "clean exit on SIGTERM");
    let ms = r.manifests("ladder");
    let reasons: Vec<&str> = ms.iter().filter_map(|m| m["reason"].as_str()).collect();
    let rungs: Vec<&str> = reasons
        .iter()
        .copied()
        .filter(|r| r.starts_with("threshold-"))
        .collect();
    assert_eq!(
        rungs,
        ["threshold-80", "threshold-90", "threshold-95"],
        "{reasons:?}"
    );
    let oom = r.doc("ladder", "oom");
    assert_eq!(oom["evidence"], "oom_kill", "{oom}");
    assert_eq!(oom["oom_kills"], 1, "{oom}");
    let detected = ts(&oom["detected_at"]);
    for m in ms.iter().filter(|m| m["reason"] != "imminent") {
        let reason = &m["reason"];
        // v2 has no usage threshold: the poll schedule woke oomsnap.
        assert_ne!(m["trigger"]["wake"], "kernel", "{reason}: {m}");
        for p in ["heap", "goroutine"] {
            let d = durable_at(m, p).unwrap_or_else(|| panic!("{reason}: {p} failed: {m}"));
            assert!(d < detected, "{reason}: {p} durable after the kill");
        }
    }
    assert!(
        oom["lead_seconds"].as_f64().is_some_and(|l| l > 0.0),
        "{oom}"
    );
}

#[test]
fn v2_fastest_leak_fires_imminent_below_the_first_rung_and_wins_the_race() {
    let Some(r) = run() else { return };
    assert_eq!(r.fact("fast", "leaky_rc"), "137");
    let ms = r.manifests("fast");
    let first = ms
        .iter()
        .find(|m| m["reason"] != "baseline")
        .unwrap_or_else(|| panic!("no near-OOM capture: {ms:?}"));
    assert_eq!(first["reason"], "imminent", "{first}");
    let pct = first["trigger"]["percent"].as_f64().unwrap();
    assert!(pct < 80.0, "imminent fired at {pct}%");
    let oom = r.doc("fast", "oom");
    let detected = ts(&oom["detected_at"]);
    for p in ["heap", "goroutine"] {
        let d = durable_at(first, p).unwrap_or_else(|| panic!("{p} failed: {first}"));
        assert!(d < detected, "{p} became durable after the kill");
    }
    eprintln!(
        "v2 fastest leak: imminent at {pct:.1}%, oom.json lead {} s",
        oom["lead_seconds"]
    );
}

#[test]
fn v2_a_limit_changed_at_run_time_is_followed() {
    let Some(r) = run() else { return };
    assert_eq!(r.fact("limit", "oom_kill"), "0");
    let before = r.doc("limit", "status_before");
    assert_eq!(
        before["last_sample"]["limit_bytes"],
        256u64 << 20,
        "{before}"
    );
    let after = r.doc("limit", "status_after");
    assert_eq!(after["last_sample"]["limit_bytes"], 120u64 << 20, "{after}");
    let m = r
        .manifests("limit")
        .into_iter()
        .find(|m| {
            m["reason"]
                .as_str()
                .is_some_and(|x| x.starts_with("threshold-"))
        })
        .expect("a threshold capture after the limit fell");
    assert_eq!(m["trigger"]["limit_bytes"], 120u64 << 20, "{m}");
}

#[test]
fn v2_a_cgroup_that_disappears_is_found_again_without_a_restart() {
    let Some(r) = run() else { return };
    let removed = r.doc("gone", "status_removed");
    let why = removed["source_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("OOMSNAP_CGROUP=/sys/fs/cgroup/app2"),
        "/status must say why nothing is watched: {removed}"
    );
    assert_eq!(r.fact("gone", "healthz_while_gone"), "200");
    assert_eq!(r.fact("gone", "healthz_back"), "200");
    assert_eq!(r.fact("gone", "snap_rc"), "0");
    let back = r.doc("gone", "status_back");
    assert!(back["source_error"].is_null(), "{back}");
    assert!(
        r.manifests("gone").iter().any(|m| m["reason"]
            .as_str()
            .is_some_and(|x| x.starts_with("threshold-"))),
        "no capture once the cgroup came back"
    );
}

#[test]
fn v2_a_cgroup_without_a_limit_is_sampled_until_one_is_set() {
    let Some(r) = run() else { return };
    let u = r.doc("nolimit", "status_unlimited");
    assert!(u["last_sample"]["limit_bytes"].is_null(), "{u}");
    assert!(
        u["last_sample"]["usage_bytes"]
            .as_u64()
            .is_some_and(|b| b > 60 << 20),
        "samples must flow without a limit: {u}"
    );
    assert!(
        u["source_error"]
            .as_str()
            .is_some_and(|e| e.contains("no memory limit")),
        "{u}"
    );
    assert_eq!(r.fact("nolimit", "healthz_unlimited"), "200");
    let l = r.doc("nolimit", "status_limited");
    assert!(l["source_error"].is_null(), "{l}");
    assert_eq!(l["last_sample"]["limit_bytes"], 72u64 << 20, "{l}");
    assert!(
        r.manifests("nolimit").iter().any(|m| m["reason"]
            .as_str()
            .is_some_and(|x| x.starts_with("threshold-"))),
        "no capture once the limit was set"
    );
    assert_eq!(r.fact("nolimit", "oom_kill"), "0");
}

#[test]
fn v2_oomsnap_never_writes_a_control_file_of_the_app() {
    let Some(r) = run() else { return };
    assert!(r.ended.iter().any(|e| e == "all"), "{}", r.raw);
    let lines: Vec<&str> = r
        .raw
        .lines()
        .filter(|l| l.starts_with("V2 untouched "))
        .collect();
    assert!(!lines.is_empty(), "{}", r.raw);
    for l in lines {
        assert!(
            l.contains(" high=max low=0 min=0"),
            "a control file was written: {l}"
        );
    }
}
