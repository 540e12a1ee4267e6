//! The watcher's hot path — read a sample, feed the trigger, pick the next
//! interval — allocates nothing per sample. Counted with a global allocator
//! over a real cgroup file tree.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use oomsnap::memory::cgroup::CgroupReader;
use oomsnap::memory::pace::poll_interval;
use oomsnap::trigger::{Policy, Trigger};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
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
    for case in ["v1_after_oom_kill", "v2_inactive_file_exceeds_usage"] {
        let mut reader = CgroupReader::open(&root.join(case), None).unwrap();
        let mut trigger = Trigger::new(Policy {
            thresholds: vec![80.0, 90.0, 95.0],
            hysteresis: 5.0,
            lead_time: Duration::from_secs(2),
            baseline_every: None,
        });
        // Warm up: the first call may size internal buffers.
        let s = reader.read().unwrap();
        trigger.observe(&s);
        ALLOCS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let mut sink = 0u64;
        for _ in 0..1000 {
            let s = reader.read().unwrap();
            let d = trigger.observe(&s);
            let k = trigger.slope();
            let i = poll_interval(
                s.percent(),
                trigger.next_rung(),
                k,
                Duration::from_millis(2),
                Duration::from_millis(500),
            );
            sink = sink.wrapping_add(s.working_set + i.as_nanos() as u64 + d.is_some() as u64);
        }
        COUNTING.store(false, Ordering::Relaxed);
        assert!(sink > 0);
        assert_eq!(
            ALLOCS.load(Ordering::Relaxed),
            0,
            "{case}: the hot path allocated"
        );
    }
}
