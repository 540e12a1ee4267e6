//! Hostile inputs and neighbours (issue 11): each test is one attack that
//! worked against an earlier oomsnap, run for real against the built binary.
//!
//! | row | input | file::test |
//! |---|---|---|
//! | 1 | header floods and idle sockets on the admin port | `hostile::a_header_flood_and_idle_sockets_cannot_grow_or_hold_the_admin_server` |
//! | 2 | `POST /capture` from another network namespace | `hostile::captures_from_the_network_are_refused_by_default_and_never_spend_the_near_oom_quota` |
//! | 3 | protobuf bombs served as profiles | `pprof_budget::*` |
//! | 4 | an annotations file that is a FIFO | `hostile::an_annotations_fifo_never_hangs_the_sidecar` |
//! | 5 | the target redirects to another host | `hostile::a_redirect_from_the_target_is_never_followed` |
//! | 6 | huge and quota-killing annotations | `hostile::huge_and_quota_killing_annotations_are_refused_within_a_small_memory` |
//! | 7 | concurrent 1 MB AdmissionReviews | `inject_webhook::*` |
//! | 8 | pod names that differ after 100 characters | `hostile::pod_names_that_differ_only_past_the_cap_land_in_different_folders` |

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A `/proc/<pid>/status` field in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn base(dir: &Path) -> Vec<(String, String)> {
    env(&[
        ("OOMSNAP_SPOOL_DIR", dir.join("spool").display().to_string()),
        ("OOMSNAP_STORE", format!("file://{}/store", dir.display())),
        ("OOMSNAP_BASELINE_EVERY", "0".into()),
    ])
}

#[test]
fn a_header_flood_and_idle_sockets_cannot_grow_or_hold_the_admin_server() {
    let dir = temp_dir("hostile-flood");
    let snap = Oomsnap::start(&["run"], &base(dir.path()));
    let addr: SocketAddr = snap.admin.parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = proc_kib(snap.pid(), "VmRSS:");

    // 100 peers each sending ~380 KB of headers that never end.
    let pad = format!("X-Pad: {}\r\n", "a".repeat(4000));
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let pad = pad.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    return;
                };
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n");
                for _ in 0..95 {
                    if s.write_all(pad.as_bytes()).is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            })
        })
        .collect();
    for t in flood {
        let _ = t.join();
    }
    let peak = proc_kib(snap.pid(), "VmHWM:");
    eprintln!("flood: RSS before {before} KiB, peak during {peak} KiB");
    assert!(
        peak < before + 8 * 1024,
        "the header flood grew oomsnap from {before} KiB to {peak} KiB"
    );

    // 500 idle sockets: none is held past the header timeout.
    let idle: Vec<TcpStream> = (0..500)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(oomsnap::admin::HEADER_TIMEOUT + Duration::from_secs(2));
    let open = idle
        .into_iter()
        .filter(|s| {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            let mut b = [0u8; 1];
            // A closed socket reads 0 bytes (or an error); an open one times out.
            matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        })
        .count();
    assert_eq!(open, 0, "{open} idle sockets are still held open");
    assert_eq!(snap.get("/healthz").0, 200);
}

/// A network namespace with a veth pair: a peer that is not on loopback.
struct Netns {
    name: String,
    host_ip: String,
    peer_ip: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        let n = std::process::id() % 200 + 20;
        let name = format!("oomsnap-t{n}");
        let (h, p) = (format!("vh{n}"), format!("vp{n}"));
        let host_ip = format!("10.201.{n}.1");
        let peer_ip = format!("10.201.{n}.2");
        let ns = Netns {
            name: name.clone(),
            host_ip: host_ip.clone(),
            peer_ip,
        };
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = run(&["netns", "add", &name])
            && run(&["link", "add", &h, "type", "veth", "peer", "name", &p])
            && run(&["link", "set", &p, "netns", &name])
            && run(&["addr", "add", &format!("{host_ip}/24"), "dev", &h])
            && run(&["link", "set", &h, "up"])
            && run(&[
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("{}/24", ns.peer_ip),
                "dev",
                &p,
            ])
            && run(&["netns", "exec", &name, "ip", "link", "set", &p, "up"])
            && run(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    /// `curl -X POST` from inside the namespace; the HTTP status.
    fn post(&self, url: &str, headers: &[&str]) -> u16 {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.name,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "60",
            "-X",
            "POST",
        ]);
        for h in headers {
            c.args(["-H", h]);
        }
        let out = c.arg(url).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `oomsnap run` with its admin server on every address (`0.0.0.0:port`),
/// killed on drop.
struct OnAllAddresses(std::process::Child, std::path::PathBuf);

impl OnAllAddresses {
    fn start(port: u16, vars: &[(String, String)], log: std::path::PathBuf) -> OnAllAddresses {
        let child = Command::new(oomsnap_bin())
            .arg("run")
            .env_clear()
            .envs(vars.iter().cloned())
            .env("OOMSNAP_ADMIN_ADDR", format!("0.0.0.0:{port}"))
            .env("OOMSNAP_LOG_FORMAT", "text")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let me = OnAllAddresses(child, log);
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
                http_get(&format!("http://127.0.0.1:{port}/healthz")).is_ok_and(|(c, _)| c == 200)
            }),
            "{}",
            me.logs()
        );
        me
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for OnAllAddresses {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn captures_from_the_network_are_refused_by_default_and_never_spend_the_near_oom_quota() {
    let Some(cg) = MemCgroup::create(256 << 20) else {
        assert!(!require_live("a writable v1 memory cgroup"));
        return;
    };
    let Some(ns) = Netns::create() else {
        assert!(!require_live("network namespaces (ip netns, veth)"));
        return;
    };
    let mut leaker = Leaker::spawn(
        Some(&cg),
        &["-baseline", "16", "-rate", "64", "-delay", "6s"],
    );
    let dir = temp_dir("hostile-netns");
    let port = free_port();
    let url = format!("http://{}:{port}/capture", ns.host_ip);
    let token = "a-long-enough-secret-token";
    let mut vars = base(dir.path());
    vars.extend(env(&[
        ("OOMSNAP_CGROUP", cg.path().display().to_string()),
        ("OOMSNAP_TARGET", leaker.pprof_base()),
    ]));

    // The default: the network may read, not capture.
    {
        let _snap = OnAllAddresses::start(port, &vars, dir.path().join("default.log"));
        assert_eq!(
            ns.post(&url, &[]),
            403,
            "the default let {} capture",
            ns.peer_ip
        );
    }

    // Opened with a token: a request without it is refused; with it, the
    // manual quota (2) bounds the peer, and the near-OOM quota is untouched.
    vars.extend(env(&[
        ("OOMSNAP_ADMIN_CAPTURE", "network".into()),
        ("OOMSNAP_ADMIN_TOKEN", token.into()),
    ]));
    let snap = OnAllAddresses::start(port, &vars, dir.path().join("network.log"));
    assert_eq!(ns.post(&url, &[]), 401);
    let auth = format!("Authorization: Bearer {token}");
    let codes: Vec<u16> = (0..4).map(|_| ns.post(&url, &[&auth])).collect();
    assert_eq!(codes, [200, 200, 429, 429], "{}", snap.logs());
    let (_, status) = http_get(&format!("http://127.0.0.1:{port}/status")).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["quota"]["remaining"], 4, "{status:#}");

    // The leak that follows is captured, and the kill is attributed to the
    // automatic capture, not to the decoys.
    assert!(
        leaker.wait_exit(Duration::from_secs(30)).is_some(),
        "the app was never OOM-killed"
    );
    let store = dir.path().join("store");
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            files_under(&store).iter().any(|p| p.ends_with("oom.json"))
        }),
        "{}",
        snap.logs()
    );
    let oom_file = files_under(&store)
        .into_iter()
        .find(|p| p.ends_with("oom.json"))
        .unwrap();
    let oom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&oom_file).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(oom_file.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(m["reason"], "manual", "oom.json went to a decoy: {oom}");
    assert!(
        oom["chosen"].as_str().unwrap().contains("automatic"),
        "{oom}"
    );
    assert!(
        manifests_under(&store)
            .iter()
            .filter(|m| m["reason"] != "manual")
            .count()
            >= 1
    );
}

#[test]
fn an_annotations_fifo_never_hangs_the_sidecar() {
    let dir = temp_dir("hostile-fifo");
    let fifo = dir.path().join("annotations");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut vars = base(dir.path());
    vars.push((
        "OOMSNAP_ANNOTATIONS_FILE".into(),
        fifo.display().to_string(),
    ));
    let snap = Oomsnap::start(&["run"], &vars);
    // Several reload periods later, everything still answers at once.
    for _ in 0..3 {
        std::thread::sleep(oomsnap::annotations::RELOAD_EVERY);
        let t0 = std::time::Instant::now();
        let s = snap.status();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(
            problem_in(&s, "annotations").is_some_and(|m| m.contains("not a regular file")),
            "{s:#}"
        );
        assert_eq!(snap.get("/healthz").0, 200);
    }
}

/// Answers every request with a redirect to `to`.
fn redirector(to: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn a_redirect_from_the_target_is_never_followed() {
    // The "other host": counts every request it gets.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in other.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let port = redirector(format!("http://127.0.0.1:{other_port}/steal"));
    let dir = temp_dir("hostile-redirect");
    let out = Command::new(oomsnap_bin())
        .arg("capture")
        .env_clear()
        .envs(base(dir.path()))
        .env(
            "OOMSNAP_TARGET",
            format!("http://127.0.0.1:{port}/debug/pprof"),
        )
        .env("OOMSNAP_ADMIN_ADDR", "off")
        .output()
        .unwrap();
    let m = manifests_under(&dir.path().join("store"));
    let text = m
        .first()
        .map(|m| m.to_string())
        .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(text.contains("redirects are not followed"), "{text}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "oomsnap followed the redirect"
    );
}

#[test]
fn huge_and_quota_killing_annotations_are_refused_within_a_small_memory() {
    let dir = temp_dir("hostile-annotations");
    let file = dir.path().join("annotations");
    std::fs::write(&file, "").unwrap();
    let mut vars = base(dir.path());
    vars.push((
        "OOMSNAP_ANNOTATIONS_FILE".into(),
        file.display().to_string(),
    ));
    let snap = Oomsnap::start(&["run"], &vars);
    std::thread::sleep(Duration::from_millis(500));
    let before = proc_kib(snap.pid(), "VmRSS:");

    // A 10 MB value: the file is refused whole, unread past its cap.
    let huge = format!("oomsnap.dev/thresholds=\"{}\"\n", "9".repeat(10 << 20));
    std::fs::write(&file, &huge).unwrap();
    assert!(wait_until(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || {
            snap.problem("annotations")
                .is_some_and(|m| m.contains("larger than"))
        }
    ));
    let peak = proc_kib(snap.pid(), "VmHWM:");
    assert!(
        peak < before + 4 * 1024,
        "RSS {before} KiB → peak {peak} KiB"
    );

    // Values that would switch the quota off, or a rung that never fires.
    std::fs::write(
        &file,
        "oomsnap.dev/rate-period=\"1ns\"\noomsnap.dev/rate-burst=\"1000\"\noomsnap.dev/thresholds=\"100\"\n",
    )
    .unwrap();
    assert!(wait_until(
        Duration::from_secs(8),
        Duration::from_millis(100),
        || {
            snap.problem("annotations")
                .is_some_and(|m| m.contains("can never fire"))
        }
    ));
    let s = snap.status();
    let p = problem_in(&s, "annotations").unwrap();
    assert!(
        p.contains("rate-period") && p.contains("at least 1s"),
        "{p}"
    );
    assert!(p.len() < 2100, "the problem echoes {} bytes", p.len());
    // The burst alone is valid; the period stays at its default.
    assert_eq!(s["quota"]["period"], "10m");
}

#[test]
fn pod_names_that_differ_only_past_the_cap_land_in_different_folders() {
    use oomsnap::config::Identity;
    let who = |pod: String| Identity {
        namespace: "shop".into(),
        pod,
        container: "app".into(),
        node: "n".into(),
        pod_uid: None,
    };
    let stem = "checkout-".repeat(12); // 108 characters
    let a = who(format!("{stem}-7d9f-aaaa"));
    let b = who(format!("{stem}-7d9f-bbbb"));
    let prefix = object_store::path::Path::from("oom");
    let ka = oomsnap::keys::capture_prefix(&prefix, &a, "20261130T000000.000Z_manual");
    let kb = oomsnap::keys::capture_prefix(&prefix, &b, "20261130T000000.000Z_manual");
    assert_ne!(ka, kb, "two pods share one key folder");
    for k in [&ka, &kb] {
        assert!(
            k.parts()
                .all(|p| p.as_ref().len() <= oomsnap::keys::MAX_PART),
            "{k}"
        );
    }
    // A short name is left as it was, so existing keys do not move.
    let short = oomsnap::keys::capture_prefix(&prefix, &who("cart-7d9f".into()), "x");
    assert_eq!(short.as_ref(), "oom/shop/cart-7d9f/app/x");
}
