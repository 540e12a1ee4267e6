//! The pprof index page (`GET …/debug/pprof/`), read for its counts.
//!
//! Go's `net/http/pprof` index lists each profile with the number of
//! records it holds — for `goroutine`, the number of goroutines — in rows
//! such as `<tr><td>104</td><td><a href='goroutine?debug=1'>goroutine</a>`.
//! It is cheap for the app to serve (a few hundred bytes, no stacks), so the
//! capture reads it before any profile whose cost grows with a count.
//! Bytes enter [`parse`]; a name → count map leaves. The body is untrusted:
//! the parse never panics, keeps at most [`MAX_ENTRIES`] names, and the
//! caller caps what it reads ([`MAX_INDEX_BYTES`]).

use super::cost::Counts;

/// The most of the index page that is read.
pub const MAX_INDEX_BYTES: usize = 64 << 10;
/// The most names kept from it.
pub const MAX_ENTRIES: usize = 32;

/// Counts by profile name, from the index page's HTML.
pub fn parse(body: &[u8]) -> Counts {
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_INDEX_BYTES)]);
    let mut out = Counts::new();
    for row in text.split("<tr>").skip(1) {
        if out.len() >= MAX_ENTRIES {
            break;
        }
        let Some(rest) = row.trim_start().strip_prefix("<td>") else {
            continue;
        };
        let Some((count, rest)) = rest.split_once("</td>") else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        let Some((_, link)) = rest.split_once("href='") else {
            continue;
        };
        let name: String = link
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .take(32)
            .collect();
        if !name.is_empty() {
            out.insert(name, count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_1_19_rows() {
        let page = b"<html><body><table>\n<thead><td>Count</td><td>Profile</td></thead>\n\
<tr><td>8</td><td><a href='allocs?debug=1'>allocs</a></td></tr>\n\
<tr><td>0</td><td><a href='block?debug=1'>block</a></td></tr>\n\
<tr><td>100004</td><td><a href='goroutine?debug=1'>goroutine</a></td></tr>\n\
<tr><td>8</td><td><a href='heap?debug=1'>heap</a></td></tr>\n\
</table></body></html>";
        let c = parse(page);
        assert_eq!(c.get("goroutine"), Some(&100_004));
        assert_eq!(c.get("heap"), Some(&8));
        assert_eq!(c.get("block"), Some(&0));
    }

    #[test]
    fn garbage_gives_nothing_and_never_panics() {
        assert!(parse(b"<html>404 page not found</html>").is_empty());
        assert!(parse(b"<tr><td>-1</td><td><a href='x'>").is_empty());
        assert!(parse(b"<tr><td>99999999999999999999999</td>").is_empty());
        assert!(parse(&[0xff, 0xfe, b'<', b't', b'r', b'>']).is_empty());
        let many: String = (0..100)
            .map(|i| format!("<tr><td>1</td><td><a href='p{i}'>"))
            .collect();
        assert_eq!(parse(many.as_bytes()).len(), MAX_ENTRIES);
    }
}
