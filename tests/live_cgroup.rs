//! The watcher against a real memory cgroup with a real Go app leaking in
//! it until the kernel OOM-kills it.
//!
//! Needs root and a writable memory cgroup; skips loudly without them, and
//! fails instead when `OOMSNAP_REQUIRE_LIVE=1` (CI sets it).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{go_available, require_live, Leaker, MemCgroup};
use oomsnap::memory::locate::{locate, LocateInput, Strategy};
use oomsnap::memory::watch::{self, Wake, WatchConfig, WatchEvent, WatchState};
use oomsnap::memory::SourceKind;
use oomsnap::trigger::{Policy, Reason};

const LIMIT: u64 = 256 << 20;

fn setup() -> Option<MemCgroup> {
    if !go_available() && !require_live("go (apt-get install golang-go)") {
        return None;
    }
    match MemCgroup::create(LIMIT) {
        Some(cg) => Some(cg),
        None => {
            require_live("a writable v1 memory cgroup (run as root)");
            None
        }
    }
}

#[test]
fn locates_the_cgroup_by_path_and_by_the_leakers_port() {
    let Some(cg) = setup() else { return };
    let leaker = Leaker::spawn(Some(&cg), &["-rate", "1", "-max", "4"]);

    let by_path = locate(&LocateInput {
        cgroup: Some(cg.path().into()),
        ..Default::default()
    })
    .expect("explicit path");
    assert_eq!(by_path.strategy, Strategy::Explicit);

    let by_port = locate(&LocateInput {
        cgroup_root: "/sys/fs/cgroup".into(),
        target_port: Some(leaker.port()),
        skip_own: true,
        ..Default::default()
    })
    .expect("by port");
    assert_eq!(by_port.strategy, Strategy::TargetProcess);
    assert_eq!(by_port.pid, Some(leaker.pid()));
    let SourceKind::Cgroup { dir, .. } = &by_port.kind else {
        panic!("expected a cgroup, got {:?}", by_port.kind)
    };
    // Found through /proc/<pid>/root/sys/fs/cgroup/memory/…: the same files.
    assert_eq!(
        std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        LIMIT.to_string()
    );
    assert!(
        dir.ends_with(cg.path().file_name().unwrap()),
        "{}",
        dir.display()
    );
}

struct Run {
    events: Vec<(Instant, WatchEvent, u64)>,
    rate_bytes_per_s: f64,
}

/// Runs the watcher over a leak until the OOM kill; every event is stamped
/// with the cgroup's oom_kill count at the moment it was received.
fn watch_until_oom(
    kernel_wakeups: bool,
    poll: Duration,
    rate_mib: u32,
    lead: Duration,
) -> Option<Run> {
    let cg = setup()?;
    let mut leaker = Leaker::spawn(
        Some(&cg),
        &["-rate", &rate_mib.to_string(), "-delay", "300ms"],
    );
    let cfg = WatchConfig {
        locate: LocateInput {
            cgroup: Some(cg.path().into()),
            ..Default::default()
        },
        policy: Policy {
            thresholds: vec![80.0, 90.0, 95.0],
            hysteresis: 5.0,
            lead_time: lead,
            imminent: true,
            baseline_every: None,
        },
        poll_min: Duration::from_millis(2).min(poll),
        poll_max: poll,
        kernel_wakeups,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (control, thread) = watch::spawn(cfg, tx, Arc::new(WatchState::default())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    let mut killed = false;
    while Instant::now() < deadline && !killed {
        match rx.try_recv() {
            Ok(ev) => {
                killed = matches!(ev, WatchEvent::OomKill { .. });
                events.push((Instant::now(), ev, cg.oom_kill_count()));
            }
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    control.stop();
    thread.join().unwrap();
    assert!(killed, "no OOM kill within 60 s; events: {events:?}");
    assert!(
        leaker.wait_exit(Duration::from_secs(5)).is_some(),
        "the leaker survived"
    );
    Some(Run {
        events,
        rate_bytes_per_s: rate_mib as f64 * (1 << 20) as f64,
    })
}

fn thresholds(run: &Run) -> Vec<(f64, oomsnap::trigger::Decision, Wake, u64)> {
    run.events
        .iter()
        .filter_map(|(_, ev, kills)| match ev {
            WatchEvent::Decision { decision, wake } => match decision.reason {
                Reason::Threshold(p) => Some((p, *decision, *wake, *kills)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// How late a decision was: working-set bytes past the rung over the leak
/// rate.
fn overshoot_ms(p: f64, d: &oomsnap::trigger::Decision, rate: f64) -> f64 {
    let rung = LIMIT as f64 * p / 100.0;
    (d.sample.working_set as f64 - rung).max(0.0) / rate * 1e3
}

#[test]
fn ladder_fires_80_90_95_in_order_before_the_oom_kill_on_kernel_wakeups() {
    // Polling at most once a second far from the rungs: the eventfds wake
    // the watcher at each level of usage, and it polls fast from there
    // until the working set (usage less inactive file) follows.
    let Some(run) = watch_until_oom(true, Duration::from_secs(1), 32, Duration::ZERO) else {
        return;
    };
    let t = thresholds(&run);
    let rungs: Vec<f64> = t.iter().map(|x| x.0).collect();
    assert_eq!(rungs, vec![80.0, 90.0, 95.0], "events: {:?}", run.events);

    for (p, d, wake, kills) in &t {
        assert_eq!(*kills, 0, "threshold-{p} arrived after the kill");
        let late = overshoot_ms(*p, d, run.rate_bytes_per_s);
        eprintln!(
            "eventfd path: threshold-{p} read {late:.2} ms of leak past the rung (woken by {wake:?})"
        );
        // A loose bound: the eventfd fires at the crossing; the figure is
        // recorded, not tuned against, on a noisy machine.
        assert!(late < 100.0, "threshold-{p} came {late:.1} ms late");
    }
}

#[test]
fn polling_alone_sees_every_rung_before_the_oom_kill() {
    let Some(run) = watch_until_oom(false, Duration::from_millis(250), 32, Duration::ZERO) else {
        return;
    };
    let t = thresholds(&run);
    let rungs: Vec<f64> = t.iter().map(|x| x.0).collect();
    assert_eq!(rungs, vec![80.0, 90.0, 95.0], "events: {:?}", run.events);
    for (p, d, wake, kills) in &t {
        assert_eq!(*wake, Wake::Poll);
        assert_eq!(*kills, 0, "threshold-{p} arrived after the kill");
        let late = overshoot_ms(*p, d, run.rate_bytes_per_s);
        eprintln!("polling path (250 ms): threshold-{p} read {late:.2} ms of leak past the rung");
    }
}

#[test]
fn a_fast_leak_fires_imminent_below_the_first_rung() {
    let Some(run) = watch_until_oom(true, Duration::from_millis(2), 128, Duration::from_secs(2))
    else {
        return;
    };
    let first = run
        .events
        .iter()
        .find_map(|(_, ev, kills)| match ev {
            WatchEvent::Decision { decision, .. } => Some((*decision, *kills)),
            _ => None,
        })
        .expect("a decision");
    assert_eq!(first.0.reason, Reason::Imminent, "events: {:?}", run.events);
    assert!(first.0.sample.percent() < 80.0);
    assert_eq!(first.1, 0);
    eprintln!(
        "imminent fired at {:.1}% with {:?} predicted to OOM",
        first.0.sample.percent(),
        first.0.predicted_oom_in
    );
}
