//! Unit tests of the configuration: defaults, forms, every bad variable at
//! once.

use std::collections::BTreeMap;

use super::*;

#[test]
fn defaults_when_nothing_is_set() {
    let (c, w) = Config::from_vars(&vars(&[])).unwrap();
    assert_eq!(c.thresholds, vec![80.0, 90.0, 95.0]);
    assert_eq!(c.target_port, 6060);
    assert_eq!(c.rate_burst, 4);
    assert_eq!(c.profiles, vec![ProfileKind::Heap, ProfileKind::Goroutine]);
    assert_eq!(c.store, DEFAULT_STORE);
    assert!(w.is_empty());
}

#[test]
fn sizes_accept_kubernetes_and_binary_units() {
    assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
    assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
    assert_eq!(parse_size("268435456").unwrap(), 268435456);
    assert_eq!(parse_size("1G").unwrap(), 1_000_000_000);
    assert_eq!(parse_size("1.5Gi").unwrap(), 3 << 29);
    assert!(parse_size("12 parsecs").is_err());
    assert!(parse_size("99999999999999999999").is_err());
    assert!(parse_size("Mi").is_err());
    // Every Kubernetes quantity form, read as Kubernetes reads it.
    assert_eq!(parse_size("1e9").unwrap(), 1_000_000_000);
    assert_eq!(parse_size("5E6").unwrap(), 5_000_000);
    assert_eq!(parse_size("1E").unwrap(), 1_000_000_000_000_000_000);
    assert_eq!(parse_size("2Pi").unwrap(), 2 << 50);
    assert_eq!(parse_size("512000m").unwrap(), 512);
    assert_eq!(
        parse_memory_limit("512m").unwrap_err(),
        "it must be at least one byte"
    );
    assert!(parse_size("1e99").is_err());
}

#[test]
fn percent_lists_must_ascend() {
    assert_eq!(
        parse_percent_list("80, 90,95").unwrap(),
        vec![80.0, 90.0, 95.0]
    );
    assert_eq!(parse_percent_list("97.5%").unwrap(), vec![97.5]);
    assert!(parse_percent_list("90,80").is_err());
    assert!(parse_percent_list("80,80").is_err());
    assert!(parse_percent_list("120").is_err());
    assert!(parse_percent_list("100")
        .unwrap_err()
        .contains("can never fire"));
    assert!(parse_percent_list("").is_err());
}

#[test]
fn unknown_names_suggest_the_closest() {
    let w = unknown_var_warnings(&vars(&[("OOMSNAP_THRESHOLD", "80")]), KNOWN);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("did you mean OOMSNAP_THRESHOLDS"), "{}", w[0]);
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let bad = [
        (THRESHOLDS, "80,ninety"),
        (THRESHOLDS, "95,90"),
        (THRESHOLDS, "0.5"),
        (HYSTERESIS, "-1"),
        (HYSTERESIS, "70"),
        (LEAD_TIME, "soon"),
        (BASELINE_EVERY, "hourly"),
        (RATE_BURST, "0"),
        (RATE_BURST, "many"),
        (RATE_PERIOD, "0"),
        (PROFILES, "heap,stack"),
        (PROFILES, "heap,heap"),
        (FETCH_TIMEOUT, "0"),
        (MAX_PROFILE_BYTES, "big"),
        (SPOOL_MAX_BYTES, "1Zi"),
        (SPOOL_MAX_BYTES, "0"),
        (MAX_PROFILE_BYTES, "0B"),
        (MEMORY_LIMIT, "0"),
        (MEMORY_LIMIT, "lots"),
        (TARGET, "ftp://x/debug/pprof"),
        (TARGET, "not a url"),
        (STORE, "ftp://bucket"),
        (STORE, "s3://"),
        (ADMIN_ADDR, "9186"),
        (ADMIN_CAPTURE, "everyone"),
        (SHUTDOWN_GRACE, "later"),
        (POLL_MIN, "0ms"),
        (POLL_MAX, "2h"),
        (KERNEL_WAKEUPS, "maybe"),
        (LOG_FORMAT, "xml"),
        (CPU_PROFILE_DURATION, "long"),
    ];
    for (var, value) in bad {
        let err = Config::from_vars(&vars(&[(var, value)]))
            .expect_err(&format!("{var}={value} should be refused"));
        assert_eq!(err.0.len(), 1, "{var}={value}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(var), "message does not name {var}: {msg}");
        assert!(
            msg.contains(value),
            "message does not show {value:?}: {msg}"
        );
        assert!(
            msg.contains("expected"),
            "message says nothing expected: {msg}"
        );
    }
    // And all at once:
    let many: BTreeMap<String, String> = [
        (THRESHOLDS, "x"),
        (LEAD_TIME, "y"),
        (RATE_BURST, "z"),
        (STORE, "ftp://q"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let err = Config::from_vars(&many).unwrap_err();
    assert_eq!(err.0.len(), 4, "{err}");
}

#[test]
fn poll_bounds_must_be_ordered() {
    let err = Config::from_vars(&vars(&[(POLL_MIN, "1s"), (POLL_MAX, "10ms")])).unwrap_err();
    assert!(err.to_string().contains(POLL_MIN));
    let err = Config::from_vars(&vars(&[(POLL_MAX, "1ms")])).unwrap_err();
    assert!(
        err.to_string().contains("OOMSNAP_POLL_MAX=\"1ms\""),
        "{err}"
    );
}
