//! Finds the memory of the container next to us (docs/how-it-works.md,
//! "Locate").
//!
//! A [`LocateInput`] (from the configuration) enters; a [`MemorySource`]
//! leaves, with the winning [`Strategy`] and a sentence saying why each
//! earlier strategy was passed over. Strategies, in order:
//!
//! 1. `OOMSNAP_CGROUP`, an explicit directory; if it is set and unusable that
//!    is an error, never a silent fall-through.
//! 2. The target process (by `OOMSNAP_TARGET_PROCESS` or the port of
//!    `OOMSNAP_TARGET`), then its cgroup through `/proc/<pid>/root/sys/fs/cgroup`
//!    or `/proc/<pid>/cgroup` under the cgroupfs root.
//! 3. The pod's cgroup from `POD_UID`, systemd and cgroupfs layouts.
//! 4. This process's own cgroup.
//! 5. The target's RSS against `OOMSNAP_MEMORY_LIMIT`.
//!
//! A cgroup without a limit is passed over (unless `OOMSNAP_MEMORY_LIMIT`
//! fills in), so an unlimited cgroup never silently "never triggers".
//! [`locate`] is strict (for `oomsnap check`): nothing with a limit is an
//! error. The watcher uses [`locate_watchable`], which falls back to the
//! first unlimited cgroup it passed over, samples it, reports the missing
//! limit, and starts triggering the moment a limit appears.
//!
//! A target in another cgroup namespace (each container of a pod on cgroup
//! v2) shows in our `/proc/<pid>/cgroup` as `/../<its cgroup>`. Its own
//! mount, `/proc/<pid>/root/sys/fs/cgroup`, is then its cgroup; and under a
//! hostPath of the node's cgroupfs the path is resolved in the pod
//! directories `POD_UID` names.

use std::path::{Path, PathBuf};

use super::cgroup::{self, CgroupReader};
use super::proc::{self, CgroupPaths, ProcessId};
use super::{MemorySource, SourceKind};

/// How the source was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Explicit,
    TargetProcess,
    PodUid,
    OwnCgroup,
    ProcessRss,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Explicit => "explicit",
            Strategy::TargetProcess => "target-process",
            Strategy::PodUid => "pod-uid",
            Strategy::OwnCgroup => "own-cgroup",
            Strategy::ProcessRss => "process-rss",
        }
    }
}

/// What locating needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct LocateInput {
    pub cgroup: Option<PathBuf>,
    pub cgroup_root: PathBuf,
    pub target_port: Option<u16>,
    pub target_process: Option<String>,
    pub memory_limit: Option<u64>,
    pub pod_uid: Option<String>,
    /// Skip strategies that read this process's own cgroup (tests).
    pub skip_own: bool,
}

impl LocateInput {
    pub fn from_config(c: &crate::config::Config) -> LocateInput {
        LocateInput {
            cgroup: c.cgroup.clone(),
            cgroup_root: c.cgroup_root.clone(),
            target_port: Some(c.target_port),
            target_process: c.target_process.clone(),
            memory_limit: c.memory_limit,
            pod_uid: c.identity.pod_uid.clone(),
            skip_own: false,
        }
    }
}

/// Nothing usable was found; the message lists every strategy's reason.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("OOMSNAP_CGROUP={dir} cannot be watched: {why}")]
    Explicit { dir: PathBuf, why: String },
    #[error("no memory source was found:\n{0}")]
    NotFound(String),
    #[error("memory was found but no limit is known ({found} has no memory limit); set OOMSNAP_MEMORY_LIMIT (in Kubernetes, from the app container's limits.memory through resourceFieldRef):\n{tried}")]
    NoLimit { found: String, tried: String },
}

struct Tried {
    lines: Vec<String>,
    /// The first cgroup passed over for having no limit.
    unlimited: Option<MemorySource>,
}

impl Tried {
    fn note(&mut self, s: Strategy, why: impl std::fmt::Display) {
        self.lines.push(format!("  - {}: {why}", s.name()));
    }
    fn summary(&self) -> String {
        self.lines.join("\n")
    }
}

/// What a candidate directory turned out to be.
enum Usable {
    Limited(cgroup::Version),
    /// A readable memory cgroup without a limit: the sentence says so.
    Unlimited(cgroup::Version, String),
}

/// Checks that `dir` is a readable memory cgroup, and whether it has a limit
/// (or a fallback).
fn usable(dir: &Path, fallback: Option<u64>) -> Result<Usable, String> {
    let version = cgroup::detect(dir).map_err(|e| e.to_string())?;
    let mut r = CgroupReader::open(dir, fallback).map_err(|e| e.to_string())?;
    let s = r.read().map_err(|e| e.to_string())?;
    Ok(match s.limit {
        Some(_) => Usable::Limited(version),
        None => Usable::Unlimited(
            version,
            format!(
                "{} has no memory limit and OOMSNAP_MEMORY_LIMIT is not set",
                dir.display()
            ),
        ),
    })
}

/// A `/proc/<pid>/cgroup` path split into how many levels it climbs above
/// the reader's cgroup namespace root (`/../x` is 1) and the rest.
fn climb(path: &str) -> (usize, &str) {
    let mut rest = path.trim_start_matches('/');
    let mut up = 0;
    while let Some(r) = rest.strip_prefix("..") {
        if !(r.is_empty() || r.starts_with('/')) {
            break;
        }
        up += 1;
        rest = r.trim_start_matches('/');
    }
    (up, rest)
}

/// Joins a `/proc/<pid>/cgroup` path under a cgroupfs mount. A path that
/// climbs above our namespace root cannot be joined: it yields nothing.
fn under(base: &Path, paths: &CgroupPaths) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some((0, p)) = paths.v1_memory.as_deref().map(climb) {
        out.push(base.join("memory").join(p));
    }
    if let Some((0, p)) = paths.unified.as_deref().map(climb) {
        out.push(base.join(p));
        out.push(base.join("unified").join(p));
    }
    out
}

/// Where a target outside our cgroup namespace may have its memory: its
/// own cgroupfs mount (its namespace root is its container's cgroup), then
/// the path resolved in the pod directories under the cgroupfs root.
fn foreign(pid: u32, paths: &CgroupPaths, input: &LocateInput) -> Vec<PathBuf> {
    let own_mount = PathBuf::from(format!("/proc/{pid}/root/sys/fs/cgroup"));
    let mut out = Vec::new();
    let pods: Vec<PathBuf> = input
        .pod_uid
        .as_deref()
        .map(|uid| {
            pod_dirs(&input.cgroup_root, uid)
                .into_iter()
                .filter(|d| d.is_dir())
                .collect()
        })
        .unwrap_or_default();
    if let Some((up, p)) = paths.v1_memory.as_deref().map(climb) {
        if up > 0 {
            out.push(own_mount.join("memory"));
            out.extend(pods.iter().map(|pod| pod.join(p)));
        }
    }
    if let Some((up, p)) = paths.unified.as_deref().map(climb) {
        if up > 0 {
            out.push(own_mount.clone());
            out.push(own_mount.join("unified"));
            out.extend(pods.iter().map(|pod| pod.join(p)));
        }
    }
    out
}

/// Tries candidate directories in order: the first with a limit wins; the
/// first without one is remembered in `tried`. Returns the winner or every
/// reason.
fn first_usable(
    candidates: Vec<PathBuf>,
    strategy: Strategy,
    pid: Option<ProcessId>,
    input: &LocateInput,
    tried: &mut Tried,
) -> Result<MemorySource, Vec<String>> {
    let mut why = Vec::new();
    for dir in candidates {
        match usable(&dir, input.memory_limit) {
            Ok(Usable::Limited(v)) => return Ok(source(dir, v, strategy, pid, input, tried)),
            Ok(Usable::Unlimited(v, e)) => {
                if tried.unlimited.is_none() {
                    tried.unlimited = Some(source(dir, v, strategy, pid, input, tried));
                }
                why.push(e)
            }
            Err(e) => why.push(e),
        }
    }
    Err(why)
}

fn source(
    dir: PathBuf,
    version: cgroup::Version,
    strategy: Strategy,
    pid: Option<ProcessId>,
    input: &LocateInput,
    tried: &Tried,
) -> MemorySource {
    let how = if tried.lines.is_empty() {
        format!("found by {}", strategy.name())
    } else {
        format!(
            "found by {}; earlier strategies:\n{}",
            strategy.name(),
            tried.summary()
        )
    };
    MemorySource {
        kind: SourceKind::Cgroup { dir, version },
        strategy,
        how,
        pid: pid.map(|p| p.pid),
        pid_start: pid.map(|p| p.start),
        fallback_limit: input.memory_limit,
    }
}

/// The pod directories `POD_UID` may live in, for both cgroup drivers and
/// every QoS class.
pub(crate) fn pod_dirs(root: &Path, uid: &str) -> Vec<PathBuf> {
    let us = uid.replace('-', "_");
    let mut out = Vec::new();
    for base in [root.to_path_buf(), root.join("memory")] {
        out.push(base.join(format!("kubepods.slice/kubepods-pod{us}.slice")));
        for qos in ["burstable", "besteffort"] {
            out.push(base.join(format!(
                "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{us}.slice"
            )));
        }
        out.push(base.join(format!("kubepods/pod{uid}")));
        for qos in ["burstable", "besteffort"] {
            out.push(base.join(format!("kubepods/{qos}/pod{uid}")));
        }
    }
    out
}

/// Inside a pod directory, the container whose limit matches the configured
/// one, when exactly one does; otherwise the pod itself.
fn container_in_pod(pod: &Path, limit: Option<u64>) -> PathBuf {
    let Some(want) = limit else {
        return pod.to_path_buf();
    };
    let Ok(entries) = std::fs::read_dir(pod) else {
        return pod.to_path_buf();
    };
    let matches: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            CgroupReader::open(p, None)
                .and_then(|mut r| r.read_limit())
                .ok()
                .flatten()
                == Some(want)
        })
        .collect();
    match matches.as_slice() {
        [one] => one.clone(),
        _ => pod.to_path_buf(),
    }
}

fn find_target(input: &LocateInput) -> Result<ProcessId, String> {
    if let Some(name) = &input.target_process {
        return proc::find_by_name(name).map_err(|e| e.to_string());
    }
    match input.target_port {
        Some(port) => proc::find_by_port(port).map_err(|e| e.to_string()),
        None => Err("no target port or process name is configured".into()),
    }
}

/// Runs the strategies in order; the first source with a limit wins.
/// Strict: memory without a limit is an error ([`LocateError::NoLimit`]).
pub fn locate(input: &LocateInput) -> Result<MemorySource, LocateError> {
    run(input).map_err(|(e, _)| e)
}

/// Like [`locate`], but when the only memory found has no limit, that
/// memory is the answer: the watcher samples it and reports the missing
/// limit until one appears. Still an error when nothing is found at all.
pub fn locate_watchable(input: &LocateInput) -> Result<MemorySource, LocateError> {
    match run(input) {
        Ok(s) => Ok(s),
        Err((LocateError::NoLimit { .. } | LocateError::Explicit { .. }, Some(s))) => Ok(*s),
        Err((e, _)) => Err(e),
    }
}

/// The strategies in order. An error carries the unlimited source it passed
/// over, if any.
fn run(input: &LocateInput) -> Result<MemorySource, (LocateError, Option<Box<MemorySource>>)> {
    let mut tried = Tried {
        lines: Vec::new(),
        unlimited: None,
    };
    let fallback = input.memory_limit;

    // 1. Explicit.
    if let Some(dir) = &input.cgroup {
        return match usable(dir, fallback) {
            Ok(Usable::Limited(v)) => Ok(source(
                dir.clone(),
                v,
                Strategy::Explicit,
                None,
                input,
                &tried,
            )),
            Ok(Usable::Unlimited(v, why)) => Err((
                LocateError::Explicit {
                    dir: dir.clone(),
                    why,
                },
                Some(Box::new(source(
                    dir.clone(),
                    v,
                    Strategy::Explicit,
                    None,
                    input,
                    &tried,
                ))),
            )),
            Err(why) => Err((
                LocateError::Explicit {
                    dir: dir.clone(),
                    why,
                },
                None,
            )),
        };
    }
    tried.note(Strategy::Explicit, "OOMSNAP_CGROUP is not set");

    // 2. The target process, then its cgroup.
    let target = find_target(input);
    match &target {
        Err(why) => tried.note(Strategy::TargetProcess, why),
        Ok(pid) => match proc::cgroup_paths(Some(pid.pid)) {
            Err(e) => tried.note(Strategy::TargetProcess, e),
            Ok(paths) => {
                let mut candidates = under(
                    &PathBuf::from(format!("/proc/{}/root/sys/fs/cgroup", pid.pid)),
                    &paths,
                );
                candidates.extend(under(&input.cgroup_root, &paths));
                candidates.extend(foreign(pid.pid, &paths, input));
                match first_usable(
                    candidates,
                    Strategy::TargetProcess,
                    Some(*pid),
                    input,
                    &mut tried,
                ) {
                    Ok(s) => return Ok(s),
                    Err(why) => tried.note(
                        Strategy::TargetProcess,
                        format!(
                            "pid {} found, but its cgroup is not usable: {}",
                            pid.pid,
                            if why.is_empty() {
                                format!(
                                    "{:?} resolves to no directory (is POD_UID set, and the node's cgroupfs mounted at OOMSNAP_CGROUP_ROOT?)",
                                    paths.unified.as_ref().or(paths.v1_memory.as_ref())
                                )
                            } else {
                                why.join("; ")
                            }
                        ),
                    ),
                }
            }
        },
    }

    // 3. Pod level.
    match &input.pod_uid {
        None => tried.note(Strategy::PodUid, "POD_UID is not set"),
        Some(uid) => {
            let found = pod_dirs(&input.cgroup_root, uid)
                .into_iter()
                .find(|d| cgroup::detect(d).is_ok());
            match found {
                None => tried.note(
                    Strategy::PodUid,
                    format!(
                        "no pod cgroup for POD_UID={uid} under {} (is the node's cgroupfs mounted there?)",
                        input.cgroup_root.display()
                    ),
                ),
                Some(pod) => {
                    let dir = container_in_pod(&pod, fallback);
                    let pid = target.as_ref().ok().copied();
                    match first_usable(vec![dir], Strategy::PodUid, pid, input, &mut tried) {
                        Ok(s) => return Ok(s),
                        Err(why) => tried.note(Strategy::PodUid, why.join("; ")),
                    }
                }
            }
        }
    }

    // 4. Our own cgroup — only where it is the app's too. In a pod the
    // sidecar's own container has its own cgroup (v2 with a cgroup
    // namespace shows it as `0::/`), and watching it would watch ourselves.
    let own = proc::cgroup_paths(None).ok();
    let shares = match &target {
        Ok(pid) => proc::cgroup_paths(Some(pid.pid)).ok() == own,
        Err(_) => input.pod_uid.is_none(),
    };
    if input.skip_own {
        tried.note(Strategy::OwnCgroup, "skipped");
    } else if !shares {
        tried.note(
            Strategy::OwnCgroup,
            match &target {
                Ok(pid) => format!("pid {} is in another cgroup than oomsnap", pid.pid),
                Err(_) => {
                    "inside a pod (POD_UID is set) oomsnap's own cgroup is its own container's"
                        .into()
                }
            },
        );
    } else {
        match own {
            None => tried.note(Strategy::OwnCgroup, "cannot read /proc/self/cgroup"),
            Some(paths) => {
                let pid = target.as_ref().ok().copied();
                let candidates = under(&input.cgroup_root, &paths);
                match first_usable(candidates, Strategy::OwnCgroup, pid, input, &mut tried) {
                    Ok(s) => return Ok(s),
                    Err(why) => tried.note(Strategy::OwnCgroup, why.join("; ")),
                }
            }
        }
    }

    // 5. RSS against the configured limit.
    match (&target, fallback) {
        (Ok(pid), Some(_)) => {
            let how = format!(
                "found by {}; earlier strategies:\n{}",
                Strategy::ProcessRss.name(),
                tried.summary()
            );
            return Ok(MemorySource {
                kind: SourceKind::Process { pid: pid.pid },
                strategy: Strategy::ProcessRss,
                how,
                pid: Some(pid.pid),
                pid_start: Some(pid.start),
                fallback_limit: fallback,
            });
        }
        (Err(_), _) => tried.note(Strategy::ProcessRss, "no target process was found"),
        (Ok(_), None) => tried.note(Strategy::ProcessRss, "OOMSNAP_MEMORY_LIMIT is not set"),
    }

    match tried.unlimited.take() {
        Some(found) => Err((
            LocateError::NoLimit {
                found: found.describe(),
                tried: tried.summary(),
            },
            Some(Box::new(found)),
        )),
        None => Err((LocateError::NotFound(tried.summary()), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dirs_cover_both_drivers() {
        let d = pod_dirs(Path::new("/r"), "0f1e-2d");
        assert!(d.contains(&PathBuf::from(
            "/r/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e_2d.slice"
        )));
        assert!(d.contains(&PathBuf::from("/r/memory/kubepods/burstable/pod0f1e-2d")));
        assert!(d.contains(&PathBuf::from(
            "/r/kubepods.slice/kubepods-pod0f1e_2d.slice"
        )));
    }

    #[test]
    fn under_joins_v1_and_v2_paths() {
        let p = CgroupPaths {
            v1_memory: Some("/a/b".into()),
            unified: Some("/".into()),
        };
        let c = under(Path::new("/sys/fs/cgroup"), &p);
        assert_eq!(c[0], PathBuf::from("/sys/fs/cgroup/memory/a/b"));
        assert_eq!(c[1], PathBuf::from("/sys/fs/cgroup/"));
    }

    #[test]
    fn a_path_above_our_namespace_root_is_not_joined_under_it() {
        assert_eq!(climb("/a/b"), (0, "a/b"));
        assert_eq!(climb("/"), (0, ""));
        assert_eq!(climb("/../cri-x.scope"), (1, "cri-x.scope"));
        assert_eq!(climb("/../../p/c"), (2, "p/c"));
        assert_eq!(climb("/..x/c"), (0, "..x/c"));
        let p = CgroupPaths {
            v1_memory: None,
            unified: Some("/../cri-x.scope".into()),
        };
        assert!(under(Path::new("/sys/fs/cgroup"), &p).is_empty());
    }

    #[test]
    fn a_foreign_target_is_looked_for_in_its_own_mount_and_its_pod() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0f1e-2d";
        let pod = root
            .path()
            .join("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e_2d.slice");
        std::fs::create_dir_all(&pod).unwrap();
        let paths = CgroupPaths {
            v1_memory: None,
            unified: Some("/../cri-app.scope".into()),
        };
        let input = LocateInput {
            cgroup_root: root.path().into(),
            pod_uid: Some(uid.into()),
            ..Default::default()
        };
        let c = foreign(42, &paths, &input);
        assert_eq!(c[0], PathBuf::from("/proc/42/root/sys/fs/cgroup"));
        assert!(c.contains(&pod.join("cri-app.scope")), "{c:?}");
        // A target in our own namespace is not foreign.
        let ours = CgroupPaths {
            v1_memory: None,
            unified: Some("/app".into()),
        };
        assert!(foreign(42, &ours, &input).is_empty());
    }

    #[test]
    fn explicit_path_that_is_not_a_cgroup_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let input = LocateInput {
            cgroup: Some(dir.path().into()),
            ..Default::default()
        };
        let e = locate(&input).unwrap_err();
        assert!(matches!(e, LocateError::Explicit { .. }));
        assert!(e.to_string().contains("memory.current"), "{e}");
    }
}
