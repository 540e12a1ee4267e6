//! Object keys: `sanitize`, `capture_prefix`, `object_key` and
//! `parse_compact_time` over arbitrary text.
//!
//! Invariants (docs/security.md, "Object keys"): a sanitised part is non-empty, ASCII, at most
//! `MAX_PART` long, has no `/` and does not start with `.`; a capture's keys
//! stay under the store prefix, exactly four parts below it, and each file
//! is one more part.
//!
//! Input: up to five NUL-separated fields: namespace, pod, container,
//! capture id, file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use object_store::path::Path as ObjectPath;
use oomsnap::config::Identity;
use oomsnap::keys::{self, MAX_PART};

fn check_part(input: &str, s: &str) {
    assert!(!s.is_empty(), "sanitize({input:?}) is empty");
    assert!(s.is_ascii(), "sanitize({input:?}) = {s:?} is not ASCII");
    assert!(
        s.len() <= MAX_PART,
        "sanitize({input:?}) is {} long",
        s.len()
    );
    assert!(!s.contains('/'), "sanitize({input:?}) = {s:?} has a /");
    assert!(
        !s.starts_with('.'),
        "sanitize({input:?}) = {s:?} starts with a dot"
    );
    assert!(
        !s.contains(char::is_control),
        "sanitize({input:?}) = {s:?} has a control char"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_part(&text, &keys::sanitize(&text));
    // Idempotent: a sanitised part sanitises to itself.
    let once = keys::sanitize(&text);
    assert_eq!(keys::sanitize(&once), once);

    // `oomsnap ls --since` reads capture ids from manifests in the store
    // (non-ASCII input once panicked on a char boundary).
    let _ = keys::parse_compact_time(&text);

    let mut f = text.split('\0');
    let mut next = || f.next().unwrap_or("").to_string();
    let who = Identity {
        namespace: next(),
        pod: next(),
        container: next(),
        node: "node".into(),
        pod_uid: None,
    };
    let id = next();
    let file = next();
    for prefix in [ObjectPath::default(), ObjectPath::from("team/oom")] {
        let cap = keys::capture_prefix(&prefix, &who, &id);
        let base: Vec<String> = prefix.parts().map(|p| p.as_ref().to_string()).collect();
        let got: Vec<String> = cap.parts().map(|p| p.as_ref().to_string()).collect();
        assert_eq!(got.len(), base.len() + 4, "{cap} from {who:?} {id:?}");
        assert_eq!(
            &got[..base.len()],
            &base[..],
            "{cap} left the prefix {prefix}"
        );
        for p in &got[base.len()..] {
            check_part(&text, p);
        }
        let key = keys::object_key(&cap, &file);
        let parts: Vec<String> = key.parts().map(|p| p.as_ref().to_string()).collect();
        assert_eq!(parts.len(), got.len() + 1, "{key}");
        assert_eq!(&parts[..got.len()], &got[..]);
        check_part(&file, &parts[got.len()]);
        // And the string form splits the same way (what S3 sees).
        assert_eq!(key.as_ref().split('/').count(), parts.len(), "{key}");
    }
});
