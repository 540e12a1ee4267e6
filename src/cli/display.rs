//! How the CLI shows things to a person: function names, lead times,
//! table cells and shell arguments.
//!
//! Pure functions over plain values (strings and numbers in, strings out),
//! so each rule is pinned by a unit test.

use std::borrow::Cow;

/// A Go function name that fits in `width` characters, keeping its end.
///
/// The end (`labels.(*Builder).Set`) says the most, so the package path is
/// given up first: its directories shrink to initials from the left
/// (`github.com/prometheus/prometheus/model/labels.(*Builder).Set` becomes
/// `g.c/p/p/model/labels.(*Builder).Set`), then are replaced by `…/`, and
/// only a name still too long loses its start to a `…`.
pub fn short_function(name: &str, width: usize) -> String {
    let width = width.max(2);
    if name.chars().count() <= width {
        return name.to_string();
    }
    let (dirs, last) = split_package(name);
    let mut dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
    let fits = |dirs: &[String]| joined_len(dirs, last) <= width;
    for i in 0..dirs.len() {
        dirs[i] = initials(&dirs[i]);
        if fits(&dirs) {
            return join(&dirs, last);
        }
    }
    if !dirs.is_empty() {
        let elided = format!("…/{last}");
        if elided.chars().count() <= width {
            return elided;
        }
    }
    let tail: Vec<char> = last.chars().collect();
    let keep = width - 1;
    let start = tail.len().saturating_sub(keep);
    format!("…{}", tail[start..].iter().collect::<String>())
}

/// `github.com/x/y/pkg.(*T).M` → (["github.com", "x", "y"], "pkg.(*T).M").
/// Only a `/` before the first `(` or `[` separates directories: generic
/// type arguments may hold paths of their own.
fn split_package(name: &str) -> (Vec<&str>, &str) {
    let symbol_start = name.find(['(', '[']).unwrap_or(name.len());
    match name[..symbol_start].rfind('/') {
        Some(slash) => (name[..slash].split('/').collect(), &name[slash + 1..]),
        None => (Vec::new(), name),
    }
}

/// `github.com` → `g.c`, `prometheus` → `p`.
fn initials(dir: &str) -> String {
    dir.split('.')
        .map(|p| p.chars().next().map(String::from).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(".")
}

fn joined_len(dirs: &[String], last: &str) -> usize {
    dirs.iter().map(|d| d.chars().count() + 1).sum::<usize>() + last.chars().count()
}

fn join(dirs: &[String], last: &str) -> String {
    let mut s = String::new();
    for d in dirs {
        s.push_str(d);
        s.push('/');
    }
    s.push_str(last);
    s
}

/// At most `width` characters, cut in the middle: the start of
/// `shop/checkout-7d9f-x2x` names the namespace, its end the replica.
pub fn cut_middle(s: &str, width: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width {
        return s.to_string();
    }
    let width = width.max(2);
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// At most `width` characters, cut at the end.
pub fn cut_end(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The `OOM` cell of `ls`: how the kill relates to the capture.
/// `lead` is `oom.json`'s `lead_seconds` (kill time minus durable time).
pub fn kill_cell(killed: bool, lead: Option<f64>) -> String {
    match (killed, lead) {
        (false, _) => "-".into(),
        (true, None) => "killed".into(),
        (true, Some(l)) if l >= 0.0 => format!("{l:.2}s lead"),
        (true, Some(l)) => format!("{:.2}s late", -l),
    }
}

/// The same in words, for `report`.
pub fn lead_sentence(lead: f64) -> String {
    if lead >= 0.0 {
        format!("the capture was durable {lead:.3} s before the kill")
    } else {
        format!(
            "the capture became durable only {:.3} s after the kill",
            -lead
        )
    }
}

/// `2026-11-22T03:34:56.123456Z` → `2026-11-22 03:34:56`.
pub fn time_cell(rfc3339: &str) -> String {
    rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ")
}

/// One argument as a POSIX shell reads it back: unchanged when it is made
/// of safe characters, else in single quotes.
pub fn shell_quote(s: &str) -> Cow<'_, str> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &str = "github.com/prometheus/prometheus/model/labels.(*Builder).Set";

    #[test]
    fn a_name_that_fits_is_untouched() {
        assert_eq!(
            short_function("main.(*leakyCache).put", 36),
            "main.(*leakyCache).put"
        );
        assert_eq!(short_function(LONG, LONG.len()), LONG);
    }

    #[test]
    fn long_names_keep_their_method_and_lose_the_package_path_first() {
        assert_eq!(
            short_function(LONG, 53),
            "g.c/prometheus/prometheus/model/labels.(*Builder).Set"
        );
        assert_eq!(
            short_function(LONG, 52),
            "g.c/p/prometheus/model/labels.(*Builder).Set"
        );
        assert_eq!(
            short_function(LONG, 36),
            "g.c/p/p/model/labels.(*Builder).Set"
        );
        assert_eq!(short_function(LONG, 33), "g.c/p/p/m/labels.(*Builder).Set");
        assert_eq!(short_function(LONG, 26), "…/labels.(*Builder).Set");
        assert_eq!(short_function(LONG, 12), "…uilder).Set");
        for w in 2..LONG.len() {
            let s = short_function(LONG, w);
            assert!(s.chars().count() <= w, "{w}: {s}");
            assert!(s.ends_with(".Set") || w < 5, "{w}: {s}");
        }
    }

    #[test]
    fn slashes_inside_type_arguments_are_not_directories() {
        let generic = "example.com/a/cache.(*LRU[go.shape.*example.com/b/c.Key]).Put";
        let s = short_function(generic, 60);
        assert_eq!(s, "e.c/a/cache.(*LRU[go.shape.*example.com/b/c.Key]).Put");
        // A name without a package path only loses its start.
        assert_eq!(short_function("runtime.mallocgc", 10), "….mallocgc");
    }

    #[test]
    fn negative_leads_read_as_late_not_as_plus_minus() {
        assert_eq!(kill_cell(true, Some(0.84)), "0.84s lead");
        assert_eq!(kill_cell(true, Some(-0.12)), "0.12s late");
        assert_eq!(kill_cell(true, None), "killed");
        assert_eq!(kill_cell(false, None), "-");
        assert_eq!(
            lead_sentence(-0.12),
            "the capture became durable only 0.120 s after the kill"
        );
        assert_eq!(
            lead_sentence(0.84),
            "the capture was durable 0.840 s before the kill"
        );
        assert!(!kill_cell(true, Some(-0.12)).contains("+-"));
    }

    #[test]
    fn cells_are_cut_where_they_say_least() {
        assert_eq!(cut_middle("shop/checkout-7d9f-x2x", 12), "shop/c…f-x2x");
        assert_eq!(cut_middle("short", 12), "short");
        assert_eq!(cut_end("threshold-92.5", 10), "threshold…");
        assert_eq!(
            time_cell("2026-11-22T03:34:56.123456Z"),
            "2026-11-22 03:34:56"
        );
        assert_eq!(time_cell("garbage"), "garbage");
    }

    #[test]
    fn shell_arguments_survive_a_paste() {
        assert_eq!(shell_quote("/tmp/a/heap.pb.gz"), "/tmp/a/heap.pb.gz");
        assert_eq!(
            shell_quote("s3://b/p/20261122T033456.123Z_threshold-80"),
            "s3://b/p/20261122T033456.123Z_threshold-80"
        );
        assert_eq!(shell_quote("/tmp/my dir/x"), "'/tmp/my dir/x'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }
}
