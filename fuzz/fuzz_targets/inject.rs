//! The admission webhook's handler: `mutate_body` over an arbitrary request
//! body (what reaches the injector's HTTPS port, already capped at 1 MiB by
//! the server).
//!
//! Invariants: the answer is an `admission.k8s.io/v1` review that always
//! allows the pod and echoes the uid; a patch is base64 of a JSON array of
//! `add` operations; any `OOMSNAP_TARGET` the patch sets points at
//! 127.0.0.1 (a pod's annotations choose a port and a path, never a host);
//! the injected container runs as non-root, read-only, with no capabilities
//! but SYS_PTRACE.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use oomsnap::inject::{mutate_body, InjectSettings};
use serde_json::Value;

fn check_container(c: &Value) {
    for e in c["env"].as_array().into_iter().flatten() {
        if e["name"] == "OOMSNAP_TARGET" {
            let v = e["value"].as_str().expect("OOMSNAP_TARGET is a string");
            // What the sidecar will do with it: its own parser, then the
            // host check.
            if let Ok((target, _)) = oomsnap::config::parse_target(v) {
                let url = url::Url::parse(&target).expect("parse_target accepted it");
                assert_eq!(url.host_str(), Some("127.0.0.1"), "OOMSNAP_TARGET={v}");
                assert!(
                    url.username().is_empty() && url.password().is_none(),
                    "OOMSNAP_TARGET={v}"
                );
            }
        }
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
}

fuzz_target!(|data: &[u8]| {
    let settings = InjectSettings::default();
    let Ok(review) = mutate_body(data, &settings) else {
        return;
    };
    assert_eq!(review.api_version, "admission.k8s.io/v1");
    let resp = review.response.as_ref().expect("a response");
    assert!(resp.allowed, "the webhook never refuses a pod");
    // (Not serde_json::Value: a field the review ignores may hold a lone
    // surrogate escape, which Value refuses and the typed parse skips.)
    let req =
        oomsnap::inject::AdmissionReview::parse_request(data).expect("mutate_body accepted it");
    assert_eq!(req.uid, resp.uid);
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
    for op in &ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().expect("op path");
        assert!(
            path.starts_with("/spec/") || path.starts_with("/metadata/annotations"),
            "{path}"
        );
        match path {
            "/spec/containers/-" | "/spec/initContainers/-" => check_container(&op["value"]),
            "/spec/containers" | "/spec/initContainers" => {
                for c in op["value"].as_array().expect("array") {
                    check_container(c);
                }
            }
            _ => {}
        }
    }
});
