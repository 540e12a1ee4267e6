//! Pure patch building: a pod view plus [`InjectSettings`] in, a JSONPatch
//! (RFC 6902), the outcome and its reason out. No I/O, so every rule is a
//! unit test.
//!
//! [`super::decide`] says whether the pod gets the sidecar. Then:
//! - left alone (not opted in, opted out, already injected): no patch;
//! - skipped (it asked, but cannot be watched or would conflict): only the
//!   annotation `oomsnap.dev/status: "skipped: <reason>"`, so the reason is
//!   visible on the pod, not only in a warning the ReplicaSet controller
//!   receives and no person reads;
//! - injected: the sidecar, its two volumes, `shareProcessNamespace` and
//!   `oomsnap.dev/status: injected`.
//!
//! Every patch must apply: a JSONPatch the API server cannot apply fails
//! the pod's creation whatever the `failurePolicy`. JSONPatch cannot append
//! to an array that does not exist, so `/spec/initContainers`,
//! `/spec/volumes` and `/metadata/annotations` are added whole when absent
//! and appended to (`/-`) otherwise.

use serde_json::{json, Map, Value};

use crate::config::names;

use super::decide::{
    decide, Decision, Injection, MemoryLimit, Scope, STATUS_INJECTED, STATUS_SKIPPED,
};
use super::pod::{Ids, Metadata, Pod, Spec};
use super::settings::InjectSettings;
pub use crate::annotations::rules::{
    CONTAINER as ANNOTATION_CONTAINER, INJECT as ANNOTATION_INJECT,
    MEMORY_LIMIT as ANNOTATION_MEMORY_LIMIT, PATH as ANNOTATION_PATH, PORT as ANNOTATION_PORT,
    STATUS as ANNOTATION_STATUS,
};

/// Name of the injected container.
pub const SIDECAR_NAME: &str = "oomsnap";
/// The Downward API volume holding the pod's annotations.
pub const PODINFO_VOLUME: &str = "oomsnap-podinfo";
/// Where that volume is mounted; the sidecar reads `<dir>/annotations`.
pub const PODINFO_DIR: &str = "/etc/podinfo";
/// The disk-backed spool volume.
pub const SPOOL_VOLUME: &str = "oomsnap-spool";
/// Where the spool volume is mounted (the image's only writable path).
pub const SPOOL_DIR: &str = "/var/lib/oomsnap";
/// The UID the image runs as (distroless "nonroot").
pub const DEFAULT_UID: i64 = 65532;
/// The sidecar's admin port (`OOMSNAP_ADMIN_ADDR` default).
pub const ADMIN_PORT: u16 = 9186;

/// What happened to one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped,
    LeftAlone,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::LeftAlone => "left alone",
        }
    }
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub outcome: Outcome,
    /// Why, in words: logged with every decision.
    pub reason: String,
    /// JSONPatch operations; `None` means "leave the pod as it is".
    pub patch: Option<Vec<Value>>,
    /// Short sentences for the AdmissionReview `warnings` (kubectl shows them).
    pub warnings: Vec<String>,
}

/// Escapes one JSON Pointer reference token (RFC 6901): `~` then `/`.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Builds the plan for one pod.
pub fn plan(pod: &Pod<'_>, scope: Scope, settings: &InjectSettings) -> Plan {
    match decide(pod, scope) {
        Decision::LeaveAlone(reason) => Plan {
            outcome: Outcome::LeftAlone,
            reason,
            patch: None,
            warnings: Vec::new(),
        },
        Decision::Skip(reason) => {
            let status = format!("{STATUS_SKIPPED}{reason}");
            Plan {
                outcome: Outcome::Skipped,
                patch: pod
                    .metadata
                    .get()
                    .map(|meta| vec![status_op(meta, &status)]),
                warnings: vec![format!("oomsnap: not injected: {reason}")],
                reason,
            }
        }
        Decision::Inject(injection) => match (pod.metadata.get(), pod.spec.get()) {
            (Some(meta), Some(spec)) => Plan {
                outcome: Outcome::Injected,
                patch: Some(inject_ops(meta, spec, &injection, settings)),
                warnings: injection
                    .warnings
                    .iter()
                    .map(|w| format!("oomsnap: {w}"))
                    .collect(),
                reason: injection.why,
            },
            _ => unreachable_plan(),
        },
    }
}

/// `decide` only injects a pod with metadata and a spec; kept total anyway.
fn unreachable_plan() -> Plan {
    Plan {
        outcome: Outcome::LeftAlone,
        reason: "the pod has no metadata or spec".into(),
        patch: None,
        warnings: Vec::new(),
    }
}

/// Sets `oomsnap.dev/status`; `add` replaces an existing value.
fn status_op(meta: &Metadata<'_>, value: &str) -> Value {
    if meta.annotations.present {
        json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", escape_pointer(ANNOTATION_STATUS)),
            "value": value,
        })
    } else {
        let mut m = Map::new();
        m.insert(ANNOTATION_STATUS.into(), json!(value));
        json!({"op": "add", "path": "/metadata/annotations", "value": m})
    }
}

fn inject_ops(
    meta: &Metadata<'_>,
    spec: &Spec<'_>,
    injection: &Injection<'_>,
    settings: &InjectSettings,
) -> Vec<Value> {
    let target_name = &injection.container_name;
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_UID", "metadata.uid"),
        field_env("NODE_NAME", "spec.nodeName"),
        json!({"name": names::CONTAINER, "value": target_name}),
    ];
    env.push(match &injection.memory_limit {
        // Only ever a limit that exists and is above zero: a
        // resourceFieldRef to an unset (or zero) limit resolves to the
        // node's allocatable memory, which the kernel never enforces here.
        MemoryLimit::FieldRef => json!({
            "name": names::MEMORY_LIMIT,
            "valueFrom": {"resourceFieldRef": {
                "containerName": target_name,
                "resource": "limits.memory",
            }}
        }),
        MemoryLimit::Value(v) => json!({"name": names::MEMORY_LIMIT, "value": v}),
    });
    // Becomes the port the sidecar's locate step finds the process by, from
    // the start. (The annotations also reach it live, by the Downward API.)
    if let Some(target) = &injection.target {
        env.push(json!({"name": names::TARGET, "value": target}));
    }
    if let Some(store) = &settings.store {
        env.push(json!({"name": names::STORE, "value": store}));
    }

    // No probes: a NotReady sidecar makes the pod NotReady, and `oomsnap
    // run` reports its faults on /status and in metrics instead.
    let mut container = json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["run"],
        "env": env,
        "ports": [{"name": "oomsnap-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit},
        },
        "volumeMounts": [
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": true},
            {"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR},
        ],
        "securityContext": security_context(
            spec.security_context.get(),
            injection.container.security_context.get(),
            settings.sys_ptrace,
        ),
    });
    if let Some(secret) = &settings.env_from_secret {
        // Optional: a missing Secret must not stop the app's pod from
        // starting (a native sidecar that cannot start blocks the app).
        container["envFrom"] = json!([{"secretRef": {"name": secret, "optional": true}}]);
    }

    let mut ops = Vec::new();
    if settings.native_sidecar {
        container["restartPolicy"] = json!("Always");
        append(
            &mut ops,
            spec.init_containers.is_array(),
            "initContainers",
            container,
        );
    } else {
        append(
            &mut ops,
            spec.containers.is_array(),
            "containers",
            container,
        );
    }
    append(
        &mut ops,
        spec.volumes.is_array(),
        "volumes",
        json!({"name": PODINFO_VOLUME, "downwardAPI": {"items": [
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
        ]}}),
    );
    // Disk-backed (no `medium: Memory`): a tmpfs spool would be charged to
    // the pod's memory, the very thing we are watching, and it must outlive
    // the sidecar's restarts, which an emptyDir does.
    append(
        &mut ops,
        spec.volumes.is_array(),
        "volumes",
        json!({"name": SPOOL_VOLUME, "emptyDir": {}}),
    );

    // hostPID and shareProcessNamespace may not both be set; with hostPID the
    // app's processes are visible anyway.
    if spec.host_pid.0 != Some(true) {
        ops.push(json!({"op": "add", "path": "/spec/shareProcessNamespace", "value": true}));
    }
    ops.push(status_op(meta, STATUS_INJECTED));
    ops
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// Appends `value` to `spec.<field>`, creating the array when it is absent.
fn append(ops: &mut Vec<Value>, exists: bool, field: &str, value: Value) {
    // A second append in the same patch sees the array the first one made.
    let made_here = ops.iter().any(|op| op["path"] == format!("/spec/{field}"));
    if exists || made_here {
        ops.push(json!({"op": "add", "path": format!("/spec/{field}/-"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": format!("/spec/{field}"), "value": [value]}));
    }
}

/// Non-root, read-only root, no capabilities but the one the locate strategy
/// may need. The sidecar takes the app's UID/GID when the pod says what they
/// are: reading `/proc/<pid>/root` of the app is then allowed without
/// `SYS_PTRACE` (the kernel's ptrace access check passes for a process with
/// the same real, effective and saved IDs).
fn security_context(pod: Option<&Ids>, container: Option<&Ids>, sys_ptrace: bool) -> Value {
    let id =
        |field: fn(&Ids) -> Option<i64>| container.and_then(field).or_else(|| pod.and_then(field));
    let uid = id(|i| i.run_as_user.0)
        .filter(|u| *u > 0)
        .unwrap_or(DEFAULT_UID);
    let mut sc = json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let Some(gid) = id(|i| i.run_as_group.0).filter(|g| *g > 0) {
        sc["runAsGroup"] = json!(gid);
    }
    if sys_ptrace {
        sc["capabilities"]["add"] = json!(["SYS_PTRACE"]);
    }
    sc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans a pod given as JSON, through the same view the server parses.
    fn run(pod: &Value, s: &InjectSettings) -> Plan {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        plan(&view, Scope::Pod, s)
    }

    fn pod(annotations: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "annotations": annotations}, "spec": spec})
    }

    fn app() -> Value {
        json!({"name": "app", "image": "app:1", "resources": {"limits": {"memory": "256Mi"}}})
    }

    fn opted() -> Value {
        json!({"oomsnap.dev/inject": "true"})
    }

    fn ops(p: &Plan) -> &Vec<Value> {
        p.patch.as_ref().expect("a patch")
    }

    fn op_at<'a>(p: &'a Plan, path: &str) -> &'a Value {
        ops(p)
            .iter()
            .find(|o| o["path"] == path)
            .unwrap_or_else(|| panic!("no op at {path}: {:#?}", p.patch))
    }

    fn sidecar(p: &Plan) -> &Value {
        &op_at(p, "/spec/initContainers")["value"][0]
    }

    fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
    }

    /// A skipped pod gets only its status, with the reason.
    fn assert_skipped(p: &Plan, reason: &str) {
        assert_eq!(p.outcome, Outcome::Skipped, "{p:#?}");
        assert_eq!(ops(p).len(), 1, "{p:#?}");
        let status = op_at(p, "/metadata/annotations/oomsnap.dev~1status")["value"]
            .as_str()
            .unwrap();
        assert_eq!(status, format!("skipped: {reason}"));
        assert_eq!(p.reason, reason);
        assert!(p.warnings[0].contains(reason), "{:?}", p.warnings);
    }

    #[test]
    fn pods_without_the_opt_in_are_left_alone() {
        let s = InjectSettings::default();
        for p in [
            pod(json!({}), json!({"containers": [app()]})),
            pod(
                json!({"oomsnap.dev/inject": "false"}),
                json!({"containers": [app()]}),
            ),
            json!({"metadata": {}, "spec": {"containers": [app()]}}),
        ] {
            let plan = run(&p, &s);
            assert_eq!(plan.outcome, Outcome::LeftAlone);
            assert_eq!(plan.patch, None);
            assert!(plan.warnings.is_empty());
        }
    }

    #[test]
    fn the_opt_in_label_works_like_the_annotation() {
        let p = json!({"metadata": {"labels": {"oomsnap.dev/inject": "true"}},
                       "spec": {"containers": [app()]}});
        let plan = run(&p, &InjectSettings::default());
        // No annotations object yet: it is added whole.
        assert_eq!(
            op_at(&plan, "/metadata/annotations")["value"],
            json!({"oomsnap.dev/status": "injected"})
        );
    }

    #[test]
    fn injected_pods_are_never_patched_twice() {
        let p = pod(
            json!({"oomsnap.dev/inject": "true", "oomsnap.dev/status": "injected"}),
            json!({"containers": [app()]}),
        );
        let plan = run(&p, &InjectSettings::default());
        assert_eq!((plan.outcome, plan.patch), (Outcome::LeftAlone, None));
    }

    #[test]
    fn missing_arrays_are_added_whole_and_existing_ones_appended_to() {
        let s = InjectSettings::default();
        let p = run(&pod(opted(), json!({"containers": [app()]})), &s);
        assert!(op_at(&p, "/spec/initContainers")["value"].is_array());
        assert!(op_at(&p, "/spec/volumes")["value"].is_array());
        op_at(&p, "/spec/volumes/-"); // the second volume appends to the first

        let with = pod(
            opted(),
            json!({"containers": [app()], "initContainers": [{"name": "init", "image": "i"}],
                   "volumes": [{"name": "v", "emptyDir": {}}]}),
        );
        let p = run(&with, &s);
        assert_eq!(
            op_at(&p, "/spec/initContainers/-")["value"]["restartPolicy"],
            "Always"
        );
        let appended = ops(&p)
            .iter()
            .filter(|o| o["path"] == "/spec/volumes/-")
            .count();
        assert_eq!(appended, 2);
    }

    #[test]
    fn status_annotation_key_escapes_the_slash() {
        let p = run(
            &pod(opted(), json!({"containers": [app()]})),
            &InjectSettings::default(),
        );
        assert_eq!(p.outcome, Outcome::Injected);
        assert_eq!(
            op_at(&p, "/metadata/annotations/oomsnap.dev~1status")["value"],
            "injected"
        );
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn regular_container_when_native_sidecars_are_off() {
        let s = InjectSettings {
            native_sidecar: false,
            ..InjectSettings::default()
        };
        let p = run(&pod(opted(), json!({"containers": [app()]})), &s);
        let c = &op_at(&p, "/spec/containers/-")["value"];
        assert_eq!(c["name"], SIDECAR_NAME);
        assert!(c.get("restartPolicy").is_none());
        assert!(!ops(&p).iter().any(|o| o["path"] == "/spec/initContainers"));
    }

    #[test]
    fn memory_limit_comes_from_the_named_container() {
        let two = json!({"containers": [
            {"name": "proxy", "image": "p", "resources": {"limits": {"memory": "64Mi"}}}, app()]});
        let p = run(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/container": "app"}),
                two,
            ),
            &InjectSettings::default(),
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = sidecar(&p);
        let limit = env(c, "OOMSNAP_MEMORY_LIMIT").unwrap();
        assert_eq!(
            limit["valueFrom"]["resourceFieldRef"]["containerName"],
            "app"
        );
        assert_eq!(
            limit["valueFrom"]["resourceFieldRef"]["resource"],
            "limits.memory"
        );
        assert_eq!(env(c, "OOMSNAP_CONTAINER").unwrap()["value"], "app");
    }

    #[test]
    fn no_memory_limit_is_not_injected_and_the_pod_says_why() {
        let p = run(
            &pod(
                opted(),
                json!({"containers": [{"name": "app", "image": "a"}]}),
            ),
            &InjectSettings::default(),
        );
        assert_skipped(
            &p,
            "no memory limit (set resources.limits.memory or oomsnap.dev/memory-limit)",
        );
        // No annotations object: the status is added with it.
        let bare = json!({"metadata": {"labels": {"oomsnap.dev/inject": "true"}},
                          "spec": {"containers": [{"name": "app", "image": "a"}]}});
        let p = run(&bare, &InjectSettings::default());
        assert_eq!(p.outcome, Outcome::Skipped);
        assert!(
            op_at(&p, "/metadata/annotations")["value"]["oomsnap.dev/status"]
                .as_str()
                .unwrap()
                .starts_with("skipped: no memory limit")
        );
    }

    #[test]
    fn memory_limit_annotation_fills_in_for_a_missing_limit() {
        let p = run(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/memory-limit": " 512Mi "}),
                json!({"containers": [{"name": "app", "image": "a"}]}),
            ),
            &InjectSettings::default(),
        );
        assert_eq!(
            env(sidecar(&p), "OOMSNAP_MEMORY_LIMIT").unwrap()["value"],
            "512Mi"
        );
    }

    #[test]
    fn unknown_target_container_is_skipped() {
        let p = run(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/container": "nope"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        assert_skipped(&p, "oomsnap.dev/container=\"nope\" names no container");
    }

    #[test]
    fn hand_added_sidecar_is_not_duplicated() {
        let p = run(
            &pod(
                opted(),
                json!({"containers": [app(), {"name": "oomsnap", "image": "o"}]}),
            ),
            &InjectSettings::default(),
        );
        assert_skipped(&p, "the pod already has a container named \"oomsnap\"");
        let p = run(
            &pod(
                opted(),
                json!({"containers": [app()], "volumes": [{"name": "oomsnap-spool"}]}),
            ),
            &InjectSettings::default(),
        );
        assert_skipped(&p, "the pod already has a volume named \"oomsnap-spool\"");
    }

    #[test]
    fn port_and_path_annotations_become_the_target() {
        let p = run(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/port": "8080",
                       "oomsnap.dev/path": "/internal/pprof"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        assert_eq!(
            env(sidecar(&p), "OOMSNAP_TARGET").unwrap()["value"],
            "http://127.0.0.1:8080/internal/pprof"
        );

        let bad = run(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/port": "http"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        assert!(env(sidecar(&bad), "OOMSNAP_TARGET").is_none());
        assert_eq!(bad.warnings.len(), 1);
    }

    #[test]
    fn sidecar_takes_the_apps_uid_and_drops_everything() {
        let spec = json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
                          "containers": [app()]});
        let p = run(&pod(opted(), spec), &InjectSettings::default());
        let sc = &sidecar(&p)["securityContext"];
        assert_eq!(sc["runAsUser"], 1000);
        assert_eq!(sc["runAsGroup"], 3000);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));

        let s = InjectSettings {
            sys_ptrace: true,
            ..InjectSettings::default()
        };
        let mut root_app = app();
        root_app["securityContext"] = json!({"runAsUser": 0});
        let p = run(&pod(opted(), json!({"containers": [root_app]})), &s);
        let sc = &sidecar(&p)["securityContext"];
        assert_eq!(sc["runAsUser"], DEFAULT_UID);
        assert_eq!(sc["capabilities"]["add"], json!(["SYS_PTRACE"]));
    }

    #[test]
    fn settings_reach_the_container_and_it_has_no_probes() {
        let s = InjectSettings {
            image: "registry.local/oomsnap:dev".into(),
            store: Some("s3://bucket/prefix".into()),
            env_from_secret: Some("oomsnap-store".into()),
            ..InjectSettings::default()
        };
        let p = run(&pod(opted(), json!({"containers": [app()]})), &s);
        let c = sidecar(&p);
        assert_eq!(c["image"], "registry.local/oomsnap:dev");
        assert_eq!(
            env(c, "OOMSNAP_STORE").unwrap()["value"],
            "s3://bucket/prefix"
        );
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "oomsnap-store");
        assert_eq!(c["resources"]["limits"]["memory"], "32Mi");
        assert_eq!(op_at(&p, "/spec/shareProcessNamespace")["value"], true);
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            assert!(c.get(probe).is_none(), "{probe}");
        }
    }

    #[test]
    fn host_pid_pods_do_not_get_share_process_namespace() {
        let p = run(
            &pod(opted(), json!({"hostPID": true, "containers": [app()]})),
            &InjectSettings::default(),
        );
        assert!(!ops(&p)
            .iter()
            .any(|o| o["path"] == "/spec/shareProcessNamespace"));
    }
}
