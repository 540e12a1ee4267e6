//! Faults of the capture and ship path, each a test: a target that answers
//! with HTML, a truncated gzip, nothing at all, or too much; a store that is
//! down and comes back; a sidecar killed between spool and upload; a full
//! spool. Nothing already spooled may be lost.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use oomsnap::manifest::Manifest;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(manifest_dir().join("tests/data/pprof").join(name)).unwrap()
}

/// A pprof server whose every profile misbehaves in its own way.
fn bad_target() -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let good = fixture("goroutine.pb.gz");
    let heap = fixture("heap_leak.pb.gz");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut c) = conn else { continue };
            let good = good.clone();
            let heap = heap.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = |c: &mut TcpStream, status: &str, ctype: &str, body: &[u8]| {
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body);
                };
                match path.as_str() {
                    "/debug/pprof/heap" => reply(
                        &mut c,
                        "404 Not Found",
                        "text/html",
                        b"<html><body>404 page not found</body></html>",
                    ),
                    "/debug/pprof/goroutine" => {
                        reply(&mut c, "200 OK", "application/octet-stream", &good)
                    }
                    // A gzip stream cut short, with a length that matches the cut.
                    "/debug/pprof/allocs" => reply(
                        &mut c,
                        "200 OK",
                        "application/octet-stream",
                        &heap[..heap.len() - 12],
                    ),
                    // Headers, then nothing: hangs past the timeout.
                    "/debug/pprof/block" => {
                        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
                        let _ = c.write_all(&[0x1f, 0x8b]);
                        std::thread::sleep(Duration::from_secs(8));
                    }
                    // A valid but huge gzip stream without a length: only
                    // the streaming cap can stop it.
                    "/debug/pprof/mutex" => {
                        let _ = write!(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                        let mut enc = flate2::write::GzEncoder::new(c, flate2::Compression::none());
                        let junk: Vec<u8> = (0..64u32 << 10)
                            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
                            .collect();
                        for _ in 0..64 {
                            if enc.write_all(&junk).is_err() {
                                break;
                            }
                        }
                    }
                    // Announces more than the cap.
                    "/debug/pprof/threadcreate" => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            64u64 << 20
                        );
                        let _ = c.write_all(&[0x1f, 0x8b]);
                    }
                    _ => reply(&mut c, "200 OK", "text/plain", b"ok"),
                }
            });
        }
    });
    (format!("http://127.0.0.1:{port}/debug/pprof"), stop)
}

#[test]
fn each_bad_profile_is_recorded_and_the_rest_still_ships() {
    let (target, _stop) = bad_target();
    let dir = temp_dir("faults-target");
    let store = dir.path().join("store");
    let out = OomsnapEnv::new()
        .target(&target)
        .set(
            "OOMSNAP_PROFILES",
            "heap,goroutine,allocs,block,mutex,threadcreate",
        )
        .set("OOMSNAP_FETCH_TIMEOUT", "1500ms")
        .set("OOMSNAP_MAX_PROFILE_BYTES", "1MiB")
        .file_store(&store)
        .spool(&dir.path().join("spool"))
        .set("OOMSNAP_CGROUP_ROOT", dir.path().display())
        .command(&["capture"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = find_file(&store, "manifest.json").expect("a manifest in the store");
    let m: Manifest = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let err = |name: &str| {
        m.profiles
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not in the manifest"))
            .error
            .clone()
    };
    let heap = err("heap").expect("the 404 page must fail");
    assert!(heap.contains("404") && heap.contains("<html>"), "{heap}");
    assert_eq!(err("goroutine"), None);
    let allocs = err("allocs").expect("the truncated gzip must fail");
    assert!(allocs.contains("truncated"), "{allocs}");
    let block = err("block").expect("the hang must fail");
    assert!(block.contains("did not finish sending within"), "{block}");
    let mutex = err("mutex").expect("the endless body must fail");
    assert!(mutex.contains("larger than the cap"), "{mutex}");
    let tc = err("threadcreate").expect("the announced size must fail");
    assert!(tc.contains("more than the cap"), "{tc}");
    // Only the good profile and the manifest were stored.
    let folder = manifest.parent().unwrap();
    let mut files: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["goroutine.pb.gz", "manifest.json"]);
    assert!(
        stdout.contains("heap") && stdout.contains("failed"),
        "{stdout}"
    );
}

struct Rig {
    s3: SeaweedFs,
    proxy: StoreProxy,
    _leaker: Leaker,
    spool: tempfile::TempDir,
    env: OomsnapEnv,
}

/// SeaweedFS behind a switchable proxy, a leaker to profile, and the env
/// for oomsnap. The memory source is a fixture tree at 70 % of its limit,
/// so only manual captures happen.
fn rig(prefix: &str, extra: &[(&str, &str)]) -> Option<Rig> {
    if !go_available() && !require_live("go") {
        return None;
    }
    let s3 = SeaweedFs::start()?;
    let proxy = StoreProxy::start(s3.s3_port(), ProxyMode::Down);
    let leaker = Leaker::spawn(None, &["-max", "4"]);
    let spool = temp_dir("faults-spool");
    let cgroup = manifest_dir().join("tests/data/cgroup/v2_pod_slice/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice");
    let mut env = OomsnapEnv::new()
        .with(s3.env())
        .set("AWS_ENDPOINT", proxy.endpoint())
        .cgroup(&cgroup)
        .target(&leaker.pprof_base())
        .store(&s3.store_url(prefix))
        .spool(spool.path())
        .set("OOMSNAP_RATE_BURST", 20)
        .set("OOMSNAP_MANUAL_RATE_BURST", 20);
    for (k, v) in extra {
        env = env.set(k, v);
    }
    Some(Rig {
        s3,
        proxy,
        _leaker: leaker,
        spool,
        env,
    })
}

fn bundles(spool: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn manifests(r: &Rig, rt: &tokio::runtime::Runtime, prefix: &str) -> Vec<String> {
    rt.block_on(r.s3.list(prefix))
        .into_iter()
        .filter(|k| k.ends_with("/manifest.json"))
        .collect()
}

#[test]
fn store_down_at_capture_time_ships_everything_when_it_returns() {
    let Some(r) = rig("outage", &[]) else { return };
    let snap = Oomsnap::run(&r.env);
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}\n{}", snap.logs());
    assert_eq!(
        bundles(r.spool.path()).len(),
        1,
        "the capture must wait in the spool"
    );
    assert!(wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            metric(
                &snap.get("/metrics").1,
                "oomsnap_uploads_total{outcome=\"error\"}",
            )
            .unwrap_or(0.0)
                >= 1.0
        }
    ));
    // Said after the pass's attempts at the bundle are spent.
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || snap
            .logs()
            .contains("upload failed")),
        "{}",
        snap.logs()
    );
    let (_, ready) = snap.get("/readyz");
    assert!(ready.contains("has not answered"), "{ready}");

    r.proxy.set(ProxyMode::Up);
    let rt = rt();
    assert!(
        wait_until(
            Duration::from_secs(45),
            Duration::from_millis(200),
            || manifests(&r, &rt, "outage").len() == 1
        ),
        "nothing shipped after the store came back:\n{}",
        snap.logs()
    );
    assert!(wait_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || bundles(r.spool.path()).is_empty()
    ));
    let keys = rt.block_on(r.s3.list("outage"));
    assert_eq!(
        keys.iter().filter(|k| k.ends_with(".pb.gz")).count(),
        2,
        "{keys:#?}"
    );
    assert!(snap
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[test]
fn sigkill_between_spool_and_upload_ships_exactly_once_after_restart() {
    let Some(r) = rig("sigkill", &[]) else { return };
    let snap = Oomsnap::run(&r.env);
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}");
    let spooled = bundles(r.spool.path());
    assert_eq!(spooled.len(), 1);
    snap.kill9();

    r.proxy.set(ProxyMode::Up);
    let snap = Oomsnap::run(&r.env);
    let rt = rt();
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            bundles(r.spool.path()).is_empty()
        }),
        "the leftover bundle was not shipped:\n{}",
        snap.logs()
    );
    let keys = rt.block_on(r.s3.list("sigkill"));
    let m = manifests(&r, &rt, "sigkill");
    assert_eq!(m.len(), 1, "{keys:#?}");
    assert!(m[0].contains(&spooled[0]), "{m:?} vs {spooled:?}");
    assert_eq!(
        keys.len(),
        3,
        "heap, goroutine, manifest and nothing else: {keys:#?}"
    );
    assert!(snap.logs().contains("spool recovered"), "{}", snap.logs());
}

#[test]
fn a_full_spool_drops_the_oldest_and_keeps_the_newest() {
    let Some(r) = rig("full", &[("OOMSNAP_SPOOL_MAX_BYTES", "20KiB")]) else {
        return;
    };
    let snap = Oomsnap::run(&r.env);
    let mut keys = Vec::new();
    for _ in 0..5 {
        let (code, body) = snap.capture();
        assert_eq!(code, 200, "{body}");
        keys.push(body);
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = bundles(r.spool.path());
    assert!(left.len() < 5 && !left.is_empty(), "{left:?}");
    let newest: serde_json::Value = serde_json::from_str(keys.last().unwrap()).unwrap();
    let newest = newest["key"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        left.last(),
        Some(&newest),
        "the newest capture must be kept"
    );
    let dropped = metric(&snap.get("/metrics").1, "oomsnap_spool_dropped_total").unwrap();
    assert_eq!(dropped as usize, 5 - left.len());
    assert!(snap.logs().contains("the spool is full"), "{}", snap.logs());

    r.proxy.set(ProxyMode::Up);
    let rt = rt();
    assert!(wait_until(
        Duration::from_secs(45),
        Duration::from_millis(200),
        || bundles(r.spool.path()).is_empty()
    ));
    assert_eq!(manifests(&r, &rt, "full").len(), left.len());
}

/// Captures once with the store misbehaving in `mode`, switches it back to
/// healthy after `heal_after`, and checks that the capture arrives whole:
/// every object the manifest lists, with the sha256 it records.
fn store_fault(prefix: &str, mode: ProxyMode, heal_after: Duration) {
    let Some(r) = rig(prefix, &[]) else { return };
    r.proxy.set(mode.clone());
    let snap = Oomsnap::run(&r.env);
    let (code, body) = snap.capture();
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(heal_after);
    r.proxy.set(ProxyMode::Up);
    let rt = rt();
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            bundles(r.spool.path()).is_empty()
        }),
        "{mode:?}: not shipped:\n{}",
        snap.logs()
    );
    let m = manifests(&r, &rt, prefix);
    assert_eq!(m.len(), 1, "{mode:?}");
    let manifest: Manifest = serde_json::from_slice(&rt.block_on(r.s3.get(&m[0]))).unwrap();
    let folder = m[0].trim_end_matches("/manifest.json");
    for p in manifest.profiles.iter().filter(|p| p.ok()) {
        let bytes = rt.block_on(r.s3.get(&format!("{folder}/{}", p.file.as_deref().unwrap())));
        let sha = oomsnap::spool::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(
            Some(sha),
            p.sha256,
            "{mode:?}: {} differs from what was spooled",
            p.name
        );
    }
    if !matches!(mode, ProxyMode::Slow(_)) {
        assert!(
            r.proxy.spoiled.load(Ordering::Relaxed) > 0,
            "{mode:?} was never injected"
        );
        let text = snap.get("/metrics").1;
        assert!(
            metric(&text, "oomsnap_uploads_total{outcome=\"error\"}").unwrap() >= 1.0,
            "{mode:?}"
        );
        assert!(snap.logs().contains("upload failed"), "{mode:?}");
    }
}

#[test]
fn store_answering_503_slowdown_loses_nothing() {
    store_fault("slowdown", ProxyMode::Status(503), Duration::from_secs(2));
}

#[test]
fn store_answering_500_loses_nothing() {
    store_fault("err500", ProxyMode::Status(500), Duration::from_secs(2));
}

#[test]
fn slow_store_still_receives_everything() {
    store_fault(
        "slow",
        ProxyMode::Slow(Duration::from_millis(1500)),
        Duration::from_secs(4),
    );
}

#[test]
fn store_dropping_the_connection_mid_upload_loses_nothing() {
    store_fault("cut", ProxyMode::CutAfter(100), Duration::from_secs(3));
}

/// A target that is slow but honest, or lies about its length.
fn odd_target() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heap = fixture("heap_baseline.pb.gz");
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let heap = heap.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                match path.as_str() {
                    // Byte by byte, 2 ms apart: slow, but within the timeout.
                    "/debug/pprof/heap" => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            heap.len()
                        );
                        for b in &heap {
                            if c.write_all(&[*b]).is_err() {
                                return;
                            }
                            let _ = c.flush();
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    // Promises more than it sends, then hangs up.
                    "/debug/pprof/goroutine" => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            heap.len() * 3
                        );
                        let _ = c.write_all(&heap);
                    }
                    // Promises less than the profile.
                    "/debug/pprof/allocs" => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            heap.len() / 2
                        );
                        let _ = c.write_all(&heap);
                    }
                    _ => {
                        let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}/debug/pprof")
}

#[test]
fn slow_bodies_complete_and_wrong_lengths_are_refused() {
    let target = odd_target();
    let dir = temp_dir("faults-odd");
    let store = dir.path().join("store");
    let out = OomsnapEnv::new()
        .target(&target)
        .set("OOMSNAP_PROFILES", "heap,goroutine,allocs")
        .set("OOMSNAP_FETCH_TIMEOUT", "20s")
        .file_store(&store)
        .spool(&dir.path().join("spool"))
        .set("OOMSNAP_CGROUP_ROOT", dir.path().display())
        .command(&["capture"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Manifest = serde_json::from_slice(
        &std::fs::read(find_file(&store, "manifest.json").unwrap()).unwrap(),
    )
    .unwrap();
    let get = |n: &str| m.profiles.iter().find(|p| p.name == n).unwrap().clone();
    let heap = get("heap");
    assert!(heap.ok(), "{heap:?}");
    assert!(
        heap.fetch_ms > 500.0,
        "the slow body was not slow: {heap:?}"
    );
    let g = get("goroutine").error.expect("a short body must fail");
    assert!(g.contains("broke off"), "{g}");
    let a = get("allocs").error.expect("a cut gzip must fail");
    assert!(a.contains("gzip"), "{a}");
}
