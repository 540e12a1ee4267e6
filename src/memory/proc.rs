//! Finds the target process and reads what `/proc` says about it.
//!
//! Enters: a TCP port or a process name. Leaves: a PID and its start time
//! (so a reused PID is not mistaken for the same process), its cgroup paths
//! from `/proc/<pid>/cgroup`, and an [`RssReader`] for the last-resort
//! strategy. Uses `procfs` for the socket tables and fd links.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use procfs::net::TcpState;
use procfs::process::FDTarget;

use super::Sample;

/// Why a process could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("no process listens on TCP port {port} in this network namespace")]
    NoListener { port: u16 },
    #[error("a socket listens on TCP port {port} but no visible process owns it (is shareProcessNamespace on, and may oomsnap read other processes' fds? it needs the same UID or SYS_PTRACE)")]
    ListenerNotVisible { port: u16 },
    #[error("no process named {name:?} is visible")]
    NoProcessNamed { name: String },
    #[error("cannot read {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} holds {content:?}; expected {expected}")]
    Parse {
        file: PathBuf,
        content: String,
        expected: &'static str,
    },
    #[error("cannot read the socket tables: {0}")]
    Net(String),
}

impl ProcError {
    pub(crate) fn is_gone(&self) -> bool {
        matches!(self, ProcError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH))
    }
}

/// A process and its start time (clock ticks after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

/// The start time of `pid`, or `None` when it no longer exists.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.starttime)
}

/// True when `id` still names the same running process.
pub(crate) fn alive(id: ProcessId) -> bool {
    start_time(id.pid) == Some(id.start)
}

/// The process listening on `port` (IPv4 or IPv6, any local address).
pub(crate) fn find_by_port(port: u16) -> Result<ProcessId, ProcError> {
    let mut inodes = Vec::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        // A host without IPv6 has no tcp6 table; that is not an error.
        let Ok(entries) = table else { continue };
        inodes.extend(
            entries
                .into_iter()
                .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
                .map(|e| e.inode),
        );
    }
    if inodes.is_empty() {
        return Err(ProcError::NoListener { port });
    }
    let me = std::process::id();
    let all = procfs::process::all_processes().map_err(|e| ProcError::Net(e.to_string()))?;
    for p in all.flatten() {
        if p.pid as u32 == me {
            continue;
        }
        let Ok(fds) = p.fd() else { continue };
        let owns = fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)));
        if owns {
            if let Ok(stat) = p.stat() {
                return Ok(ProcessId {
                    pid: p.pid as u32,
                    start: stat.starttime,
                });
            }
        }
    }
    Err(ProcError::ListenerNotVisible { port })
}

/// The oldest process whose `comm` or argv[0] basename is `name`.
pub(crate) fn find_by_name(name: &str) -> Result<ProcessId, ProcError> {
    let me = std::process::id();
    let all = procfs::process::all_processes().map_err(|e| ProcError::Net(e.to_string()))?;
    let mut best: Option<ProcessId> = None;
    for p in all.flatten() {
        if p.pid as u32 == me {
            continue;
        }
        let Ok(stat) = p.stat() else { continue };
        let argv0 = p
            .cmdline()
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|a| a.rsplit('/').next().unwrap_or("").to_string());
        if stat.comm == name || argv0.as_deref() == Some(name) {
            let id = ProcessId {
                pid: p.pid as u32,
                start: stat.starttime,
            };
            if best.is_none_or(|b| id.start < b.start) {
                best = Some(id);
            }
        }
    }
    best.ok_or_else(|| ProcError::NoProcessNamed { name: name.into() })
}

/// Where a process sits in the cgroup hierarchies, from `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// The v1 `memory` controller's path, when the host runs v1 for memory.
    pub v1_memory: Option<String>,
    /// The unified (v2) path, `0::/…`.
    pub unified: Option<String>,
}

/// Parses `/proc/<pid>/cgroup` (`hierarchy:controllers:path` lines).
pub fn parse_proc_cgroup(content: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(h), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if h == "0" && ctrl.is_empty() {
            out.unified = Some(path.to_string());
        } else if ctrl.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// Reads the cgroup paths of `pid` (`self` for this process).
pub(crate) fn cgroup_paths(pid: Option<u32>) -> Result<CgroupPaths, ProcError> {
    let file = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/cgroup")),
        None => PathBuf::from("/proc/self/cgroup"),
    };
    let content =
        std::fs::read_to_string(&file).map_err(|source| ProcError::Io { file, source })?;
    Ok(parse_proc_cgroup(&content))
}

/// The resident set of one process, for hosts where no cgroup is readable.
pub(crate) struct RssReader {
    path: PathBuf,
    file: File,
    page: u64,
    limit: Option<u64>,
    buf: [u8; 256],
}

impl RssReader {
    pub(crate) fn open(pid: u32, limit: Option<u64>) -> Result<RssReader, ProcError> {
        let path = PathBuf::from(format!("/proc/{pid}/statm"));
        let file = File::open(&path).map_err(|source| ProcError::Io {
            file: path.clone(),
            source,
        })?;
        let page = rustix::param::page_size().max(4096) as u64;
        Ok(RssReader {
            path,
            file,
            page,
            limit,
            buf: [0; 256],
        })
    }

    pub(crate) fn read(&mut self) -> Result<Sample, ProcError> {
        let at = Instant::now();
        let n = self
            .file
            .read_at(&mut self.buf, 0)
            .map_err(|source| ProcError::Io {
                file: self.path.clone(),
                source,
            })?;
        if n == 0 {
            // An exited process's statm reads empty.
            return Err(ProcError::Io {
                file: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let content = &self.buf[..n];
        let resident = content
            .split(|&c| c == b' ')
            .nth(1)
            .and_then(super::cgroup::parse_u64)
            .ok_or_else(|| ProcError::Parse {
                file: self.path.clone(),
                content: String::from_utf8_lossy(content).into_owned(),
                expected: "statm fields: size resident shared …",
            })?;
        let rss = resident * self.page;
        Ok(Sample {
            at,
            wall: SystemTime::now(),
            usage: rss,
            working_set: rss,
            limit: self.limit,
            anon: None,
            file: None,
            oom_kills: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_hybrid_and_unified() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n";
        let p = parse_proc_cgroup(hybrid);
        assert_eq!(p.v1_memory.as_deref(), Some("/process_api/abc"));
        assert_eq!(p.unified.as_deref(), Some("/"));
        let v2 = "0::/kubepods.slice/kubepods-burstable.slice/x.scope\n";
        let p = parse_proc_cgroup(v2);
        assert_eq!(p.v1_memory, None);
        assert_eq!(
            p.unified.as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/x.scope")
        );
        let combined = "5:cpu,memory:/a\n";
        assert_eq!(parse_proc_cgroup(combined).v1_memory.as_deref(), Some("/a"));
    }

    #[test]
    fn own_process_is_readable() {
        let mut r = RssReader::open(std::process::id(), Some(1 << 40)).unwrap();
        let s = r.read().unwrap();
        assert!(s.usage > 0);
        assert!(start_time(std::process::id()).is_some());
    }
}
