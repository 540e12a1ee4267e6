//! Every Kubernetes manifest under `deploy/` is valid for Kubernetes 1.29
//! (the first with native sidecars on by default) and for the newest version
//! `kubernetes-validate` bundles, with `--strict` (unknown fields rejected).
//! Kustomizations are checked for the files they name.
//!
//! `kubernetes-validate` has schemas for Kubernetes' own kinds only: for a
//! custom resource (cert-manager's, prometheus-operator's) it warns "Couldn't
//! find schema" and validates nothing, not even `metadata`. Those kinds are
//! allowed here by API group and checked elsewhere: the monitoring kit's in
//! tests/monitoring.rs (promtool and a field check). The plain Prometheus
//! files under `deploy/monitoring/prometheus/` are not Kubernetes objects and
//! are checked there too.
//!
//! Needs `pip install kubernetes-validate`; a missing tool is reported
//! through `common::require_live`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// API groups whose kinds have no bundled schema and may be skipped with a
/// warning (cert-manager's Issuer and Certificate, prometheus-operator's
/// PodMonitor and PrometheusRule).
const CRD_GROUPS: &[&str] = &["cert-manager.io/", "monitoring.coreos.com/"];

/// Folders of YAML under `deploy/` that are not Kubernetes objects.
const NOT_KUBERNETES: &[&str] = &["monitoring/prometheus"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if NOT_KUBERNETES.iter().any(|d| path == deploy_dir().join(d)) {
            continue;
        }
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
    Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || common::require_live("kubernetes-validate (pip install kubernetes-validate)")
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
        // The key whose list the current line is in, inside a generator.
        let mut key = "";
        for line in text.lines() {
            let trimmed = line.trim_end();
            if trimmed.trim_start().starts_with('#') || trimmed.is_empty() {
                continue;
            }
            if !line.starts_with(' ') && !line.starts_with('-') {
                section = trimmed.split(':').next().unwrap();
                continue;
            }
            let item = trimmed.trim().trim_start_matches("- ");
            if let Some(k) = item.strip_suffix(':') {
                key = k;
                continue;
            }
            let entry = match section {
                "resources" => trimmed.trim().strip_prefix("- "),
                "patches" => item.strip_prefix("path: "),
                // `files:` of a configMapGenerator: `path` or `key=path`. (A
                // secretGenerator's files are made by the user, not in git.)
                "configMapGenerator" if key == "files" => trimmed
                    .trim()
                    .strip_prefix("- ")
                    .map(|f| f.rsplit('=').next().unwrap()),
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
