//! Object keys and the capture folder layout (docs/operations.md, "The
//! object layout").
//!
//! Pure functions: identity parts, a time and a reason enter; a capture id
//! and object keys leave, and the reverse: a capture folder's key splits
//! back into its parts ([`CaptureKey`]) for the CLI. Parts from the
//! environment or annotations are sanitised so none can climb out of the
//! capture's prefix: only ASCII letters, digits, `.`, `_` and `-` survive, a
//! part never starts with a dot (so never `.` or `..`), and each part is
//! capped in length. A part cut at the cap ends in a short hash of the whole
//! name, so two long names that differ only at their end stay apart.

use std::time::SystemTime;

use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};

use crate::config::Identity;

/// The longest a single path part may be.
pub const MAX_PART: usize = 100;

/// What a part longer than [`MAX_PART`] keeps of its start; a dash and
/// [`HASH_HEX`] hex digits of the whole name's SHA-256 follow.
pub const KEPT_WHEN_CUT: usize = 90;
pub const HASH_HEX: usize = 8;

/// Makes one path part safe. Parts up to [`MAX_PART`] characters keep the
/// form they always had, so existing keys stay where they are.
pub fn sanitize(part: &str) -> String {
    let mapped: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // `mapped` is ASCII, so byte lengths are character counts.
    let mut s = if mapped.len() > MAX_PART {
        let digest = Sha256::digest(part.as_bytes());
        let hex: String = digest
            .iter()
            .take(HASH_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}-{hex}", &mapped[..KEPT_WHEN_CUT])
    } else {
        mapped
    };
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

/// A capture folder's key, split into the parts [`capture_prefix`] joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub id: String,
}

impl CaptureKey {
    /// Splits `key` if it is a capture folder right under `prefix`
    /// (`<prefix>/<namespace>/<pod>/<container>/<capture id>`).
    pub fn parse(prefix: &ObjectPath, key: &ObjectPath) -> Option<CaptureKey> {
        let mut parts = key.prefix_match(prefix)?;
        let mut next = || parts.next().map(|p| p.as_ref().to_string());
        let (namespace, pod, container, id) = (next()?, next()?, next()?, next()?);
        if next().is_some() {
            return None;
        }
        Some(CaptureKey {
            namespace,
            pod,
            container,
            id,
        })
    }

    /// When the capture was decided, from the time its id starts with.
    pub fn time(&self) -> Option<SystemTime> {
        capture_time(&self.id)
    }
}

/// The time a capture id starts with (`<UTC time>_<reason>`).
pub fn capture_time(id: &str) -> Option<SystemTime> {
    id.split('_').next().and_then(parse_compact_time)
}

/// The folder of capture `id` of the same pod and container as `capture`:
/// where a capture's baseline lives.
pub fn sibling(capture: &ObjectPath, id: &str) -> ObjectPath {
    let mut parts: Vec<String> = capture.parts().map(|p| p.as_ref().to_string()).collect();
    parts.pop();
    parts.push(sanitize(id));
    ObjectPath::from_iter(parts)
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
        assert!(sanitize(&"x".repeat(500)).len() <= MAX_PART);
    }

    #[test]
    fn names_under_the_cap_keep_their_old_key() {
        let exactly = "p".repeat(MAX_PART);
        assert_eq!(sanitize(&exactly), exactly);
        assert_eq!(sanitize("checkout-7d9f-x2x"), "checkout-7d9f-x2x");
        // Mapping characters does not count as cutting.
        let mapped = "é".repeat(MAX_PART);
        assert_eq!(sanitize(&mapped), "_".repeat(MAX_PART));
    }

    #[test]
    fn long_names_that_differ_only_at_the_end_stay_apart() {
        let base = "statefulset-with-a-very-long-generated-name-".repeat(3);
        let a = format!("{base}replica-0");
        let b = format!("{base}replica-1");
        assert!(a.len() > MAX_PART && a[..MAX_PART] == b[..MAX_PART]);
        let (ka, kb) = (sanitize(&a), sanitize(&b));
        assert_ne!(ka, kb);
        assert_eq!(ka.len(), KEPT_WHEN_CUT + 1 + HASH_HEX);
        assert!(ka.starts_with(&a[..KEPT_WHEN_CUT]), "{ka}");
        // Pinned, so the key of a long name never moves between versions.
        assert_eq!(&ka[KEPT_WHEN_CUT..], "-8f78d2c6");
        // Sanitising twice changes nothing (the fuzz target checks this too).
        assert_eq!(sanitize(&ka), ka);
        // Two pods land in two folders.
        let prefix = ObjectPath::from("p");
        assert_ne!(
            capture_prefix(&prefix, &who("ns", &a), "id"),
            capture_prefix(&prefix, &who("ns", &b), "id")
        );
    }

    #[test]
    fn a_cut_name_that_starts_with_a_dot_is_still_safe() {
        let s = sanitize(&format!("..{}", "x".repeat(200)));
        assert!(s.starts_with("__") && s.len() <= MAX_PART, "{s}");
    }

    #[test]
    fn capture_keys_split_back_into_their_parts() {
        let prefix = ObjectPath::from("team/oom");
        let key = capture_prefix(
            &prefix,
            &who("shop", "cart-1"),
            "20261122T033456.123Z_manual",
        );
        let k = CaptureKey::parse(&prefix, &key).unwrap();
        assert_eq!(
            (k.namespace.as_str(), k.pod.as_str(), k.container.as_str()),
            ("shop", "cart-1", "app")
        );
        assert_eq!(k.id, "20261122T033456.123Z_manual");
        assert_eq!(k.time(), parse_compact_time("20261122T033456.123Z"));
        // Too shallow, too deep, or under another prefix: not a capture.
        assert_eq!(
            CaptureKey::parse(&prefix, &ObjectPath::from("team/oom/shop/cart-1/app")),
            None
        );
        assert_eq!(
            CaptureKey::parse(&prefix, &key.clone().join("heap.pb.gz")),
            None
        );
        assert_eq!(CaptureKey::parse(&ObjectPath::from("other"), &key), None);
        // The empty prefix of a file:// store.
        let bare = capture_prefix(&ObjectPath::default(), &who("shop", "cart-1"), "id_x");
        assert_eq!(
            CaptureKey::parse(&ObjectPath::default(), &bare).unwrap().id,
            "id_x"
        );
    }

    #[test]
    fn a_sibling_is_in_the_same_container_folder() {
        let key = ObjectPath::from("p/shop/cart/app/20261122T033456.123Z_threshold-80");
        assert_eq!(
            sibling(&key, "20261122T020000.004Z_baseline").as_ref(),
            "p/shop/cart/app/20261122T020000.004Z_baseline"
        );
        assert_eq!(sibling(&key, "../../x").as_ref(), "p/shop/cart/app/___.._x");
        assert_eq!(capture_time("not-a-time_manual"), None);
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
