//! The environment the kubelet would give the injected sidecar: each `env`
//! entry of the patched container resolved against the pod, the way the
//! kubelet resolves it.
//!
//! The sidecar container (from the patch) and the pod (JSON) enter; the
//! variables leave as a map, ready for `Config::from_vars`. It is what the
//! tests and the fuzzer check the injector against: every environment the
//! injector can produce must pass the sidecar's configuration parsing. A
//! `valueFrom` this module does not know is an error, so a new form in the
//! patch cannot slip past those checks.

use std::collections::BTreeMap;

use serde_json::Value;

use super::decide::kubelet_memory_limit;

/// Stand-ins for what only exists once the pod is scheduled.
pub const POD_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
pub const NODE_NAME: &str = "node-1";

/// Resolves every `env` entry of `container` against `pod`. Errors name the
/// variable and what the kubelet could not resolve.
pub fn sidecar_env(container: &Value, pod: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().ok_or("an env entry has no name")?;
        let value = match (e.get("value"), e.get("valueFrom")) {
            (Some(Value::String(v)), None) => v.clone(),
            (None, Some(from)) => resolve(name, from, pod)?,
            _ => return Err(format!("{name}: neither a string value nor a valueFrom")),
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

fn resolve(name: &str, from: &Value, pod: &Value) -> Result<String, String> {
    let meta = &pod["metadata"];
    if let Some(path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
        return Ok(match path {
            // A ReplicaSet's pod has only generateName at admission.
            "metadata.name" => meta["name"].as_str().map_or_else(
                || format!("{}x7k2q", meta["generateName"].as_str().unwrap_or("pod-")),
                str::to_string,
            ),
            "metadata.namespace" => meta["namespace"].as_str().unwrap_or("default").to_string(),
            "metadata.uid" => POD_UID.to_string(),
            "spec.nodeName" => NODE_NAME.to_string(),
            other => return Err(format!("{name}: fieldRef {other} is not simulated")),
        });
    }
    if let Some(r) = from.get("resourceFieldRef") {
        if r["resource"] != "limits.memory" || r.get("divisor").is_some() {
            return Err(format!("{name}: resourceFieldRef {r} is not simulated"));
        }
        let container = r["containerName"].as_str().unwrap_or_default();
        let limit = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .and_then(|c| c.pointer("/resources/limits/memory"))
            .and_then(Value::as_str);
        // With no (or a zero) limit the kubelet writes the node's
        // allocatable memory: the injector must never reference that.
        return kubelet_memory_limit(limit).ok_or_else(|| {
            format!(
                "{name}: resourceFieldRef to container {container:?}, whose limits.memory \
                 {limit:?} is not a limit above zero (the kubelet would write the node's memory)"
            )
        });
    }
    Err(format!("{name}: valueFrom {from} is not simulated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_references_resolve_like_the_kubelet() {
        let pod = json!({"metadata": {"generateName": "web-", "namespace": "shop"},
                         "spec": {"containers": [{"name": "app",
                             "resources": {"limits": {"memory": "1.5Gi"}}}]}});
        let c = json!({"env": [
            {"name": "A", "value": "x"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "L", "valueFrom": {"resourceFieldRef": {"containerName": "app",
                                                             "resource": "limits.memory"}}},
        ]});
        let env = sidecar_env(&c, &pod).unwrap();
        assert_eq!(env["A"], "x");
        assert_eq!(env["POD_NAME"], "web-x7k2q");
        assert_eq!(env["POD_NAMESPACE"], "shop");
        assert_eq!(env["L"], (3u64 << 29).to_string());
    }

    #[test]
    fn a_reference_to_a_missing_limit_is_an_error() {
        let pod = json!({"spec": {"containers": [{"name": "app"}]}});
        let c = json!({"env": [{"name": "L", "valueFrom": {"resourceFieldRef":
            {"containerName": "app", "resource": "limits.memory"}}}]});
        let e = sidecar_env(&c, &pod).unwrap_err();
        assert!(e.contains("node's memory"), "{e}");
        let c = json!({"env": [{"name": "S", "valueFrom": {"secretKeyRef": {}}}]});
        assert!(sidecar_env(&c, &pod).is_err());
    }
}
