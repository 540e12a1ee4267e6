//! Pure patch building: a pod (as JSON) plus [`InjectSettings`] in, a
//! JSONPatch (RFC 6902) and warnings out. No I/O, so every rule is a unit
//! test.
//!
//! Rules, in the order they are checked:
//! - a pod without `oomsnap.dev/inject: "true"` is left alone;
//! - a pod with `oomsnap.dev/status: injected` is left alone (never twice);
//! - a pod that already has our container or volume names is left alone,
//!   with a warning (someone added the sidecar by hand);
//! - otherwise the sidecar, its two volumes, `shareProcessNamespace` and the
//!   status annotation are added.
//!
//! JSONPatch cannot append to an array that does not exist, so
//! `/spec/initContainers`, `/spec/volumes` and `/metadata/annotations` are
//! added whole when absent and appended to (`/-`) otherwise.

use serde_json::{json, Map, Value};

use super::settings::InjectSettings;

/// The opt-in annotation (or label); its value must be `"true"`.
pub const ANNOTATION_INJECT: &str = "oomsnap.dev/inject";
/// Set on every patched pod so it is never patched twice.
pub const ANNOTATION_STATUS: &str = "oomsnap.dev/status";
/// The value of [`ANNOTATION_STATUS`] after injection.
pub const STATUS_INJECTED: &str = "injected";
/// Names the app container to watch; default the first container.
pub const ANNOTATION_CONTAINER: &str = "oomsnap.dev/container";
/// The app's pprof port, passed to the sidecar as `OOMSNAP_TARGET`.
pub const ANNOTATION_PORT: &str = "oomsnap.dev/port";
/// The app's pprof path (default `/debug/pprof`), used with the port.
pub const ANNOTATION_PATH: &str = "oomsnap.dev/path";
/// A memory limit for pods whose app container has none, passed as
/// `OOMSNAP_MEMORY_LIMIT`.
pub const ANNOTATION_MEMORY_LIMIT: &str = "oomsnap.dev/memory-limit";

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
/// Default pprof path when only a port is annotated.
pub const DEFAULT_PPROF_PATH: &str = "/debug/pprof";

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// JSONPatch operations; `None` means "leave the pod as it is".
    pub patch: Option<Vec<Value>>,
    /// Short sentences for the AdmissionReview `warnings` (kubectl shows them).
    pub warnings: Vec<String>,
}

impl Plan {
    fn skip() -> Self {
        Plan {
            patch: None,
            warnings: Vec::new(),
        }
    }
    fn skip_with(warning: String) -> Self {
        Plan {
            patch: None,
            warnings: vec![warning],
        }
    }
}

/// Escapes one JSON Pointer reference token (RFC 6901): `~` then `/`.
pub fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// Whether the pod asked for the sidecar: the annotation, or a label of the
/// same name (a webhook `objectSelector` can only match labels, so the
/// shipped webhook configuration selects on the label).
pub fn opted_in(pod: &Value) -> bool {
    let label = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(ANNOTATION_INJECT))
        .and_then(Value::as_str);
    annotation(pod, ANNOTATION_INJECT)
        .or(label)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Whether the pod was already patched.
pub fn already_injected(pod: &Value) -> bool {
    annotation(pod, ANNOTATION_STATUS).is_some_and(|v| v.trim() == STATUS_INJECTED)
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the patch for one pod.
pub fn plan(pod: &Value, settings: &InjectSettings) -> Plan {
    if !opted_in(pod) || already_injected(pod) {
        return Plan::skip();
    }
    let Some(spec) = pod.get("spec").and_then(Value::as_object) else {
        return Plan::skip_with("oomsnap: the pod has no spec; not injected".into());
    };
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        return Plan::skip_with("oomsnap: the pod has no containers; not injected".into());
    }

    // Which container to watch.
    let target = match annotation(pod, ANNOTATION_CONTAINER) {
        Some(wanted) => match containers
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(wanted.trim()))
        {
            Some(c) => c,
            None => {
                return Plan::skip_with(format!(
                    "oomsnap: {ANNOTATION_CONTAINER}={wanted:?} names no container of this pod; not injected"
                ))
            }
        },
        None => &containers[0],
    };
    let target_name = target
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();

    // Someone added the sidecar by hand: do not add a second one.
    let all_containers: Vec<&str> = names(spec.get("containers"))
        .into_iter()
        .chain(names(spec.get("initContainers")))
        .collect();
    if all_containers.contains(&SIDECAR_NAME) {
        return Plan::skip_with(format!(
            "oomsnap: the pod already has a container named {SIDECAR_NAME:?}; not injected"
        ));
    }
    let volumes = names(spec.get("volumes"));
    if let Some(v) = [PODINFO_VOLUME, SPOOL_VOLUME]
        .into_iter()
        .find(|v| volumes.contains(v))
    {
        return Plan::skip_with(format!(
            "oomsnap: the pod already has a volume named {v:?}; not injected"
        ));
    }

    let mut warnings = Vec::new();
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_UID", "metadata.uid"),
        field_env("NODE_NAME", "spec.nodeName"),
        json!({"name": "OOMSNAP_CONTAINER", "value": target_name}),
    ];

    // The app's memory limit, for the RSS fallback. A resourceFieldRef to an
    // unset limit resolves to the node's allocatable memory, which would make
    // the sidecar trigger against a number the kernel never enforces; so only
    // reference a limit that exists.
    let has_limit = target
        .pointer("/resources/limits/memory")
        .is_some_and(|v| !v.is_null());
    if has_limit {
        env.push(json!({
            "name": "OOMSNAP_MEMORY_LIMIT",
            "valueFrom": {"resourceFieldRef": {
                "containerName": target_name,
                "resource": "limits.memory",
            }}
        }));
    } else {
        match annotation(pod, ANNOTATION_MEMORY_LIMIT) {
            Some(v) if crate::config::parse_size(v).is_ok() => {
                env.push(json!({"name": "OOMSNAP_MEMORY_LIMIT", "value": v.trim()}));
                warnings.push(format!(
                    "oomsnap: container {target_name:?} has no memory limit; using {ANNOTATION_MEMORY_LIMIT}={v}"
                ));
            }
            Some(v) => warnings.push(format!(
                "oomsnap: container {target_name:?} has no memory limit and {ANNOTATION_MEMORY_LIMIT}={v:?} is not a size"
            )),
            None => warnings.push(format!(
                "oomsnap: container {target_name:?} has no memory limit; set one or annotate {ANNOTATION_MEMORY_LIMIT}"
            )),
        }
    }

    // Port and path annotations become OOMSNAP_TARGET, so the sidecar's
    // locate step can find the process by its listening port from the start.
    // (The annotations themselves also reach it through the Downward API.)
    if let Some(port) = annotation(pod, ANNOTATION_PORT) {
        let path = annotation(pod, ANNOTATION_PATH)
            .unwrap_or(DEFAULT_PPROF_PATH)
            .trim();
        match port.trim().parse::<u16>() {
            Ok(p) if p > 0 && path.starts_with('/') && !path.contains(char::is_whitespace) => {
                env.push(json!({"name": "OOMSNAP_TARGET", "value": format!("http://127.0.0.1:{p}{path}")}));
            }
            _ => warnings.push(format!(
                "oomsnap: ignored {ANNOTATION_PORT}={port:?}/{ANNOTATION_PATH}={path:?}; want a port and a /path"
            )),
        }
    }
    if let Some(store) = &settings.store {
        env.push(json!({"name": "OOMSNAP_STORE", "value": store}));
    }

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
        "securityContext": security_context(spec, target, settings.sys_ptrace),
    });
    if let Some(secret) = &settings.env_from_secret {
        // Optional: a missing Secret must not stop the app's pod from
        // starting (a native sidecar that cannot start blocks the app).
        container["envFrom"] = json!([{"secretRef": {"name": secret, "optional": true}}]);
    }

    let mut ops = Vec::new();
    if settings.native_sidecar {
        container["restartPolicy"] = json!("Always");
        append(&mut ops, spec, "initContainers", container);
    } else {
        append(&mut ops, spec, "containers", container);
    }
    append(
        &mut ops,
        spec,
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
        spec,
        "volumes",
        json!({"name": SPOOL_VOLUME, "emptyDir": {}}),
    );

    // hostPID and shareProcessNamespace may not both be set; with hostPID the
    // app's processes are visible anyway.
    if spec.get("hostPID").and_then(Value::as_bool) != Some(true) {
        ops.push(json!({"op": "add", "path": "/spec/shareProcessNamespace", "value": true}));
    }

    if pod
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object)
    {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", escape_pointer(ANNOTATION_STATUS)),
            "value": STATUS_INJECTED,
        }));
    } else {
        let mut m = Map::new();
        m.insert(ANNOTATION_STATUS.into(), json!(STATUS_INJECTED));
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": m}));
    }

    Plan {
        patch: Some(ops),
        warnings,
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

/// Appends `value` to `spec.<field>`, creating the array when it is absent.
fn append(ops: &mut Vec<Value>, spec: &Map<String, Value>, field: &str, value: Value) {
    let exists = spec.get(field).is_some_and(Value::is_array);
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
fn security_context(spec: &Map<String, Value>, target: &Value, sys_ptrace: bool) -> Value {
    let id = |field: &str| -> Option<i64> {
        target
            .pointer(&format!("/securityContext/{field}"))
            .and_then(Value::as_i64)
            .or_else(|| {
                spec.get("securityContext")
                    .and_then(|s| s.get(field))
                    .and_then(Value::as_i64)
            })
    };
    let uid = id("runAsUser").filter(|u| *u != 0).unwrap_or(DEFAULT_UID);
    let mut sc = json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let Some(gid) = id("runAsGroup").filter(|g| *g != 0) {
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

    fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
    }

    #[test]
    fn pods_without_the_opt_in_are_left_alone() {
        let s = InjectSettings::default();
        assert_eq!(
            plan(&pod(json!({}), json!({"containers": [app()]})), &s),
            Plan::skip()
        );
        let no = pod(
            json!({"oomsnap.dev/inject": "false"}),
            json!({"containers": [app()]}),
        );
        assert_eq!(plan(&no, &s), Plan::skip());
        let bare = json!({"metadata": {}, "spec": {"containers": [app()]}});
        assert_eq!(plan(&bare, &s), Plan::skip());
    }

    #[test]
    fn the_opt_in_label_works_like_the_annotation() {
        let p = json!({"metadata": {"labels": {"oomsnap.dev/inject": "true"}},
                       "spec": {"containers": [app()]}});
        let plan = plan(&p, &InjectSettings::default());
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
        assert_eq!(plan(&p, &InjectSettings::default()), Plan::skip());
    }

    #[test]
    fn missing_arrays_are_added_whole_and_existing_ones_appended_to() {
        let s = InjectSettings::default();
        let p = plan(&pod(opted(), json!({"containers": [app()]})), &s);
        assert!(op_at(&p, "/spec/initContainers")["value"].is_array());
        assert!(op_at(&p, "/spec/volumes")["value"].is_array());
        op_at(&p, "/spec/volumes/-"); // the second volume appends to the first

        let with = pod(
            opted(),
            json!({"containers": [app()], "initContainers": [{"name": "init", "image": "i"}],
                   "volumes": [{"name": "v", "emptyDir": {}}]}),
        );
        let p = plan(&with, &s);
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
        let p = plan(
            &pod(opted(), json!({"containers": [app()]})),
            &InjectSettings::default(),
        );
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
        let p = plan(&pod(opted(), json!({"containers": [app()]})), &s);
        let c = &op_at(&p, "/spec/containers/-")["value"];
        assert_eq!(c["name"], SIDECAR_NAME);
        assert!(c.get("restartPolicy").is_none());
        assert!(!ops(&p).iter().any(|o| o["path"] == "/spec/initContainers"));
    }

    #[test]
    fn memory_limit_comes_from_the_named_container() {
        let two = json!({"containers": [
            {"name": "proxy", "image": "p", "resources": {"limits": {"memory": "64Mi"}}}, app()]});
        let p = plan(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/container": "app"}),
                two,
            ),
            &InjectSettings::default(),
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let c = &op_at(&p, "/spec/initContainers")["value"][0];
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
    fn no_memory_limit_injects_without_the_field_ref_and_warns() {
        let p = plan(
            &pod(
                opted(),
                json!({"containers": [{"name": "app", "image": "a"}]}),
            ),
            &InjectSettings::default(),
        );
        let c = &op_at(&p, "/spec/initContainers")["value"][0];
        assert!(env(c, "OOMSNAP_MEMORY_LIMIT").is_none());
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].contains("no memory limit"),
            "{:?}",
            p.warnings
        );
        assert!(
            p.warnings[0].len() <= 120,
            "kubectl truncates long warnings"
        );
    }

    #[test]
    fn memory_limit_annotation_fills_in_for_a_missing_limit() {
        let p = plan(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/memory-limit": "512Mi"}),
                json!({"containers": [{"name": "app", "image": "a"}]}),
            ),
            &InjectSettings::default(),
        );
        let c = &op_at(&p, "/spec/initContainers")["value"][0];
        assert_eq!(env(c, "OOMSNAP_MEMORY_LIMIT").unwrap()["value"], "512Mi");
    }

    #[test]
    fn unknown_target_container_is_not_injected() {
        let p = plan(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/container": "nope"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        assert!(p.patch.is_none());
        assert!(p.warnings[0].contains("nope"));
    }

    #[test]
    fn hand_added_sidecar_is_not_duplicated() {
        let p = plan(
            &pod(
                opted(),
                json!({"containers": [app(), {"name": "oomsnap", "image": "o"}]}),
            ),
            &InjectSettings::default(),
        );
        assert!(p.patch.is_none());
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn port_and_path_annotations_become_the_target() {
        let p = plan(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/port": "8080",
                       "oomsnap.dev/path": "/internal/pprof"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        let c = &op_at(&p, "/spec/initContainers")["value"][0];
        assert_eq!(
            env(c, "OOMSNAP_TARGET").unwrap()["value"],
            "http://127.0.0.1:8080/internal/pprof"
        );

        let bad = plan(
            &pod(
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/port": "http"}),
                json!({"containers": [app()]}),
            ),
            &InjectSettings::default(),
        );
        let c = &op_at(&bad, "/spec/initContainers")["value"][0];
        assert!(env(c, "OOMSNAP_TARGET").is_none());
        assert_eq!(bad.warnings.len(), 1);
    }

    #[test]
    fn sidecar_takes_the_apps_uid_and_drops_everything() {
        let spec = json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
                          "containers": [app()]});
        let p = plan(&pod(opted(), spec), &InjectSettings::default());
        let sc = &op_at(&p, "/spec/initContainers")["value"][0]["securityContext"];
        assert_eq!(sc["runAsUser"], 1000);
        assert_eq!(sc["runAsGroup"], 3000);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));

        let s = InjectSettings {
            sys_ptrace: true,
            ..InjectSettings::default()
        };
        let root_app = json!({"containers": [{"name": "app", "image": "a",
                              "securityContext": {"runAsUser": 0}}]});
        let p = plan(&pod(opted(), root_app), &s);
        let sc = &op_at(&p, "/spec/initContainers")["value"][0]["securityContext"];
        assert_eq!(sc["runAsUser"], DEFAULT_UID);
        assert_eq!(sc["capabilities"]["add"], json!(["SYS_PTRACE"]));
    }

    #[test]
    fn settings_reach_the_container() {
        let s = InjectSettings {
            image: "registry.local/oomsnap:dev".into(),
            store: Some("s3://bucket/prefix".into()),
            env_from_secret: Some("oomsnap-store".into()),
            ..InjectSettings::default()
        };
        let p = plan(&pod(opted(), json!({"containers": [app()]})), &s);
        let c = &op_at(&p, "/spec/initContainers")["value"][0];
        assert_eq!(c["image"], "registry.local/oomsnap:dev");
        assert_eq!(
            env(c, "OOMSNAP_STORE").unwrap()["value"],
            "s3://bucket/prefix"
        );
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "oomsnap-store");
        assert_eq!(c["resources"]["limits"]["memory"], "32Mi");
        assert_eq!(op_at(&p, "/spec/shareProcessNamespace")["value"], true);
    }

    #[test]
    fn host_pid_pods_do_not_get_share_process_namespace() {
        let p = plan(
            &pod(opted(), json!({"hostPID": true, "containers": [app()]})),
            &InjectSettings::default(),
        );
        assert!(!ops(&p)
            .iter()
            .any(|o| o["path"] == "/spec/shareProcessNamespace"));
    }
}
