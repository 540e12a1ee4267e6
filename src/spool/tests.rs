//! The spool's unit tests, and a manifest builder other modules' tests use.

use super::*;
use crate::manifest::{TriggerSample, SCHEMA};

pub(crate) fn manifest(id: &str) -> Manifest {
    Manifest {
        schema: SCHEMA,
        oomsnap_version: "test".into(),
        capture_id: id.into(),
        reason: "threshold-80".into(),
        namespace: "ns".into(),
        pod: "pod".into(),
        container: "app".into(),
        node: "node".into(),
        pod_uid: None,
        target: "http://127.0.0.1:6060/debug/pprof".into(),
        target_pid: None,
        target_restarts: 0,
        source: None,
        trigger: TriggerSample {
            sampled_at: "2026-11-22T00:00:00Z".into(),
            usage_bytes: 1,
            working_set_bytes: 1,
            limit_bytes: Some(2),
            percent: 50.0,
            anon_bytes: None,
            file_bytes: None,
            slope_bytes_per_second: None,
            predicted_seconds_to_oom: None,
            wake: None,
        },
        decided_at: "2026-11-22T00:00:00Z".into(),
        spooled_at: "2026-11-22T00:00:00Z".into(),
        ..Default::default()
    }
}

fn bundle(spool: &Spool, id: &str, size: usize) {
    let w = spool.begin(id, &format!("p/{id}"), &manifest(id)).unwrap();
    let mut f = w.create("heap.pb.gz").unwrap();
    f.write(&vec![7u8; size]).unwrap();
    f.commit().unwrap();
    w.finish(&manifest(id)).unwrap();
}

#[test]
fn manifest_ships_last_and_key_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 1 << 20).unwrap();
    bundle(&s, "a", 10);
    let b = s.bundles().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].key, "p/a");
    assert_eq!(b[0].files.last().unwrap().0, MANIFEST_FILE);
    assert_eq!(b[0].files[0], ("heap.pb.gz".to_string(), 10));
}

#[test]
fn full_spool_drops_the_oldest_never_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 7000).unwrap();
    for id in ["1", "2", "3"] {
        bundle(&s, id, 2000);
        s.enforce_bound(id).unwrap();
    }
    let ids: Vec<String> = s.bundles().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["2", "3"]);
    assert_eq!(s.dropped(), 1);
    // A single bundle larger than the bound is still kept.
    bundle(&s, "4", 9000);
    s.enforce_bound("4").unwrap();
    let ids: Vec<String> = s.bundles().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["4"]);
}

#[test]
fn recovery_completes_drafts_with_profiles_and_removes_empty_ones() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 1 << 20).unwrap();
    // Crashed after the heap profile was committed, mid goroutine.
    let mut m = manifest("x");
    m.profiles = vec![
        ProfileRecord {
            name: "heap".into(),
            ..Default::default()
        },
        ProfileRecord {
            name: "goroutine".into(),
            ..Default::default()
        },
    ];
    let w = s.begin("x", "p/x", &m).unwrap();
    let mut f = w.create("heap.pb.gz").unwrap();
    f.write(b"\x1f\x8bdata").unwrap();
    f.commit().unwrap();
    let mut g = w.create("goroutine.pb.gz").unwrap();
    g.write(b"half").unwrap();
    std::mem::forget(g);
    // Crashed before anything was committed.
    let _w2 = s.begin("y", "p/y", &manifest("y")).unwrap();

    let (s, rec) = Spool::open(d.path(), 1 << 20).unwrap();
    assert_eq!(rec.completed_from_draft, 1);
    assert_eq!(rec.removed_partial, 1);
    let b = s.bundles().unwrap();
    assert_eq!(b.len(), 1);
    let man: Manifest =
        serde_json::from_slice(&fs::read(b[0].dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert!(man.reason.contains("recovered"));
    let heap = man.profiles.iter().find(|p| p.name == "heap").unwrap();
    assert!(heap.ok());
    let gor = man.profiles.iter().find(|p| p.name == "goroutine").unwrap();
    assert!(gor.error.is_some());
    assert!(!b[0].files.iter().any(|(n, _)| n.ends_with(".tmp")));
}

#[test]
fn a_crashed_bundle_that_cannot_be_completed_is_reported_and_the_rest_ships() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 1 << 20).unwrap();
    bundle(&s, "a", 10);
    // A crash left a draft whose "profile" cannot be read back (here a
    // directory, which fails like an I/O error would on a sick disk).
    let _w = s.begin("b", "p/b", &manifest("b")).unwrap();
    fs::create_dir(d.path().join(format!("b{PARTIAL}")).join("heap.pb.gz")).unwrap();

    let (s, rec) = Spool::open(d.path(), 1 << 20).unwrap();
    assert_eq!(rec.complete, 1);
    assert_eq!(rec.errors.len(), 1, "{:?}", rec.errors);
    assert!(rec.errors[0].contains("heap.pb.gz"), "{}", rec.errors[0]);
    let ids: Vec<String> = s.bundles().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["a"]);
}

#[test]
fn provisional_bytes_do_not_push_shippable_captures_out() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 5000).unwrap();
    let w = s
        .begin("p", "p/p", &manifest("p"))
        .unwrap()
        .provisional(true);
    let mut f = w.create("heap.pb.gz").unwrap();
    f.write(&[7u8; 3000]).unwrap();
    f.commit().unwrap();
    w.finish(&manifest("p")).unwrap();
    for id in ["1", "2"] {
        bundle(&s, id, 1500);
        s.enforce_bound(id).unwrap();
    }
    let ids: Vec<String> = s.bundles().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["1", "2"]);
    assert_eq!(s.provisional(), vec!["p"]);
    assert_eq!(s.dropped(), 0);
}

#[test]
fn a_removal_a_kill_interrupted_is_finished_at_the_next_start() {
    let d = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(d.path(), 1 << 20).unwrap();
    let [a, b, c] = [
        "20261130T145729.531Z_manual",
        "20261130T145730.001Z_threshold-80",
        "20261130T145731.002Z_threshold-90",
    ];
    for id in [a, b, c] {
        bundle(&s, id, 10);
    }
    // Not ours: a volume's lost+found when the spool is the mount's root.
    fs::create_dir(d.path().join("lost+found")).unwrap();
    // Killed after the rename that takes a shipped bundle out of the spool.
    fs::rename(d.path().join(a), d.path().join(format!("{a}{REMOVING}"))).unwrap();
    // An older version deleted files in place: killed after `.key` went.
    fs::remove_file(d.path().join(b).join(KEY_FILE)).unwrap();
    assert_eq!(
        s.bundles()
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect::<Vec<_>>(),
        vec![c],
        "neither half-removed folder is offered for shipping"
    );

    let (s, rec) = Spool::open(d.path(), 1 << 20).unwrap();
    assert_eq!((rec.complete, rec.finished_removal), (1, 2));
    assert!(rec.errors.is_empty(), "{:?}", rec.errors);
    let mut left: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![c, "lost+found"]);

    // A normal removal leaves nothing behind.
    let shipped = s.bundles().unwrap().remove(0);
    s.remove(&shipped).unwrap();
    let left: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec!["lost+found"]);
}
