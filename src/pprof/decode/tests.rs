//! Unit tests of decoding and pricing.

use super::*;
use crate::pprof::test_profiles::heap_profile;
use crate::pprof::{goroutine_summary, heap_diff, heap_summary};
use std::io::Write;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A profile of one sample holding `n` empty labels: 2 bytes each on
/// the wire, a 32-byte `Label` each decoded.
fn label_bomb(n: usize) -> Vec<u8> {
    let payload = [0x1au8, 0x00].repeat(n);
    let mut raw = vec![0x12];
    let mut len = payload.len();
    while len >= 0x80 {
        raw.push((len as u8) | 0x80);
        len >>= 7;
    }
    raw.push(len as u8);
    raw.extend_from_slice(&payload);
    raw
}

#[test]
fn decode_raw_and_gzip_round_trip() {
    let p = heap_profile();
    let raw = p.encode_to_vec();
    assert_eq!(decode(&raw).unwrap(), p);
    assert_eq!(decode(&gzip(&raw)).unwrap(), p);
}

#[test]
fn repeated_scalars_are_packed() {
    let p = Profile {
        sample: vec![Sample {
            location_id: vec![1, 2, 3],
            value: vec![4, 5],
            label: vec![],
        }],
        ..Default::default()
    };
    let raw = p.encode_to_vec();
    // Profile.sample (2, LEN), then Sample.location_id as (1, LEN) packed.
    assert_eq!(&raw[..5], &[0x12, 0x09, 0x0a, 0x03, 0x01]);
    // Unpacked encodings are accepted too (protobuf requires it).
    let unpacked = [0x12, 0x06, 0x08, 0x07, 0x08, 0x08, 0x10, 0x09];
    let q = decode(&unpacked).unwrap();
    assert_eq!(q.sample[0].location_id, vec![7, 8]);
    assert_eq!(q.sample[0].value, vec![9]);
}

#[test]
fn decode_rejects_garbage() {
    assert!(matches!(decode(&[]), Err(PprofError::Empty)));
    let err = decode(b"<html><body>404 page not found</body></html>").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("the profile is not gzip'd protobuf"),
        "{msg}"
    );
    assert!(msg.contains("looks like text"), "{msg}");
    let err = decode(&[0xff; 64]).unwrap_err();
    assert!(matches!(err, PprofError::NotProtobuf { .. }), "{err}");
    // Gzip'd garbage.
    let err = decode(&gzip(&[0xff; 64])).unwrap_err();
    assert!(matches!(err, PprofError::NotProtobuf { .. }), "{err}");
    assert!(err.to_string().contains("64 bytes that are not a profile"));
}

#[test]
fn decode_rejects_truncated_gzip() {
    let gz = gzip(&heap_profile().encode_to_vec());
    for cut in [2, 10, gz.len() / 2, gz.len() - 4, gz.len() - 1] {
        let err = decode(&gz[..cut]).unwrap_err();
        assert!(matches!(err, PprofError::Gzip(_)), "cut at {cut}: {err}");
    }
}

#[test]
fn inflation_stops_at_the_raw_budget() {
    let bomb = gzip(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 8 * 1024);
    let small = Budget {
        raw_bytes: 64 * 1024,
        ..Budget::SIDECAR
    };
    let err = decode_with_budget(&bomb, small).unwrap_err();
    assert!(
        matches!(err, PprofError::TooLarge { limit: 65536 }),
        "{err}"
    );
    assert!(err.to_string().contains("over 64KiB"), "{err}");
    // Raw input over the cap as well.
    let raw = heap_profile().encode_to_vec();
    let tiny = Budget {
        raw_bytes: 3,
        ..Budget::SIDECAR
    };
    assert!(matches!(
        decode_with_budget(&raw, tiny),
        Err(PprofError::TooLarge { limit: 3 })
    ));
    // Exactly at the cap is fine, compressed or not.
    let gz = gzip(&raw);
    let exact = |n: usize| Budget {
        raw_bytes: n as u64,
        ..Budget::SIDECAR
    };
    assert!(decode_with_budget(&raw, exact(raw.len())).is_ok());
    assert!(decode_with_budget(&gz, exact(raw.len().max(gz.len()))).is_ok());
    assert!(decode_with_budget(&gz, exact(raw.len() - 1)).is_err());
}

#[test]
fn a_nested_bomb_is_refused_by_name_before_decoding() {
    // 2 M empty labels: 4 MiB on the wire, inside the raw budget, but
    // 64 MiB of Label structs.
    let n = (SIDECAR_RAW_BUDGET as usize - 8) / 2;
    let body = gzip(&label_bomb(n));
    assert!(body.len() < 16 << 10, "{}", body.len());
    let e = estimate(&body, Budget::SIDECAR).unwrap();
    assert_eq!(e.count(Repeated::Label), n as u64);
    assert!(e.decoded_bytes() >= n as u64 * 32, "{e:?}");
    let err = decode(&body).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PprofError::OverBudget { .. }), "{msg}");
    assert!(
        msg.starts_with("2 097 148 Label entries ≈ 64MiB, over the 8MiB decode budget"),
        "{msg}"
    );
    assert!(msg.contains("go tool pprof"), "{msg}");
}

#[test]
fn the_budget_counts_what_the_summaries_add() {
    // 100 000 empty samples decode to ~9 MiB of structs; priced with the
    // goroutine summary's tables on top.
    let raw = [0x12u8, 0x00].repeat(100_000);
    let e = estimate(&raw, Budget::SIDECAR).unwrap();
    assert!(e.working_bytes() > 0);
    assert_eq!(e.total_bytes(), e.decoded_bytes() + e.working_bytes());
    let fits = Budget {
        decoded_bytes: e.total_bytes(),
        ..Budget::SIDECAR
    };
    assert!(decode_with_budget(&raw, fits).is_ok());
    let short = fits.less(1);
    let err = decode_with_budget(&raw, short).unwrap_err();
    assert!(err.to_string().contains("100 000 Sample entries"), "{err}");
}

#[test]
fn real_profiles_fit_the_sidecar_budget_with_room() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pprof");
    for name in ["heap_baseline.pb.gz", "heap_leak.pb.gz", "goroutine.pb.gz"] {
        let body = std::fs::read(dir.join(name)).unwrap();
        let e = estimate(&body, Budget::SIDECAR).unwrap();
        assert!(e.total_bytes() < SIDECAR_DECODE_BUDGET / 8, "{name}: {e:?}");
        assert!(decode_file(dir.join(name)).is_ok());
    }
}

#[test]
fn decode_file_errors_name_the_path() {
    let err = decode_file("/nonexistent/oomsnap/heap.pb.gz").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/oomsnap/heap.pb.gz"), "{msg}");
}

#[test]
fn decode_file_refuses_a_file_over_the_raw_budget_unread() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("heap.pb.gz");
    std::fs::write(&path, vec![0x1f; SIDECAR_RAW_BUDGET as usize + 1]).unwrap();
    assert!(matches!(
        decode_file(&path),
        Err(PprofError::TooLarge { .. })
    ));
}

#[test]
fn vec_growth_and_malloc_rounding() {
    assert_eq!(heap_block(0), 0);
    assert_eq!(heap_block(1), 32);
    assert_eq!(heap_block(24), 32);
    assert_eq!(heap_block(25), 48);
    assert_eq!(heap_block(1 << 20), (1 << 20) + 4096);
    // One element: capacity 4; five: 8, having left a block of 4.
    assert_eq!(grown_vec(1, 24), (heap_block(96), 0));
    assert_eq!(grown_vec(5, 24), (heap_block(192), heap_block(96)));
    assert_eq!(grown_vec(3, 1), (heap_block(8), 0));
    assert_eq!(grown_vec(0, 24), (0, 0));
    assert_eq!(grouped(4194304), "4 194 304");
    assert_eq!(grouped(999), "999");
    assert_eq!(grouped(1000), "1 000");
}

#[test]
fn pseudo_random_bytes_never_panic() {
    // A cheap, deterministic stand-in for the fuzzer.
    let seed = heap_profile().encode_to_vec();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut bytes = seed.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % bytes.len();
            bytes[i] = next() as u8;
        }
        if let Ok(p) = decode(&bytes) {
            let _ = heap_summary(&p, 5);
            let _ = goroutine_summary(&p, 5);
            let _ = heap_diff(&p, &heap_profile(), 5);
        }
    }
}
