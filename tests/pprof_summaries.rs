//! The pprof summaries on real Go profiles (see tests/data/pprof/README.md),
//! cross-checked against `go tool pprof` (a missing `go` fails the test
//! unless `OOMSNAP_ALLOW_SKIPS=1`, like every live component).

mod common;

use std::path::PathBuf;
use std::process::Command;

use oomsnap::pprof::*;

const MIB: u64 = 1024 * 1024;
/// The generator leaked 100 chunks of 1 MiB through main.(*leakyCache).put.
const LEAKED: u64 = 100 * MIB;
const PUT: &str = "main.(*leakyCache).put";
const WARM: &str = "main.warmCache";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/pprof")
        .join(name)
}

fn load(name: &str) -> Profile {
    decode_file(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Within `pct` percent of `want`.
fn roughly(got: u64, want: u64, pct: f64) -> bool {
    (got as f64 - want as f64).abs() <= want as f64 * pct / 100.0
}

#[test]
fn heap_leak_top_flat_is_the_leaking_method() {
    let s = heap_summary(&load("heap_leak.pb.gz"), 10).unwrap();
    assert_eq!(s.sample_type, "inuse_space/bytes");
    assert!(!s.sample_type_fallback);
    let top = &s.top_flat[0];
    assert_eq!(top.function, PUT, "{s:#?}");
    assert!(roughly(top.flat_bytes, LEAKED, 1.0), "{top:?}");
    assert!(top.flat_percent > 80.0, "{top:?}");
    // The baseline allocation is still held and second by flat.
    assert_eq!(s.top_flat[1].function, WARM);
    assert_eq!(s.top_flat[1].flat_bytes, 20 * MIB);
    // Leaked + baseline, plus a little runtime overhead.
    assert!(s.total_bytes >= LEAKED + 20 * MIB, "{}", s.total_bytes);
    assert!(s.total_bytes < LEAKED + 30 * MIB, "{}", s.total_bytes);
    // main.main.func1 (the /leak handler) calls put: cum, never flat.
    let handler = s
        .top_cum
        .iter()
        .find(|r| r.function == "main.main.func1")
        .expect("handler in top_cum");
    assert_eq!(handler.flat_bytes, 0);
    assert!(handler.cum_bytes >= top.flat_bytes);
    // Serialises with the documented field names.
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["top_flat"][0]["flat_bytes"].is_u64());
    assert!(json["top_flat"][0]["cum_bytes"].is_u64());
    assert!(json["top_flat"][0]["flat_percent"].is_f64());
    assert!(json["total_bytes"].is_u64());
}

#[test]
fn heap_baseline_is_the_warm_cache() {
    let s = heap_summary(&load("heap_baseline.pb.gz"), 10).unwrap();
    assert_eq!(s.top_flat[0].function, WARM);
    assert_eq!(s.top_flat[0].flat_bytes, 20 * MIB);
    assert!(s.top_flat.iter().all(|r| r.function != PUT));
}

#[test]
fn diff_against_baseline_shows_the_leak() {
    let base = load("heap_baseline.pb.gz");
    let cur = load("heap_leak.pb.gz");
    let d = heap_diff(&base, &cur, 10).unwrap();
    let top = &d.top_growth[0];
    assert_eq!(top.function, PUT, "{d:#?}");
    assert_eq!(top.base_bytes, 0);
    assert!(top.delta_bytes > 0);
    assert!(roughly(top.delta_bytes as u64, LEAKED, 1.0), "{top:?}");
    assert!(
        d.top_growth.iter().all(|g| g.function != WARM),
        "main.warmCache did not grow: {d:#?}"
    );
    assert!(roughly(d.total_delta_bytes as u64, LEAKED, 1.0), "{d:#?}");
    assert_eq!(
        d.total_delta_bytes,
        d.current_total_bytes as i64 - d.base_total_bytes as i64
    );

    // Against itself nothing grows.
    let same = heap_diff(&cur, &cur, 10).unwrap();
    assert_eq!(same.total_delta_bytes, 0);
    assert!(same.top_growth.is_empty());
}

#[test]
fn goroutines_parked_in_the_worker() {
    let g = goroutine_summary(&load("goroutine.pb.gz"), 5);
    assert!(
        (1000..1100).contains(&g.total_goroutines),
        "{}",
        g.total_goroutines
    );
    let top = &g.top_stacks[0];
    assert_eq!(top.goroutines, 1000, "{g:#?}");
    assert!(
        top.functions.iter().any(|f| f == "main.parkedWorker"),
        "{top:?}"
    );
    assert_eq!(top.functions[0], "runtime.gopark", "leaf first: {top:?}");
    assert_eq!(top.functions.last().unwrap(), "main.parkedWorker");
    // Go 1.19 wrote one goroutine without a stack into this profile.
    assert!(g
        .top_stacks
        .iter()
        .any(|s| s.functions == ["<no stack>"] && s.goroutines == 1));
}

#[test]
fn verdicts_name_the_leak() {
    let base = load("heap_baseline.pb.gz");
    let cur = load("heap_leak.pb.gz");
    let s = heap_summary(&cur, 10).unwrap();
    let d = heap_diff(&base, &cur, 10).unwrap();
    let with = verdict(&s, Some(&d));
    assert!(with.contains("since baseline"), "{with}");
    assert!(with.contains(PUT), "{with}");
    assert!(with.starts_with("heap +100MiB since baseline"), "{with}");
    let without = verdict(&s, None);
    assert!(without.contains(PUT), "{without}");
    assert!(without.contains("in use"), "{without}");
    assert!(!without.contains("since baseline"), "{without}");
}

#[test]
fn fixtures_decode_from_raw_protobuf_too() {
    use std::io::Read;
    let gz = std::fs::read(fixture("heap_leak.pb.gz")).unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(decode(&raw).unwrap(), decode(&gz).unwrap());
}

/// `go tool pprof -top -unit=B <args>`, or None when go is unavailable and
/// skips are allowed. A `go` that runs but fails is a failure.
fn go_pprof_top(args: &[&str]) -> Option<String> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-unit=B"])
        .args(args)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => panic!(
            "go tool pprof {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(!common::require_live(&format!(
                "go (for go tool pprof: {e})"
            )));
            None
        }
    }
}

/// The total of "Showing nodes accounting for …, …% of 123B total".
fn go_total(top: &str) -> u64 {
    let line = top
        .lines()
        .find(|l| l.starts_with("Showing nodes accounting for"))
        .unwrap_or_else(|| panic!("no total in:\n{top}"));
    let total = line
        .rsplit(" of ")
        .next()
        .and_then(|t| t.strip_suffix(" total"))
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    total
        .trim_end_matches('B')
        .parse()
        .unwrap_or_else(|e| panic!("cannot parse {total:?}: {e}"))
}

/// The flat column of `function`'s row.
fn go_flat(top: &str, function: &str) -> u64 {
    let row = top
        .lines()
        .find(|l| l.split_whitespace().last() == Some(function))
        .unwrap_or_else(|| panic!("{function} not in:\n{top}"));
    let flat = row.split_whitespace().next().unwrap();
    flat.trim_end_matches('B').parse().unwrap()
}

#[test]
fn totals_match_go_tool_pprof() {
    for name in ["heap_baseline.pb.gz", "heap_leak.pb.gz"] {
        let path = fixture(name);
        let Some(top) = go_pprof_top(&["-sample_index=inuse_space", path.to_str().unwrap()]) else {
            return;
        };
        let s = heap_summary(&load(name), 10).unwrap();
        assert!(
            roughly(s.total_bytes, go_total(&top), 0.1),
            "{name}: ours {} vs go {}",
            s.total_bytes,
            go_total(&top)
        );
        let ours = &s.top_flat[0];
        let go = go_flat(&top, &ours.function);
        assert!(
            roughly(ours.flat_bytes, go, 0.1),
            "{name} {}: ours {} vs go {go}",
            ours.function,
            ours.flat_bytes
        );
    }

    // The diff: go's "total" there sums |delta| per stack, so compare the
    // leaking function's row, not the total.
    let (base, cur) = (fixture("heap_baseline.pb.gz"), fixture("heap_leak.pb.gz"));
    let Some(top) = go_pprof_top(&[
        "-sample_index=inuse_space",
        "-base",
        base.to_str().unwrap(),
        cur.to_str().unwrap(),
    ]) else {
        return;
    };
    let d = heap_diff(&load("heap_baseline.pb.gz"), &load("heap_leak.pb.gz"), 10).unwrap();
    let go = go_flat(&top, PUT);
    assert!(
        roughly(d.top_growth[0].delta_bytes as u64, go, 0.1),
        "ours {:?} vs go {go}",
        d.top_growth[0]
    );

    let path = fixture("goroutine.pb.gz");
    let Some(top) = go_pprof_top(&[path.to_str().unwrap()]) else {
        return;
    };
    let g = goroutine_summary(&load("goroutine.pb.gz"), 5);
    assert_eq!(g.total_goroutines, go_total(&top));
}
