//! What a profile costs the app, and whether it can afford it now.
//!
//! Pure logic. The profile counts from the pprof index page
//! ([`super::index`]), the app's working set and limit enter; for each
//! profile an estimate in bytes and a [`Verdict`] (take it, or skip it with a
//! sentence) leave. The capture stage asks before every profile but heap.
//!
//! Why: serving a profile allocates inside the app. A goroutine profile of
//! 100 000 goroutines costs the app about 42 MiB, `goroutine?debug=2` about
//! 151 MiB (measured by `benches/app_effect.rs`, docs/benchmarks.md). An app
//! parked at 91 % of its limit is killed by the very profile oomsnap asks
//! for. So a profile whose estimate would bring the working set within a
//! safety margin of the limit is skipped, and the manifest says why.
//!
//! The per-item costs are calibrated against `benches/app_effect.rs` (it
//! prints each profile's measured cost beside this estimate) and rounded up:
//! an estimate that is too high skips a profile the app could have paid
//! for; one that is too low kills the app.

use crate::profiles::ProfileKind;

/// Bytes the app allocates per goroutine to serve `goroutine` (a
/// `StackRecord` per goroutine, plus GC headroom on it): the cgroup's peak
/// grew 40–46 MiB for 100 000 parked goroutines (Go 1.19), rounded up.
pub const GOROUTINE_BYTES_EACH: u64 = 560;
/// Per goroutine for `goroutine?debug=2`: every stack as text, in a buffer
/// that doubles until it fits (151 MiB measured for 100 000).
pub const GOROUTINE_STACKS_BYTES_EACH: u64 = 1800;
/// Per heap (or allocs) profile record, plus a fixed part for the encoder.
pub const HEAP_BYTES_EACH: u64 = 2048;
pub const HEAP_BYTES_FIXED: u64 = 256 << 10;
/// Per block, mutex or threadcreate record.
pub const SMALL_BYTES_EACH: u64 = 1024;
pub const SMALL_BYTES_FIXED: u64 = 64 << 10;
/// A cpu profile's buffers, whatever the app does.
pub const CPU_BYTES: u64 = 4 << 20;

/// The margin kept below the limit: 1/32 of it (3 %), at least 4 MiB. The
/// working set moves between the sample and the request, and the kernel
/// kills at the limit, not near it.
pub fn margin(limit: u64) -> u64 {
    (limit / 32).max(4 << 20)
}

/// The counts the index page reports, by profile name.
pub type Counts = std::collections::BTreeMap<String, u64>;

/// Seconds the app spends serving a goroutine profile, per goroutine: 76 000
/// parked goroutines took 368 ms on the test machine (`tests/breakdown.rs`),
/// rounded up.
pub const SERVE_SECONDS_PER_GOROUTINE: f64 = 5e-6;
/// The least time a capture's profiles are taken to need.
pub const SERVE_SECONDS_MIN: f64 = 0.05;

/// How long the app takes to serve the capture's profiles: the longest, a
/// goroutine profile, in proportion to the goroutines.
pub fn serve_seconds(counts: Option<&Counts>) -> f64 {
    let goroutines = counts
        .and_then(|c| c.get("goroutine"))
        .copied()
        .unwrap_or(0);
    (goroutines as f64 * SERVE_SECONDS_PER_GOROUTINE).max(SERVE_SECONDS_MIN)
}

/// What the app adds on its own while a capture is served, at the deciding
/// sample's slope. A climbing app does not wait for the capture: one at
/// 75 % still parking goroutines went on to 83 % by itself while it served
/// the goroutine profile, and the profile's ~40 MiB on top of that was the
/// kill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    /// Over the whole time the profiles take ([`serve_seconds`]): room is
    /// kept for it.
    pub while_served: u64,
    /// Over [`SERVE_SECONDS_MIN`] only: when even this takes the app to its
    /// limit, the leak kills it anyway and the profiles are evidence. The
    /// short horizon keeps a straight-line guess from calling an app doomed
    /// that would have levelled off.
    pub soon: u64,
}

impl Growth {
    pub fn at(slope: Option<f64>, serve_seconds: f64) -> Growth {
        let slope = slope.filter(|k| k.is_finite() && *k > 0.0).unwrap_or(0.0);
        let bytes = |s: f64| (slope * s).min(u64::MAX as f64) as u64;
        Growth {
            while_served: bytes(serve_seconds.max(SERVE_SECONDS_MIN)),
            soon: bytes(SERVE_SECONDS_MIN),
        }
    }
}

/// The estimated cost of serving `kind`, when the index gave its count.
pub fn estimate(kind: ProfileKind, counts: &Counts) -> Option<u64> {
    let n = |name: &str| counts.get(name).copied();
    Some(match kind {
        ProfileKind::Goroutine => n("goroutine")?.saturating_mul(GOROUTINE_BYTES_EACH),
        ProfileKind::GoroutineStacks => n("goroutine")?.saturating_mul(GOROUTINE_STACKS_BYTES_EACH),
        ProfileKind::Heap => n("heap")?
            .saturating_mul(HEAP_BYTES_EACH)
            .saturating_add(HEAP_BYTES_FIXED),
        ProfileKind::Allocs => n("allocs")?
            .saturating_mul(HEAP_BYTES_EACH)
            .saturating_add(HEAP_BYTES_FIXED),
        ProfileKind::Block | ProfileKind::Mutex | ProfileKind::Threadcreate => n(kind.name())?
            .saturating_mul(SMALL_BYTES_EACH)
            .saturating_add(SMALL_BYTES_FIXED),
        ProfileKind::Cpu => CPU_BYTES,
    })
}

/// Whether to take a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Take,
    Skip(String),
}

/// Decides the profiles of one capture, in the order given, against what
/// the app has left: `working_set` and `limit` from the newest sample, less
/// `growth`, what the app adds on its own while the profiles are served
/// ([`Growth`]). `reserved` is what profiles already under way
/// are estimated to cost. Each taken profile's estimate is reserved for the
/// ones after it, since they are fetched concurrently.
///
/// When the app is growing and its own growth alone takes it to within the
/// margin of the limit in the next [`SERVE_SECONDS_MIN`], the profiles are
/// taken whatever they cost: the leak, not the profile, is what kills it, and the profiles
/// are the evidence.
pub fn plan(
    kinds: &[ProfileKind],
    counts: Option<&Counts>,
    working_set: u64,
    limit: Option<u64>,
    mut reserved: u64,
    growth: Growth,
) -> Vec<(ProfileKind, Option<u64>, Verdict)> {
    kinds
        .iter()
        .map(|&kind| {
            let est = counts.and_then(|c| estimate(kind, c));
            let verdict = match (est, limit) {
                (Some(cost), Some(limit)) => {
                    let edge = limit.saturating_sub(margin(limit));
                    // Growing, not merely near: a flat app inside the
                    // margin may live on, unless a profile tips it over.
                    let doomed =
                        growth.soon > 0 && working_set.saturating_add(growth.soon) >= edge;
                    let projected = working_set.saturating_add(growth.while_served);
                    let left = limit.saturating_sub(projected);
                    let room = left.saturating_sub(margin(limit)).saturating_sub(reserved);
                    if doomed || cost <= room {
                        reserved = reserved.saturating_add(cost);
                        Verdict::Take
                    } else {
                        let growing = if growth.while_served > 0 {
                            format!(
                                " once the app's own growth while it is served (about {}) is counted",
                                crate::pprof::human_bytes(growth.while_served)
                            )
                        } else {
                            String::new()
                        };
                        Verdict::Skip(format!(
                            "skipped: serving it would cost the app about {} ({}), and only {} is left below the limit{growing} (keeping a margin of {})",
                            crate::pprof::human_bytes(cost),
                            basis(kind, counts),
                            crate::pprof::human_bytes(left.saturating_sub(reserved)),
                            crate::pprof::human_bytes(margin(limit)),
                        ))
                    }
                }
                // Without a limit there is no headroom to protect; without
                // a count the cost is unknown and the profile is taken as
                // before (the index page can be missing on custom muxes).
                _ => Verdict::Take,
            };
            (kind, est, verdict)
        })
        .collect()
}

fn basis(kind: ProfileKind, counts: Option<&Counts>) -> String {
    let key = match kind {
        ProfileKind::GoroutineStacks => "goroutine",
        ProfileKind::Cpu => return "a cpu profile's buffers".into(),
        k => k.name(),
    };
    match counts.and_then(|c| c.get(key)) {
        Some(n) => format!("{n} {key} records"),
        None => format!("{key} count unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn counts(goroutines: u64, heap: u64) -> Counts {
        [
            ("goroutine".to_string(), goroutines),
            ("heap".to_string(), heap),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn a_parked_app_near_its_limit_keeps_its_life() {
        // 100 000 goroutines at 91 % of 285 MiB: the goroutine profile
        // (~49 MiB) does not fit in the ~26 MiB left.
        let limit = 285 * MIB;
        let ws = limit * 91 / 100;
        let p = plan(
            &[ProfileKind::Goroutine, ProfileKind::GoroutineStacks],
            Some(&counts(100_000, 50)),
            ws,
            Some(limit),
            0,
            Growth::default(),
        );
        for (kind, est, v) in &p {
            assert!(est.unwrap() > 26 * MIB, "{kind}");
            let Verdict::Skip(why) = v else {
                panic!("{kind} should be skipped")
            };
            assert!(why.contains("100000 goroutine records"), "{why}");
        }
        // Parked inside the margin itself, but not growing: the leak is not
        // what kills it, so the profile still must not.
        let p = plan(
            &[ProfileKind::Goroutine],
            Some(&counts(100_000, 50)),
            limit - margin(limit) / 2,
            Some(limit),
            0,
            Growth::default(),
        );
        assert!(matches!(p[0].2, Verdict::Skip(_)), "{p:?}");
    }

    #[test]
    fn an_app_still_climbing_keeps_room_for_its_own_growth() {
        // 60 000 goroutines at 75 % of 256 MiB, climbing 100 MB/s: serving
        // the goroutine profile takes ~0.3 s, in which the app adds ~29 MiB
        // on its own. The profile's ~32 MiB fitted the room the sample
        // showed, but not the room left once the app has grown.
        let limit = 256 * MIB;
        let ws = limit * 3 / 4;
        let c = counts(60_000, 20);
        let growth = Growth::at(Some(100e6), serve_seconds(Some(&c)));
        let g = growth.while_served;
        assert!(g > 25 * MIB && g < 32 * MIB, "{g}");
        let still = plan(
            &[ProfileKind::Goroutine],
            Some(&c),
            ws,
            Some(limit),
            0,
            Growth::default(),
        );
        assert_eq!(still[0].2, Verdict::Take);
        let climbing = plan(
            &[ProfileKind::Goroutine],
            Some(&c),
            ws,
            Some(limit),
            0,
            growth,
        );
        let Verdict::Skip(why) = &climbing[0].2 else {
            panic!("the profile should be skipped: {climbing:?}")
        };
        assert!(
            why.contains("the app's own growth while it is served"),
            "{why}"
        );
    }

    #[test]
    fn an_app_its_leak_kills_anyway_gets_its_evidence() {
        // The fastest leak (~1.3 GB/s) at 75 %: in the next 50 ms it
        // reaches the limit on its own, so the goroutine profile is
        // evidence, not the kill.
        let limit = 256 * MIB;
        let c = counts(100_000, 20);
        let growth = Growth::at(Some(1.3e9), serve_seconds(Some(&c)));
        let p = plan(
            &[ProfileKind::Goroutine],
            Some(&c),
            limit * 3 / 4,
            Some(limit),
            0,
            growth,
        );
        assert_eq!(p[0].2, Verdict::Take);
        // A falling or unknown slope adds nothing.
        assert_eq!(Growth::at(Some(-5e6), 1.0), Growth::default());
        assert_eq!(Growth::at(None, 1.0), Growth::default());
    }

    #[test]
    fn a_small_app_far_from_its_limit_gets_everything() {
        let p = plan(
            &[ProfileKind::Goroutine, ProfileKind::Allocs],
            Some(&counts(50, 300)),
            100 * MIB,
            Some(256 * MIB),
            0,
            Growth::default(),
        );
        assert!(p.iter().all(|(_, _, v)| *v == Verdict::Take));
    }

    #[test]
    fn concurrent_profiles_share_the_room() {
        // Each of the two fits alone; both together do not.
        let limit = 256 * MIB;
        let ws = limit - margin(limit) - 30 * MIB;
        let c = counts(40_000, 10); // goroutine ≈ 19.5 MiB
        let p = plan(
            &[ProfileKind::Goroutine, ProfileKind::Goroutine],
            Some(&c),
            ws,
            Some(limit),
            0,
            Growth::default(),
        );
        assert_eq!(p[0].2, Verdict::Take);
        assert!(matches!(p[1].2, Verdict::Skip(_)));
    }

    #[test]
    fn unknown_counts_or_no_limit_take_the_profile() {
        let p = plan(
            &[ProfileKind::Goroutine],
            None,
            250 * MIB,
            Some(256 * MIB),
            0,
            Growth::default(),
        );
        assert_eq!(p[0].2, Verdict::Take);
        let p = plan(
            &[ProfileKind::Goroutine],
            Some(&counts(1 << 30, 0)),
            0,
            None,
            0,
            Growth::default(),
        );
        assert_eq!(p[0].2, Verdict::Take);
    }

    #[test]
    fn the_margin_is_a_thirty_second_of_the_limit_and_at_least_four_mib() {
        assert_eq!(margin(256 * MIB), 8 * MIB);
        assert_eq!(margin(64 * MIB), 4 * MIB);
    }
}
