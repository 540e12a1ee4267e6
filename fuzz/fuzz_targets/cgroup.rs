//! The cgroup and /proc parsers, over arbitrary bytes: what a node (or a
//! hostile hostPath) can put in `memory.current`, `memory.max`,
//! `memory.stat`, `memory.events` and `/proc/<pid>/cgroup`.
//!
//! Besides "no panic", `parse_u64` is checked against the standard library
//! (differential), and the derived numbers against their definitions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomsnap::memory::cgroup::{self, Version};
use oomsnap::memory::proc;

/// What `parse_u64` should return: trimmed ASCII digits that fit in a u64.
fn model_u64(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fuzz_target!(|data: &[u8]| {
    let n = cgroup::parse_u64(data);
    // parse_u64 caps the digits at 20 (u64::MAX has 20); a longer run of
    // leading zeros is refused on purpose, so compare only up to 20.
    let trimmed_len = data.iter().filter(|c| !c.is_ascii_whitespace()).count();
    if trimmed_len <= 20 {
        assert_eq!(n, model_u64(data), "parse_u64({data:?})");
    } else {
        assert_eq!(n, None, "parse_u64 accepted more than 20 digits: {data:?}");
    }

    if let Some(Some(limit)) = cgroup::parse_v1_limit(data) {
        assert!(limit < cgroup::V1_UNLIMITED_FLOOR);
    }
    if let Some(v2) = cgroup::parse_v2_limit(data) {
        if v2.is_none() {
            assert_eq!(data.trim_ascii(), b"max");
        }
    }

    // A key taken from the input's first line, looked up in the rest.
    let (key, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"oom_kill"[..], data),
    };
    let _ = cgroup::keyed_value(rest, key);
    let _ = cgroup::keyed_value(data, b"oom_kill");

    for version in [Version::V1, Version::V2] {
        let st = cgroup::parse_stat(version, data);
        if let Some(h) = st.hierarchical_limit {
            assert!(h < cgroup::V1_UNLIMITED_FLOOR);
        }
        let usage = n.unwrap_or(u64::MAX / 2);
        let ws = cgroup::working_set(usage, st.inactive_file);
        assert!(ws <= usage, "working set {ws} above usage {usage}");
    }

    let paths = proc::parse_proc_cgroup(&String::from_utf8_lossy(data));
    let _ = paths;
});
