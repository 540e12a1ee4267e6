//! Inputs the fuzzers (`fuzz/`, `scripts/fuzz.sh`) found, kept as plain
//! tests so they run with `cargo test` on stable.
//!
//! A test that still fails against `src/` is `#[ignore]`d with the fix it
//! waits for in its comment; run them with `cargo test --test
//! fuzz_regressions -- --ignored`. Remove the `#[ignore]` with the fix.

mod common;

use std::io::Write;

use oomsnap::pprof::{self, Line, Location, Profile, Sample};
use prost::Message;

// ---------------------------------------------------------------------------
// An allocator that remembers the peak, so a test can say "this input must
// not make oomsnap allocate more than the sidecar's memory limit".
// ---------------------------------------------------------------------------

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{peak_during, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

/// The sidecar's memory limit in deploy/examples/sidecar.yaml (32Mi). A
/// profile the app serves must not make the summariser need more than this.
const SIDECAR_LIMIT: usize = 32 << 20;

// ---------------------------------------------------------------------------
// keys::parse_compact_time (target `keys`)
// ---------------------------------------------------------------------------

/// `oomsnap ls --since` runs `parse_compact_time` on the `capture_id` of
/// every manifest in the store. A manifest whose id has a multi-byte
/// character where the parser slices (bytes 4, 6, 8, 9, 11, 13) made it
/// panic: "byte index 13 is not a char boundary". Whoever can write to the
/// bucket could crash `oomsnap ls` for everyone.
///
/// Fix (src/keys.rs, `parse_compact_time`): refuse non-ASCII before slicing,
/// `if s.len() < 16 || !s.is_ascii() { return None; }`.
#[test]
fn compact_time_with_a_multibyte_char_is_refused_not_a_panic() {
    let found = include_bytes!("../fuzz/regressions/keys-parse_compact_time-non-ascii");
    let text = String::from_utf8_lossy(found);
    assert_eq!(oomsnap::keys::parse_compact_time(&text), None);
    // The same, written by hand: 'é' straddles bytes 12..14.
    assert_eq!(
        oomsnap::keys::parse_compact_time("20261122T033é56.123Z"),
        None
    );
    assert_eq!(
        oomsnap::keys::parse_compact_time("2026é122T033456.123Z"),
        None
    );
}

#[test]
fn compact_time_still_reads_real_ids() {
    let t = oomsnap::keys::parse_compact_time("20261122T033456.123Z").expect("a real id");
    assert_eq!(oomsnap::keys::compact_time(t), "20261122T033456.123Z");
}

// ---------------------------------------------------------------------------
// config::parse_target (target `config`)
// ---------------------------------------------------------------------------

/// `parse_target` validates the URL the `url` crate makes of the input, but
/// returns the *input*: leading control characters, and tabs or newlines
/// anywhere, which the URL parser strips, survive into `Config::target`,
/// `/status`, the logs and `oomsnap check`. What is shown is then not what
/// is fetched.
///
/// Fix (src/config/parse.rs, `parse_target`): return the parsed URL's own
/// serialisation, `Ok((url.as_str().trim_end_matches('/').to_string(), port))`.
#[test]
fn target_is_returned_as_the_url_that_is_fetched() {
    let found = include_bytes!("../fuzz/regressions/config-parse_target-raw-control-chars");
    // The input is a config line: first byte picks the variable; the target
    // line starts with byte 2 (OOMSNAP_TARGET).
    let line = found
        .split(|&b| b == b'\n')
        .find(|l| l.first() == Some(&2))
        .expect("a target line");
    let value = String::from_utf8_lossy(&line[1..]);
    if let Ok((target, _)) = oomsnap::config::parse_target(&value) {
        assert!(!target.contains(char::is_control), "{target:?}");
    }
    for v in [
        "\u{5}http://127.0.0.1:6060/debug/pprof",
        "http://127.0.0.1:6060/de\tbug/pprof",
        "http://127.0.0.1:6060/debug/pprof\n",
    ] {
        let (target, port) = oomsnap::config::parse_target(v).expect(v);
        assert_eq!(target, "http://127.0.0.1:6060/debug/pprof", "from {v:?}");
        assert_eq!(port, 6060);
    }
}

// ---------------------------------------------------------------------------
// pprof: memory amplification (target `pprof`, then built by hand)
// ---------------------------------------------------------------------------

/// The summariser runs in the sidecar on every capture, on bytes the app
/// served. A profile of N empty samples is 2 bytes each on the wire and
/// gzips to almost nothing, but prost gives each `Sample` 72 bytes: a
/// ~10 KiB body makes `decode` allocate hundreds of MiB, far past the
/// sidecar's 32Mi limit; it is OOM-killed before the manifest is written,
/// so the capture it was summarising is lost. `MAX_DECOMPRESSED_BYTES`
/// (512 MiB) bounds the raw bytes, not what they decode to.
///
/// Fix (src/pprof.rs + src/summary.rs): give the summariser a memory budget
/// well under the sidecar's limit (e.g. `OOMSNAP_SUMMARY_MAX_BYTES`, default
/// 8 MiB of decompressed profile), decode with `decode_with_limit(bytes,
/// budget)`, and before `Profile::decode` count the top-level repeated
/// fields in one allocation-free pass over the protobuf (tag 2 samples,
/// 4 locations, 5 functions, 6 strings) and refuse when count × size_of
/// exceeds the budget. A refused summary is a manifest note ("too large to
/// summarise in the sidecar; run oomsnap report"), the capture still ships.
#[test]
fn a_tiny_body_of_empty_samples_cannot_exhaust_the_sidecar() {
    const SAMPLES: usize = 4 << 20;
    let raw: Vec<u8> = [0x12u8, 0x00].repeat(SAMPLES); // field 2, length 0
    let body = gzip(&raw);
    assert!(body.len() < 64 << 10, "the body is {} bytes", body.len());
    let (res, peak) = peak_during(|| pprof::decode(&body).map(|p| p.sample.len()));
    eprintln!(
        "{} byte body → decode peak {} MiB ({:?} samples)",
        body.len(),
        peak >> 20,
        res
    );
    assert!(
        peak < SIDECAR_LIMIT,
        "a {} byte profile made decode allocate {} MiB",
        body.len(),
        peak >> 20
    );
}

/// A location with L inlined lines, referenced S times by one sample, is
/// expanded into L×S frames by `Symbols::sample_frames` before anything is
/// cut to `MAX_STACK_FRAMES`: 10^4 × 10^4 frames (400 MB of u32) from a
/// profile of ~60 KB raw, a few hundred bytes gzipped.
///
/// Fix (src/pprof.rs, `Symbols`): cap the frames of one sample while they
/// are gathered (Go itself records at most 128 per stack): `location_frames`
/// returns a borrowed slice of at most `MAX_SAMPLE_FRAMES` (say 1024)
/// instead of a clone, and `sample_frames` stops once it holds that many,
/// counting the rest only as a number for `omitted_frames`.
#[test]
fn one_sample_cannot_expand_into_millions_of_frames() {
    const LINES: usize = 10_000;
    const REFS: usize = 10_000;
    let p = Profile {
        sample_type: vec![pprof::ValueType { r#type: 1, unit: 2 }],
        sample: vec![Sample {
            location_id: vec![1; REFS],
            value: vec![1],
            label: vec![],
        }],
        location: vec![Location {
            id: 1,
            line: vec![
                Line {
                    function_id: 1,
                    ..Default::default()
                };
                LINES
            ],
            ..Default::default()
        }],
        function: vec![pprof::Function {
            id: 1,
            name: 3,
            ..Default::default()
        }],
        string_table: vec!["".into(), "goroutine".into(), "count".into(), "f".into()],
        ..Default::default()
    };
    let body = gzip(&p.encode_to_vec());
    assert!(body.len() < 4 << 10, "the body is {} bytes", body.len());
    let decoded = pprof::decode(&body).unwrap();
    let (g, peak) = peak_during(|| pprof::goroutine_summary(&decoded, 5));
    eprintln!(
        "{} byte body → goroutine_summary peak {} MiB",
        body.len(),
        peak >> 20
    );
    assert_eq!(g.total_goroutines, 1);
    assert!(
        peak < SIDECAR_LIMIT,
        "a {} byte profile made goroutine_summary allocate {} MiB",
        body.len(),
        peak >> 20
    );
}

/// The real fixtures stay well inside the budget, so the budget the fixes
/// above add does not refuse real profiles.
#[test]
fn real_profiles_summarise_within_the_sidecar_limit() {
    for name in ["heap_baseline.pb.gz", "heap_leak.pb.gz", "goroutine.pb.gz"] {
        let path = common::manifest_dir().join("tests/data/pprof").join(name);
        let body = std::fs::read(&path).unwrap();
        let (_, peak) = peak_during(|| {
            let p = pprof::decode(&body).unwrap();
            let _ = pprof::heap_summary(&p, 10);
            pprof::goroutine_summary(&p, 5)
        });
        assert!(peak < 4 << 20, "{name}: {} KiB", peak >> 10);
    }
}

// ---------------------------------------------------------------------------
// Durations that validate but overflow later (target `config`)
// ---------------------------------------------------------------------------

/// `OOMSNAP_FETCH_TIMEOUT=300000000000y` passes validation (humantime reads
/// it, it is above zero), and `POST /capture` then computes
/// `fetch_timeout * 2 + 5s` (now src/admin/mod.rs), which overflows `Duration` and
/// panics; the release profile has `panic = "abort"`, so the sidecar dies.
/// `OOMSNAP_SHUTDOWN_GRACE` has the same shape (`Instant::now() + grace` in
/// now src/run/mod.rs).
///
/// Fix (src/config/): bound every duration where it is read, e.g.
/// `FETCH_TIMEOUT`, `CPU_PROFILE_DURATION`, `SHUTDOWN_GRACE` ≤ 1h and
/// `LEAD_TIME`, `RATE_PERIOD`, `BASELINE_EVERY` ≤ 30 days, with "it must be
/// at most …" in the error; and use `saturating_mul`/`saturating_add` in
/// admin.rs and capture.rs so no later change brings the panic back.
#[test]
fn absurd_durations_are_refused_at_start() {
    use std::collections::BTreeMap;
    // The fuzzer's input: OOMSNAP_SHUTDOWN_GRACE=5555555555555years… (key
    // byte '5' = 53 = SHUTDOWN_GRACE), which `Instant::now() + grace` in
    // `run` cannot add.
    let found = include_bytes!("../fuzz/regressions/config-shutdown-grace-overflows-instant");
    assert!(found.starts_with(b"5555"));
    for var in [
        oomsnap::config::FETCH_TIMEOUT,
        oomsnap::config::SHUTDOWN_GRACE,
        oomsnap::config::CPU_PROFILE_DURATION,
        oomsnap::config::RATE_PERIOD,
    ] {
        let vars: BTreeMap<String, String> =
            [(var.to_string(), "300000000000y".to_string())].into();
        let r = oomsnap::config::Config::from_vars(&vars);
        assert!(r.is_err(), "{var}=300000000000y was accepted");
    }
}

/// The end-to-end shape of the same bug: the running sidecar used to
/// accept that timeout and then never answer `POST /capture`. Now the value
/// is refused at start, naming the variable: `run` goes on with the default
/// and reports it (tests/do_no_harm.rs), and with `OOMSNAP_STRICT=true` it
/// stops with exit code 2.
#[test]
fn an_absurd_fetch_timeout_is_refused_at_start() {
    let dir = common::temp_dir("fuzzreg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oomsnap"))
        .arg("run")
        .env_clear()
        .env("OOMSNAP_SPOOL_DIR", dir.path().join("spool"))
        .env(
            "OOMSNAP_ADMIN_ADDR",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("OOMSNAP_FETCH_TIMEOUT", "300000000000y")
        .env("OOMSNAP_STRICT", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OOMSNAP_FETCH_TIMEOUT") && err.contains("at most 1h"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Poll bounds (target `config`)
// ---------------------------------------------------------------------------

/// `OOMSNAP_POLL_MAX=1ms` alone (below the default `POLL_MIN` of 2ms) is
/// reported as `OOMSNAP_POLL_MIN="" is not valid`: it names a variable the
/// user never set, with an empty value, and not the one they did set.
///
/// Fix (src/config/mod.rs, the `poll_min > poll_max` check): blame `POLL_MAX`
/// when `POLL_MIN` is unset — `"a duration no shorter than OOMSNAP_POLL_MIN
/// (2ms)"` — and keep blaming `POLL_MIN` when both are set.
#[test]
fn a_too_small_poll_max_is_reported_as_poll_max() {
    use std::collections::BTreeMap;
    let found = include_bytes!("../fuzz/regressions/config-poll-max-names-poll-min");
    assert!(
        found.contains(&0x17),
        "the input sets OOMSNAP_POLL_MAX (key byte 23)"
    );
    let vars: BTreeMap<String, String> =
        [(oomsnap::config::POLL_MAX.to_string(), "1ms".to_string())].into();
    let err = oomsnap::config::Config::from_vars(&vars).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].var, oomsnap::config::POLL_MAX, "{err}");
    assert_eq!(err.0[0].value, "1ms", "{err}");
}

// ---------------------------------------------------------------------------
// Annotations: the rate period (target `annotations`)
// ---------------------------------------------------------------------------

/// `oomsnap.dev/rate-period: "1000years"` is accepted by `annotations::apply`
/// (any duration above zero), and the follower then rebuilds the quota with
/// it: governor converts the period to u64 nanoseconds and panics ("Duration
/// is longer than 584 years"). The panic happens while the admission mutex
/// is held, and the release build aborts on panic, so a pod owner can stop
/// the sidecar with one annotation, and it crash-loops, since the file is
/// read again at start. docs/configuration.md: a bad annotation "never stops the
/// sidecar". `OOMSNAP_RATE_PERIOD` has the same shape at start-up.
///
/// Fix: (1) src/annotations/rules.rs, the `RATE_PERIOD` arm of `apply`: accept
/// `Ok(d) if !d.is_zero() && d <= MAX_RATE_PERIOD` (say 30 days, also used
/// by config.rs for `OOMSNAP_RATE_PERIOD`); (2) src/limit.rs,
/// `Admission::with_clock`: clamp, `period.clamp(Duration::from_millis(1),
/// MAX_RATE_PERIOD)`, so governor never sees a period it cannot hold.
#[test]
fn a_huge_rate_period_annotation_is_refused_not_a_panic() {
    use std::collections::BTreeMap;
    let found = include_bytes!("../fuzz/regressions/annotations-rate-period-over-584-years");
    let env = oomsnap::config::Config::from_vars(&BTreeMap::<String, String>::new())
        .unwrap()
        .0;
    let good = oomsnap::annotations::Tunables::from_config(&env);
    for file in [
        String::from_utf8_lossy(found).into_owned(),
        "oomsnap.dev/rate-period=\"1000years\"\n".to_string(),
    ] {
        let ann = oomsnap::annotations::parse_file(&file);
        let (t, problems) = oomsnap::annotations::apply(&ann, &env, &good);
        let built = std::panic::catch_unwind(|| {
            oomsnap::limit::Admission::new(t.rate_burst, t.rate_period);
        });
        assert!(built.is_ok(), "{file:?}: the quota panicked");
        assert_eq!(t.rate_period, good.rate_period, "{file:?} was applied");
        assert!(
            problems.iter().any(|p| p.contains("rate-period")),
            "{problems:?}"
        );
    }
}
