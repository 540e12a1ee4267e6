//! The pprof decoder and the summaries built from what the app serves:
//! `decode` (gzip or raw protobuf), `heap_summary`, `goroutine_summary`,
//! `heap_diff` (against a real baseline and against itself) and `verdict`.
//!
//! The app is the author of these bytes; a broken or hostile profile must
//! give an error or a summary, never a panic, a hang or an allocation the
//! size of the sidecar's memory limit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oomsnap::pprof::{self, Profile};

const TOP_N: usize = 10;

fn baseline() -> &'static Profile {
    static BASE: OnceLock<Profile> = OnceLock::new();
    BASE.get_or_init(|| {
        pprof::decode(include_bytes!("../../tests/data/pprof/heap_baseline.pb.gz"))
            .expect("the baseline fixture decodes")
    })
}

fuzz_target!(|data: &[u8]| {
    // A small cap as well as the default one, so the cap's edge is covered.
    let _ = pprof::decode_with_limit(data, 1024);
    let Ok(p) = pprof::decode(data) else { return };

    let g = pprof::goroutine_summary(&p, TOP_N);
    assert!(g.top_stacks.len() <= TOP_N);
    assert!(g.top_stacks.len() <= g.distinct_stacks);
    for s in &g.top_stacks {
        assert!(!s.functions.is_empty());
        assert!(s.functions.len() <= pprof::MAX_STACK_FRAMES);
    }

    let heap = pprof::heap_summary(&p, TOP_N);
    if let Ok(h) = &heap {
        assert!(h.top_flat.len() <= TOP_N && h.top_cum.len() <= TOP_N);
        for r in h.top_flat.iter().chain(&h.top_cum) {
            assert!(r.flat_percent.is_finite() && r.cum_percent.is_finite());
            assert!(
                r.flat_bytes <= h.total_bytes,
                "{r:?} above total {}",
                h.total_bytes
            );
        }
        let _ = pprof::verdict(h, None);
    }

    for diff in [
        pprof::heap_diff(baseline(), &p, TOP_N),
        pprof::heap_diff(&p, &p, TOP_N),
    ] {
        if let (Ok(d), Ok(h)) = (&diff, &heap) {
            assert!(d.top_growth.len() <= TOP_N);
            for g in &d.top_growth {
                assert!(g.delta_bytes > 0, "{g:?}");
                assert!(g.growth_percent.is_finite());
            }
            let _ = pprof::verdict(h, Some(d));
        }
    }
    // A profile diffed against itself grows nowhere.
    if let Ok(d) = pprof::heap_diff(&p, &p, TOP_N) {
        assert!(d.top_growth.is_empty(), "self-diff grew: {d:?}");
        assert_eq!(d.total_delta_bytes, 0);
    }
});
