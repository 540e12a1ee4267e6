//! Pod annotations: `parse_file` over the Downward API file, then `apply`
//! over an environment whose target is `http://127.0.0.1:6060/debug/pprof`.
//!
//! Invariant (docs/security.md, "Annotations"): annotations choose a port and a path, never a
//! host. Whatever the file says, the resulting target is an `http` URL on
//! 127.0.0.1, with no userinfo, query or fragment. Applied twice (the second
//! time with the first result as the last good value) it still holds.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oomsnap::annotations::{self, Tunables};
use oomsnap::config::Config;

fn env() -> &'static Config {
    static ENV: OnceLock<Config> = OnceLock::new();
    ENV.get_or_init(|| {
        let vars: BTreeMap<String, String> = [(
            "OOMSNAP_TARGET".to_string(),
            "http://127.0.0.1:6060/debug/pprof".to_string(),
        )]
        .into();
        Config::from_vars(&vars)
            .expect("the fixed environment is valid")
            .0
    })
}

fn check_target(t: &Tunables, file: &str) {
    let url = reqwest_url(&t.target);
    assert_eq!(
        url.host_str(),
        Some("127.0.0.1"),
        "host changed: {} from {file:?}",
        t.target
    );
    assert_eq!(
        url.scheme(),
        "http",
        "scheme changed: {} from {file:?}",
        t.target
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "userinfo: {} from {file:?}",
        t.target
    );
    assert!(
        url.query().is_none() && url.fragment().is_none(),
        "query/fragment: {} from {file:?}",
        t.target
    );
    // The quota built from annotation values must not panic either (a
    // rate-period over 584 years once did, inside governor).
    let _ = oomsnap::limit::Admission::new(t.rate_burst, t.rate_period);
    assert!(t.thresholds.windows(2).all(|w| w[0] < w[1]));
}

fn reqwest_url(s: &str) -> url::Url {
    // `url` is the parser reqwest (and so the capture client) uses.
    url::Url::parse(s).unwrap_or_else(|e| panic!("target {s:?} is not a URL: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let file = String::from_utf8_lossy(data);
    let ann = annotations::parse_file(&file);
    let env = env();
    let start = Tunables::from_config(env);
    let (t1, _problems) = annotations::apply(&ann, env, &start);
    check_target(&t1, &file);
    let (t2, _problems) = annotations::apply(&ann, env, &t1);
    check_target(&t2, &file);
    // The path and port checks alone, on the raw text.
    if let Ok(p) = annotations::parse_path(&file) {
        assert!(p.is_empty() || p.starts_with('/'), "{p:?}");
        assert!(!p.starts_with("//"), "{p:?}");
        assert!(!p.split('/').any(|s| s == ".."), "{p:?}");
    }
    let _ = annotations::parse_port(&file);
});
