//! The pure rules of pod annotations: their names, the Downward API file
//! format, and how values override the environment.
//!
//! Text enters ([`parse_file`]) and [`Tunables`] plus problem sentences
//! leave ([`apply`]). No I/O, so the sidecar's live follower and the
//! injector share one definition of every annotation and its form.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{parse_bool, parse_duration, parse_percent_list, parse_profiles, Config};
use crate::profiles::ProfileKind;
use crate::trigger::Policy;

pub const ENABLED: &str = "oomsnap.dev/enabled";
pub const THRESHOLDS: &str = "oomsnap.dev/thresholds";
pub const PROFILES: &str = "oomsnap.dev/profiles";
pub const PORT: &str = "oomsnap.dev/port";
pub const PATH: &str = "oomsnap.dev/path";
pub const RATE_BURST: &str = "oomsnap.dev/rate-burst";
pub const RATE_PERIOD: &str = "oomsnap.dev/rate-period";

/// Annotations the injector reads when it patches a pod; not live tunables.
pub const INJECTOR_ONLY: &[&str] = &[
    "oomsnap.dev/inject",
    "oomsnap.dev/status",
    "oomsnap.dev/container",
    "oomsnap.dev/memory-limit",
];

/// Every tunable annotation, for the docs test.
pub const KNOWN: &[&str] = &[
    ENABLED,
    THRESHOLDS,
    PROFILES,
    PORT,
    PATH,
    RATE_BURST,
    RATE_PERIOD,
];

/// How often the file is re-read. The kubelet updates Downward API volumes
/// on its sync period (about a minute), so this is never the bottleneck.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Parses the Downward API format: one `key="value"` per line, the value
/// quoted the way Go's `strconv.Quote` writes it.
pub fn parse_file(content: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in content.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let value = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            unquote(&v[1..v.len() - 1])
        } else {
            v.to_string()
        };
        out.insert(k.trim().to_string(), value);
    }
    out
}

fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = it.by_ref().take(4).collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// The values annotations can tune, resolved against the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    pub enabled: bool,
    pub thresholds: Vec<f64>,
    pub profiles: Vec<ProfileKind>,
    /// The full pprof base URL (host from the environment).
    pub target: String,
    pub rate_burst: u32,
    pub rate_period: Duration,
}

impl Tunables {
    pub fn from_config(c: &Config) -> Tunables {
        Tunables {
            enabled: true,
            thresholds: c.thresholds.clone(),
            profiles: c.profiles.clone(),
            target: c.target.clone(),
            rate_burst: c.rate_burst,
            rate_period: c.rate_period,
        }
    }

    pub fn policy(&self, c: &Config) -> Policy {
        Policy {
            thresholds: self.thresholds.clone(),
            ..Policy::from_config(c)
        }
    }
}

/// Checks a port annotation: a number, nothing else (no host).
pub fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!(
            "{v:?} is not a TCP port from 1 to 65535 (annotations choose a port, never a host)"
        )),
    }
}

/// Checks a path annotation: absolute, plain characters, no `..`, no
/// authority or query tricks.
pub fn parse_path(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok_chars = v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'));
    if !v.starts_with('/') || v.starts_with("//") || !ok_chars || v.split('/').any(|p| p == "..") {
        return Err(format!(
            "{v:?} is not a plain absolute URL path such as /debug/pprof (letters, digits, / - _ . ~; no host, query or ..)"
        ));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// Applies annotations over the environment's values. Each bad value keeps
/// the previous good one and adds a problem sentence.
pub fn apply(
    ann: &BTreeMap<String, String>,
    env: &Config,
    last_good: &Tunables,
) -> (Tunables, Vec<String>) {
    let mut t = Tunables::from_config(env);
    let mut problems = Vec::new();
    let bad = |key: &str, value: &str, why: String, problems: &mut Vec<String>| {
        problems.push(format!(
            "annotation {key}={value:?} is ignored: {why}; the last good value stays"
        ));
    };
    if let Some(v) = ann.get(ENABLED) {
        match parse_bool(v) {
            Ok(b) => t.enabled = b,
            Err(_) => {
                bad(ENABLED, v, "expected true or false".into(), &mut problems);
                t.enabled = last_good.enabled;
            }
        }
    }
    if let Some(v) = ann.get(THRESHOLDS) {
        match parse_percent_list(v) {
            Ok(x) => t.thresholds = x,
            Err(e) => {
                bad(
                    THRESHOLDS,
                    v,
                    format!("expected ascending percents such as 80,90,95 ({e})"),
                    &mut problems,
                );
                t.thresholds = last_good.thresholds.clone();
            }
        }
    }
    if let Some(v) = ann.get(PROFILES) {
        match parse_profiles(v) {
            Ok(x) => t.profiles = x,
            Err(e) => {
                bad(
                    PROFILES,
                    v,
                    format!("expected a list such as heap,goroutine ({e})"),
                    &mut problems,
                );
                t.profiles = last_good.profiles.clone();
            }
        }
    }
    if let Some(v) = ann.get(RATE_BURST) {
        match v.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => t.rate_burst = n,
            _ => {
                bad(
                    RATE_BURST,
                    v,
                    "expected a whole number from 1 to 1000".into(),
                    &mut problems,
                );
                t.rate_burst = last_good.rate_burst;
            }
        }
    }
    if let Some(v) = ann.get(RATE_PERIOD) {
        match parse_duration(v) {
            Ok(d) if !d.is_zero() && d <= crate::config::MAX_LONG_DURATION => t.rate_period = d,
            _ => {
                bad(
                    RATE_PERIOD,
                    v,
                    "expected a duration above zero such as 10m, at most 30days".into(),
                    &mut problems,
                );
                t.rate_period = last_good.rate_period;
            }
        }
    }
    // Port and path rebuild the URL on the environment's host.
    let port = ann.get(PORT).map(|v| parse_port(v));
    let path = ann.get(PATH).map(|v| parse_path(v));
    if port.is_some() || path.is_some() {
        match reqwest::Url::parse(&env.target) {
            Ok(mut url) => {
                let mut failed = false;
                if let Some(p) = port {
                    match p {
                        Ok(p) => {
                            let _ = url.set_port(Some(p));
                        }
                        Err(e) => {
                            bad(PORT, &ann[PORT], e, &mut problems);
                            failed = true;
                        }
                    }
                }
                if let Some(p) = path {
                    match p {
                        Ok(p) => url.set_path(&p),
                        Err(e) => {
                            bad(PATH, &ann[PATH], e, &mut problems);
                            failed = true;
                        }
                    }
                }
                t.target = if failed {
                    last_good.target.clone()
                } else {
                    url.as_str().trim_end_matches('/').to_string()
                };
            }
            Err(_) => t.target = last_good.target.clone(),
        }
    }
    for k in ann.keys() {
        if k.starts_with("oomsnap.dev/")
            && !KNOWN.contains(&k.as_str())
            && !INJECTOR_ONLY.contains(&k.as_str())
        {
            problems.push(format!(
                "annotation {k} is not an oomsnap tunable and is ignored"
            ));
        }
    }
    (t, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Config {
        Config::from_vars(&BTreeMap::<String, String>::new())
            .unwrap()
            .0
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_downward_api_format() {
        let f = "oomsnap.dev/thresholds=\"70,85\"\nkubernetes.io/config.seen=\"2026-11-22T03:00:00Z\"\nquoted=\"a\\\"b\\\\c\\u00e9\"\n";
        let m = parse_file(f);
        assert_eq!(m["oomsnap.dev/thresholds"], "70,85");
        assert_eq!(m["quoted"], "a\"b\\cé");
    }

    #[test]
    fn good_annotations_override_the_environment() {
        let e = env();
        let (t, p) = apply(
            &ann(&[
                (THRESHOLDS, "70,85"),
                (ENABLED, "false"),
                (PORT, "7070"),
                (PATH, "/internal/pprof"),
                (RATE_BURST, "5"),
                (RATE_PERIOD, "1m"),
                (PROFILES, "heap"),
            ]),
            &e,
            &Tunables::from_config(&e),
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(t.thresholds, vec![70.0, 85.0]);
        assert!(!t.enabled);
        assert_eq!(t.target, "http://127.0.0.1:7070/internal/pprof");
        assert_eq!(t.rate_burst, 5);
        assert_eq!(t.profiles, vec![ProfileKind::Heap]);
    }

    #[test]
    fn bad_values_keep_the_last_good_one() {
        let e = env();
        let mut good = Tunables::from_config(&e);
        good.thresholds = vec![60.0];
        let (t, p) = apply(&ann(&[(THRESHOLDS, "high"), (RATE_BURST, "-1")]), &e, &good);
        assert_eq!(t.thresholds, vec![60.0]);
        assert_eq!(p.len(), 2);
        assert!(p[0].contains(THRESHOLDS) && p[0].contains("high"), "{p:?}");
    }

    #[test]
    fn annotations_cannot_choose_a_host() {
        let e = env();
        let good = Tunables::from_config(&e);
        for (k, v) in [
            (PORT, "evil.example:80"),
            (PORT, "0"),
            (PATH, "@evil.example/debug"),
            (PATH, "//evil.example/x"),
            (PATH, "/debug/../../admin"),
            (PATH, "/x?y=1"),
            (PATH, "debug/pprof"),
            (PATH, "/a%2e%2e/b"),
        ] {
            let (t, p) = apply(&ann(&[(k, v)]), &e, &good);
            assert_eq!(t.target, good.target, "{k}={v} changed the target");
            assert_eq!(p.len(), 1, "{k}={v}: {p:?}");
        }
    }
}
