//! Paths and files: the crate and target directories, temporary
//! directories removed on drop, recursive listings, and an exclusive file
//! lock that makes concurrent test binaries take turns (e.g. building
//! `tests/leaky` once).

use std::fs;
use std::path::{Path, PathBuf};

use super::process::last_errno;

/// The crate root (`CARGO_MANIFEST_DIR`).
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<crate>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                manifest_dir().join(d)
            }
        }
        None => manifest_dir().join("target"),
    }
}

/// A fresh temporary directory, removed on drop.
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("oomsnap-{tag}-"))
        .tempdir()
        .expect("create temp dir")
}

/// An exclusive `flock` held until dropped.
pub struct FileLock {
    file: fs::File,
}

impl FileLock {
    pub fn acquire(path: &Path) -> FileLock {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("create lock dir");
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("open lock file");
        loop {
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            assert_eq!(last_errno(), libc::EINTR, "flock {}", path.display());
        }
        FileLock { file }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking an fd we own (closing it would unlock too).
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Every file under `dir`, recursively (empty when `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every `manifest.json` under `store`, parsed, in capture-id order.
pub fn manifests_under(store: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = files_under(store)
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .map(|p| serde_json::from_slice(&fs::read(&p).unwrap()).unwrap())
        .collect();
    v.sort_by_key(|m| m["capture_id"].as_str().unwrap_or_default().to_string());
    v
}

/// The first file named `name` under `dir`.
pub fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    files_under(dir)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == name))
}
