//! The cgroup readers against trees of real kernel files
//! (`tests/data/cgroup/<case>/`, described in its README).

use std::path::{Path, PathBuf};

use oomsnap::memory::cgroup::{CgroupError, CgroupReader, Version};
use oomsnap::memory::locate::{locate, locate_watchable, LocateError, LocateInput, Strategy};
use oomsnap::memory::StatBreakdown;

const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const V2_POD: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice";
const V2_CONTAINER: &str =
    "cri-containerd-3f9a1c5e7b2d4f6081a3c5e7f9b1d3e5a7c9e1f3b5d7f9a1c3e5b7d9f1a3c5e7.scope";
const V1_POD: &str = "kubepods/burstable/pod0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const V1_CONTAINER: &str = "3f9a1c5e7b2d4f6081a3c5e7f9b1d3e5a7c9e1f3b5d7f9a1c3e5b7d9f1a3c5e7";

fn case(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cgroup")
        .join(name)
}

fn read(dir: &Path, fallback: Option<u64>) -> oomsnap::memory::Sample {
    CgroupReader::open(dir, fallback)
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
        .read()
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
}

#[test]
fn v2_containerd_container_and_its_pod() {
    let pod = case("v2_containerd_container").join(V2_POD);
    let c = read(&pod.join(V2_CONTAINER), None);
    assert_eq!(c.usage, 297299968);
    assert_eq!(c.working_set, 263745536);
    assert_eq!(c.limit, Some(536870912));
    assert_eq!(c.oom_kills, Some(0));
    let p = read(&pod, None);
    assert_eq!(
        (p.usage, p.working_set, p.limit),
        (323244032, 288641024, Some(603979776))
    );
    assert_eq!(p.oom_kills, Some(1));
    assert_eq!(
        CgroupReader::open(&pod, None).unwrap().version(),
        Version::V2
    );
}

#[test]
fn v2_pod_slice() {
    let s = read(
        &case("v2_pod_slice")
            .join("kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice"),
        None,
    );
    assert_eq!(
        (s.usage, s.working_set, s.limit),
        (816082944, 753168384, Some(1073741824))
    );
}

#[test]
fn v1_kubepods_burstable_container() {
    let dir = case("v1_kubepods_burstable")
        .join(V1_POD)
        .join(V1_CONTAINER);
    let s = read(&dir, None);
    assert_eq!(
        (s.usage, s.working_set, s.limit),
        (172601344, 133525504, Some(536870912))
    );
    assert_eq!(s.oom_kills, Some(0));
    assert_eq!(
        CgroupReader::open(&dir, None).unwrap().version(),
        Version::V1
    );
}

#[test]
fn v2_memory_max_is_unlimited_until_configured() {
    let dir = case("v2_memory_max_unlimited");
    assert_eq!(read(&dir, None).limit, None);
    assert_eq!(read(&dir, Some(1 << 30)).limit, Some(1 << 30));
    let input = LocateInput {
        cgroup: Some(dir.clone()),
        ..Default::default()
    };
    let err = locate(&input).unwrap_err();
    assert!(err.to_string().contains("no memory limit"), "{err}");
    // The watcher watches it anyway, and triggers once a limit appears.
    let src = locate_watchable(&input).unwrap();
    assert_eq!(src.strategy, Strategy::Explicit);
    assert!(src.describe().ends_with("v2_memory_max_unlimited"));
}

#[test]
fn v1_near_2_pow_63_is_unlimited() {
    let s = read(&case("v1_unlimited"), None);
    assert_eq!(s.limit, None);
    assert_eq!(s.working_set, 67371008);
}

#[test]
fn v1_hierarchical_limit_wins_when_smaller() {
    let s = read(&case("v1_hierarchical_limit"), None);
    assert_eq!(s.limit, Some(805306368));
}

#[test]
fn v2_missing_memory_stat_reads_usage_as_working_set() {
    let s = read(&case("v2_missing_memory_stat"), None);
    assert_eq!(s.usage, 138481664);
    // Unknown inactive_file: the conservative reading, never lower.
    assert_eq!(s.working_set, 138481664);
    assert_eq!(s.anon, None);
    assert_eq!(s.limit, Some(268435456));
}

#[test]
fn v2_garbage_memory_current_names_the_file_and_value() {
    let err = CgroupReader::open(&case("v2_garbage_memory_current"), None)
        .unwrap()
        .read()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CgroupError::Parse { .. }));
    assert!(
        msg.contains("memory.current") && msg.contains("12ab34"),
        "{msg}"
    );
    assert!(msg.contains("expected a number of bytes"), "{msg}");
}

#[test]
fn v2_inactive_file_larger_than_usage_floors_at_zero() {
    let s = read(&case("v2_inactive_file_exceeds_usage"), None);
    assert_eq!(s.usage, 104857600);
    assert_eq!(s.working_set, 0);
}

#[test]
fn v1_after_oom_kill_shows_the_counter() {
    let s = read(&case("v1_after_oom_kill"), None);
    assert_eq!(s.oom_kills, Some(1));
    assert_eq!(s.limit, Some(268435456));
}

#[test]
fn a_limit_file_that_cannot_be_read_is_an_error_never_zero() {
    let d = tempfile::tempdir().unwrap();
    for f in ["memory.current", "memory.stat", "memory.events"] {
        std::fs::copy(
            case("v2_pod_slice")
                .join("kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice")
                .join(f),
            d.path().join(f),
        )
        .unwrap();
    }
    std::fs::write(d.path().join("memory.max"), "").unwrap();
    let err = CgroupReader::open(d.path(), None)
        .unwrap()
        .read()
        .unwrap_err();
    assert!(err.to_string().contains("memory.max"), "{err}");
}

#[test]
fn pod_uid_finds_both_layouts() {
    // systemd driver, v2: the pod slice; with a configured limit equal to
    // the container's, the container inside it.
    let root = case("v2_containerd_container");
    let input = LocateInput {
        cgroup_root: root.clone(),
        pod_uid: Some(UID.into()),
        skip_own: true,
        ..Default::default()
    };
    let src = locate(&input).unwrap();
    assert_eq!(src.strategy, Strategy::PodUid);
    assert!(src.describe().ends_with(".slice"), "{}", src.describe());
    let src = locate(&LocateInput {
        memory_limit: Some(536870912),
        ..input
    })
    .unwrap();
    assert!(src.describe().ends_with(V2_CONTAINER), "{}", src.describe());
    assert!(
        src.how.contains("explicit: OOMSNAP_CGROUP is not set"),
        "{}",
        src.how
    );

    // cgroupfs driver, v1 layout under <root>/memory is what nodes mount;
    // these fixtures sit directly under the root, which pod_dirs also tries.
    let src = locate(&LocateInput {
        cgroup_root: case("v1_kubepods_burstable"),
        pod_uid: Some(UID.into()),
        skip_own: true,
        ..Default::default()
    })
    .unwrap();
    assert!(src.describe().contains(V1_POD), "{}", src.describe());
}

#[test]
fn nothing_found_lists_every_strategy() {
    let d = tempfile::tempdir().unwrap();
    let err = locate(&LocateInput {
        cgroup_root: d.path().into(),
        pod_uid: Some(UID.into()),
        target_port: Some(1),
        skip_own: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, LocateError::NotFound(_)));
    let msg = err.to_string();
    for s in [
        "explicit",
        "target-process",
        "pod-uid",
        "own-cgroup",
        "process-rss",
    ] {
        assert!(msg.contains(s), "{s} missing from: {msg}");
    }
}

// ---------------------------------------------------------------------------
// Captured in the v2 VM (tests/v2vm/capture_fixtures.sh): a 6.1 kernel's
// cgroup v2 with a Go app in it.
// ---------------------------------------------------------------------------

#[test]
fn v2_vm_running_app() {
    let dir = case("v2_vm_running");
    let s = read(&dir, None);
    assert_eq!((s.usage, s.working_set), (68571136, 68571136));
    assert_eq!(s.limit, Some(268435456));
    assert_eq!((s.anon, s.file), (Some(68210688), Some(0)));
    assert_eq!(s.oom_kills, Some(0));
    let mut r = CgroupReader::open(&dir, None).unwrap();
    assert_eq!(r.read_usage().unwrap(), 68571136);
}

#[test]
fn v2_vm_after_oom_kill_counts_the_kill() {
    let s = read(&case("v2_vm_after_oom_kill"), None);
    assert_eq!(s.oom_kills, Some(1));
    assert_eq!(s.usage, 46878720);
    assert_eq!(s.limit, Some(268435456));
}

#[test]
fn v2_vm_unlimited_is_watched_but_has_no_limit() {
    let dir = case("v2_vm_unlimited");
    assert_eq!(read(&dir, None).limit, None);
    let input = LocateInput {
        cgroup: Some(dir),
        ..Default::default()
    };
    assert!(matches!(locate(&input), Err(LocateError::Explicit { .. })));
    assert!(locate_watchable(&input).is_ok());
}

#[test]
fn breakdown_of_a_v2_vm_cgroup_names_the_kernels_share() {
    let b = StatBreakdown::read(&case("v2_vm_running")).unwrap();
    assert_eq!(b.version, Version::V2);
    assert_eq!(b.anon, Some(68210688));
    assert_eq!(b.anon_thp, Some(65011712));
    assert_eq!(b.file, Some(0));
    assert_eq!(b.kernel, Some(360448));
    assert_eq!(b.kernel_stack, Some(65536));
    assert_eq!(b.pagetables, Some(208896));
    assert_eq!(b.sock, Some(0));
    assert_eq!(b.slab(), Some(9160 + 46672));
    assert_eq!((b.inactive_file, b.active_file), (Some(0), Some(0)));
    assert_eq!(b.pgmajfault, Some(0));
}

#[test]
fn breakdown_of_a_v2_container_with_page_cache() {
    let dir = case("v2_containerd_container")
        .join(V2_POD)
        .join(V2_CONTAINER);
    let b = CgroupReader::open(&dir, None)
        .unwrap()
        .stat_breakdown()
        .unwrap();
    assert_eq!((b.anon, b.file), (Some(251133952), Some(41943040)));
    assert_eq!(
        (b.active_file, b.inactive_file),
        (Some(8388608), Some(33554432))
    );
    assert_eq!(b.kernel_stack, Some(655360));
    assert_eq!(b.slab(), Some(1253376 + 794624));
    assert_eq!(b.pgmajfault, Some(37));
}

#[test]
fn breakdown_of_a_v1_container_reads_the_totals() {
    let dir = case("v1_kubepods_burstable")
        .join(V1_POD)
        .join(V1_CONTAINER);
    let b = StatBreakdown::read(&dir).unwrap();
    assert_eq!(b.version, Version::V1);
    assert_eq!((b.anon, b.file), (Some(131960832), Some(39239680)));
    assert_eq!(
        (b.active_file, b.inactive_file),
        (Some(163840), Some(39075840))
    );
    assert_eq!(b.file_mapped, Some(4587520));
    assert_eq!(b.shmem, Some(0));
    // Not in v1's memory.stat, and no kmem file in the fixture.
    assert_eq!((b.kernel, b.kernel_stack, b.slab()), (None, None, None));
}

#[test]
fn a_located_source_reads_its_breakdown() {
    let src = locate(&LocateInput {
        cgroup: Some(case("v2_vm_after_oom_kill")),
        ..Default::default()
    })
    .unwrap();
    let b = src.stat_breakdown().expect("a cgroup has one").unwrap();
    assert_eq!(b.anon, Some(46567424));
}

#[test]
fn breakdown_without_memory_stat_is_an_error_naming_it() {
    let err = StatBreakdown::read(&case("v2_missing_memory_stat")).unwrap_err();
    assert!(err.to_string().contains("memory.stat"), "{err}");
}
