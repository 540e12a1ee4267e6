//! The environment parser: `Config::from_vars` over a map whose keys are
//! oomsnap's own variable names (plus the Downward API identity ones and an
//! unknown `OOMSNAP_*` name, for the typo warnings) and whose values are
//! arbitrary; and every pure parser on the raw input.
//!
//! Input: lines separated by `\n`; the first byte of a line picks the key,
//! the rest (lossy UTF-8) is the value. A bad value must come back as a
//! `ConfigError` naming its variable, never as a panic.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use oomsnap::config::{self, Config};

const EXTRA: &[&str] = &[
    config::POD_NAME,
    config::POD_NAMESPACE,
    config::POD_UID,
    config::NODE_NAME,
    "OOMSNAP_THRESHOLD", // a typo, for the suggestion path
];

fn key(b: u8) -> &'static str {
    let i = usize::from(b) % (config::KNOWN.len() + EXTRA.len());
    config::KNOWN
        .get(i)
        .copied()
        .unwrap_or_else(|| EXTRA[i - config::KNOWN.len()])
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // The pure parsers: any string in, Ok or Err out.
    if let Ok(n) = config::parse_size(&text) {
        // A size never wraps: it is at most u64::MAX by construction.
        let _ = n;
    }
    let _ = config::parse_duration(&text);
    let _ = config::parse_bool(&text);
    if let Ok(p) = config::parse_percent(&text) {
        assert!((0.0..=100.0).contains(&p), "parse_percent({text:?}) = {p}");
    }
    if let Ok(list) = config::parse_percent_list(&text) {
        assert!(!list.is_empty() && list.len() <= 16, "{text:?} → {list:?}");
        assert!(
            list.windows(2).all(|w| w[0] < w[1]),
            "{text:?} → {list:?} does not ascend"
        );
        assert!(
            list.iter().all(|p| (1.0..=100.0).contains(p)),
            "{text:?} → {list:?}"
        );
    }
    if let Ok(kinds) = config::parse_profiles(&text) {
        for (i, k) in kinds.iter().enumerate() {
            assert!(!kinds[..i].contains(k), "{text:?} → duplicate {k:?}");
        }
    }
    if let Ok((target, _port)) = config::parse_target(&text) {
        // The returned string is the raw input, not the URL's own
        // serialisation (see tests/fuzz_regressions.rs), so only check that
        // what later code re-parses is an http(s) URL with a host.
        let url = url::Url::parse(&target).expect("parse_target accepted it");
        assert!(matches!(url.scheme(), "http" | "https"), "{target:?}");
        assert!(url.host_str().is_some(), "{target:?}");
    }

    // The whole reader over a map.
    let mut vars = BTreeMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&k, v)) = line.split_first() else {
            continue;
        };
        vars.insert(key(k).to_string(), String::from_utf8_lossy(v).into_owned());
    }
    match Config::from_vars(&vars) {
        Ok((c, _warnings)) => {
            // What validated must hold together.
            assert!(!c.thresholds.is_empty());
            assert!(c.poll_min <= c.poll_max, "poll_min > poll_max accepted");
            assert!(!c.fetch_timeout.is_zero());
            assert!(c.rate_burst >= 1);
            // `oomsnap check` serialises the config: that must not fail.
            serde_json::to_string(&c).expect("Config serialises");
            // The arithmetic the pipeline does on validated durations, as
            // written in src/ (a panic here is a panic there; durations near
            // u64::MAX seconds once validated and then overflowed).
            {
                // admin.rs, POST /capture's wait
                let _ = c.fetch_timeout * 2 + Duration::from_secs(5);
                // capture.rs, a cpu profile's timeout
                let _ = c.fetch_timeout + c.cpu_profile_duration;
                // run.rs, the shutdown waits
                let _ = c.shutdown_grace + Duration::from_secs(1);
                let _ = Instant::now() + c.shutdown_grace;
                // limit.rs, the quota
                let _ = oomsnap::limit::Admission::new(c.rate_burst, c.rate_period);
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(
                    vars.contains_key(&e.var),
                    "an error names {} which was not set",
                    e.var
                );
            }
            let _ = errors.to_string();
        }
    }
});
