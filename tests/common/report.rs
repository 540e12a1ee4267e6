//! Notes a test leaves for `scripts/test.sh`'s summary: which live test was
//! skipped and why, which timing race needed another attempt. libtest only
//! knows pass and fail, and hides a passing test's output, so these go to
//! files: one line per event, appended to
//! `<target>/oomsnap-<kind>/<binary>.<pid>.txt` (`test.sh` clears the
//! directories before a run and lists them after it).

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::files::target_dir;

/// The directory for notes of `kind` (`skips`, `races`).
pub fn notes_dir(kind: &str) -> PathBuf {
    target_dir().join(format!("oomsnap-{kind}"))
}

/// Appends `fields` (tab-separated, on one line) to this process's file of
/// `kind` notes. A note that cannot be written is said on stderr; it must
/// not turn a test's outcome around.
pub fn note(kind: &str, fields: &[&str]) {
    let dir = notes_dir(kind);
    let file = dir.join(format!("{}.{}.txt", test_binary(), std::process::id()));
    let line: Vec<String> = fields
        .iter()
        .map(|f| f.replace(['\t', '\n'], " "))
        .collect();
    let written = fs::create_dir_all(&dir).and_then(|()| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?
            .write_all(format!("{}\n", line.join("\t")).as_bytes())
    });
    if let Err(e) = written {
        eprintln!("harness: cannot note {kind} in {}: {e}", file.display());
    }
}

/// `<binary>::<test>`, e.g. `e2e::slow_leak_ships…`: the test binary from
/// the executable's name (cargo's `-<hash>` dropped), the test from the
/// thread libtest runs it on, which it names after the test.
pub fn current_test() -> String {
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(n) if n != "main" => n.to_string(),
        _ => "<unnamed test>".to_string(),
    };
    format!("{}::{test}", test_binary())
}

fn test_binary() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    }
}
