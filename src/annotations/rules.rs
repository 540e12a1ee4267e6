//! The pure rules of pod annotations: their names, the Downward API file
//! format, and how values override the environment.
//!
//! Text enters ([`parse_file`]) and [`Tunables`] plus problem sentences
//! leave ([`apply`]). No I/O, so the sidecar's live follower and the
//! injector share one definition of every annotation and its form.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{
    parse_bool, parse_percent_list, parse_profiles, parse_rate_burst, parse_rate_period, Config,
};
use crate::profiles::ProfileKind;
use crate::trigger::Policy;

pub const ENABLED: &str = "oomsnap.dev/enabled";
pub const THRESHOLDS: &str = "oomsnap.dev/thresholds";
pub const PROFILES: &str = "oomsnap.dev/profiles";
pub const PORT: &str = "oomsnap.dev/port";
pub const PATH: &str = "oomsnap.dev/path";
pub const RATE_BURST: &str = "oomsnap.dev/rate-burst";
pub const RATE_PERIOD: &str = "oomsnap.dev/rate-period";

/// Opt-in (`"true"`) or opt-out (`"false"`) for the injector; also a pod
/// label, and a namespace label with the value `enabled`. See [`parse_inject`].
pub const INJECT: &str = "oomsnap.dev/inject";
/// Written by the injector: `injected`, or `skipped: <reason>`.
pub const STATUS: &str = "oomsnap.dev/status";
/// The container to watch (the injector's choice; default the first).
pub const CONTAINER: &str = "oomsnap.dev/container";
/// A memory limit for an app container that has none; the injector passes it
/// as `OOMSNAP_MEMORY_LIMIT` (checked with `config::parse_memory_limit`).
pub const MEMORY_LIMIT: &str = "oomsnap.dev/memory-limit";

/// Annotations the injector reads when it patches a pod; not live tunables.
pub const INJECTOR_ONLY: &[&str] = &[INJECT, STATUS, CONTAINER, MEMORY_LIMIT];

/// Grafana Pyroscope's annotations for the `memory` profile, as its Helm
/// chart's Alloy configuration reads them
/// (`profiles.grafana.com/<profile-type>.{scrape,port,port_name,scheme,path}`).
/// They are fallbacks for [`PORT`] and [`PATH`], honoured only when
/// [`PYROSCOPE_MEMORY_SCRAPE`] is `"true"` (otherwise Pyroscope does not use
/// them either, and they may be stale).
pub const PYROSCOPE_MEMORY_SCRAPE: &str = "profiles.grafana.com/memory.scrape";
/// The pprof port number.
pub const PYROSCOPE_MEMORY_PORT: &str = "profiles.grafana.com/memory.port";
/// A container port *name*; only the injector can resolve it (against the
/// pod spec), the live follower sees annotations only.
pub const PYROSCOPE_MEMORY_PORT_NAME: &str = "profiles.grafana.com/memory.port_name";
/// The path of the memory profile itself (Go's default `/debug/pprof/allocs`);
/// oomsnap takes the pprof index above it.
pub const PYROSCOPE_MEMORY_PATH: &str = "profiles.grafana.com/memory.path";

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

/// The longest annotation value read. oomsnap's values are short (a port,
/// a path, a rung list); a long one is a mistake or an attack, and echoing
/// it into logs and `/status` would cost memory.
pub const MAX_VALUE_BYTES: usize = 1024;
/// How much of a bad value a problem sentence quotes.
const QUOTE_CHARS: usize = 64;
/// Unknown `oomsnap.dev/*` names reported one by one; the rest are counted.
const UNKNOWN_LISTED: usize = 8;

/// A user's value fit to quote in a problem sentence, a status or a log
/// line: at most [`QUOTE_CHARS`] characters, cut on a character boundary.
/// The injector quotes pod values with it too.
pub fn quote(v: &str) -> String {
    if v.chars().count() <= QUOTE_CHARS {
        format!("{v:?}")
    } else {
        let head: String = v.chars().take(QUOTE_CHARS).collect();
        format!("{head:?}… ({} bytes)", v.len())
    }
}

/// Checks a port annotation: a number, nothing else (no host).
pub fn parse_port(v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(
            "expected a TCP port from 1 to 65535 (annotations choose a port, never a host)".into(),
        ),
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
        return Err(
            "expected a plain absolute URL path such as /debug/pprof (letters, digits, / - _ . ~; no host, query or ..)".into(),
        );
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// Reads one annotation through `parse`: `None` when absent; the parsed
/// value; or `last_good` plus a problem sentence naming the annotation, a
/// quote of the value and what was expected.
fn field<T: Clone>(
    ann: &BTreeMap<String, String>,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
    last_good: &T,
    problems: &mut Vec<String>,
) -> Option<T> {
    let v = ann.get(key)?;
    let parsed = if v.len() > MAX_VALUE_BYTES {
        Err(format!("expected at most {MAX_VALUE_BYTES} bytes"))
    } else {
        parse(v)
    };
    Some(match parsed {
        Ok(t) => t,
        Err(why) => {
            problems.push(format!(
                "annotation {key}={} is ignored: {why}; the last good value stays",
                quote(v)
            ));
            last_good.clone()
        }
    })
}

/// Reads an inject opt-in or opt-out: `true`/`enabled` (and the other true
/// forms of `config::parse_bool`) or `false`/`disabled`; anything else is
/// `None`, no opinion.
pub fn parse_inject(v: &str) -> Option<bool> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("enabled") {
        Some(true)
    } else if v.eq_ignore_ascii_case("disabled") {
        Some(false)
    } else {
        parse_bool(v).ok()
    }
}

/// The pprof index above a Pyroscope memory profile path:
/// `/debug/pprof/allocs` or `/debug/pprof/heap` → `/debug/pprof`.
pub fn pyroscope_base_path(v: &str) -> Result<String, String> {
    let path = parse_path(v)?;
    match path.rsplit_once('/') {
        Some((base, "allocs" | "heap")) if !base.is_empty() => Ok(base.to_string()),
        _ => Err(format!(
            "{v:?} does not end in /allocs or /heap, so the pprof index above it is unknown; \
             set {PATH}"
        )),
    }
}

/// Whether Pyroscope scrapes this pod's memory profile
/// ([`PYROSCOPE_MEMORY_SCRAPE`] is `"true"`).
pub fn pyroscope_scraped(ann: &BTreeMap<String, String>) -> bool {
    ann.get(PYROSCOPE_MEMORY_SCRAPE)
        .is_some_and(|v| v.trim() == "true")
}

/// Which annotation sets the pprof port (ours, else Pyroscope's number), its
/// value, and the port or why not.
pub fn pprof_port(
    ann: &BTreeMap<String, String>,
) -> Option<(&'static str, &str, Result<u16, String>)> {
    let key = if ann.contains_key(PORT) {
        PORT
    } else if pyroscope_scraped(ann) && ann.contains_key(PYROSCOPE_MEMORY_PORT) {
        PYROSCOPE_MEMORY_PORT
    } else {
        return None;
    };
    let v = ann[key].as_str();
    Some((key, v, parse_port(v)))
}

/// Which annotation sets the pprof path (ours, else Pyroscope's memory
/// profile path), its value, and the path or why not.
pub fn pprof_path(
    ann: &BTreeMap<String, String>,
) -> Option<(&'static str, &str, Result<String, String>)> {
    if let Some(v) = ann.get(PATH) {
        return Some((PATH, v, parse_path(v)));
    }
    let v = ann
        .get(PYROSCOPE_MEMORY_PATH)
        .filter(|_| pyroscope_scraped(ann))?;
    Some((PYROSCOPE_MEMORY_PATH, v, pyroscope_base_path(v)))
}

/// `base` with its port and path replaced, checked with the sidecar's own
/// `config::parse_target`, so the live follower and the injector build the
/// same URL and never one the sidecar would refuse.
pub fn target_with(base: &str, port: Option<u16>, path: Option<&str>) -> Result<String, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| e.to_string())?;
    if let Some(p) = port {
        url.set_port(Some(p))
            .map_err(|()| format!("{base} cannot take a port"))?;
    }
    if let Some(p) = path {
        url.set_path(p);
    }
    crate::config::parse_target(url.as_str()).map(|(target, _)| target)
}

/// Applies annotations over the environment's values. Each bad value keeps
/// the previous good one and adds a problem sentence. The rules are the
/// environment's own (`config::parse`), so an annotation can never set what
/// `OOMSNAP_*` would refuse.
pub fn apply(
    ann: &BTreeMap<String, String>,
    env: &Config,
    last_good: &Tunables,
) -> (Tunables, Vec<String>) {
    let mut t = Tunables::from_config(env);
    let mut problems = Vec::new();
    let p = &mut problems;
    let with = |why: &'static str| move |e: String| format!("expected {why} ({e})");
    if let Some(v) = field(
        ann,
        ENABLED,
        |v| parse_bool(v).map_err(|_| "expected true or false".into()),
        &last_good.enabled,
        p,
    ) {
        t.enabled = v;
    }
    if let Some(v) = field(
        ann,
        THRESHOLDS,
        |v| parse_percent_list(v).map_err(with("ascending percents below 100 such as 80,90,95")),
        &last_good.thresholds,
        p,
    ) {
        t.thresholds = v;
    }
    if let Some(v) = field(
        ann,
        PROFILES,
        |v| parse_profiles(v).map_err(with("a list such as heap,goroutine")),
        &last_good.profiles,
        p,
    ) {
        t.profiles = v;
    }
    if let Some(v) = field(
        ann,
        RATE_BURST,
        |v| parse_rate_burst(v).map_err(with("a whole number of captures")),
        &last_good.rate_burst,
        p,
    ) {
        t.rate_burst = v;
    }
    if let Some(v) = field(
        ann,
        RATE_PERIOD,
        |v| parse_rate_period(v).map_err(with("a duration such as 10m, from 1s to 30days")),
        &last_good.rate_period,
        p,
    ) {
        t.rate_period = v;
    }
    // Port and path rebuild the URL on the environment's host; oomsnap's
    // annotations win over Pyroscope's.
    let port = pprof_port(ann);
    let path = pprof_path(ann);
    if port.is_some() || path.is_some() {
        let mut failed = false;
        let errors = [
            port.as_ref()
                .and_then(|(k, v, r)| r.as_ref().err().map(|e| (*k, *v, e.clone()))),
            path.as_ref()
                .and_then(|(k, v, r)| r.as_ref().err().map(|e| (*k, *v, e.clone()))),
        ];
        for (key, value, why) in errors.into_iter().flatten() {
            p.push(format!(
                "annotation {key}={} is ignored: {why}; the last good value stays",
                quote(value)
            ));
            failed = true;
        }
        let port = port.and_then(|(_, _, p)| p.ok());
        let path = path.and_then(|(_, _, p)| p.ok());
        t.target = match target_with(&env.target, port, path.as_deref()) {
            Ok(target) if !failed => target,
            _ => last_good.target.clone(),
        };
    }
    let unknown: Vec<&String> = ann
        .keys()
        .filter(|k| {
            k.starts_with("oomsnap.dev/")
                && !KNOWN.contains(&k.as_str())
                && !INJECTOR_ONLY.contains(&k.as_str())
        })
        .collect();
    for k in unknown.iter().take(UNKNOWN_LISTED) {
        problems.push(format!(
            "annotation {} is not an oomsnap tunable and is ignored",
            quote(k)
        ));
    }
    if unknown.len() > UNKNOWN_LISTED {
        problems.push(format!(
            "and {} more unknown oomsnap.dev/ annotations",
            unknown.len() - UNKNOWN_LISTED
        ));
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

    use crate::config::vars as ann;

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

    #[test]
    fn the_quota_cannot_be_switched_off_nor_a_rung_made_that_never_fires() {
        let e = env();
        let good = Tunables::from_config(&e);
        for (k, v, says) in [
            (RATE_PERIOD, "1ns", "at least 1s"),
            (RATE_PERIOD, "1ms", "at least 1s"),
            (RATE_BURST, "1001", "from 1 to 1000"),
            (THRESHOLDS, "100", "can never fire"),
            (THRESHOLDS, "80,100", "can never fire"),
        ] {
            let (t, p) = apply(&ann(&[(k, v)]), &e, &good);
            assert_eq!(t, good, "{k}={v} changed the tunables");
            assert_eq!(p.len(), 1, "{k}={v}: {p:?}");
            assert!(p[0].contains(says), "{k}={v}: {}", p[0]);
        }
    }

    #[test]
    fn pyroscope_memory_annotations_are_fallbacks_when_scraped() {
        let e = env();
        let good = Tunables::from_config(&e);
        let scraped = [
            (PYROSCOPE_MEMORY_SCRAPE, "true"),
            (PYROSCOPE_MEMORY_PORT, "7070"),
            (PYROSCOPE_MEMORY_PATH, "/internal/pprof/allocs"),
        ];
        let (t, p) = apply(&ann(&scraped), &e, &good);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(t.target, "http://127.0.0.1:7070/internal/pprof");

        // oomsnap's own annotations win.
        let mut ours = scraped.to_vec();
        ours.extend([(PORT, "8080"), (PATH, "/debug/pprof")]);
        let (t, _) = apply(&ann(&ours), &e, &good);
        assert_eq!(t.target, "http://127.0.0.1:8080/debug/pprof");

        // Not scraped by Pyroscope: its port is not trusted to be current.
        let (t, p) = apply(&ann(&[(PYROSCOPE_MEMORY_PORT, "7070")]), &e, &good);
        assert_eq!(t.target, good.target);
        assert!(p.is_empty(), "{p:?}");

        // A profile path oomsnap cannot take the index from is reported.
        let (t, p) = apply(
            &ann(&[
                (PYROSCOPE_MEMORY_SCRAPE, "true"),
                (PYROSCOPE_MEMORY_PATH, "/custom/mem"),
            ]),
            &e,
            &good,
        );
        assert_eq!(t.target, good.target);
        assert!(p[0].contains(PYROSCOPE_MEMORY_PATH), "{p:?}");
    }

    #[test]
    fn pyroscope_paths_give_the_pprof_index() {
        assert_eq!(
            pyroscope_base_path("/debug/pprof/allocs").unwrap(),
            "/debug/pprof"
        );
        assert_eq!(pyroscope_base_path("/x/heap").unwrap(), "/x");
        for bad in [
            "/heap",
            "/debug/pprof",
            "/debug/pprof/allocs?gc=1",
            "allocs",
        ] {
            assert!(pyroscope_base_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quotes_are_short_and_cut_on_a_character() {
        assert_eq!(quote("a"), "\"a\"");
        let long = "x".repeat(200);
        assert!(quote(&long).chars().count() < 90, "{}", quote(&long));
        assert!(quote(&long).contains("(200 bytes)"));
        assert!(quote(&"é".repeat(100)).contains('…'));
    }

    #[test]
    fn a_huge_value_is_refused_and_quoted_short() {
        let e = env();
        let good = Tunables::from_config(&e);
        let huge = "9".repeat(200 << 10);
        let (t, p) = apply(&ann(&[(THRESHOLDS, &huge)]), &e, &good);
        assert_eq!(t.thresholds, good.thresholds);
        assert_eq!(p.len(), 1);
        assert!(p[0].len() < 400, "{} bytes quoted", p[0].len());
        assert!(p[0].contains("at most 1024 bytes"), "{}", p[0]);
    }

    #[test]
    fn inject_values_read_true_false_or_nothing() {
        for (v, want) in [
            ("true", Some(true)),
            (" Enabled ", Some(true)),
            ("false", Some(false)),
            ("disabled", Some(false)),
            ("maybe", None),
            ("", None),
        ] {
            assert_eq!(parse_inject(v), want, "{v:?}");
        }
    }

    #[test]
    fn targets_are_checked_by_the_sidecars_parser() {
        let base = crate::config::DEFAULT_TARGET;
        assert_eq!(
            target_with(base, Some(7070), Some("/p")).unwrap(),
            "http://127.0.0.1:7070/p"
        );
        assert_eq!(target_with(base, None, None).unwrap(), base);
        // set_path percent-encodes what a path cannot hold, so no query or
        // fragment can be smuggled in; the result still passes parse_target.
        let t = target_with(base, None, Some("/x?y#z")).unwrap();
        assert!(crate::config::parse_target(&t).is_ok(), "{t}");
    }
}
