//! Reads one memory cgroup (v1 or v2) into [`Sample`]s.
//!
//! A cgroup directory enters; [`CgroupReader::read`] returns a `Sample` per
//! call, and [`CgroupReader::read_usage`] the usage alone (the watcher's
//! cheap sentinel between samples). The files are opened once and re-read
//! with `pread` at offset 0 into a buffer owned by the reader, so a sample
//! costs four small syscalls, the sentinel one, and neither allocates. The parsers are pure functions over bytes so the fixture trees
//! in `tests/data/cgroup/` test them against real kernel files.
//!
//! We read the files directly instead of using `cgroups-rs`: that crate maps
//! read errors to 0 (an unreadable limit must never read as 0 here), has no
//! `memory.events`, hard-codes the v2 root and pulls in a D-Bus client. See
//! `docs/how-it-works.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::Sample;

/// v1 writes "unlimited" as `PAGE_COUNTER_MAX * PAGE_SIZE`, which is just
/// under 2^63; anything this large is no limit at all.
pub const V1_UNLIMITED_FLOOR: u64 = 1 << 62;

/// Which cgroup interface a directory speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// A cgroup file that could not be used, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
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
    #[error("{dir} is not a memory cgroup: it has neither memory.current (v2) nor memory.usage_in_bytes (v1)")]
    NotMemoryCgroup { dir: PathBuf },
}

impl CgroupError {
    /// True when the cgroup itself is gone (the container was removed), as
    /// opposed to a file we cannot make sense of.
    pub(crate) fn is_gone(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound
                || source.raw_os_error() == Some(libc::ENODEV))
    }
}

/// Detects the version from the files present.
pub(crate) fn detect(dir: &Path) -> Result<Version, CgroupError> {
    if dir.join("memory.current").exists() {
        Ok(Version::V2)
    } else if dir.join("memory.usage_in_bytes").exists() {
        Ok(Version::V1)
    } else {
        Err(CgroupError::NotMemoryCgroup { dir: dir.into() })
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e.max(s)]
}

/// Parses ASCII digits without allocating.
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    let b = trim(b);
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// The value of `key` in a flat-keyed file (`memory.stat`, `memory.events`,
/// `memory.oom_control`): lines of `key value`.
pub fn keyed_value(content: &[u8], key: &[u8]) -> Option<u64> {
    content.split(|&c| c == b'\n').find_map(|line| {
        let mut parts = line.splitn(2, |&c| c == b' ');
        if parts.next()? == key {
            parse_u64(parts.next()?)
        } else {
            None
        }
    })
}

/// v2 `memory.max`: a number, or `max` for none.
pub fn parse_v2_limit(content: &[u8]) -> Option<Option<u64>> {
    let t = trim(content);
    if t == b"max" {
        Some(None)
    } else {
        parse_u64(t).map(Some)
    }
}

/// v1 `memory.limit_in_bytes`: a number; near 2^63 means none.
pub fn parse_v1_limit(content: &[u8]) -> Option<Option<u64>> {
    parse_u64(content).map(|n| (n < V1_UNLIMITED_FLOOR).then_some(n))
}

/// What one read of `memory.stat` yields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub inactive_file: Option<u64>,
    pub anon: Option<u64>,
    pub file: Option<u64>,
    /// v1 only: the smallest limit on the way up the hierarchy.
    pub hierarchical_limit: Option<u64>,
}

/// Parses v1 or v2 `memory.stat`, in one pass.
pub fn parse_stat(version: Version, content: &[u8]) -> Stat {
    let mut st = Stat::default();
    for line in content.split(|&c| c == b'\n') {
        let mut parts = line.splitn(2, |&c| c == b' ');
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let val = parse_u64(v);
        match (version, k) {
            (Version::V2, b"inactive_file") | (Version::V1, b"total_inactive_file") => {
                st.inactive_file = val
            }
            (Version::V2, b"anon") | (Version::V1, b"total_rss") => st.anon = val,
            (Version::V2, b"file") | (Version::V1, b"total_cache") => st.file = val,
            (Version::V1, b"hierarchical_memory_limit") => {
                st.hierarchical_limit = val.filter(|n| *n < V1_UNLIMITED_FLOOR)
            }
            _ => {}
        }
    }
    st
}

/// Working set the way kubelet and cAdvisor count it.
pub fn working_set(usage: u64, inactive_file: Option<u64>) -> u64 {
    usage.saturating_sub(inactive_file.unwrap_or(0))
}

struct Opened {
    path: PathBuf,
    file: File,
}

impl Opened {
    fn open(path: PathBuf) -> Result<Opened, CgroupError> {
        match File::open(&path) {
            Ok(file) => Ok(Opened { path, file }),
            Err(source) => Err(CgroupError::Io { file: path, source }),
        }
    }

    fn read<'b>(&self, buf: &'b mut [u8]) -> Result<&'b [u8], CgroupError> {
        let mut n = 0;
        // Cgroup files are generated on read; loop in case one is larger
        // than a single read returns.
        loop {
            match self.file.read_at(&mut buf[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CgroupError::Io {
                        file: self.path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(&buf[..n])
    }

    fn parse_err(&self, content: &[u8], expected: &'static str) -> CgroupError {
        CgroupError::Parse {
            file: self.path.clone(),
            content: String::from_utf8_lossy(&content[..content.len().min(64)]).into_owned(),
            expected,
        }
    }
}

/// A cgroup opened for repeated sampling.
pub struct CgroupReader {
    dir: PathBuf,
    version: Version,
    usage: Opened,
    limit: Opened,
    stat: Option<Opened>,
    events: Option<Opened>,
    /// Used only when the cgroup shows no limit.
    fallback_limit: Option<u64>,
    buf: Box<[u8; 8192]>,
}

impl CgroupReader {
    /// Opens `dir`. The usage and limit files must exist; `memory.stat` and
    /// the OOM counter file are optional (their numbers then read as unknown,
    /// never as 0).
    pub fn open(dir: &Path, fallback_limit: Option<u64>) -> Result<CgroupReader, CgroupError> {
        let version = detect(dir)?;
        let (usage, limit, events) = match version {
            Version::V2 => ("memory.current", "memory.max", "memory.events"),
            Version::V1 => (
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
                "memory.oom_control",
            ),
        };
        let stat = Opened::open(dir.join("memory.stat")).ok();
        if stat.is_none() {
            tracing::warn!(
                cgroup = %dir.display(),
                "memory.stat is missing: the working set is read as the whole usage, which can only trigger early"
            );
        }
        Ok(CgroupReader {
            dir: dir.to_path_buf(),
            version,
            usage: Opened::open(dir.join(usage))?,
            limit: Opened::open(dir.join(limit))?,
            stat,
            events: Opened::open(dir.join(events)).ok(),
            fallback_limit,
            buf: Box::new([0u8; 8192]),
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The usage alone, one `pread`: the sentinel between full samples.
    pub fn read_usage(&mut self) -> Result<u64, CgroupError> {
        let content = self.usage.read(&mut self.buf[..])?;
        parse_u64(content).ok_or_else(|| self.usage.parse_err(content, "a number of bytes"))
    }

    /// The full `memory.stat` breakdown (allocates; for a capture, never
    /// per sample).
    pub fn stat_breakdown(&self) -> Result<super::StatBreakdown, CgroupError> {
        super::StatBreakdown::read(&self.dir)
    }

    /// The cgroup's own limit, `None` when it has none.
    pub(crate) fn read_limit(&mut self) -> Result<Option<u64>, CgroupError> {
        let content = self.limit.read(&mut self.buf[..])?;
        let parsed = match self.version {
            Version::V2 => parse_v2_limit(content),
            Version::V1 => parse_v1_limit(content),
        };
        parsed.ok_or_else(|| {
            self.limit.parse_err(
                content,
                match self.version {
                    Version::V2 => "a number of bytes or \"max\"",
                    Version::V1 => "a number of bytes",
                },
            )
        })
    }

    /// One sample. Fails, naming the file, when usage or limit cannot be read
    /// or parsed; a missing or odd `memory.stat` only leaves fields unknown.
    pub fn read(&mut self) -> Result<Sample, CgroupError> {
        let at = Instant::now();
        let wall = SystemTime::now();
        let usage = self.read_usage()?;
        let own_limit = self.read_limit()?;
        let stat = match &self.stat {
            Some(f) => parse_stat(self.version, f.read(&mut self.buf[..])?),
            None => Stat::default(),
        };
        let oom_kills = match &self.events {
            Some(f) => keyed_value(f.read(&mut self.buf[..])?, b"oom_kill"),
            None => None,
        };
        let cgroup_limit = match (own_limit, stat.hierarchical_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The cgroup's limit is the one the kernel enforces; the configured
        // one only fills in when the cgroup has none.
        let limit = cgroup_limit.or(self.fallback_limit);
        Ok(Sample {
            at,
            wall,
            usage,
            working_set: working_set(usage, stat.inactive_file),
            limit,
            anon: stat.anon,
            file: stat.file,
            oom_kills,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_without_allocating() {
        assert_eq!(parse_u64(b"268435456\n"), Some(268435456));
        assert_eq!(parse_u64(b"  7 "), Some(7));
        assert_eq!(parse_u64(b"12ab34\n"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }

    #[test]
    fn limits_know_unlimited() {
        assert_eq!(parse_v2_limit(b"max\n"), Some(None));
        assert_eq!(parse_v2_limit(b"268435456\n"), Some(Some(268435456)));
        assert_eq!(parse_v2_limit(b"maxi\n"), None);
        assert_eq!(parse_v1_limit(b"9223372036854771712\n"), Some(None));
        assert_eq!(parse_v1_limit(b"268435456\n"), Some(Some(268435456)));
    }

    #[test]
    fn stat_reads_both_versions() {
        let v2 = b"anon 1000\nfile 200\nkernel 5\ninactive_file 150\nactive_file 50\n";
        let s = parse_stat(Version::V2, v2);
        assert_eq!(s.anon, Some(1000));
        assert_eq!(s.file, Some(200));
        assert_eq!(s.inactive_file, Some(150));
        let v1 = b"cache 1\nrss 2\ninactive_file 3\nhierarchical_memory_limit 268435456\ntotal_cache 10\ntotal_rss 20\ntotal_inactive_file 30\n";
        let s = parse_stat(Version::V1, v1);
        assert_eq!(s.anon, Some(20));
        assert_eq!(s.file, Some(10));
        assert_eq!(s.inactive_file, Some(30));
        assert_eq!(s.hierarchical_limit, Some(268435456));
    }

    #[test]
    fn working_set_floors_at_zero() {
        assert_eq!(working_set(100, Some(150)), 0);
        assert_eq!(working_set(100, Some(30)), 70);
        assert_eq!(working_set(100, None), 100);
    }

    #[test]
    fn keyed_values() {
        let ev = b"low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(ev, b"oom_kill"), Some(1));
        assert_eq!(keyed_value(ev, b"oom"), Some(1));
        let oc = b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oc, b"oom_kill"), Some(3));
        assert_eq!(keyed_value(oc, b"missing"), None);
    }
}
