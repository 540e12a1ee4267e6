//! What the injector writes, the sidecar accepts: a well-formed pod review
//! built from fuzzed strings (the annotations the injector reads, the app's
//! memory limit, its named ports, the scope), answered by `mutate_scoped`.
//!
//! The raw-body target (`inject`) rarely reaches deep into a valid pod; this
//! one always does. Invariant: an injected sidecar's environment, resolved
//! as the kubelet would (`inject::kubelet`), passes `Config::from_vars` with
//! no error and no warning; a pod that is not injected but asked says why in
//! `oomsnap.dev/status`.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use oomsnap::inject::{kubelet, mutate_scoped, InjectSettings, Scope};
use serde_json::{json, Map, Value};

/// Annotation keys, in the order the input's fields fill them.
const KEYS: &[&str] = &[
    "oomsnap.dev/inject",
    "oomsnap.dev/status",
    "oomsnap.dev/container",
    "oomsnap.dev/port",
    "oomsnap.dev/path",
    "oomsnap.dev/memory-limit",
    "profiles.grafana.com/memory.scrape",
    "profiles.grafana.com/memory.port",
    "profiles.grafana.com/memory.port_name",
    "profiles.grafana.com/memory.path",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // Fields separated by NUL; a field of a single \x01 means "absent".
    let mut fields = text.split('\0');
    let mut next = || fields.next().filter(|f| *f != "\u{1}");
    let mut ann = Map::new();
    for key in KEYS {
        if let Some(v) = next() {
            ann.insert(key.to_string(), json!(v));
        }
    }
    let mut app = json!({"name": next().unwrap_or("app"), "image": "app:1"});
    if let Some(limit) = next() {
        app["resources"] = json!({"limits": {"memory": limit}});
    }
    let mut ports = Vec::new();
    while let (Some(name), Some(number)) = (next(), next()) {
        let number: Value = number.parse::<i64>().map_or(json!(number), |n| json!(n));
        ports.push(json!({"name": name, "containerPort": number}));
    }
    app["ports"] = json!(ports);
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-", "namespace": "shop", "annotations": ann},
        "spec": {"containers": [app]}});
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "operation": "CREATE", "namespace": "shop", "object": pod}});
    let scope = if flags & 1 == 0 { Scope::Pod } else { Scope::Namespace };
    let settings = InjectSettings {
        store: (flags & 2 != 0).then(|| "s3://bucket/prefix".to_string()),
        native_sidecar: flags & 4 == 0,
        ..InjectSettings::default()
    };
    let body = serde_json::to_vec(&review).unwrap();
    let answer = mutate_scoped(&body, scope, &settings).expect("a well-formed review");
    let Some(patch) = answer.response.unwrap().patch else {
        return;
    };
    let ops: Vec<Value> = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    let sidecar = ops.iter().find_map(|op| match op["path"].as_str()? {
        "/spec/initContainers" => Some(op["value"][0].clone()),
        "/spec/containers/-" => Some(op["value"].clone()),
        _ => None,
    });
    match sidecar {
        Some(c) => {
            let env = kubelet::sidecar_env(&c, &pod)
                .unwrap_or_else(|e| panic!("the kubelet cannot resolve {e}"));
            match oomsnap::config::Config::from_vars(&env) {
                Ok((_, warnings)) => assert!(warnings.is_empty(), "{warnings:?}"),
                Err(e) => panic!("the sidecar refuses the injected environment:\n{e}\n{env:#?}"),
            }
        }
        None => {
            assert_eq!(ops.len(), 1, "{ops:?}");
            let status = ops[0]["value"].as_str().unwrap_or_default();
            assert!(status.starts_with("skipped: "), "{status}");
        }
    }
});
