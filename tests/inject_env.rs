//! One source of truth: every environment the injector writes into a
//! sidecar is one the sidecar accepts.
//!
//! Pods are generated from values that are valid, borderline or hostile for
//! each rule the injector applies (its annotations, Pyroscope's, the app's
//! limit and named ports, the scope); each goes through the library's own
//! handler (`mutate_scoped`), the patched sidecar's `env` is resolved the way
//! the kubelet resolves it (`inject::kubelet`), and the result must pass the
//! sidecar's `Config::from_vars` — and, for the shapes issue 10 found and a
//! sample of the rest, the real, strict `oomsnap check` binary.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use oomsnap::inject::{InjectSettings, Scope};
use serde_json::{json, Value};

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/admission")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The injected container in a decoded patch, if any.
fn injected_container(patch: &Value) -> Option<Value> {
    patch.as_array()?.iter().find_map(|op| {
        let path = op["path"].as_str()?;
        let value = &op["value"];
        match path {
            "/spec/initContainers/-" | "/spec/containers/-" => Some(value.clone()),
            "/spec/initContainers" | "/spec/containers" => value
                .as_array()?
                .iter()
                .find(|c| c["name"] == "oomsnap")
                .cloned(),
            _ => None,
        }
    })
}

/// A review of `pod` for the library's own handler.
fn review_of(pod: &Value) -> Vec<u8> {
    let mut review = load("plain.json");
    review["request"]["object"] = pod.clone();
    review.to_string().into_bytes()
}

/// Runs the handler on `pod`: (the injected container, the status written).
fn inject_pod(
    pod: &Value,
    scope: Scope,
    settings: &InjectSettings,
) -> (Option<Value>, Option<String>) {
    let answer = oomsnap::inject::mutate_scoped(&review_of(pod), scope, settings).unwrap();
    let response = answer.response.unwrap();
    assert!(response.allowed);
    let Some(patch) = response.patch else {
        return (None, None);
    };
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    let status = patch.as_array().unwrap().iter().find_map(|op| {
        let path = op["path"].as_str()?;
        if path == "/metadata/annotations/oomsnap.dev~1status" {
            op["value"].as_str().map(str::to_string)
        } else if path == "/metadata/annotations" {
            op["value"]["oomsnap.dev/status"]
                .as_str()
                .map(str::to_string)
        } else {
            None
        }
    });
    (injected_container(&patch), status)
}

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

/// A pod with annotations, limits and ports drawn from values that are
/// valid, borderline or hostile for every rule the injector applies.
fn random_pod(rng: &mut fastrand::Rng) -> Value {
    let mut ann = serde_json::Map::new();
    let mut maybe = |rng: &mut fastrand::Rng, key: &str, from: &[&str]| {
        if rng.bool() {
            ann.insert(key.into(), json!(pick(rng, from)));
        }
    };
    maybe(
        rng,
        "oomsnap.dev/inject",
        &["true", "enabled", "TRUE", "false", "maybe", ""],
    );
    maybe(
        rng,
        "oomsnap.dev/status",
        &["injected", "skipped: no memory limit", "x"],
    );
    maybe(
        rng,
        "oomsnap.dev/container",
        &["app", "nope", "linkerd-proxy", ""],
    );
    maybe(
        rng,
        "oomsnap.dev/port",
        &[
            "6060", " 8080 ", "0", "65535", "65536", "http", "-1", "", "6060/x", "1e3", "+80", "٣",
        ],
    );
    maybe(
        rng,
        "oomsnap.dev/path",
        &[
            "/debug/pprof",
            "/x?y",
            "/d#f",
            "//evil/x",
            "/a/../b",
            "relative",
            "/",
            "/%2e%2e",
            "/ok/",
            "/a b",
            "/\u{0}",
            "/é",
            "",
            "/tab\there",
        ],
    );
    maybe(
        rng,
        "oomsnap.dev/memory-limit",
        &[
            "512Mi",
            "0",
            "0.5",
            "1e9",
            "lots",
            " 1Gi ",
            "99999999999999999999",
            "1.5",
            "256MiB",
            "-1",
            "",
            "18446744073709551615",
        ],
    );
    maybe(
        rng,
        "profiles.grafana.com/memory.scrape",
        &["true", "false"],
    );
    maybe(
        rng,
        "profiles.grafana.com/memory.port",
        &["7070", "x", "0", "70000"],
    );
    maybe(
        rng,
        "profiles.grafana.com/memory.port_name",
        &["pprof", "metrics", "nope", ""],
    );
    maybe(
        rng,
        "profiles.grafana.com/memory.path",
        &["/debug/pprof/allocs", "/custom", "/x/heap?gc=1", "/heap"],
    );
    let mut app = json!({"name": "app", "image": "app:1"});
    if rng.bool() {
        let limit = pick(
            rng,
            &[
                "512Mi",
                "0",
                "1e9",
                "0.5",
                "1Ei",
                "100E",
                "garbage",
                "128974848",
                "500m",
            ],
        );
        app["resources"] = json!({"limits": {"memory": limit}});
    }
    let ports: Vec<Value> = [
        json!({"name": "pprof", "containerPort": 6061}),
        json!({"name": "metrics", "containerPort": 0}),
        json!({"name": "metrics", "containerPort": 70000}),
        json!({"name": "http", "containerPort": 8080}),
    ]
    .into_iter()
    .filter(|_| rng.bool())
    .collect();
    app["ports"] = json!(ports);
    let mut containers = vec![app];
    if rng.u8(..4) == 0 {
        containers.insert(
            0,
            json!({"name": "linkerd-proxy", "image": "l",
                   "resources": {"limits": {"memory": "64Mi"}}}),
        );
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "web-", "namespace": "shop", "annotations": ann},
           "spec": {"containers": containers}})
}

/// Every injected sidecar's environment, resolved the way the kubelet
/// resolves it, passes `Config::from_vars` with no error and no warning; and
/// every pod that asked but was not injected says why on its status.
#[test]
fn every_environment_the_injector_emits_passes_the_sidecars_configuration() {
    let mut rng = fastrand::Rng::with_seed(0x00f5_2a9e);
    let with_store = InjectSettings {
        store: Some("s3://bucket/prefix".into()),
        ..InjectSettings::default()
    };
    let (mut injected, mut skipped) = (0, 0);
    for i in 0..3000 {
        let pod = random_pod(&mut rng);
        let scope = if rng.bool() {
            Scope::Pod
        } else {
            Scope::Namespace
        };
        let settings = if i % 2 == 0 {
            &with_store
        } else {
            &InjectSettings::default()
        };
        let (container, status) = inject_pod(&pod, scope, settings);
        match container {
            Some(c) => {
                injected += 1;
                assert_eq!(status.as_deref(), Some("injected"));
                let env = oomsnap::inject::kubelet::sidecar_env(&c, &pod)
                    .unwrap_or_else(|e| panic!("{e}\npod: {pod:#}"));
                match oomsnap::config::Config::from_vars(&env) {
                    Ok((_, warnings)) => assert!(warnings.is_empty(), "{warnings:?}\n{env:#?}"),
                    Err(e) => panic!("the sidecar refuses what the injector wrote:\n{e}\nenv: {env:#?}\npod: {pod:#}"),
                }
            }
            None => {
                if let Some(s) = status {
                    skipped += 1;
                    assert!(
                        s.len() > "skipped: ".len() && s.starts_with("skipped: "),
                        "{s}"
                    );
                    assert!(s.len() < 400, "{s}");
                }
            }
        }
    }
    println!("{injected} injected, {skipped} skipped with a reason");
    assert!(
        injected > 300 && skipped > 300,
        "{injected} injected, {skipped} skipped"
    );
}

/// The strict `oomsnap check`, run for real on the environment of each
/// annotation shape the issue found and of a sample of generated pods: it
/// exits 0 (were it to pass, `run` stays up). The memory comes from a cgroup
/// fixture with no limit of its own, so the limit must come from what the
/// injector wrote.
#[test]
fn oomsnap_check_accepts_every_environment_the_injector_emits() {
    let store = tempfile::tempdir().unwrap();
    let settings = InjectSettings {
        store: Some(format!("file://{}", store.path().display())),
        ..InjectSettings::default()
    };
    let cgroup =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cgroup/v2_memory_max_unlimited");
    let shaped = |ann: Value, limit: Option<&str>| {
        let mut app = json!({"name": "app", "image": "app:1"});
        if let Some(l) = limit {
            app["resources"] = json!({"limits": {"memory": l}});
        }
        let mut a = ann;
        a["oomsnap.dev/inject"] = json!("true");
        json!({"metadata": {"generateName": "web-", "namespace": "shop", "annotations": a},
               "spec": {"containers": [app]}})
    };
    let mut pods = vec![
        shaped(
            json!({"oomsnap.dev/port": "6060", "oomsnap.dev/path": "/x?y"}),
            Some("512Mi"),
        ),
        shaped(
            json!({"oomsnap.dev/port": "6060", "oomsnap.dev/path": "/d#f"}),
            Some("512Mi"),
        ),
        shaped(
            json!({"oomsnap.dev/port": "7070", "oomsnap.dev/path": "/internal/pprof"}),
            Some("1e9"),
        ),
        shaped(json!({"oomsnap.dev/memory-limit": "512Mi"}), None),
        shaped(
            json!({"profiles.grafana.com/memory.scrape": "true",
                   "profiles.grafana.com/memory.port": "7070",
                   "profiles.grafana.com/memory.path": "/debug/pprof/allocs"}),
            Some("0.5Gi"),
        ),
    ];
    // The limits the issue found the sidecar refusing: not injected at all.
    for bad in ["0", "0.5"] {
        let (c, status) = inject_pod(
            &shaped(json!({"oomsnap.dev/memory-limit": bad}), None),
            Scope::Pod,
            &settings,
        );
        assert!(c.is_none(), "memory-limit {bad:?} was injected");
        assert!(status.unwrap().starts_with("skipped: no memory limit, and"));
    }
    let mut rng = fastrand::Rng::with_seed(0x000c_4ec4);
    while pods.len() < 15 {
        let pod = random_pod(&mut rng);
        if inject_pod(&pod, Scope::Namespace, &settings).0.is_some() {
            pods.push(pod);
        }
    }
    for pod in &pods {
        let (c, _) = inject_pod(pod, Scope::Namespace, &settings);
        let c = c.unwrap_or_else(|| panic!("not injected: {pod:#}"));
        let env = oomsnap::inject::kubelet::sidecar_env(&c, pod).unwrap();
        let out = Command::new(common::oomsnap_bin())
            .arg("check")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .env("OOMSNAP_CGROUP", &cgroup)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "oomsnap check exited {:?} on the injected environment {env:#?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
