//! The admission webhook's handler: `mutate_scoped` over an arbitrary
//! request body (what reaches the injector's HTTPS port, already capped at
//! 1 MiB by the server), for both webhook entries (pod and namespace scope).
//!
//! Invariants: the answer is an `admission.k8s.io/v1` review that always
//! allows the pod and echoes the uid; a patch is base64 of a JSON array of
//! `add` operations; a skipped pod gets only `oomsnap.dev/status: skipped:
//! <reason>`; an injected sidecar's environment, resolved as the kubelet
//! would, passes the sidecar's own `Config::from_vars`; any `OOMSNAP_TARGET`
//! points at 127.0.0.1 (a pod's annotations choose a port and a path, never
//! a host); the injected container runs as non-root, read-only, with no
//! capabilities but SYS_PTRACE.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use oomsnap::inject::{kubelet, mutate_scoped, parse_request, InjectSettings, Scope};
use serde_json::Value;

fn check_container(c: &Value, pod: Option<&Value>) {
    for e in c["env"].as_array().into_iter().flatten() {
        if e["name"] == "OOMSNAP_TARGET" {
            let v = e["value"].as_str().expect("OOMSNAP_TARGET is a string");
            let (target, _) = oomsnap::config::parse_target(v).expect("the sidecar accepts it");
            let url = url::Url::parse(&target).expect("parse_target accepted it");
            assert_eq!(url.host_str(), Some("127.0.0.1"), "OOMSNAP_TARGET={v}");
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "OOMSNAP_TARGET={v}"
            );
        }
    }
    // The whole environment, as the kubelet resolves it. (Without a pod
    // Value — a body serde_json::Value refuses — only the checks above.)
    if let Some(pod) = pod {
        let env = kubelet::sidecar_env(c, pod).expect("the kubelet resolves every variable");
        let (_, warnings) = oomsnap::config::Config::from_vars(&env)
            .unwrap_or_else(|e| panic!("the sidecar refuses the injected environment: {e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_ne!(sc["runAsUser"], 0);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        assert_eq!(cap, "SYS_PTRACE");
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert!(c.get(probe).is_none(), "the sidecar has a {probe}");
    }
}

fn check(data: &[u8], scope: Scope) {
    let settings = InjectSettings::default();
    let Ok(review) = mutate_scoped(data, scope, &settings) else {
        return;
    };
    assert_eq!(review.api_version, "admission.k8s.io/v1");
    let resp = review.response.as_ref().expect("a response");
    assert!(resp.allowed, "the webhook never refuses a pod");
    let req = parse_request(data).expect("mutate_scoped accepted it");
    assert_eq!(req.uid.get(), Some(resp.uid.as_str()));
    // The answer itself serialises.
    serde_json::to_vec(&review).expect("review serialises");

    let Some(patch) = &resp.patch else {
        assert!(resp.patch_type.is_none());
        return;
    };
    assert_eq!(resp.patch_type.as_deref(), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("patch is base64");
    let ops: Vec<Value> = serde_json::from_slice(&bytes).expect("patch is a JSON array");
    assert!(!ops.is_empty());
    let pod = serde_json::from_slice::<Value>(data)
        .ok()
        .map(|v| v["request"]["object"].clone());
    let mut containers = 0;
    let mut status = None;
    for op in &ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().expect("op path");
        assert!(
            path.starts_with("/spec/") || path.starts_with("/metadata/annotations"),
            "{path}"
        );
        match path {
            "/spec/containers/-" | "/spec/initContainers/-" => {
                containers += 1;
                check_container(&op["value"], pod.as_ref())
            }
            "/spec/containers" | "/spec/initContainers" => {
                for c in op["value"].as_array().expect("array") {
                    containers += 1;
                    check_container(c, pod.as_ref());
                }
            }
            "/metadata/annotations" => status = op["value"]["oomsnap.dev/status"].as_str(),
            "/metadata/annotations/oomsnap.dev~1status" => status = op["value"].as_str(),
            _ => {}
        }
    }
    match status {
        Some("injected") => assert_eq!(containers, 1, "{ops:?}"),
        Some(s) => {
            assert!(s.starts_with("skipped: ") && s.len() > 9, "{s}");
            assert_eq!(ops.len(), 1, "a skipped pod gets its status only: {ops:?}");
        }
        None => panic!("every patch sets oomsnap.dev/status: {ops:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, Scope::Pod);
    check(data, Scope::Namespace);
});
