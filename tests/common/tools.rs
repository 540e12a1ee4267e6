//! External tools the tests call: finding an executable on `PATH`, and
//! asking `kubernetes-validate` which Kubernetes version it knows best.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds an executable named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The newest Kubernetes version `kubernetes-validate` bundles (its default).
pub fn newest_kubernetes() -> String {
    let out = Command::new("kubernetes-validate")
        .arg("--help")
        .output()
        .expect("kubernetes-validate runs");
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let at = help
        .find("Defaults to ")
        .expect("kubernetes-validate --help names its default (newest) version");
    help[at + "Defaults to ".len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .trim_end_matches('.')
        .to_string()
}
