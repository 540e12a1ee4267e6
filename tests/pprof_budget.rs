//! The summariser's memory budget, end to end (issue 11, row 3).
//!
//! Hostile profiles are served by a tiny loopback HTTP server as the app's
//! heap and goroutine profiles, and kept as the baseline heap in the spool,
//! so one capture decodes three of them. The real `oomsnap capture` fetches,
//! spools, summarises and ships them; its peak RSS is its `VmHWM`, read
//! while the kernel holds it stopped at exit. Each capture must ship the
//! hostile bytes as they
//! were, say in the summary's notes why they were not summarised, and stay
//! within the budget.
//!
//! `cargo test --test pprof_budget -- --nocapture` prints the table.
//! `OOMSNAP_BUDGET_BIN=path` runs another build instead of the one cargo
//! built: a release build, or (with `OOMSNAP_BUDGET_BUILD=debug`) a debug
//! build of the code before the budget, which fails here with hundreds of
//! MiB.
//!
//! Bounds: every build may add at most the two budgets plus 4 MiB to the
//! peak of a capture of small real profiles (`MOST_OVER_CONTROL`). A
//! release-like build must also stay under the sidecar's 32 MiB limit. A
//! debug build is not held to that: a capture of small real profiles peaks
//! at about 24 MiB in a debug build against 9 MiB in a release one
//! (unoptimised code, resident), so a debug build's absolute peak says
//! nothing about the shipped image; the increment over the control is what
//! the budget promises, in either build.
//!
//! A second test checks the same bodies in-process with a counting
//! allocator: what decoding and summarising allocate never exceeds what
//! `pprof::estimate` priced, and a refused body allocates next to nothing.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oomsnap::pprof::{self, Budget};

const MIB: u64 = 1 << 20;

/// The sidecar's memory limit in `deploy/examples`.
const SIDECAR_LIMIT: u64 = 32 * MIB;

/// What one summary may add over a capture of small real profiles: the
/// inflated body plus the decoded structs and tables (the two budgets), and
/// 4 MiB for the allocator's own slack and the upload of the bigger files.
const MOST_OVER_CONTROL: u64 = pprof::SIDECAR_RAW_BUDGET + pprof::SIDECAR_DECODE_BUDGET + 4 * MIB;

/// One measuring test at a time: the allocator's counters are
/// process-wide, and the in-process test would slow the captures.
static SERIAL: Mutex<()> = Mutex::new(());

#[path = "pprof_budget/bodies.rs"]
mod bodies;

use bodies::{hostile_bodies, Body, Expect};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::manifest_dir().join("tests/data/pprof").join(name)).unwrap()
}

// ---------------------------------------------------------------------------
// A pprof server on loopback
// ---------------------------------------------------------------------------

/// Serves `heap` and `goroutine` under `/debug/pprof/`; stopped on drop.
struct Target {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Target {
    fn serve(heap: Vec<u8>, goroutine: Vec<u8>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let bodies = Arc::new((heap, goroutine));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let bodies = bodies.clone();
                std::thread::spawn(move || answer(conn, &bodies.0, &bodies.1));
            }
        });
        Target {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/debug/pprof", self.port)
    }
}

fn answer(mut c: TcpStream, heap: &[u8], goroutine: &[u8]) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let body: &[u8] = match path {
        "/debug/pprof/heap" => heap,
        "/debug/pprof/goroutine" => goroutine,
        _ => b"ok",
    };
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(body);
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// One capture, its peak RSS measured by the kernel
// ---------------------------------------------------------------------------

/// The binary under test, and whether it is a release-like build: the one
/// cargo built with this test, or `OOMSNAP_BUDGET_BIN`, a release build
/// unless `OOMSNAP_BUDGET_BUILD=debug`.
fn binary() -> (PathBuf, bool) {
    match std::env::var_os("OOMSNAP_BUDGET_BIN") {
        Some(p) => (
            PathBuf::from(p),
            std::env::var("OOMSNAP_BUDGET_BUILD").as_deref() != Ok("debug"),
        ),
        None => (
            PathBuf::from(env!("CARGO_BIN_EXE_oomsnap")),
            !cfg!(debug_assertions),
        ),
    }
}

struct Run {
    /// The capture's peak RSS: its own `VmHWM`, read while the kernel holds
    /// it stopped at exit (see [`run_traced`]).
    peak: u64,
    /// `wait4`'s `ru_maxrss`, a cross-check: not below `peak` (but for the
    /// rounding of /proc's per-CPU counters), and above it only by what the
    /// spawn inherited (see [`run_traced`]).
    ru_maxrss: u64,
    manifest: serde_json::Value,
    store: PathBuf,
    log: String,
}

/// The `VmHWM` line of `/proc/<pid>/status`, in bytes.
fn vm_hwm(pid: libc::pid_t) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Runs `cmd` to its end under `ptrace`, only to stop it at its exit
/// (`PTRACE_O_TRACEEXIT`) and read the high-water mark of its own address
/// space, which the kernel keeps until that moment. Returns the wait
/// status, that peak, and `ru_maxrss`.
///
/// `ru_maxrss` alone is not enough: `exec` folds the high-water mark of the
/// address space the child was spawned from (this test's, through vfork or
/// fork) into it, and a release build's peak is below this test's RSS.
fn run_traced(cmd: &mut Command, timeout: Duration) -> (i32, u64, u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes one raw syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also gives its rusage"
    )]
    let child = cmd.spawn().expect("spawn oomsnap under ptrace");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    let (mut at_exec, mut peak) = (true, None);
    loop {
        let mut status = 0;
        // SAFETY: all-zero bytes are a valid rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: status and usage are valid out-pointers; our own child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == 0 {
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            let ru = usage.ru_maxrss as u64 * 1024;
            return (status, peak.unwrap_or(ru), ru);
        }
        let signal = libc::WSTOPSIG(status);
        let event = status >> 16;
        let mut deliver = 0;
        if signal == libc::SIGTRAP && at_exec {
            // The stop that follows exec: now trace its exit.
            at_exec = false;
            let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
            // SAFETY: ptrace on our own stopped tracee.
            let r = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options) };
            assert!(
                r == 0,
                "PTRACE_SETOPTIONS: {}",
                std::io::Error::last_os_error()
            );
        } else if signal == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
            peak = vm_hwm(pid);
        } else {
            deliver = signal;
        }
        // SAFETY: as above; resumes the tracee with its own signal, if any.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver) };
    }
}

/// Runs `oomsnap capture` against `target`, with `baseline` kept in the
/// spool as the baseline heap.
fn capture(target: &Target, baseline: &[u8], dir: &Path) -> Run {
    let (bin, _) = binary();
    let spool = dir.join("spool");
    let store = dir.join("store");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join(oomsnap::summary::BASELINE_HEAP), baseline).unwrap();
    let log = dir.join("oomsnap.log");
    let mut cmd = Command::new(&bin);
    cmd.arg("capture")
        .env_clear()
        .env("OOMSNAP_TARGET", target.url())
        .env("OOMSNAP_STORE", format!("file://{}", store.display()))
        .env("OOMSNAP_SPOOL_DIR", &spool)
        .env("OOMSNAP_ADMIN_ADDR", "off")
        // Debug builds inflate the 300 MiB zero bomb slowly while checking it.
        .env("OOMSNAP_FETCH_TIMEOUT", "120s")
        .env("OOMSNAP_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let (status, peak, ru_maxrss) = run_traced(&mut cmd, Duration::from_secs(300));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "oomsnap capture did not succeed (wait status {status:#x}); log:\n{log}"
    );
    let manifest = common::find_file(&store, "manifest.json")
        .unwrap_or_else(|| panic!("nothing shipped to {}; log:\n{log}", store.display()));
    Run {
        peak,
        ru_maxrss,
        manifest: serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap(),
        store,
        log,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The profile `name` shipped with `body` as it was served.
fn assert_shipped(run: &Run, name: &str, body: &[u8]) {
    let record = run.manifest["profiles"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {:#}", run.manifest));
    assert!(record["error"].is_null(), "{name} failed: {record:#}");
    assert_eq!(record["bytes"], body.len() as u64, "{name}: {record:#}");
    let shipped = common::find_file(&run.store, &format!("{name}.pb.gz"))
        .unwrap_or_else(|| panic!("{name}.pb.gz did not ship"));
    assert!(
        std::fs::read(shipped).unwrap() == body,
        "{name}.pb.gz changed on the way"
    );
}

#[test]
fn hostile_profiles_ship_unsummarised_within_the_sidecar_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (bin, release) = binary();
    let bodies = hostile_bodies();
    let dir = common::temp_dir("pprof-budget");

    // The control: small real profiles, summarised in full.
    let leak = fixture("heap_leak.pb.gz");
    let target = Target::serve(leak.clone(), fixture("goroutine.pb.gz"));
    let control = capture(
        &target,
        &fixture("heap_baseline.pb.gz"),
        &dir.path().join("control"),
    );
    drop(target);
    let verdict = control.manifest["summary"]["verdict"]
        .as_str()
        .unwrap_or("");
    assert!(
        verdict.contains("main.(*leakyCache).put"),
        "the control capture was not summarised: {:#}\n{}",
        control.manifest["summary"],
        control.log
    );

    let mut rows = vec![(
        "real Go profiles (control)".to_string(),
        leak.len() as u64,
        0u64,
        (control.peak, control.ru_maxrss),
        verdict.to_string(),
    )];
    let mut failures = Vec::new();
    for (i, b) in bodies.iter().enumerate() {
        let target = Target::serve(b.gz.clone(), b.gz.clone());
        let run = capture(&target, &b.gz, &dir.path().join(format!("run{i}")));
        drop(target);
        assert_shipped(&run, "heap", &b.gz);
        assert_shipped(&run, "goroutine", &b.gz);
        let summary = &run.manifest["summary"];
        let notes: Vec<&str> = summary["notes"]
            .as_array()
            .map(|n| n.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let outcome = match b.expect {
            Expect::Refused(why) => {
                for part in ["heap: ", "goroutine: "] {
                    if !notes.iter().any(|n| n.starts_with(part) && n.contains(why)) {
                        failures.push(format!("{}: no {part}note with {why:?}: {notes:?}", b.name));
                    }
                }
                if !summary["heap"].is_null() {
                    failures.push(format!("{}: summarised anyway: {summary:#}", b.name));
                }
                notes.first().map_or(String::new(), |n| n.to_string())
            }
            Expect::Summarised => {
                if summary["heap"].is_null() || summary["goroutines"].is_null() {
                    failures.push(format!("{}: not summarised: {summary:#}", b.name));
                }
                // At the budget's edge the baseline may not fit beside the
                // heap's totals; then a note says so.
                let baseline_noted = notes
                    .iter()
                    .any(|n| n.starts_with("baseline heap: ") && n.contains("decode budget"));
                if summary["diff"].is_null() && !baseline_noted {
                    failures.push(format!("{}: no diff and no note: {summary:#}", b.name));
                }
                summary["verdict"].as_str().unwrap_or("").to_string()
            }
        };
        if run.peak > control.peak + MOST_OVER_CONTROL {
            failures.push(format!(
                "{}: peak RSS {} is {} over the control's {}, more than {}",
                b.name,
                mib(run.peak),
                mib(run.peak - control.peak),
                mib(control.peak),
                mib(MOST_OVER_CONTROL)
            ));
        }
        if release && run.peak > SIDECAR_LIMIT {
            failures.push(format!(
                "{}: peak RSS {} is over the sidecar's {} limit",
                b.name,
                mib(run.peak),
                mib(SIDECAR_LIMIT)
            ));
        }
        // The two agree but for /proc's approximate per-CPU counters.
        assert!(
            run.peak <= run.ru_maxrss + MIB,
            "{}: VmHWM {} above ru_maxrss {}",
            b.name,
            mib(run.peak),
            mib(run.ru_maxrss)
        );
        rows.push((
            b.name.clone(),
            b.gz.len() as u64,
            b.inflated,
            (run.peak, run.ru_maxrss),
            outcome,
        ));
    }

    eprintln!(
        "\n{} ({} build), bound: control + {}{}",
        bin.display(),
        if release { "release-like" } else { "debug" },
        mib(MOST_OVER_CONTROL),
        if release {
            format!(", and {}", mib(SIDECAR_LIMIT))
        } else {
            String::new()
        }
    );
    eprintln!(
        "{:<42} {:>10} {:>12} {:>10} {:>10}  outcome",
        "body", "bytes", "inflated", "peak RSS", "ru_maxrss"
    );
    for (name, bytes, inflated, (peak, ru), outcome) in &rows {
        let mut outcome = outcome.clone();
        if outcome.len() > 90 {
            let mut end = 90;
            while !outcome.is_char_boundary(end) {
                end -= 1;
            }
            outcome.truncate(end);
            outcome.push('…');
        }
        let inflated = if *inflated > 0 {
            inflated.to_string()
        } else {
            "-".into()
        };
        eprintln!(
            "{name:<42} {bytes:>10} {inflated:>12} {:>10} {:>10}  {outcome}",
            mib(*peak),
            mib(*ru)
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// In process: the estimate bounds what decoding and summarising allocate
// ---------------------------------------------------------------------------

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most bytes `f` holds at once beyond what was live before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let (out, peak) = counting_alloc::peak_during(f);
    (out, peak as u64)
}

#[test]
fn the_estimate_bounds_what_decoding_and_summarising_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fixtures: Vec<Body> = ["heap_leak.pb.gz", "heap_baseline.pb.gz", "goroutine.pb.gz"]
        .into_iter()
        .map(|name| Body {
            name: name.into(),
            gz: fixture(name),
            inflated: 0,
            expect: Expect::Summarised,
        })
        .collect();
    // Small gzip state and buffers beside the inflated body.
    const GZIP_SLACK: u64 = 256 << 10;
    for b in hostile_bodies().iter().chain(&fixtures) {
        let (decoded, peak) = peak_during(|| pprof::decode(&b.gz));
        match (b.expect, decoded) {
            (Expect::Refused(why), Err(e)) => {
                assert!(e.to_string().contains(why), "{}: {e}", b.name);
                // Refused before decoding: at most the inflated body.
                assert!(
                    peak <= pprof::SIDECAR_RAW_BUDGET + GZIP_SLACK,
                    "{}: refusing it allocated {}",
                    b.name,
                    mib(peak)
                );
            }
            (Expect::Summarised, Ok(p)) => {
                let e = pprof::estimate(&b.gz, Budget::SIDECAR).unwrap();
                assert!(
                    peak <= e.raw_bytes + e.decoded_bytes() + GZIP_SLACK,
                    "{}: decoding allocated {}, priced {} + {}",
                    b.name,
                    mib(peak),
                    mib(e.raw_bytes),
                    mib(e.decoded_bytes())
                );
                for (what, (_, peak)) in [
                    (
                        "heap_summary",
                        peak_during(|| drop(pprof::heap_summary(&p, 10))),
                    ),
                    (
                        "goroutine_summary",
                        peak_during(|| drop(pprof::goroutine_summary(&p, 10))),
                    ),
                ] {
                    assert!(
                        peak <= e.working_bytes(),
                        "{}: {what} allocated {}, priced {}",
                        b.name,
                        mib(peak),
                        mib(e.working_bytes())
                    );
                }
            }
            (_, r) => panic!("{}: unexpected {:?}", b.name, r.map(|p| p.sample.len())),
        }
    }
}
