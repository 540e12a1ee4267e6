//! Every Kubernetes manifest under `deploy/` is valid for Kubernetes 1.29
//! (the first with native sidecars on by default) and for the newest version
//! `kubernetes-validate` bundles, with `--strict` (unknown fields rejected).
//! Kustomizations are checked for the files they name.
//!
//! Needs `pip install kubernetes-validate`; without it the test prints a loud
//! SKIP, unless `OOMSNAP_REQUIRE_LIVE=1` (CI), which makes it a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// API groups whose kinds have no bundled schema and may be skipped with a
/// warning (cert-manager's Issuer and Certificate).
const CRD_GROUPS: &[&str] = &["cert-manager.io/"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == "kustomization.yaml" || n == "kustomization.yml")
}

fn have_validator() -> bool {
    if Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let msg = "kubernetes-validate is not installed (pip install kubernetes-validate)";
    if std::env::var("OOMSNAP_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("OOMSNAP_REQUIRE_LIVE=1 but {msg}");
    }
    eprintln!("\n*** SKIP: deploy/ manifests not validated: {msg} ***\n");
    false
}

#[test]
fn every_manifest_under_deploy_is_valid_kubernetes() {
    if !have_validator() {
        return;
    }
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let manifests: Vec<_> = files.iter().filter(|f| !is_kustomization(f)).collect();
    assert!(
        manifests.len() >= 8,
        "expected the examples and the injector: {manifests:?}"
    );

    let mut failures = Vec::new();
    for version in ["1.29".to_string(), common::newest_kubernetes()] {
        for file in &manifests {
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "-k", &version])
                .arg(file)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // A missing schema is only a warning to the tool; for a core kind
            // it means a typo in apiVersion or kind, so it fails here.
            let unknown_kind = text.lines().any(|l| {
                l.contains("Couldn't find schema") && !CRD_GROUPS.iter().any(|g| l.contains(g))
            });
            if !out.status.success() || unknown_kind {
                failures.push(format!(
                    "{} (Kubernetes {version}):\n{text}",
                    file.display()
                ));
            } else {
                println!("ok {} against {version}", file.display());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "invalid manifests:\n{}",
        failures.join("\n")
    );
}

/// The `resources:` and `patches: - path:` entries of a kustomization exist,
/// so `kubectl apply -k` does not stop on a missing file. (No kustomize
/// binary here; this is the part that can go stale when files move.)
#[test]
fn kustomizations_name_files_that_exist() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let kustomizations: Vec<_> = files.into_iter().filter(|f| is_kustomization(f)).collect();
    assert!(
        kustomizations
            .iter()
            .any(|k| k.ends_with("deploy/injector/kustomization.yaml")),
        "`kubectl apply -k deploy/injector` needs deploy/injector/kustomization.yaml"
    );
    for k in &kustomizations {
        let dir = k.parent().unwrap();
        let text = std::fs::read_to_string(k).unwrap();
        let mut section = "";
        for line in text.lines() {
            let trimmed = line.trim_end();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            if !line.starts_with(' ') && !line.starts_with('-') {
                section = trimmed.split(':').next().unwrap();
                continue;
            }
            let entry = match section {
                "resources" => trimmed.trim().strip_prefix("- "),
                "patches" => trimmed
                    .trim()
                    .trim_start_matches("- ")
                    .strip_prefix("path: "),
                _ => None,
            };
            if let Some(entry) = entry {
                let target = dir.join(entry.trim());
                let ok = target.is_file() || target.join("kustomization.yaml").is_file();
                assert!(ok, "{} names {entry:?}, which does not exist", k.display());
            }
        }
    }
}

/// Every document of a YAML file as JSON, through Python's `yaml` (it comes
/// with kubernetes-validate); `None` when that is not installed.
fn yaml_docs(file: &Path) -> Option<Vec<serde_json::Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file)
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("No module named 'yaml'"),
            "{} does not parse as YAML:\n{err}",
            file.display()
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// Every document under deploy/, or `None` (with a loud skip) without YAML.
fn all_docs() -> Option<Vec<(PathBuf, serde_json::Value)>> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    let mut docs = Vec::new();
    for f in files.iter().filter(|f| !is_kustomization(f)) {
        let Some(d) = yaml_docs(f) else {
            let msg = "python3 with PyYAML is not installed (pip install kubernetes-validate)";
            if std::env::var("OOMSNAP_REQUIRE_LIVE").as_deref() == Ok("1") {
                panic!("OOMSNAP_REQUIRE_LIVE=1 but {msg}");
            }
            eprintln!("\n*** SKIP: deploy/ manifests not inspected: {msg} ***\n");
            return None;
        };
        docs.extend(d.into_iter().map(|d| (f.clone(), d)));
    }
    Some(docs)
}

fn expressions<'a>(selector: &'a serde_json::Value, key: &str) -> Vec<&'a serde_json::Value> {
    selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["key"] == key)
        .collect()
}

/// The webhook fails open, quickly, never for the control plane or itself,
/// and its two entries (pod and namespace opt-in) call the handler's two
/// paths with selectors that split the namespaces between them.
#[test]
fn the_webhook_fails_open_and_its_entries_match_the_handlers_scopes() {
    use oomsnap::inject::decide::NAMESPACE_ENABLED;
    use oomsnap::inject::server::{MUTATE_NAMESPACE_PATH, MUTATE_PATH};
    let Some(docs) = all_docs() else { return };
    let hooks: Vec<_> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "MutatingWebhookConfiguration")
        .flat_map(|(f, d)| {
            d["webhooks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |h| (f, h))
        })
        .filter(|(_, h)| h.get("clientConfig").is_some())
        .collect();
    let mut paths = Vec::new();
    for (file, h) in &hooks {
        let at = format!("{} webhook {}", file.display(), h["name"]);
        assert_eq!(h["failurePolicy"], "Ignore", "{at}");
        assert_eq!(h["sideEffects"], "None", "{at}");
        assert_eq!(
            h["admissionReviewVersions"],
            serde_json::json!(["v1"]),
            "{at}"
        );
        assert!(
            h["timeoutSeconds"].as_u64().is_some_and(|t| t <= 10),
            "{at}"
        );
        let names = expressions(&h["namespaceSelector"], "kubernetes.io/metadata.name");
        assert!(
            names.iter().any(|e| e["operator"] == "NotIn"
                && e["values"].as_array().is_some_and(
                    |v| v.contains(&"kube-system".into()) && v.contains(&"oomsnap".into())
                )),
            "{at} must exclude kube-system and oomsnap"
        );
        // Pods labelled oomsnap.dev/inject=false are never sent.
        let opt_out = expressions(&h["objectSelector"], "oomsnap.dev/inject");
        assert!(
            opt_out
                .iter()
                .any(|e| e["operator"] == "NotIn" && e["values"] == serde_json::json!(["false"])),
            "{at}"
        );
        let path = h["clientConfig"]["service"]["path"].as_str().unwrap_or("");
        let ns = expressions(&h["namespaceSelector"], "oomsnap.dev/inject");
        let want = if path == MUTATE_NAMESPACE_PATH {
            "In"
        } else {
            "NotIn"
        };
        assert!(
            ns.iter()
                .any(|e| e["operator"] == want
                    && e["values"] == serde_json::json!([NAMESPACE_ENABLED])),
            "{at}: path {path} needs oomsnap.dev/inject {want} [{NAMESPACE_ENABLED}]"
        );
        paths.push(path.to_string());
    }
    paths.sort();
    assert_eq!(paths, [MUTATE_PATH, MUTATE_NAMESPACE_PATH], "{hooks:#?}");
}

/// No shipped oomsnap sidecar has a readiness probe (a NotReady sidecar
/// makes the pod NotReady); a liveness probe, if any, tolerates a minute.
#[test]
fn shipped_sidecars_have_no_readiness_probe() {
    let Some(docs) = all_docs() else { return };
    let mut sidecars = 0;
    for (file, d) in &docs {
        let spec = &d["spec"]["template"]["spec"];
        for c in ["containers", "initContainers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
            .filter(|c| c["args"].get(0) == Some(&"run".into()))
        {
            sidecars += 1;
            let at = format!("{} container {}", file.display(), c["name"]);
            assert!(
                c.get("readinessProbe").is_none(),
                "{at} has a readiness probe"
            );
            assert!(c.get("startupProbe").is_none(), "{at} has a startup probe");
            if let Some(p) = c.get("livenessProbe") {
                let period = p["periodSeconds"].as_u64().unwrap_or(10);
                let failures = p["failureThreshold"].as_u64().unwrap_or(3);
                assert!(
                    period * failures >= 60,
                    "{at}: liveness gives up within {}s",
                    period * failures
                );
            }
        }
    }
    assert!(sidecars >= 2, "found {sidecars} sidecars under deploy/");
}
