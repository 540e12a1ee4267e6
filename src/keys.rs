//! Object keys and the capture folder layout (DESIGN §6).
//!
//! Pure functions: identity parts, a time and a reason enter; a capture id
//! and object keys leave. Parts from the environment or annotations are
//! sanitised so none can climb out of the capture's prefix: only ASCII
//! letters, digits, `.`, `_` and `-` survive, a part never starts with a
//! dot (so never `.` or `..`), and each part is capped in length.

use std::time::SystemTime;

use object_store::path::Path as ObjectPath;

use crate::config::Identity;

/// The longest a single path part may be.
pub const MAX_PART: usize = 100;

/// Makes one path part safe.
pub fn sanitize(part: &str) -> String {
    let mut s: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_PART)
        .collect();
    // A part never starts with a dot: no `.`, `..` or hidden files.
    let dots = s.chars().take_while(|c| *c == '.').count();
    if dots > 0 {
        s.replace_range(..dots, &"_".repeat(dots));
    }
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// `2026-11-22T03:34:56.123Z` → `20261122T033456.123Z`: sorts by time, and
/// has no `:` for filesystems and tools that dislike it.
pub fn compact_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// Parses a compact time back (for `oomsnap ls --since`).
pub fn parse_compact_time(s: &str) -> Option<SystemTime> {
    // 20261122T033456.123Z
    if s.len() < 16 || !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    if b[8] != b'T' {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..]
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// A capture's id: its folder name, `<UTC time>_<reason>`.
pub fn capture_id(t: SystemTime, reason_label: &str) -> String {
    format!("{}_{}", compact_time(t), sanitize(reason_label))
}

/// `<prefix>/<namespace>/<pod>/<container>/<capture id>`.
pub fn capture_prefix(prefix: &ObjectPath, who: &Identity, id: &str) -> ObjectPath {
    let mut parts: Vec<String> = prefix.parts().map(|p| p.as_ref().to_string()).collect();
    parts.push(sanitize(&who.namespace));
    parts.push(sanitize(&who.pod));
    parts.push(sanitize(&who.container));
    parts.push(sanitize(id));
    ObjectPath::from_iter(parts)
}

/// The key of one file of a capture.
pub fn object_key(capture: &ObjectPath, file: &str) -> ObjectPath {
    capture.clone().join(sanitize(file).as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn who(ns: &str, pod: &str) -> Identity {
        Identity {
            namespace: ns.into(),
            pod: pod.into(),
            container: "app".into(),
            node: "n".into(),
            pod_uid: None,
        }
    }

    #[test]
    fn sanitise_blocks_escapes() {
        assert_eq!(sanitize(".."), "__");
        assert_eq!(sanitize("."), "_");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize("a\0b"), "a_b");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("ｐｏｄ"), "___");
        assert_eq!(sanitize("a\u{202e}b"), "a_b");
        assert_eq!(sanitize("web-7d9f.x_y"), "web-7d9f.x_y");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_PART);
    }

    #[test]
    fn keys_stay_under_the_prefix() {
        let prefix = ObjectPath::from("team/oom");
        let k = capture_prefix(&prefix, &who("../..", "/etc/passwd"), "id");
        assert_eq!(k.as_ref(), "team/oom/___../_etc_passwd/app/id");
        assert!(k.as_ref().starts_with("team/oom/"));
        assert_eq!(
            object_key(&k, "heap.pb.gz").as_ref(),
            "team/oom/___../_etc_passwd/app/id/heap.pb.gz"
        );
    }

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let id = capture_id(t, "threshold-80");
        assert_eq!(id, "20261118T110640.123Z_threshold-80");
        let back = parse_compact_time(id.split('_').next().unwrap()).unwrap();
        assert_eq!(back, t);
        let later = capture_id(t + Duration::from_secs(1), "baseline");
        assert!(later > id);
    }
}
