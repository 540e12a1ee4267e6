//! Pure decisions about one pod: is it ours to inject (scope and opt-in),
//! and if so which container is watched, where its memory limit comes from
//! and where its pprof endpoint is.
//!
//! A [`Pod`] view and the webhook's [`Scope`] enter; a [`Decision`] with its
//! reason in words leaves. Every value that will reach the sidecar's
//! environment is checked here with the sidecar's own parser
//! (`config::parse_memory_limit`, `annotations::rules::target_with` →
//! `config::parse_target`), so the injector never writes a variable the
//! sidecar would refuse.

use std::collections::BTreeMap;

use super::patch::{PODINFO_VOLUME, SIDECAR_NAME, SPOOL_VOLUME};
use super::pod::{each, names, Container, Metadata, Pod, Spec};
use super::quantity;
use crate::annotations::rules::{
    self, parse_inject, quote, CONTAINER, INJECT, MEMORY_LIMIT, PYROSCOPE_MEMORY_PORT_NAME, STATUS,
};
use crate::config::{parse_memory_limit, DEFAULT_TARGET};

/// The value of [`STATUS`] after injection; the only one that means "never
/// again" (a `skipped: …` pod is looked at afresh when it is re-admitted).
pub const STATUS_INJECTED: &str = "injected";
/// The prefix of [`STATUS`] on a pod that asked and was not injected.
pub const STATUS_SKIPPED: &str = "skipped: ";
/// The namespace label value that opts every pod in it in.
pub const NAMESPACE_ENABLED: &str = "enabled";
/// A container port of this name is the pprof port when no annotation says.
pub const PPROF_PORT_NAME: &str = "pprof";
/// Mesh proxies a mutating webhook may put first in `containers`; never the
/// default container to watch.
pub const KNOWN_PROXIES: &[&str] = &["linkerd-proxy", "istio-proxy"];

/// Which webhook entry called: the two differ only in how a pod opts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Pods in any namespace but the enabled ones: opt in by label or
    /// annotation.
    Pod,
    /// Pods in a namespace labelled `oomsnap.dev/inject=enabled`: in unless
    /// the pod opts out.
    Namespace,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Pod => "pod",
            Scope::Namespace => "namespace",
        }
    }
}

/// Where `OOMSNAP_MEMORY_LIMIT` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLimit {
    /// A `resourceFieldRef` to the container's own `limits.memory`.
    FieldRef,
    /// The `oomsnap.dev/memory-limit` annotation, as the sidecar will read it.
    Value(String),
}

/// Everything the patch needs for a pod that gets the sidecar.
#[derive(Debug)]
pub struct Injection<'p> {
    /// Why it is injected (the opt-in that matched).
    pub why: String,
    pub container: &'p Container<'p>,
    pub container_name: String,
    pub memory_limit: MemoryLimit,
    /// `OOMSNAP_TARGET`, when the annotations or ports say where pprof is.
    pub target: Option<String>,
    /// Annotations that were ignored, in sentences.
    pub warnings: Vec<String>,
}

/// What to do with one pod.
#[derive(Debug)]
pub enum Decision<'p> {
    /// Not ours: not opted in, opted out, already injected.
    LeaveAlone(String),
    /// It asked for the sidecar and does not get it; the reason is written
    /// on the pod (`oomsnap.dev/status: skipped: <reason>`).
    Skip(String),
    Inject(Injection<'p>),
}

/// Whether the pod opted in: `Ok(why)` or `Err(why not)`. An explicit
/// `false` (annotation or label) always wins; then an explicit `true`; then
/// the scope decides.
pub fn opt_in(meta: &Metadata<'_>, scope: Scope) -> Result<String, String> {
    let annotation = meta.annotations.get(INJECT);
    let label = meta.labels.get(INJECT);
    let said = |v: Option<&str>| v.and_then(parse_inject);
    for (how, v) in [("annotation", annotation), ("label", label)] {
        if said(v) == Some(false) {
            return Err(format!(
                "opted out by {how} {INJECT}={}",
                quote(v.unwrap_or(""))
            ));
        }
    }
    for (how, v) in [("annotation", annotation), ("label", label)] {
        if said(v) == Some(true) {
            return Ok(format!("opted in by {how} {INJECT}"));
        }
    }
    match scope {
        Scope::Namespace => Ok(format!(
            "opted in by its namespace (label {INJECT}={NAMESPACE_ENABLED})"
        )),
        Scope::Pod => match annotation.or(label) {
            Some(v) => Err(format!("{INJECT}={} is neither true nor false", quote(v))),
            None => Err(format!("not opted in (no {INJECT} label or annotation)")),
        },
    }
}

/// The container to watch: the one `oomsnap.dev/container` names, else the
/// first that is not a known mesh proxy.
fn pick_container<'p>(
    meta: &Metadata<'_>,
    spec: &'p Spec<'p>,
) -> Result<&'p Container<'p>, String> {
    let mut all = each(&spec.containers).peekable();
    if all.peek().is_none() {
        return Err("the pod has no containers".into());
    }
    if let Some(wanted) = meta.annotations.get(CONTAINER) {
        return each(&spec.containers)
            .find(|c| c.name.get() == Some(wanted.trim()))
            .ok_or_else(|| format!("{CONTAINER}={} names no container", quote(wanted)));
    }
    let first = each(&spec.containers).next();
    each(&spec.containers)
        .find(|c| !c.name.get().is_some_and(|n| KNOWN_PROXIES.contains(&n)))
        .or(first)
        .ok_or_else(|| "the pod has no containers".into())
}

/// Bytes the kubelet writes for a `resourceFieldRef` to `limits.memory`:
/// the quantity rounded up, as a plain integer. `None` when the limit is
/// absent, zero (the kubelet substitutes the node's allocatable memory, a
/// number the kernel never enforces on the container) or not a quantity.
pub fn kubelet_memory_limit(limit: Option<&str>) -> Option<String> {
    let q = quantity::parse(limit?).ok()?;
    (!q.is_zero()).then(|| q.ceil().to_string())
}

/// Where the sidecar's memory limit comes from, or why there is none.
fn memory_limit(meta: &Metadata<'_>, container: &Container<'_>) -> Result<MemoryLimit, String> {
    // The value the kubelet will write must pass the sidecar's own rule.
    if kubelet_memory_limit(container.memory_limit())
        .is_some_and(|v| parse_memory_limit(&v).is_ok())
    {
        return Ok(MemoryLimit::FieldRef);
    }
    match meta.annotations.get(MEMORY_LIMIT) {
        Some(v) => match parse_memory_limit(v.trim()) {
            Ok(_) => Ok(MemoryLimit::Value(v.trim().to_string())),
            Err(why) => Err(format!(
                "no memory limit, and {MEMORY_LIMIT}={} is not usable: {why} \
                 (set resources.limits.memory or a size such as 512Mi)",
                quote(v)
            )),
        },
        None => Err(format!(
            "no memory limit (set resources.limits.memory or {MEMORY_LIMIT})"
        )),
    }
}

/// The port of `container` named `name`, if it is a TCP port number.
fn port_named(container: &Container<'_>, name: &str) -> Option<u16> {
    each(&container.ports)
        .find(|p| p.name.get() == Some(name))
        .and_then(|p| p.container_port.0)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// `OOMSNAP_TARGET` from the annotations (oomsnap's, then Pyroscope's) and
/// the container's named ports, plus a sentence for each value ignored.
/// `None` leaves the sidecar's default.
fn pprof_target(
    ann: &BTreeMap<String, String>,
    container: &Container<'_>,
) -> (Option<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut ignored = |key: &str, v: &str, why: &str| {
        warnings.push(format!("ignored {key}={}: {why}", quote(v)));
    };
    let mut bad = false;
    let port = match rules::pprof_port(ann) {
        Some((_, _, Ok(p))) => Some(p),
        Some((key, v, Err(why))) => {
            ignored(key, v, &why);
            bad = true;
            None
        }
        None => {
            let by_name = ann
                .get(PYROSCOPE_MEMORY_PORT_NAME)
                .filter(|_| rules::pyroscope_scraped(ann));
            match by_name {
                Some(name) => {
                    let found = port_named(container, name.trim());
                    if found.is_none() {
                        ignored(
                            PYROSCOPE_MEMORY_PORT_NAME,
                            name,
                            "no port of the watched container has that name",
                        );
                    }
                    found
                }
                None => port_named(container, PPROF_PORT_NAME),
            }
        }
    };
    let path = match rules::pprof_path(ann) {
        Some((_, _, Ok(p))) => Some(p),
        Some((key, v, Err(why))) => {
            ignored(key, v, &why);
            bad = true;
            None
        }
        None => None,
    };
    if bad || (port.is_none() && path.is_none()) {
        return (None, warnings);
    }
    match rules::target_with(DEFAULT_TARGET, port, path.as_deref()) {
        Ok(t) => (Some(t), warnings),
        Err(why) => {
            warnings.push(format!("no OOMSNAP_TARGET: {why}"));
            (None, warnings)
        }
    }
}

/// Decides one pod.
pub fn decide<'p>(pod: &'p Pod<'p>, scope: Scope) -> Decision<'p> {
    let Some(meta) = pod.metadata.get() else {
        return Decision::LeaveAlone("the pod has no metadata".into());
    };
    if meta.annotations.get(STATUS).map(str::trim) == Some(STATUS_INJECTED) {
        return Decision::LeaveAlone(format!("already injected ({STATUS}: {STATUS_INJECTED})"));
    }
    let why = match opt_in(meta, scope) {
        Ok(why) => why,
        Err(why_not) => return Decision::LeaveAlone(why_not),
    };
    let Some(spec) = pod.spec.get() else {
        return Decision::Skip("the pod has no spec".into());
    };
    let container = match pick_container(meta, spec) {
        Ok(c) => c,
        Err(why) => return Decision::Skip(why),
    };
    // The API server refuses a nameless container; without a name the
    // sidecar's resourceFieldRef and OOMSNAP_CONTAINER could point nowhere.
    let Some(container_name) = container.name.get().filter(|n| !n.trim().is_empty()) else {
        return Decision::Skip("the container to watch has no name".into());
    };
    // Someone added the sidecar by hand: never a second one.
    let taken = each(&spec.containers)
        .filter_map(|c| c.name.get())
        .chain(names(&spec.init_containers))
        .any(|n| n == SIDECAR_NAME);
    if taken {
        return Decision::Skip(format!(
            "the pod already has a container named {SIDECAR_NAME:?}"
        ));
    }
    if let Some(v) = names(&spec.volumes).find(|v| [PODINFO_VOLUME, SPOOL_VOLUME].contains(v)) {
        return Decision::Skip(format!("the pod already has a volume named {v:?}"));
    }
    let memory_limit = match memory_limit(meta, container) {
        Ok(m) => m,
        Err(why) => return Decision::Skip(why),
    };
    let mut warnings = Vec::new();
    if memory_limit == MemoryLimit::FieldRef && meta.annotations.get(MEMORY_LIMIT).is_some() {
        warnings.push(format!(
            "ignored {MEMORY_LIMIT}: the container has its own limits.memory"
        ));
    }
    let (target, more) = pprof_target(&meta.annotations.to_map(), container);
    warnings.extend(more);
    Decision::Inject(Injection {
        why,
        container,
        container_name: container_name.to_string(),
        memory_limit,
        target,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn with_pod<R>(pod: Value, f: impl FnOnce(&Pod<'_>) -> R) -> R {
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text).unwrap();
        f(&view)
    }

    fn app(limit: Option<&str>) -> Value {
        let mut c = json!({"name": "app", "image": "a"});
        if let Some(l) = limit {
            c["resources"] = json!({"limits": {"memory": l}});
        }
        c
    }

    fn pod(annotations: Value, containers: Value) -> Value {
        json!({"metadata": {"name": "p", "annotations": annotations},
               "spec": {"containers": containers}})
    }

    fn outcome(p: Value, scope: Scope) -> String {
        with_pod(p, |pod| match decide(pod, scope) {
            Decision::LeaveAlone(r) => format!("leave: {r}"),
            Decision::Skip(r) => format!("skip: {r}"),
            Decision::Inject(i) => format!("inject {}: {}", i.container_name, i.why),
        })
    }

    fn injection<R>(p: Value, f: impl FnOnce(&Injection<'_>) -> R) -> R {
        with_pod(p, |pod| match decide(pod, Scope::Pod) {
            Decision::Inject(i) => f(&i),
            other => panic!("not injected: {other:?}"),
        })
    }

    #[test]
    fn opt_in_and_opt_out_by_scope() {
        let c = json!([app(Some("256Mi"))]);
        let cases = [
            (json!({}), Scope::Pod, "leave: not opted in"),
            (
                json!({}),
                Scope::Namespace,
                "inject app: opted in by its namespace",
            ),
            (
                json!({"oomsnap.dev/inject": "true"}),
                Scope::Pod,
                "inject app: opted in by annotation",
            ),
            (
                json!({"oomsnap.dev/inject": "false"}),
                Scope::Namespace,
                "leave: opted out by annotation",
            ),
            (
                json!({"oomsnap.dev/inject": "disabled"}),
                Scope::Namespace,
                "leave: opted out",
            ),
            (
                json!({"oomsnap.dev/inject": "maybe"}),
                Scope::Pod,
                "leave: oomsnap.dev/inject=\"maybe\" is neither",
            ),
            (
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/status": "injected"}),
                Scope::Pod,
                "leave: already injected",
            ),
            // Only `injected` means never again.
            (
                json!({"oomsnap.dev/inject": "true", "oomsnap.dev/status": "skipped: no memory limit"}),
                Scope::Pod,
                "inject app",
            ),
        ];
        for (ann, scope, want) in cases {
            let got = outcome(pod(ann.clone(), c.clone()), scope);
            assert!(got.starts_with(want), "{ann} in {scope:?}: {got}");
        }
        let labelled = json!({"metadata": {"labels": {"oomsnap.dev/inject": "true"}},
                              "spec": {"containers": c.clone()}});
        assert!(outcome(labelled, Scope::Pod).starts_with("inject app: opted in by label"));
        let label_out = json!({"metadata": {"labels": {"oomsnap.dev/inject": "false"},
                                            "annotations": {"oomsnap.dev/inject": "true"}},
                               "spec": {"containers": c}});
        assert!(outcome(label_out, Scope::Pod).starts_with("leave: opted out by label"));
    }

    #[test]
    fn a_pod_without_a_usable_limit_is_skipped_with_the_reason() {
        let yes = || json!({"oomsnap.dev/inject": "true"});
        for (limit, ann, want) in [
            (None, None, "skip: no memory limit (set resources.limits.memory or oomsnap.dev/memory-limit)"),
            (Some("0"), None, "skip: no memory limit"),
            (None, Some("0"), "skip: no memory limit, and oomsnap.dev/memory-limit=\"0\" is not usable: it must be at least one byte"),
            (None, Some("0.5"), "skip: no memory limit, and oomsnap.dev/memory-limit=\"0.5\""),
            (None, Some("lots"), "skip: no memory limit, and oomsnap.dev/memory-limit=\"lots\""),
            (None, Some("512Mi"), "inject"),
            (Some("1e9"), None, "inject"),
        ] {
            let mut a = yes();
            if let Some(v) = ann {
                a["oomsnap.dev/memory-limit"] = json!(v);
            }
            let got = outcome(pod(a, json!([app(limit)])), Scope::Pod);
            assert!(got.starts_with(want), "{limit:?}/{ann:?}: {got}");
        }
    }

    #[test]
    fn the_limit_source_is_checked_with_the_sidecars_rule() {
        assert_eq!(
            kubelet_memory_limit(Some("512Mi")).as_deref(),
            Some("536870912")
        );
        assert_eq!(
            kubelet_memory_limit(Some("1e9")).as_deref(),
            Some("1000000000")
        );
        assert_eq!(kubelet_memory_limit(Some("0")), None);
        assert_eq!(kubelet_memory_limit(None), None);
        // More bytes than the sidecar's u64: not referenced, annotation used.
        let p = pod(
            json!({"oomsnap.dev/inject": "true", "oomsnap.dev/memory-limit": "1Gi"}),
            json!([app(Some("100E"))]),
        );
        injection(p, |i| {
            assert_eq!(i.memory_limit, MemoryLimit::Value("1Gi".into()))
        });
    }

    #[test]
    fn the_watched_container_is_named_or_the_first_that_is_not_a_proxy() {
        let proxy = json!({"name": "linkerd-proxy", "image": "l",
                           "resources": {"limits": {"memory": "64Mi"}}});
        let p = pod(
            json!({"oomsnap.dev/inject": "true"}),
            json!([proxy, app(Some("1Gi"))]),
        );
        injection(p, |i| assert_eq!(i.container_name, "app"));
        let p = pod(
            json!({"oomsnap.dev/inject": "true", "oomsnap.dev/container": "nope"}),
            json!([app(Some("1Gi"))]),
        );
        assert_eq!(
            outcome(p, Scope::Pod),
            "skip: oomsnap.dev/container=\"nope\" names no container"
        );
    }

    #[test]
    fn targets_come_from_annotations_then_pyroscope_then_port_names() {
        let target = |ann: Value, ports: Value| {
            let mut c = app(Some("1Gi"));
            c["ports"] = ports;
            let mut a = ann;
            a["oomsnap.dev/inject"] = json!("true");
            injection(pod(a, json!([c])), |i| {
                (i.target.clone(), i.warnings.clone())
            })
        };
        let ports = json!([{"name": "metrics", "containerPort": 9090},
                           {"name": "pprof", "containerPort": 6061}]);
        assert_eq!(target(json!({}), json!([])).0, None);
        assert_eq!(
            target(json!({}), ports.clone()).0.as_deref(),
            Some("http://127.0.0.1:6061/debug/pprof")
        );
        let pyro = json!({"profiles.grafana.com/memory.scrape": "true",
                          "profiles.grafana.com/memory.port_name": "metrics",
                          "profiles.grafana.com/memory.path": "/internal/pprof/allocs"});
        assert_eq!(
            target(pyro.clone(), ports.clone()).0.as_deref(),
            Some("http://127.0.0.1:9090/internal/pprof")
        );
        let mut ours = pyro.clone();
        ours["oomsnap.dev/port"] = json!("8080");
        ours["oomsnap.dev/path"] = json!("/x");
        assert_eq!(
            target(ours, ports.clone()).0.as_deref(),
            Some("http://127.0.0.1:8080/x")
        );
        let mut unknown = pyro;
        unknown["profiles.grafana.com/memory.port_name"] = json!("nope");
        let (t, w) = target(unknown, ports);
        assert_eq!(t.as_deref(), Some("http://127.0.0.1:6060/internal/pprof"));
        assert!(w[0].contains("port_name=\"nope\""), "{w:?}");
    }

    #[test]
    fn annotation_values_the_sidecar_would_refuse_never_become_the_target() {
        for (port, path) in [
            ("6060", "/x?y"),
            ("6060", "/d#f"),
            ("http", "/p"),
            ("0", "/p"),
            ("6060", "//h/p"),
        ] {
            let a = json!({"oomsnap.dev/inject": "true", "oomsnap.dev/port": port,
                           "oomsnap.dev/path": path});
            let (t, w) = injection(pod(a, json!([app(Some("1Gi"))])), |i| {
                (i.target.clone(), i.warnings.clone())
            });
            assert_eq!(t, None, "{port} {path}");
            assert_eq!(w.len(), 1, "{port} {path}: {w:?}");
        }
    }

    #[test]
    fn a_nameless_container_is_skipped() {
        let p = pod(
            json!({"oomsnap.dev/inject": "true"}),
            json!([{"image": "a",
            "resources": {"limits": {"memory": "1Gi"}}}]),
        );
        assert_eq!(
            outcome(p, Scope::Pod),
            "skip: the container to watch has no name"
        );
    }
}
