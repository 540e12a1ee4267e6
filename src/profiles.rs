//! The profile kinds oomsnap knows, and the URL each is fetched from.
//!
//! Pure data: a [`ProfileKind`] goes in with the pprof base URL, a request
//! path and the file name it is stored under come out.

use std::time::Duration;

/// One Go `net/http/pprof` profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    Heap,
    Goroutine,
    Allocs,
    Block,
    Mutex,
    Threadcreate,
    /// `goroutine?debug=2`: every stack as text. Large, but readable by eye.
    GoroutineStacks,
    /// `profile?seconds=N`: takes N seconds, so it is opt-in.
    Cpu,
}

impl ProfileKind {
    pub const ALL: &'static [ProfileKind] = &[
        ProfileKind::Heap,
        ProfileKind::Goroutine,
        ProfileKind::Allocs,
        ProfileKind::Block,
        ProfileKind::Mutex,
        ProfileKind::Threadcreate,
        ProfileKind::GoroutineStacks,
        ProfileKind::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Heap => "heap",
            ProfileKind::Goroutine => "goroutine",
            ProfileKind::Allocs => "allocs",
            ProfileKind::Block => "block",
            ProfileKind::Mutex => "mutex",
            ProfileKind::Threadcreate => "threadcreate",
            ProfileKind::GoroutineStacks => "goroutine-stacks",
            ProfileKind::Cpu => "cpu",
        }
    }

    pub fn from_name(s: &str) -> Option<ProfileKind> {
        ProfileKind::ALL.iter().copied().find(|k| k.name() == s)
    }

    /// Binary profiles are gzip'd protobuf and must start with the gzip magic.
    pub fn is_binary(self) -> bool {
        self != ProfileKind::GoroutineStacks
    }

    /// The object name inside a capture folder.
    pub fn file_name(self) -> String {
        if self.is_binary() {
            format!("{}.pb.gz", self.name())
        } else {
            format!("{}.txt", self.name())
        }
    }

    /// The path and query under the pprof base URL.
    pub fn url_suffix(self, cpu: Duration) -> String {
        match self {
            ProfileKind::GoroutineStacks => "/goroutine?debug=2".into(),
            ProfileKind::Cpu => format!("/profile?seconds={}", cpu.as_secs().max(1)),
            k => format!("/{}", k.name()),
        }
    }

    /// Heap first: it is the profile that answers "what grew".
    pub fn priority(self) -> u8 {
        match self {
            ProfileKind::Heap => 0,
            ProfileKind::Goroutine => 1,
            ProfileKind::GoroutineStacks => 3,
            ProfileKind::Cpu => 9,
            _ => 2,
        }
    }
}

impl std::fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in ProfileKind::ALL {
            assert_eq!(ProfileKind::from_name(k.name()), Some(*k));
        }
        assert_eq!(ProfileKind::from_name("stack"), None);
    }

    #[test]
    fn urls_and_files() {
        let d = Duration::from_secs(5);
        assert_eq!(ProfileKind::Heap.url_suffix(d), "/heap");
        assert_eq!(
            ProfileKind::GoroutineStacks.url_suffix(d),
            "/goroutine?debug=2"
        );
        assert_eq!(ProfileKind::Cpu.url_suffix(d), "/profile?seconds=5");
        assert_eq!(ProfileKind::Heap.file_name(), "heap.pb.gz");
        assert_eq!(
            ProfileKind::GoroutineStacks.file_name(),
            "goroutine-stacks.txt"
        );
    }
}
