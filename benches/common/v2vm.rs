//! Runs a bench inside the cgroup v2 VM (`../shared/tools/v2vm/`).
//!
//! The bench binary, built static (`cargo bench --target
//! x86_64-unknown-linux-musl`), copies itself, the static oomsnap cargo
//! built beside it and the static leaker into the VM, and runs itself there
//! with `--inside-v2vm`. Settings travel as `KEY=VALUE` words of the kernel
//! command line (`V2VM_APPEND`), which the VM hands to the payload as
//! environment. The inside prints one `BENCH <json>` line per result; the
//! outside collects them and makes the table, so the comparison (oomsnap
//! beside the curl loop) still comes from one process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::{harness, oomsnap_bin};

/// True in the copy of the bench that runs inside the VM.
pub fn inside() -> bool {
    std::env::args().any(|a| a == "--inside-v2vm")
}

/// `OOMSNAP_BENCH_V2VM=1`: run the v2 variant of the bench.
pub fn requested() -> bool {
    std::env::var("OOMSNAP_BENCH_V2VM").is_ok_and(|v| v == "1")
}

/// Prints one result line for the outside to collect.
pub fn emit(v: &serde_json::Value) {
    println!("BENCH {v}");
}

/// Boots the VM with this bench inside; the `BENCH` lines it printed.
/// `None` (having said why) when the VM cannot run here.
pub fn run(append: &str, timeout_s: u64) -> Option<Vec<serde_json::Value>> {
    if !cfg!(target_env = "musl") {
        eprintln!(
            "v2 VM bench skipped: the bench must be static to run in the VM; \
             run it with `cargo bench --target x86_64-unknown-linux-musl`"
        );
        return None;
    }
    let tool = harness::manifest_dir().join("../shared/tools/v2vm/run-in-v2vm.sh");
    if !tool.exists() || harness::which("qemu-system-x86_64").is_none() {
        eprintln!(
            "v2 VM bench skipped: needs {} and qemu-system-x86 (see its README)",
            tool.display()
        );
        return None;
    }
    let bindir = harness::temp_dir("bench-v2vm");
    let copy = |from: PathBuf, name: &str| {
        std::fs::copy(&from, bindir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {} into the VM: {e}", from.display()));
    };
    copy(std::env::current_exe().expect("current exe"), "bench");
    copy(oomsnap_bin(), "oomsnap");
    copy(harness::leaky_binary(), "leaky");
    let payload = bindir.path().join("payload.sh");
    std::fs::write(
        &payload,
        "#!/bin/sh\n\
         echo $$ > /sys/fs/cgroup/sidecar/cgroup.procs\n\
         cd /tmp\n\
         OOMSNAP_BIN=/opt/bin/oomsnap OOMSNAP_LEAKY_BIN=/opt/bin/leaky exec /opt/bin/bench --inside-v2vm\n",
    )
    .expect("write payload");
    let t = Instant::now();
    let out = Command::new(&tool)
        .arg(bindir.path())
        .arg(&payload)
        .env("V2VM_APPEND", append)
        .env("V2VM_TIMEOUT", timeout_s.to_string())
        .output()
        .expect("run the v2 VM");
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines().filter(|l| !l.starts_with("BENCH ")) {
        eprintln!("vm: {l}");
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "v2 VM: {:.0} s, exit {:?}",
        t.elapsed().as_secs_f64(),
        out.status.code()
    );
    let results: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    if !out.status.success() && results.is_empty() {
        panic!("the bench failed inside the VM ({:?})", out.status);
    }
    Some(results)
}
