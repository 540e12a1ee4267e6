//! Live pod annotations: tune one pod without a restart.
//!
//! - [`rules`] — pure: the annotation names, the Downward API file format,
//!   and how values override the environment (shared with the injector)
//!
//! The Downward API file (`OOMSNAP_ANNOTATIONS_FILE`) enters as a path;
//! [`read_file`] returns its text, [`rules`] turns that into [`Tunables`].
//! The running sidecar follows the file in `run::follow`, which pushes the
//! tunables into the shared state and the watcher; this module knows
//! neither, so the state can hold a `Tunables` without a cycle.
//!
//! The file is read on a blocking thread, never the runtime's, opened
//! non-blocking, only when it is a regular file, and only up to
//! [`MAX_FILE_BYTES`]: whoever controls it (a pod owner, a broken volume)
//! cannot hang the admin server or the captures with a FIFO, nor fill the
//! sidecar's memory with a huge file.
//!
//! Annotations choose a port and a path, never a host: the target host
//! stays what the environment says, so a pod owner cannot point oomsnap's
//! requests at another service.

pub mod rules;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use rules::*;

/// The largest annotations file read: the Kubernetes API caps a pod's
/// annotations at 256 KiB in total.
pub const MAX_FILE_BYTES: u64 = 256 << 10;

/// Reads the annotations file, or `None` when there is none. Blocking.
pub fn read_file(path: &Path) -> Result<Option<String>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO would block `open` until a writer came; non-blocking, it
        // opens at once and is then refused below for what it is.
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(f) => f,
        // Outside Kubernetes the file is simply absent.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} (OOMSNAP_ANNOTATIONS_FILE) is not a regular file; expected the Downward API annotations file",
            path.display()
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {} KiB, the most a pod's annotations can hold; it is ignored",
            path.display(),
            MAX_FILE_BYTES >> 10
        ));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("annotations");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_file(&fifo).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_huge_file_is_refused_and_a_missing_one_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("annotations");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_file(&big).unwrap_err().contains("larger than"));
        assert_eq!(read_file(&d.path().join("none")).unwrap(), None);
    }
}
