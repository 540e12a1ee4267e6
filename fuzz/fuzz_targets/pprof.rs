//! The pprof decoder and the summaries built from what the app serves:
//! `decode` (gzip or raw protobuf, within a budget), `heap_summary`,
//! `goroutine_summary`, `heap_diff` (against a real baseline and against
//! itself) and `verdict`; and the same bytes as `heap?debug=1` text, for
//! the `runtime.MemStats` parser.
//!
//! The app is the author of these bytes; a broken or hostile profile must
//! give an error or a summary, never a panic, a hang or an allocation the
//! size of the sidecar's memory limit. A counting global allocator holds
//! the decoder to its word: decoding never allocates more than the budget
//! (plus gzip's small state), nor more than `estimate` priced for the body;
//! the summaries never more than the working set it priced.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oomsnap::pprof::memstats::{self, MemStatsParser};
use oomsnap::pprof::{self, Budget, Profile};

const TOP_N: usize = 10;

/// Beside the inflated body: two gzip decoders' window, buffer and header
/// fields (flate2 caps each header field at 64 KiB).
const GZIP_SLACK: usize = 512 << 10;

#[path = "../../tests/common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{peak_during, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fn baseline() -> &'static Profile {
    static BASE: OnceLock<Profile> = OnceLock::new();
    BASE.get_or_init(|| {
        pprof::decode(include_bytes!("../../tests/data/pprof/heap_baseline.pb.gz"))
            .expect("the baseline fixture decodes")
    })
}

fn within(budget: Budget) -> usize {
    (budget.raw_bytes + budget.decoded_bytes) as usize + GZIP_SLACK
}

fuzz_target!(|data: &[u8]| {
    // As text: however the body is cut into chunks, the same numbers.
    let whole = memstats::parse(data);
    let cut = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut chunked = MemStatsParser::new();
    chunked.feed(&data[..cut]);
    chunked.feed(&data[cut..]);
    assert_eq!(format!("{whole:?}"), format!("{:?}", chunked.finish()));

    let _ = baseline();
    // A small budget as well as the sidecar's, so the budget's edges are
    // reached with small inputs.
    let small = Budget {
        raw_bytes: 16 << 10,
        decoded_bytes: 64 << 10,
    };
    let (_, peak) = peak_during(|| pprof::decode_with_budget(data, small));
    assert!(peak <= within(small), "a small-budget decode took {peak} bytes");

    let (decoded, peak) = peak_during(|| pprof::decode(data));
    assert!(peak <= within(Budget::SIDECAR), "a decode took {peak} bytes");
    let Ok(p) = decoded else { return };
    let e = pprof::estimate(data, Budget::SIDECAR).expect("what decodes is priced");
    let priced = (e.raw_bytes + e.decoded_bytes()) as usize + GZIP_SLACK;
    assert!(peak <= priced, "decoding took {peak} bytes, priced {priced}: {e:?}");
    let working = e.working_bytes() as usize;

    let (g, peak) = peak_during(|| pprof::goroutine_summary(&p, TOP_N));
    assert!(peak <= working, "goroutine_summary took {peak}, priced {working}");
    assert!(g.top_stacks.len() <= TOP_N);
    assert!(g.top_stacks.len() <= g.distinct_stacks);
    for s in &g.top_stacks {
        assert!(!s.functions.is_empty());
        assert!(s.functions.len() <= pprof::MAX_STACK_FRAMES);
    }

    let (heap, peak) = peak_during(|| pprof::heap_summary(&p, TOP_N));
    assert!(peak <= working, "heap_summary took {peak}, priced {working}");
    if let Ok(h) = &heap {
        assert!(h.top_flat.len() <= TOP_N && h.top_cum.len() <= TOP_N);
        for r in h.top_flat.iter().chain(&h.top_cum) {
            assert!(r.flat_percent.is_finite() && r.cum_percent.is_finite());
            assert!(
                r.flat_bytes <= h.total_bytes,
                "{r:?} above total {}",
                h.total_bytes
            );
            assert!(r.cum_bytes <= h.total_bytes, "{r:?} above total");
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
