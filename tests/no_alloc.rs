//! The watcher's hot path allocates nothing per sample: the sentinel read,
//! the pace decision, the full sample, the trigger and the next interval.
//! Counted with a global allocator over real cgroup file trees; only the
//! test's own thread is counted (the test harness's threads allocate as
//! they please).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use oomsnap::memory::cgroup::CgroupReader;
use oomsnap::trigger::{Policy, Trigger};
use oomsnap::watch::pace::Pace;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // try_with: a thread being torn down has no locals left.
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            }
        });
        // SAFETY: forwarding to the system allocator with the same layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by System with layout l.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn sampling_and_deciding_allocate_nothing() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cgroup");
    for case in [
        "v1_after_oom_kill",
        "v2_inactive_file_exceeds_usage",
        "v2_vm_after_oom_kill",
    ] {
        let mut reader = CgroupReader::open(&root.join(case), None).unwrap();
        let mut trigger = Trigger::new(Policy {
            thresholds: vec![80.0, 90.0, 95.0],
            hysteresis: 5.0,
            lead_time: Duration::from_secs(2),
            imminent: true,
            baseline_every: None,
        });
        let mut pace = Pace::default();
        // Warm up: the first call may size internal buffers.
        let s = reader.read().unwrap();
        trigger.observe(&s);
        pace.took_full(s.at, s.usage, s.limit);
        ALLOCS.with(|a| a.set(0));
        COUNTING.with(|c| c.set(true));
        let mut sink = 0u64;
        for i in 0..1000 {
            let usage = reader.read_usage().unwrap();
            let now = std::time::Instant::now();
            if !pace.needs_full(now, usage) && i % 2 == 0 {
                continue;
            }
            let s = reader.read().unwrap();
            pace.took_full(s.at, s.usage, s.limit);
            let news = pace.worth_observing(&s, i % 7 == 0);
            pace.observed(&s);
            let d = news.then(|| trigger.observe(&s)).flatten();
            let k = trigger.slope();
            let next = pace.interval(
                s.percent(),
                trigger.next_rung(),
                k,
                Duration::from_millis(2),
                Duration::from_millis(20),
            );
            sink = sink.wrapping_add(s.working_set + next.as_nanos() as u64 + d.is_some() as u64);
        }
        COUNTING.with(|c| c.set(false));
        assert!(sink > 0);
        assert_eq!(
            ALLOCS.with(|a| a.get()),
            0,
            "{case}: the hot path allocated"
        );
    }
}
