//! When to capture: a pure state machine over memory samples
//! (docs/how-it-works.md, "Decide").
//!
//! [`Trigger::observe`] takes one [`Sample`] and returns at most one
//! [`Decision`]. No I/O and no clock of its own: time comes from the samples,
//! so synthetic series test every path.
//!
//! - **Threshold ladder.** Each rung fires once on the way up and re-arms
//!   only after the working set falls `hysteresis` points below it. A jump
//!   over several rungs fires once, for the highest rung crossed: three
//!   captures of the same moment would only spend quota.
//! - **Imminent.** A least-squares slope over the last second of samples
//!   (or over the dense run of samples since a long gap, when a fast climb
//!   began after a quiet spell); when `headroom / slope` drops below the
//!   lead time, capture now, even below the first rung. It fires once per climb and re-arms when the
//!   working set falls `hysteresis` points below where it fired.
//! - **Baseline.** When healthy (below half the first rung) and the last
//!   baseline is older than `baseline_every`.

use std::time::{Duration, Instant};

use crate::memory::Sample;

/// Why a capture was decided.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "percent")]
pub enum Reason {
    /// A rung of the ladder, in percent.
    Threshold(f64),
    Imminent,
    Baseline,
    Manual,
}

impl Reason {
    /// The label used in keys, logs and metrics: `threshold-80`, `imminent`…
    pub fn label(&self) -> String {
        match self {
            Reason::Threshold(p) if p.fract() == 0.0 => format!("threshold-{p:.0}"),
            Reason::Threshold(p) => format!("threshold-{p}"),
            Reason::Imminent => "imminent".into(),
            Reason::Baseline => "baseline".into(),
            Reason::Manual => "manual".into(),
        }
    }

    /// Near-OOM decisions spend the quota; baselines do not.
    pub fn spends_quota(&self) -> bool {
        !matches!(self, Reason::Baseline)
    }
}

/// A decision to capture, with the sample that caused it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub reason: Reason,
    pub sample: Sample,
    /// Growth of the working set, bytes per second, when known.
    pub slope: Option<f64>,
    /// Predicted time until the working set reaches the limit.
    pub predicted_oom_in: Option<Duration>,
}

/// The tunables of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub thresholds: Vec<f64>,
    pub hysteresis: f64,
    pub lead_time: Duration,
    /// `false` when `OOMSNAP_IMMINENT=off`.
    pub imminent: bool,
    /// `None` disables baselines.
    pub baseline_every: Option<Duration>,
}

impl Policy {
    pub fn from_config(c: &crate::config::Config) -> Policy {
        Policy {
            thresholds: c.thresholds.clone(),
            hysteresis: c.hysteresis,
            lead_time: c.lead_time,
            imminent: c.imminent != crate::config::Imminent::Off,
            baseline_every: (!c.baseline_every.is_zero()).then_some(c.baseline_every),
        }
    }

    fn first_rung(&self) -> f64 {
        self.thresholds.first().copied().unwrap_or(100.0)
    }
}

/// Samples kept for the slope: a fixed ring, so observing never allocates.
/// 256 samples cover the one-second window down to a 4 ms poll interval;
/// at 2 ms the slope looks back half a second, which a fast leak fills.
const HISTORY: usize = 256;
/// The slope looks back this far.
const SLOPE_WINDOW: Duration = Duration::from_secs(1);
/// Fewer points than this give no slope.
const SLOPE_MIN_POINTS: usize = 3;
/// And they must span at least this long, or jitter reads as a leak.
const SLOPE_MIN_SPAN: Duration = Duration::from_millis(5);
/// A gap between two samples this many times the widest gap among the
/// newer ones (and at least [`REGIME_GAP_MIN`]) ends the slope's window
/// early, once the newer samples are enough for a slope on their own.
const REGIME_GAP_FACTOR: u32 = 8;
/// Gaps shorter than this never end the window: sampling jitter.
const REGIME_GAP_MIN: Duration = Duration::from_millis(20);

/// The state machine.
#[derive(Debug, Clone)]
pub struct Trigger {
    policy: Policy,
    armed: Vec<bool>,
    /// The percent at which imminent last fired; it re-arms once the
    /// working set falls `hysteresis` points below that (or the first rung).
    imminent_fired_at: Option<f64>,
    last_baseline: Option<Instant>,
    ring: [(Instant, u64); HISTORY],
    len: usize,
    head: usize,
}

impl Trigger {
    pub fn new(policy: Policy) -> Trigger {
        let armed = vec![true; policy.thresholds.len()];
        let now = Instant::now();
        Trigger {
            policy,
            armed,
            imminent_fired_at: None,
            last_baseline: None,
            ring: [(now, 0); HISTORY],
            len: 0,
            head: 0,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Which rungs may still fire.
    pub fn armed(&self) -> &[bool] {
        &self.armed
    }

    /// Swaps in a new policy (annotations changed). Rungs that exist in both
    /// keep their state so a live change does not re-fire a crossed rung.
    pub fn set_policy(&mut self, policy: Policy) {
        let armed = policy
            .thresholds
            .iter()
            .map(|t| {
                self.policy
                    .thresholds
                    .iter()
                    .position(|o| o == t)
                    .is_none_or(|i| self.armed[i])
            })
            .collect();
        self.armed = armed;
        self.policy = policy;
    }

    /// The lowest rung that can still fire, in percent.
    pub fn next_rung(&self) -> Option<f64> {
        self.policy
            .thresholds
            .iter()
            .zip(&self.armed)
            .find(|(_, a)| **a)
            .map(|(t, _)| *t)
    }

    fn push(&mut self, s: &Sample) {
        self.ring[self.head] = (s.at, s.working_set);
        self.head = (self.head + 1) % HISTORY;
        self.len = (self.len + 1).min(HISTORY);
    }

    /// Least-squares slope of the working set over the last second, in
    /// bytes per second.
    ///
    /// The window ends early at a change of regime. The watcher samples
    /// densely only while the memory moves, so a run of close samples
    /// after a long gap is a climb that began after the older samples
    /// were taken; fitted together with them (a blip of the app's own
    /// start-up half a second before, say), its slope would read as a
    /// fraction of the real one, and `imminent` would fire tens of points
    /// late. The older samples are dropped once the newer ones are enough
    /// for a slope ([`SLOPE_MIN_POINTS`] over [`SLOPE_MIN_SPAN`]).
    pub fn slope(&self) -> Option<f64> {
        if self.len < SLOPE_MIN_POINTS {
            return None;
        }
        let newest = self.ring[(self.head + HISTORY - 1) % HISTORY].0;
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut oldest = newest;
        // The widest gap between two samples already in the window.
        let mut widest = Duration::ZERO;
        for i in 0..self.len {
            let (t, y) = self.ring[(self.head + HISTORY - 1 - i) % HISTORY];
            let age = newest.saturating_duration_since(t);
            if age > SLOPE_WINDOW {
                break;
            }
            let gap = oldest.saturating_duration_since(t);
            let enough = n as usize >= SLOPE_MIN_POINTS
                && newest.saturating_duration_since(oldest) >= SLOPE_MIN_SPAN;
            if enough && gap >= REGIME_GAP_MIN && gap > widest * REGIME_GAP_FACTOR {
                break;
            }
            widest = widest.max(gap);
            oldest = t;
            let x = -age.as_secs_f64();
            let y = y as f64;
            n += 1.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        if (n as usize) < SLOPE_MIN_POINTS || newest.duration_since(oldest) < SLOPE_MIN_SPAN {
            return None;
        }
        let denom = n * sxx - sx * sx;
        if denom.abs() < f64::EPSILON {
            return None;
        }
        Some((n * sxy - sx * sy) / denom)
    }

    /// Feeds one sample; returns the decision it causes, if any.
    pub fn observe(&mut self, s: &Sample) -> Option<Decision> {
        // A sharp fall (a kill, a restart, a freed cache) starts a new
        // history: the old climb must not predict an OOM that is past.
        if let (Some(limit), true) = (s.limit, self.len > 0) {
            let prev = self.ring[(self.head + HISTORY - 1) % HISTORY].1;
            let fall = prev.saturating_sub(s.working_set) as f64 * 100.0 / limit.max(1) as f64;
            if fall > self.policy.hysteresis {
                self.len = 0;
            }
        }
        self.push(s);
        let limit = s.limit?;
        if limit == 0 {
            return None;
        }
        let pct = s.percent();
        let slope = self.slope();
        let predicted = match slope {
            Some(k) if k > 0.0 => {
                let headroom = limit.saturating_sub(s.working_set) as f64;
                Some(Duration::from_secs_f64((headroom / k).min(1e9)))
            }
            _ => None,
        };
        let decide = |reason| Decision {
            reason,
            sample: *s,
            slope,
            predicted_oom_in: predicted,
        };

        // Re-arm rungs we have fallen well below.
        let h = self.policy.hysteresis;
        for (t, armed) in self.policy.thresholds.iter().zip(self.armed.iter_mut()) {
            if !*armed && pct < t - h {
                *armed = true;
            }
        }
        if let Some(fired_at) = self.imminent_fired_at {
            if pct < fired_at.min(self.policy.first_rung()) - h {
                self.imminent_fired_at = None;
            }
        }

        // The highest armed rung crossed fires; the armed ones below it are
        // spent with it.
        let crossed = self
            .policy
            .thresholds
            .iter()
            .enumerate()
            .rev()
            .find(|(i, t)| self.armed[*i] && pct >= **t)
            .map(|(i, t)| (i, *t));
        if let Some((i, t)) = crossed {
            for a in &mut self.armed[..=i] {
                *a = false;
            }
            return Some(decide(Reason::Threshold(t)));
        }

        // Imminent: the leak will reach the limit within the lead time.
        if self.policy.imminent && self.imminent_fired_at.is_none() {
            if let Some(p) = predicted {
                if p <= self.policy.lead_time {
                    self.imminent_fired_at = Some(pct);
                    return Some(decide(Reason::Imminent));
                }
            }
        }

        // Baseline while healthy.
        if let Some(every) = self.policy.baseline_every {
            let healthy = pct < self.policy.first_rung() / 2.0;
            let due = self
                .last_baseline
                .is_none_or(|b| s.at.saturating_duration_since(b) >= every);
            let calm = slope.is_none_or(|k| k <= limit as f64 * 0.01);
            if healthy && due && calm {
                self.last_baseline = Some(s.at);
                return Some(decide(Reason::Baseline));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 256 << 20;

    fn policy() -> Policy {
        Policy {
            thresholds: vec![80.0, 90.0, 95.0],
            hysteresis: 5.0,
            lead_time: Duration::from_secs(2),
            imminent: true,
            baseline_every: None,
        }
    }

    /// Runs a series of (ms, percent) points, returns the reasons fired.
    fn run(t: &mut Trigger, points: &[(u64, f64)]) -> Vec<(u64, String)> {
        let t0 = Instant::now();
        points
            .iter()
            .filter_map(|&(ms, pct)| {
                let s = Sample::synthetic(
                    t0 + Duration::from_millis(ms),
                    (LIMIT as f64 * pct / 100.0) as u64,
                    LIMIT,
                );
                t.observe(&s).map(|d| (ms, d.reason.label()))
            })
            .collect()
    }

    fn labels(v: &[(u64, String)]) -> Vec<&str> {
        v.iter().map(|(_, l)| l.as_str()).collect()
    }

    #[test]
    fn slow_rise_fires_each_rung_once_in_order() {
        // 1 point per second: slope ~2.6 MiB/s, far from imminent.
        let mut t = Trigger::new(policy());
        let pts: Vec<(u64, f64)> = (0..=99).map(|i| (i * 1000, i as f64)).collect();
        let fired = run(&mut t, &pts);
        assert_eq!(
            labels(&fired)[..3],
            ["threshold-80", "threshold-90", "threshold-95"]
        );
    }

    #[test]
    fn saw_tooth_around_a_rung_needs_hysteresis_to_refire() {
        let mut t = Trigger::new(Policy {
            lead_time: Duration::ZERO,
            ..policy()
        });
        let pts = [
            (0, 70.0),
            (1000, 81.0),
            (2000, 78.0), // not below 75: stays disarmed
            (3000, 82.0),
            (4000, 79.0),
            (5000, 74.0), // below 75: re-arms
            (6000, 81.0),
        ];
        let fired = run(&mut t, &pts);
        assert_eq!(
            fired,
            vec![(1000, "threshold-80".into()), (6000, "threshold-80".into())]
        );
    }

    #[test]
    fn step_from_10_to_99_fires_once_for_the_top_rung() {
        let mut t = Trigger::new(policy());
        let fired = run(&mut t, &[(0, 10.0), (1000, 99.0), (1001, 99.5)]);
        assert_eq!(labels(&fired), ["threshold-95"]);
        assert_eq!(t.armed(), &[false, false, false]);
    }

    #[test]
    fn fast_linear_leak_fires_imminent_before_the_first_rung() {
        // 350 MiB/s against 256 MiB: ~137 %/s, sampled every 2 ms from 20 %.
        let mut t = Trigger::new(policy());
        let pts: Vec<(u64, f64)> = (0..1000)
            .map(|i| (i * 2, 20.0 + 137.0 * (i as f64 * 0.002)))
            .take_while(|(_, p)| *p < 100.0)
            .collect();
        let fired = run(&mut t, &pts);
        assert_eq!(fired[0].1, "imminent");
        let pct_at = 20.0 + 137.0 * (fired[0].0 as f64 / 1000.0);
        assert!(pct_at < 80.0, "imminent fired at {pct_at}%");
        // The rungs still fire afterwards, in order.
        assert_eq!(
            labels(&fired)[1..],
            ["threshold-80", "threshold-90", "threshold-95"]
        );
    }

    #[test]
    fn a_leak_that_starts_after_a_quiet_spell_gets_its_own_slope() {
        // The app's own start-up: two samples with news, 0.9 s and 0.4 s
        // before the leak. Then the fastest leak (~0.5 % of the limit per
        // ms), first seen at 20 % and sampled every 2 ms from there.
        let mut t = Trigger::new(policy());
        let mut pts = vec![(0, 0.5), (500, 1.2)];
        pts.extend((0..40).map(|i| (900 + i * 2, 20.0 + i as f64)));
        let fired = run(&mut t, &pts);
        let (ms, reason) = &fired[0];
        assert_eq!(reason, "imminent", "{fired:?}");
        // At least three points spanning at least 5 ms are what a slope
        // needs: 20, 21, 22, 23 % at 900..906 ms (three 2 ms samples span
        // only 4 ms). The start-up samples must not hold the
        // slope down to a fraction of the leak's.
        assert!(*ms <= 906, "imminent only at {ms} ms: {fired:?}");
    }

    #[test]
    fn a_short_steep_burst_alone_predicts_from_its_own_points() {
        // Samples every 2 ms climbing 0.1 % each (50 %/s) from 40 %: the
        // prediction (60 points at 50 %/s = 1.2 s) is within the lead time
        // once the burst has enough points, whatever came 600 ms before.
        let mut t = Trigger::new(policy());
        let mut pts = vec![(0, 39.0)];
        pts.extend((0..10).map(|i| (600 + i * 2, 40.0 + 0.1 * i as f64)));
        assert_eq!(labels(&run(&mut t, &pts)), ["imminent"]);
    }

    #[test]
    fn sparse_samples_of_a_slow_climb_keep_the_whole_window() {
        // One sample every 100 ms rising 0.5 % each (5 %/s) from 50 %: the
        // OOM is 10 s away, more than the lead time; no gap ends the
        // window early, so no imminent.
        let mut t = Trigger::new(policy());
        let pts: Vec<(u64, f64)> = (0..30).map(|i| (i * 100, 50.0 + 0.5 * i as f64)).collect();
        assert!(run(&mut t, &pts).is_empty());

        // Evenly spaced samples, flat and then rising by 1 % per sample over
        // the last three: even gaps are no change of regime, so the slope
        // is fitted over the whole second (~2.4 %/s), not over the rise
        // alone (10 %/s), which is what a window cut short would read.
        let mut t = Trigger::new(policy());
        let pts: Vec<(u64, f64)> = (0..=10u64)
            .map(|i| (i * 100, 50.0 + i.saturating_sub(7) as f64))
            .collect();
        run(&mut t, &pts);
        let per_s = t.slope().unwrap() * 100.0 / LIMIT as f64;
        assert!((2.0..3.0).contains(&per_s), "slope {per_s:.2} %/s");
    }

    #[test]
    fn a_kill_does_not_leave_a_stale_slope_behind() {
        let mut t = Trigger::new(Policy {
            thresholds: vec![80.0],
            ..policy()
        });
        // A fast climb that fires imminent, then the kill: usage drops to 0.
        let mut pts: Vec<(u64, f64)> = (0..42).map(|i| (i * 2, 20.0 + i as f64 * 1.5)).collect();
        pts.extend((0..20).map(|i| (100 + i * 2, 0.1)));
        let fired = run(&mut t, &pts);
        assert_eq!(labels(&fired), ["imminent", "threshold-80"], "{fired:?}");
    }

    #[test]
    fn flat_usage_never_fires_imminent() {
        let mut t = Trigger::new(policy());
        let pts: Vec<(u64, f64)> = (0..500).map(|i| (i * 2, 50.0)).collect();
        assert!(run(&mut t, &pts).is_empty());
    }

    #[test]
    fn baseline_only_when_healthy_and_due() {
        let mut t = Trigger::new(Policy {
            baseline_every: Some(Duration::from_secs(10)),
            ..policy()
        });
        let pts = [
            (0, 20.0),     // first baseline
            (5000, 20.0),  // not due
            (11000, 60.0), // due but not healthy (>= 40 %)
            (12000, 30.0), // due and healthy
        ];
        let fired = run(&mut t, &pts);
        assert_eq!(
            fired,
            vec![(0, "baseline".into()), (12000, "baseline".into())]
        );
    }

    #[test]
    fn no_limit_means_no_decision() {
        let mut t = Trigger::new(policy());
        let mut s = Sample::synthetic(Instant::now(), 100, LIMIT);
        s.limit = None;
        assert!(t.observe(&s).is_none());
    }

    #[test]
    fn live_policy_change_keeps_crossed_rungs_spent() {
        let mut t = Trigger::new(Policy {
            lead_time: Duration::ZERO,
            ..policy()
        });
        run(&mut t, &[(0, 85.0)]);
        t.set_policy(Policy {
            thresholds: vec![80.0, 88.0],
            lead_time: Duration::ZERO,
            ..policy()
        });
        assert_eq!(t.armed(), &[false, true]);
        let fired = run(&mut t, &[(10, 89.0)]);
        assert_eq!(labels(&fired), ["threshold-88"]);
    }

    #[test]
    fn labels_are_stable() {
        assert_eq!(Reason::Threshold(80.0).label(), "threshold-80");
        assert_eq!(Reason::Threshold(97.5).label(), "threshold-97.5");
        assert!(!Reason::Baseline.spends_quota());
        assert!(Reason::Manual.spends_quota());
    }
}
