//! The monitoring kit in `deploy/monitoring/` works with the sidecar as it
//! is: the alerts pass `promtool check rules` and their unit tests (taken
//! out of the PrometheusRule, which holds the plain rule file's groups
//! exactly), the PodMonitor and the plain scrape config select the port the
//! sidecar is given, the dashboard is valid JSON whose queries are valid
//! PromQL naming only metrics the sidecar exposes, and a real Prometheus
//! scraping a real `oomsnap run` through the scrape config labels the
//! series as the alerts expect, loads the alerts, and answers every
//! dashboard query.
//!
//! Kubernetes' own validator knows no prometheus-operator kinds (it only
//! warns "Couldn't find schema"; see tests/manifests.rs), so the PodMonitor
//! and the PrometheusRule are checked here: the rule groups by promtool, the
//! PodMonitor's fields against the operator's field names.
//!
//! Needs `promtool` and `prometheus` (`apt-get install prometheus`) and
//! python3 with PyYAML (`pip install kubernetes-validate` brings it), all
//! reported through `common::require_live` when missing.

mod common;
#[path = "monitoring/prometheus.rs"]
mod prometheus;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prometheus::Prometheus;
use serde_json::Value;

/// The container port the sidecar's admin server is published on, in the
/// injector's patch and in deploy/examples.
const ADMIN_PORT_NAME: &str = "oomsnap-admin";

fn kit(rel: &str) -> PathBuf {
    common::manifest_dir().join("deploy/monitoring").join(rel)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn tool(name: &str, install: &str) -> bool {
    common::which(name).is_some() || common::require_live(&format!("{name} ({install})"))
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Every document of a YAML file as JSON, through PyYAML's safe loader.
fn yaml_documents(path: &Path) -> Option<Vec<Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            common::require_live("python3 with PyYAML (pip install pyyaml)");
            None
        }
        Ok(o) => panic!(
            "{} is not valid YAML:\n{}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            common::require_live("python3");
            None
        }
    }
}

/// The `oomsnap_*` series names in `text`.
fn oomsnap_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("oomsnap_") {
        let word: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + word.len()..];
        out.insert(word);
    }
    out
}

/// The series `docs/operations.md`'s metrics section lists (tests/docs_drift.rs
/// checks that list against what `/metrics` serves).
fn documented_series() -> BTreeSet<String> {
    let doc = read(&common::manifest_dir().join("docs/operations.md"));
    let start = doc
        .find("\n## Metrics")
        .expect("docs/operations.md has ## Metrics");
    let section = &doc[start + 1..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let names = oomsnap_names(&section[..end]);
    assert!(
        names.len() >= 15,
        "the metrics section lists only {names:?}"
    );
    names
}

/// The metric family a series belongs to (the name `src/admin/metrics.rs` registers).
fn family(series: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

/// Every name in `names` the sidecar does not expose (documented, and
/// registered in `src/admin/metrics.rs`).
fn unexposed(names: &BTreeSet<String>) -> Vec<String> {
    let documented = documented_series();
    let admin = read(&common::manifest_dir().join("src/admin/metrics.rs"));
    names
        .iter()
        .filter(|n| !documented.contains(*n) || !admin.contains(&format!("\"{}\"", family(n))))
        .cloned()
        .collect()
}

/// The PrometheusRule's `spec`, dedented: the rule groups it holds.
fn prometheusrule_groups() -> String {
    let text = read(&kit("prometheusrule.yaml"));
    let (_, spec) = text
        .split_once("\nspec:\n")
        .expect("prometheusrule.yaml has a top-level `spec:` line");
    spec.lines()
        .map(|l| {
            assert!(
                l.is_empty() || l.starts_with("  "),
                "prometheusrule.yaml: a line after `spec:` is not indented under it: {l:?}"
            );
            l.get(2..).unwrap_or("")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------
// The alerts
// ---------------------------------------------------------------------------

#[test]
fn the_prometheusrule_holds_exactly_the_plain_rule_file() {
    let plain = read(&kit("prometheus/oomsnap-rules.yaml"));
    let groups = &plain[plain.find("\ngroups:\n").expect("a `groups:` line") + 1..];
    assert_eq!(
        prometheusrule_groups(),
        groups,
        "prometheusrule.yaml's spec and prometheus/oomsnap-rules.yaml (from `groups:`) differ; \
         keep one an indented copy of the other"
    );
}

#[test]
fn the_alerts_taken_out_of_the_prometheusrule_pass_promtool_and_their_unit_tests() {
    if !tool("promtool", "apt-get install prometheus") {
        return;
    }
    // The unit tests name `oomsnap-rules.yaml`; beside them here is the
    // PrometheusRule's copy.
    let dir = common::temp_dir("rules");
    fs::write(
        dir.path().join("oomsnap-rules.yaml"),
        prometheusrule_groups(),
    )
    .unwrap();
    fs::copy(
        kit("prometheus/oomsnap-rules.test.yaml"),
        dir.path().join("oomsnap-rules.test.yaml"),
    )
    .unwrap();
    let checked = run_ok(
        Command::new("promtool")
            .args(["check", "rules", "oomsnap-rules.yaml"])
            .current_dir(dir.path()),
    );
    println!("{checked}");
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = run_ok(
        Command::new("promtool")
            .args(["test", "rules", "oomsnap-rules.test.yaml"])
            .current_dir(dir.path()),
    );
    println!("{tested}");
    // Every alert has a unit test.
    let tests = read(&kit("prometheus/oomsnap-rules.test.yaml"));
    for line in prometheusrule_groups().lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no case in oomsnap-rules.test.yaml"
            );
        }
    }
}

#[test]
fn the_alerts_name_only_metrics_the_sidecar_exposes() {
    let names = oomsnap_names(&prometheusrule_groups());
    assert!(names.len() >= 8, "{names:?}");
    let missing = unexposed(&names);
    assert!(
        missing.is_empty(),
        "the alerts name metrics oomsnap does not expose: {missing:?}"
    );
}

// ---------------------------------------------------------------------------
// Scraping
// ---------------------------------------------------------------------------

/// Field names of prometheus-operator's `monitoring.coreos.com/v1` PodMonitor
/// spec and PodMetricsEndpoint that this kit may use; anything else is a
/// typo the operator would reject.
const PODMONITOR_SPEC: &[&str] = &[
    "jobLabel",
    "podTargetLabels",
    "podMetricsEndpoints",
    "selector",
    "namespaceSelector",
    "sampleLimit",
    "targetLimit",
    "attachMetadata",
];
const POD_METRICS_ENDPOINT: &[&str] = &[
    "port",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
];

fn keys_within(obj: &Value, allowed: &[&str], what: &str) {
    let map = obj
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {obj}"));
    for k in map.keys() {
        assert!(
            allowed.contains(&k.as_str()),
            "{what} has the field {k:?}, which is not one of {allowed:?}"
        );
    }
}

#[test]
fn the_podmonitor_selects_the_sidecars_admin_port() {
    let Some(docs) = yaml_documents(&kit("podmonitor.yaml")) else {
        return;
    };
    assert_eq!(docs.len(), 1);
    let pm = &docs[0];
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["kind"], "PodMonitor");
    keys_within(
        pm,
        &["apiVersion", "kind", "metadata", "spec"],
        "the PodMonitor",
    );
    assert!(pm["metadata"]["name"].is_string());
    let spec = &pm["spec"];
    keys_within(spec, PODMONITOR_SPEC, "spec");
    assert!(spec["selector"].is_object(), "spec.selector is required");
    assert_eq!(spec["namespaceSelector"], serde_json::json!({"any": true}));
    let endpoints = spec["podMetricsEndpoints"]
        .as_array()
        .expect("podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    keys_within(
        &endpoints[0],
        POD_METRICS_ENDPOINT,
        "podMetricsEndpoints[0]",
    );
    assert_eq!(endpoints[0]["port"], ADMIN_PORT_NAME);
    assert_eq!(endpoints[0]["path"], "/metrics");

    // The plain scrape config keeps the same port.
    let scrape = read(&kit("prometheus/scrape-config.yaml"));
    assert!(
        scrape.contains(&format!("regex: {ADMIN_PORT_NAME}\n")),
        "{scrape}"
    );

    // The sidecar is given that port name wherever it is added.
    let src: String = common::files_under(&common::manifest_dir().join("src"))
        .iter()
        .map(|f| read(f))
        .collect();
    assert!(
        src.contains(&format!("\"{ADMIN_PORT_NAME}\"")),
        "src/ (the injector's patch) no longer names the admin port {ADMIN_PORT_NAME:?}"
    );
    for example in common::files_under(&common::manifest_dir().join("deploy/examples")) {
        let text = read(&example);
        if text.contains("containerPort: 9186") {
            assert!(
                text.contains(&format!("name: {ADMIN_PORT_NAME}\n")),
                "{} publishes the admin port under another name",
                example.display()
            );
        }
    }
}

#[test]
fn the_prometheusrule_has_only_groups_in_its_spec() {
    let Some(docs) = yaml_documents(&kit("prometheusrule.yaml")) else {
        return;
    };
    let rule = &docs[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    keys_within(
        rule,
        &["apiVersion", "kind", "metadata", "spec"],
        "the PrometheusRule",
    );
    keys_within(&rule["spec"], &["groups"], "spec");
    let plain = yaml_documents(&kit("prometheus/oomsnap-rules.yaml")).unwrap();
    assert_eq!(rule["spec"], plain[0], "the parsed groups differ");
}

// ---------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------

fn dashboard() -> Value {
    let text = read(&kit("grafana-dashboard.json"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("grafana-dashboard.json: {e}"))
}

/// Every panel's title and query expressions.
fn panel_queries(dash: &Value) -> Vec<(String, Vec<String>)> {
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t["expr"].as_str())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            (p["title"].as_str().unwrap_or_default().to_string(), exprs)
        })
        .collect()
}

/// A dashboard query with Grafana's variables replaced by plain PromQL.
fn plain_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1m")
        .replace("$namespace", ".*")
        .replace("$pod", ".*")
}

#[test]
fn the_dashboard_is_well_formed_and_names_only_exposed_metrics() {
    let dash = dashboard();
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id at {title}"
        );
        assert!(p["type"].is_string(), "{title}: no type");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        let refs: Vec<_> = p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["refId"].as_str().expect("refId").to_string())
            .collect();
        assert_eq!(
            refs.len(),
            refs.iter().collect::<BTreeSet<_>>().len(),
            "{title}: duplicate refId"
        );
    }

    let all: String = panel_queries(&dash)
        .into_iter()
        .flat_map(|(_, e)| e)
        .chain(
            dash["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["definition"].as_str().map(String::from)),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let names = oomsnap_names(&all);
    let missing = unexposed(&names);
    assert!(
        missing.is_empty(),
        "the dashboard names metrics oomsnap does not expose: {missing:?}"
    );
    // What the issue asks the dashboard to show.
    for needed in [
        "oomsnap_memory_working_set_bytes",
        "oomsnap_memory_limit_bytes",
        "oomsnap_captures_total",
        "oomsnap_captures_dropped_total",
        "oomsnap_spool_dropped_total",
        "oomsnap_uploads_total",
        "oomsnap_spool_bytes",
        "oomsnap_spool_limit_bytes",
        "oomsnap_capture_lead_seconds_bucket",
        "oomsnap_problems",
        "oomsnap_poll_interval_seconds",
    ] {
        assert!(
            names.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    if !tool("promtool", "apt-get install prometheus") {
        return;
    }
    // promtool parses rule expressions: each query becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, exprs)) in panel_queries(&dashboard()).iter().enumerate() {
        for (j, expr) in exprs.iter().enumerate() {
            rules.push_str(&format!(
                "      # {title}\n      - record: dashboard:panel{i}:{j}\n        expr: {}\n",
                serde_json::to_string(&plain_promql(expr)).unwrap()
            ));
        }
    }
    let dir = common::temp_dir("dashboard-rules");
    let file = dir.path().join("dashboard.yaml");
    fs::write(&file, &rules).unwrap();
    println!(
        "{}",
        run_ok(Command::new("promtool").args(["check", "rules"]).arg(&file))
    );
}

// ---------------------------------------------------------------------------
// A real Prometheus, scraping a real sidecar
// ---------------------------------------------------------------------------

/// prometheus/scrape-config.yaml with pod discovery swapped for a file of
/// targets that carry the labels Kubernetes discovery would give them, a
/// 1 s scrape and evaluation, and the alerts loaded.
fn scrape_config_for_test(targets: &Path, rules: &Path) -> String {
    let text = read(&kit("prometheus/scrape-config.yaml"));
    let swaps = [
        (
            "    kubernetes_sd_configs:\n      - role: pod\n",
            format!(
                "    file_sd_configs:\n      - files: [{}]\n        refresh_interval: 1s\n",
                targets.display()
            ),
        ),
        (
            "    scrape_interval: 15s\n",
            "    scrape_interval: 1s\n".into(),
        ),
    ];
    let mut out = format!(
        "global:\n  evaluation_interval: 1s\nrule_files: [{}]\n{text}",
        rules.display()
    );
    for (from, to) in swaps {
        assert!(
            out.contains(from),
            "scrape-config.yaml no longer has {from:?}; update this test"
        );
        out = out.replace(from, &to);
    }
    out
}

#[test]
fn a_real_prometheus_scrapes_the_sidecar_through_the_kit() {
    if !tool("promtool", "apt-get install prometheus")
        || !tool("prometheus", "apt-get install prometheus")
    {
        return;
    }
    let work = common::temp_dir("monitoring-live");
    let cg = common::FakeCgroup::new(1 << 30, 85.0);
    let snap = common::Oomsnap::start(
        &["run"],
        &[
            ("OOMSNAP_CGROUP".into(), cg.path().display().to_string()),
            // Nothing listens there: the app is not what this test is about.
            (
                "OOMSNAP_TARGET".into(),
                format!("http://127.0.0.1:{}", common::free_port()),
            ),
            (
                "OOMSNAP_STORE".into(),
                format!("file://{}/store", work.path().display()),
            ),
            (
                "OOMSNAP_SPOOL_DIR".into(),
                work.path().join("spool").display().to_string(),
            ),
        ],
    );

    // Two discovered containers: the sidecar's admin port, and the app's
    // own port, which the config must drop.
    let meta = |container: &str, port: &str| {
        serde_json::json!({
            "__meta_kubernetes_namespace": "shop",
            "__meta_kubernetes_pod_name": "checkout-1",
            "__meta_kubernetes_pod_container_name": container,
            "__meta_kubernetes_pod_container_port_name": port,
        })
    };
    let app_port = common::free_port();
    let targets = work.path().join("targets.json");
    fs::write(
        &targets,
        serde_json::json!([
            {"targets": [snap.admin], "labels": meta("oomsnap", ADMIN_PORT_NAME)},
            {"targets": [format!("127.0.0.1:{app_port}")], "labels": meta("app", "http")},
        ])
        .to_string(),
    )
    .unwrap();
    let rules = work.path().join("oomsnap-rules.yaml");
    fs::copy(kit("prometheus/oomsnap-rules.yaml"), &rules).unwrap();
    let prom = Prometheus::start(
        &scrape_config_for_test(&targets, &rules),
        common::temp_dir("prometheus"),
    );

    // The scrape config keeps only the sidecar, labelled as the alerts and
    // the dashboard group by.
    let scraped = common::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        prom.query("oomsnap_memory_samples_total").len() == 1
            && prom.query("rate(oomsnap_memory_samples_total[1m])").len() == 1
    });
    assert!(
        scraped,
        "prometheus did not scrape oomsnap twice:\n{}",
        prom.log()
    );
    let targets = prom.api("/api/v1/targets");
    let active = targets["activeTargets"].as_array().unwrap();
    assert_eq!(
        active.len(),
        1,
        "exactly the sidecar is scraped: {targets:#}"
    );
    let labels = &active[0]["labels"];
    for (k, v) in [
        ("namespace", "shop"),
        ("pod", "checkout-1"),
        ("container", "oomsnap"),
        ("job", "oomsnap"),
    ] {
        assert_eq!(labels[k], v, "target label {k}: {labels}");
    }
    assert_eq!(active[0]["health"], "up", "{:#}", active[0]);
    assert_eq!(
        targets["droppedTargets"].as_array().unwrap().len(),
        1,
        "the app's port is dropped"
    );

    // Every alert loads and evaluates without error.
    let healthy = common::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        let groups = prom.api("/api/v1/rules");
        let rules: Vec<_> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        rules.len() == 8 && rules.iter().all(|r| r["health"] == "ok")
    });
    assert!(
        healthy,
        "the alerts did not all evaluate cleanly: {:#}",
        prom.api("/api/v1/rules")
    );

    // Every dashboard query runs; each one whose series the sidecar serves
    // returns data, with the labels its legend uses.
    let (_, exposition) = snap.get("/metrics");
    let served = |name: &str| {
        exposition.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
    };
    let mut empty = Vec::new();
    for (title, exprs) in panel_queries(&dashboard()) {
        for expr in exprs {
            let result = prom.query(&plain_promql(&expr));
            let names = oomsnap_names(&expr);
            if names.iter().all(|n| served(n)) && result.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
            println!("{title}: {} series", result.len());
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data although oomsnap serves their series:\n{}",
        empty.join("\n")
    );
    let (_, memory) = panel_queries(&dashboard())
        .into_iter()
        .find(|(title, _)| title.starts_with("Memory"))
        .expect("a memory panel");
    let memory = prom.query(&plain_promql(&memory[0]));
    let percent: f64 = memory[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(
        (84.0..=86.0).contains(&percent),
        "memory % of the limit reads {percent}, not 85"
    );
    drop(prom);
    drop(snap);
}
